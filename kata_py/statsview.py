"""The guest's cgroup figures where engines look for them: at the container's
cgroup on the host.

podman computes `stats` from the host's cgroupfs (the cgroup of the pid in
the pid file) and never asks the runtime. That cgroup holds the sandbox's
host processes (host_cgroup.py: the shim, QEMU, virtiofsd, the vsock
backend), so on its own it shows the VM's footprint, not the container's.
The shim therefore mounts a small read-only FUSE file system over that
directory, in the v2 tree and in the v1 memory, cpuacct, pids and blkio
hierarchies: files with the names and formats engines read
(`memory.usage_in_bytes`, `cpuacct.usage`, `cpu.stat`, `memory.stat`,
`io.stat`, ...) carrying the container's figures from the guest's cgroup
(StatsContainer), fetched when a file is opened and reused for
CACHE_S. lxcfs does the same for /proc. The kernel's cgroup underneath is
untouched: the shim unmounts the view before it stops the sandbox, and
`delete` detaches a view a killed shim left before it removes the cgroup
(host_cgroup.remove). `stats_view = false` in the runtime config turns it
off.

The FUSE protocol subset served (linux/fuse.h, protocol 7.31): INIT,
LOOKUP, FORGET, BATCH_FORGET, GETATTR, OPEN, READ, RELEASE, FLUSH, OPENDIR,
READDIR, RELEASEDIR, STATFS, ACCESS, INTERRUPT and DESTROY; anything else
gets ENOSYS (the mount is read-only, so the kernel sends no writes).
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import stat
import struct
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from kata_py import host_cgroup, host_mounts

log = logging.getLogger(__name__)

Stats = Mapping[str, "int | None"]   # AgentClient.stats(): None where the guest has no figure

CACHE_S = 0.5                 # one `podman stats` sample opens 4-6 files: one RPC for all
FUSE_MAJOR, FUSE_MINOR = 7, 31
ROOT_ID = 1
READ_BUFFER = 64 * 1024 + 4096   # >= FUSE_MIN_READ_BUFFER (8 KiB); we accept no writes
FOPEN_DIRECT_IO = 1              # contents change per open; st_size is 0 as in cgroupfs
V1_NO_LIMIT = 9223372036854771712  # what a v1 memory.limit_in_bytes says for "no limit"
USER_HZ = 100
NOTE = "kata-py.txt"

IN_HEADER = struct.Struct("<IIQQIIIHH")
OUT_HEADER = struct.Struct("<IiQ")
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
ENTRY_OUT = struct.Struct("<QQQQII")
ATTR_OUT = struct.Struct("<QII")
OPEN_OUT = struct.Struct("<QII")
READ_IN = struct.Struct("<QQI")
INIT_IN = struct.Struct("<IIII")
INIT_OUT = struct.Struct("<IIIIHHIIHHI7I")
KSTATFS = struct.Struct("<QQQQQIIII6I")
DIRENT = struct.Struct("<QQII")

LOOKUP, FORGET, GETATTR, OPEN, READ, STATFS, RELEASE = 1, 2, 3, 14, 15, 17, 18
FLUSH, INIT, OPENDIR, READDIR, RELEASEDIR, ACCESS = 25, 26, 27, 28, 29, 34
INTERRUPT, DESTROY, BATCH_FORGET = 36, 38, 42
NO_REPLY = (FORGET, BATCH_FORGET, INTERRUPT)

# The files of each kind of hierarchy; a v1 hierarchy mounting several of
# these controllers together (cpu,cpuacct) gets the union.
KINDS = ("memory", "cpuacct", "pids", "blkio", "v2")


def _n(stats: Stats, key: str) -> int:
    value = stats.get(key)
    return 0 if value is None else int(value)


def render(kind: str, stats: Stats) -> dict[str, str]:
    """The files of one kind, from the guest's figures."""
    usec = _n(stats, "cpu_usage_usec")
    user, system = _n(stats, "cpu_user_usec"), _n(stats, "cpu_system_usec")
    read, write = _n(stats, "io_read_bytes"), _n(stats, "io_write_bytes")
    limit = stats.get("memory_max_bytes")
    if kind == "memory":
        return {"memory.usage_in_bytes": f"{_n(stats, 'memory_current_bytes')}\n",
                "memory.limit_in_bytes": f"{V1_NO_LIMIT if limit is None else limit}\n",
                "memory.stat": (f"cache {_n(stats, 'memory_file_bytes')}\n"
                                f"rss {_n(stats, 'memory_anon_bytes')}\n")}
    if kind == "cpuacct":
        return {"cpuacct.usage": f"{usec * 1000}\n",
                "cpuacct.usage_user": f"{user * 1000}\n",
                "cpuacct.usage_sys": f"{system * 1000}\n",
                "cpuacct.usage_percpu": "\n",       # the guest's split is not reported
                "cpuacct.stat": (f"user {user * USER_HZ // 1_000_000}\n"
                                 f"system {system * USER_HZ // 1_000_000}\n")}
    if kind == "pids":
        return {"pids.current": f"{_n(stats, 'pids_current')}\n"}
    if kind == "blkio":
        rows = "".join(f"0:0 {op} {value}\n" for op, value in
                       (("Read", read), ("Write", write), ("Sync", 0), ("Async", 0),
                        ("Discard", 0), ("Total", read + write)))
        table = rows + f"Total {read + write}\n"
        return {"blkio.throttle.io_service_bytes_recursive": table,
                "blkio.io_service_bytes_recursive": table}
    if kind == "v2":
        return {"cpu.stat": f"usage_usec {usec}\nuser_usec {user}\nsystem_usec {system}\n",
                "memory.current": f"{_n(stats, 'memory_current_bytes')}\n",
                "memory.max": "max\n" if limit is None else f"{limit}\n",
                "memory.stat": (f"anon {_n(stats, 'memory_anon_bytes')}\n"
                                f"file {_n(stats, 'memory_file_bytes')}\n"),
                "memory.events": f"oom_kill {_n(stats, 'oom_kills')}\n",
                "pids.current": f"{_n(stats, 'pids_current')}\n",
                "io.stat": f"0:0 rbytes={read} wbytes={write} rios=0 wios=0 dbytes=0 dios=0\n"}
    raise ValueError(f"unknown kind {kind!r}")


