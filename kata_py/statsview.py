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

The FUSE protocol is fuse.py's.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from kata_py import fuse, host_cgroup, host_mounts

log = logging.getLogger(__name__)

Stats = Mapping[str, "int | None"]   # AgentClient.stats(): None where the guest has no figure

CACHE_S = 0.5                 # one `podman stats` sample opens 4-6 files: one RPC for all
V1_NO_LIMIT = 9223372036854771712  # what a v1 memory.limit_in_bytes says for "no limit"
USER_HZ = 100
NOTE = "kata-py.txt"

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


class _FlatTree:
    """One view: a directory of fixed names whose contents come from the guest."""

    entry_valid_s = 1

    def __init__(self, kinds: tuple[str, ...], stats: Callable[[], Stats]) -> None:
        self.kinds = kinds
        self.names = sorted(files(kinds, {}))      # node id = index + 2
        self._stats = stats

    def kind(self, node: int) -> int | None:
        if node == fuse.ROOT_ID:
            return stat.S_IFDIR
        return stat.S_IFREG if 2 <= node < len(self.names) + 2 else None

    def lookup(self, parent: int, name: str) -> int | None:
        if parent != fuse.ROOT_ID or name not in self.names:
            return None
        return self.names.index(name) + 2

    def children(self, node: int) -> list[tuple[int, str, int]]:
        return [(i + 2, name, stat.S_IFREG) for i, name in enumerate(self.names)]

    def read(self, node: int) -> bytes:
        return files(self.kinds, self._stats())[self.names[node - 2]].encode()

    def readlink(self, node: int) -> bytes:
        raise OSError(errno.EINVAL, "no links here")


class StatsView:
    """The FUSE views of one container, served by one thread of its shim."""

    def __init__(self, fetch: Callable[[], Stats],
                 points: list[tuple[Path, tuple[str, ...]]]) -> None:
        self._fetch = fetch
        self._points = points
        self._mounted: list[Path] = []
        self._server = fuse.Server("stats-view")
        self._snapshot: tuple[float, Stats] | None = None   # only the serving thread uses it

    def start(self) -> list[Path]:
        """Mount every view that can be (a failure is logged: engines then see
        the host cgroup); returns the mount points."""
        for point, kinds in self._points:
            fd = -1
            try:
                fd = fuse.open_device()
                fuse.mount(fd, point, "kata-py-stats")
            except OSError as exc:
                log.warning("no guest stats view on %s: %s", point, exc)
                if fd >= 0:
                    os.close(fd)
                continue
            self._server.add(fd, _FlatTree(kinds, self._stats), str(point))
            self._mounted.append(point)
        self._server.start()
        return list(self._mounted)

    def close(self) -> None:
        """Unmount the views (the cgroups underneath show again) and stop serving."""
        for point in self._mounted:
            host_mounts.detach(point)
        self._mounted = []
        self._server.close()

    def _stats(self) -> Stats:
        now = time.monotonic()
        if self._snapshot is None or now - self._snapshot[0] > CACHE_S:
            self._snapshot = (now, self._fetch())
        return self._snapshot[1]
