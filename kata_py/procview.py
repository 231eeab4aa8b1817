"""The container's /proc where podman top reads it: in the pid-file
process's mount namespace (holder.py), as a read-only FUSE file system.

podman (4.x) lists a container's processes with psgo, which joins the
mount namespace of the pid-file process and reads /proc there; only ps(1)
descriptors psgo does not know make it exec `ps` in the container. Under
runc that namespace is the container's, and its /proc the container's pid
namespace. Here the processes live in the guest, so the holder's /proc is
this view: for each process the container's own /proc shows (pids as the
container sees them), `stat`, `status`, `cmdline` and `ns/pid`, fetched
from the agent (ReadProcesses) when the directory is listed and reused for
CACHE_S; and `stat`, the host's /proc/stat, for its boot time.

Start times: a guest process's starttime (stat field 22) counts clock
ticks since the guest booted, and a VM restored from a template booted
long before its clock was set. The view rewrites it to ticks since the
host booted, from the guest's CLOCK_BOOTTIME at the read, so elapsed
times computed against the host's btime come out right.
"""

from __future__ import annotations

import errno
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kata_py import fuse

CACHE_S = 0.5            # one `podman top` reads 5 files per process: one RPC for all
USER_HZ = 100            # the clock tick of /proc/PID/stat, on both kernels
STARTTIME = 19           # field 22 of /proc/PID/stat, counted after the ")" of field 2
PID_FILES = ("stat", "status", "cmdline")
HOST_STAT = Path("/proc/stat")

# AgentClient.read_processes(): (pid, stat, status, cmdline, pid ns) each,
# and the guest's CLOCK_BOOTTIME in ns.
Fetch = Callable[[], "tuple[list[tuple[int, bytes, bytes, bytes, str]], int]"]


@dataclass(frozen=True)
class Process:
    files: dict[str, bytes]      # stat (start time made host-relative), status, cmdline
    pid_ns: str


def host_stat(raw: bytes, offset_ticks: int) -> bytes:
    """A guest /proc/PID/stat with its start time moved by offset_ticks."""
    text = raw.decode(errors="replace")
    head, sep, tail = text.rpartition(")")
    fields = tail.split()
    if not sep or len(fields) <= STARTTIME:
        return raw
    fields[STARTTIME] = str(max(0, int(fields[STARTTIME]) + offset_ticks))
    return f"{head}) {' '.join(fields)}\n".encode()


def snapshot(entries: list[tuple[int, bytes, bytes, bytes, str]], guest_boottime_ns: int,
             host_boottime_ns: int) -> dict[int, Process]:
    """The processes, their start times as ticks since the host booted."""
    offset = (host_boottime_ns - guest_boottime_ns) * USER_HZ // 1_000_000_000
    return {pid: Process({"stat": host_stat(st, offset), "status": status,
                          "cmdline": cmdline}, pid_ns)
            for pid, st, status, cmdline, pid_ns in entries}


class ProcTree:
    """/proc: `stat`, and per process PID/{stat,status,cmdline,ns/pid}."""

    entry_valid_s = 0       # processes come and go: the kernel asks every time

    def __init__(self, fetch: Fetch) -> None:
        self._fetch = fetch
        self._taken: tuple[float, dict[int, Process]] | None = None
        self._ids: dict[tuple[int, str], int] = {(0, ""): fuse.ROOT_ID}
        self._paths: dict[int, tuple[int, str]] = {fuse.ROOT_ID: (0, "")}

    def processes(self, fresh: bool = False) -> dict[int, Process]:
        now = time.monotonic()
        if fresh or self._taken is None or now - self._taken[0] > CACHE_S:
            entries, guest_boottime = self._fetch()
            found = snapshot(entries, guest_boottime, time.clock_gettime_ns(time.CLOCK_BOOTTIME))
            self._taken = (now, found)
        return self._taken[1]

    def _id(self, pid: int, path: str) -> int:
        key = (pid, path)
        if key not in self._ids:
            self._ids[key] = len(self._paths) + 1
            self._paths[self._ids[key]] = key
        return self._ids[key]

    def kind(self, node: int) -> int | None:
        if node not in self._paths:
            return None
        pid, path = self._paths[node]
        if pid == 0:
            return stat.S_IFDIR if path == "" else stat.S_IFREG
        if pid not in self.processes():
            return None
        return {"": stat.S_IFDIR, "ns": stat.S_IFDIR, "ns/pid": stat.S_IFLNK}.get(
            path, stat.S_IFREG)

    def lookup(self, parent: int, name: str) -> int | None:
        pid, path = self._paths.get(parent, (-1, ""))
        if pid == 0 and path == "":
            if name == "stat":
                return self._id(0, "stat")
            if name.isdigit() and int(name) in self.processes():
                return self._id(int(name), "")
            return None
        if pid > 0 and path == "" and name in (*PID_FILES, "ns"):
            return self._id(pid, name)
        if pid > 0 and path == "ns" and name == "pid":
            return self._id(pid, "ns/pid")
        return None

    def children(self, node: int) -> list[tuple[int, str, int]]:
        pid, path = self._paths[node]
        if pid == 0:
            return [(self._id(0, "stat"), "stat", stat.S_IFREG)] + [
                (self._id(p, ""), str(p), stat.S_IFDIR)
                for p in sorted(self.processes(fresh=True))]
        if path == "ns":
            return [(self._id(pid, "ns/pid"), "pid", stat.S_IFLNK)]
        return [(self._id(pid, name), name, stat.S_IFREG) for name in PID_FILES] + [
            (self._id(pid, "ns"), "ns", stat.S_IFDIR)]

    def _process(self, pid: int) -> Process:
        found = self.processes().get(pid)
        if found is None:
            raise OSError(errno.ENOENT, f"process {pid} is gone")
        return found

    def read(self, node: int) -> bytes:
        pid, path = self._paths[node]
        if pid == 0:
            return HOST_STAT.read_bytes()
        return self._process(pid).files[path]

    def readlink(self, node: int) -> bytes:
        pid, _ = self._paths[node]
        return self._process(pid).pid_ns.encode()


class ProcView:
    """Serves one ProcTree on a FUSE connection the holder has mounted."""

    def __init__(self, fetch: Fetch) -> None:
        self.tree = ProcTree(fetch)
        self._server = fuse.Server("proc-view")

    def serve(self, fd: int) -> None:
        self._server.add(fd, self.tree, "/proc")
        self._server.start()

    def close(self) -> None:
        self._server.close()