def files(kinds: tuple[str, ...], stats: Stats) -> dict[str, str]:
    out = {NOTE: ("The container's cgroup figures from inside its kata-py VM (read-only "
                  "view, kata_py/statsview.py).\nThe host cgroup underneath holds the "
                  "VM's host processes.\n")}
    for kind in kinds:
        out.update(render(kind, stats))
    return out


def targets(path: str, mountinfo: str | None = None) -> list[tuple[Path, tuple[str, ...]]]:
    """Where the view goes for the host cgroup `path`, and what each one shows."""
    found = []
    for mount, fstype, controllers in host_cgroup.mounted_hierarchies(mountinfo):
        kinds = ("v2",) if fstype == "cgroup2" else tuple(k for k in KINDS if k in controllers)
        if kinds:
            found.append((mount / path.lstrip("/"), kinds))
    return found


class _Mount:
    """One mounted view: its /dev/fuse fd and its (fixed) file names."""

    def __init__(self, point: Path, kinds: tuple[str, ...]) -> None:
        self.point = point
        self.kinds = kinds
        self.names = sorted(files(kinds, {}))      # node id = index + 2
        self.fd = -1
        self.open_files: dict[int, bytes] = {}
        self.next_fh = 1


class StatsView:
    """The FUSE views of one container, served by one thread of its shim."""

    def __init__(self, fetch: Callable[[], Stats],
                 points: list[tuple[Path, tuple[str, ...]]]) -> None:
        self._fetch = fetch
        self._mounts = [_Mount(p, k) for p, k in points]
        self._sel = selectors.DefaultSelector()
        self._thread: threading.Thread | None = None
        self._snapshot: tuple[float, Stats] | None = None   # only the serving thread uses it

    # ---- mounting -------------------------------------------------------------

    def start(self) -> list[Path]:
        """Mount every view that can be (a failure is logged: engines then see
        the host cgroup); returns the mount points."""
        for m in self._mounts:
            try:
                m.fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
                host_mounts.mount("kata-py", m.point, "fuse",
                                  host_mounts.MS_RDONLY | host_mounts.MS_NOSUID
                                  | host_mounts.MS_NODEV | host_mounts.MS_NOEXEC,
                                  f"fd={m.fd},rootmode=40555,user_id=0,group_id=0,"
                                  "allow_other,default_permissions,subtype=kata-py-stats")
            except OSError as exc:
                log.warning("no guest stats view on %s: %s", m.point, exc)
                if m.fd >= 0:
                    os.close(m.fd)
                    m.fd = -1
                continue
            self._sel.register(m.fd, selectors.EVENT_READ, m)
        mounted = [m.point for m in self._mounts if m.fd >= 0]
        if mounted:
            self._thread = threading.Thread(target=self._serve, name="stats-view", daemon=True)
            self._thread.start()
        return mounted

    def close(self) -> None:
        """Unmount the views (the cgroups underneath show again) and stop serving."""
        for m in self._mounts:
            if m.fd >= 0:
                host_mounts.detach(m.point)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for m in self._mounts:
            if m.fd >= 0:
                os.close(m.fd)
                m.fd = -1
        self._sel.close()

    # ---- serving --------------------------------------------------------------

    def _serve(self) -> None:
        live = sum(1 for m in self._mounts if m.fd >= 0)
        while live:
            for key, _ in self._sel.select():
                m: _Mount = key.data
                try:
                    request = os.read(m.fd, READ_BUFFER)
                except OSError as exc:
                    if exc.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                        continue              # ENOENT: the request was interrupted
                    self._sel.unregister(m.fd)   # ENODEV: unmounted
                    live -= 1
                    continue
                try:
                    self._handle(m, request)
                except Exception:  # noqa: BLE001 - one bad request must not end the view
                    log.exception("stats view %s: request failed", m.point)

    def _reply(self, m: _Mount, unique: int, payload: bytes = b"", error: int = 0) -> None:
        try:
            os.write(m.fd, OUT_HEADER.pack(OUT_HEADER.size + len(payload), -error, unique)
                     + payload)
        except OSError as exc:          # ENOENT: interrupted meanwhile
            log.debug("stats view %s: reply to %d: %s", m.point, unique, exc)

    def _stats(self) -> Stats:
        now = time.monotonic()
        if self._snapshot is None or now - self._snapshot[0] > CACHE_S:
            self._snapshot = (now, self._fetch())
        return self._snapshot[1]

    @staticmethod
    def _attr(node: int) -> bytes:
        now = int(time.time())
        if node == ROOT_ID:
            mode, nlink = stat.S_IFDIR | 0o555, 2
        else:
            mode, nlink = stat.S_IFREG | 0o444, 1
        return ATTR.pack(node, 0, 0, now, now, now, 0, 0, 0, mode, nlink, 0, 0, 0, 4096, 0)

    def _handle(self, m: _Mount, request: bytes) -> None:
        _, opcode, unique, node, _, _, _, _, _ = IN_HEADER.unpack_from(request)
        body = request[IN_HEADER.size:]
        if opcode in NO_REPLY:
            return
        if opcode == INIT:
            major, _minor, readahead, _flags = INIT_IN.unpack_from(body)
            if major != FUSE_MAJOR:
                self._reply(m, unique, error=errno.EPROTO)
                return
            self._reply(m, unique, INIT_OUT.pack(FUSE_MAJOR, FUSE_MINOR, readahead, 0,
                                                 16, 12, 4096, 1, 0, 0, 0, *[0] * 7))
        elif opcode == LOOKUP:
            name = body.split(b"\0", 1)[0].decode(errors="replace")
            if node != ROOT_ID or name not in m.names:
                self._reply(m, unique, error=errno.ENOENT)
                return
            child = m.names.index(name) + 2
            self._reply(m, unique, ENTRY_OUT.pack(child, 0, 1, 1, 0, 0) + self._attr(child))
        elif opcode == GETATTR:
            if node != ROOT_ID and not 2 <= node < len(m.names) + 2:
                self._reply(m, unique, error=errno.ENOENT)
                return
            self._reply(m, unique, ATTR_OUT.pack(1, 0, 0) + self._attr(node))
        elif opcode == OPEN:
            if not 2 <= node < len(m.names) + 2:
                self._reply(m, unique, error=errno.EISDIR if node == ROOT_ID else errno.ENOENT)
                return
            try:
                content = files(m.kinds, self._stats())[m.names[node - 2]].encode()
            except Exception as exc:  # noqa: BLE001 - the agent is gone or slow
                log.info("stats view %s: no figures from the guest: %s", m.point, exc)
                self._reply(m, unique, error=errno.EIO)
                return
            fh, m.next_fh = m.next_fh, m.next_fh + 1
            m.open_files[fh] = content
            self._reply(m, unique, OPEN_OUT.pack(fh, FOPEN_DIRECT_IO, 0))
        elif opcode == READ:
            fh, offset, size = READ_IN.unpack_from(body)
            held = m.open_files.get(fh)
            if held is None:
                self._reply(m, unique, error=errno.EBADF)
                return
            self._reply(m, unique, held[offset:offset + size])
        elif opcode in (RELEASE, RELEASEDIR):
            fh = READ_IN.unpack_from(body)[0]
            m.open_files.pop(fh, None)
            self._reply(m, unique)
        elif opcode in (FLUSH, ACCESS):
            self._reply(m, unique)
        elif opcode == OPENDIR:
            if node != ROOT_ID:
                self._reply(m, unique, error=errno.ENOTDIR)
                return
            self._reply(m, unique, OPEN_OUT.pack(0, 0, 0))
        elif opcode == READDIR:
            _fh, offset, size = READ_IN.unpack_from(body)
            self._reply(m, unique, self._dirents(m, offset, size))
        elif opcode == STATFS:
            self._reply(m, unique, KSTATFS.pack(0, 0, 0, 0, 0, 4096, 255, 4096, 0, *[0] * 6))
        elif opcode == DESTROY:
            self._reply(m, unique)
        else:
            self._reply(m, unique, error=errno.ENOSYS)

    @staticmethod
    def _dirents(m: _Mount, offset: int, size: int) -> bytes:
        entries = [(ROOT_ID, ".", stat.S_IFDIR), (ROOT_ID, "..", stat.S_IFDIR)]
        entries += [(i + 2, name, stat.S_IFREG) for i, name in enumerate(m.names)]
        out = b""
        for index in range(offset, len(entries)):
            node, name, kind = entries[index]
            raw = name.encode()
            entry = DIRENT.pack(node, index + 1, len(raw), kind >> 12) + raw
            entry += b"\0" * (-len(entry) % 8)
            if len(out) + len(entry) > size:
                break
            out += entry
        return out
