"""The guest's cgroup where engines and tools look for it: at the
container's cgroup on the host.

podman computes `stats` from the host's cgroupfs (the cgroup of the pid in
the pid file) and never asks the runtime; monitoring tools and conformance
checks read limits there too. That cgroup holds the sandbox's host processes
(host_cgroup.py: the monitor, QEMU, virtiofsd, the vsock backend), so on its
own it shows the VM's footprint, not the container's. The monitor therefore
mounts a small read-only FUSE file system over that directory in every
hierarchy it knows (the v2 tree; the v1 memory, cpu, cpuacct, cpuset, pids,
blkio and hugetlb hierarchies): the files of that controller with the names
and formats of a real cgroup, carrying the guest cgroup's limits and usage
(guest_cgroup.py renders them), fetched when a file is looked up or opened
and reused for CACHE_S. lxcfs does the same for /proc. The kernel's cgroup
underneath is untouched: the monitor unmounts the view before it stops the
sandbox, and `delete` detaches a view a killed monitor left before it removes
the cgroup (host_cgroup.remove). `stats_view = false` in the runtime config
turns it off.

The FUSE protocol is fuse.py's.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from kata_py import fuse, host_cgroup, host_mounts
from kata_py.guest_cgroup import KINDS, GuestCgroup, render

log = logging.getLogger(__name__)

CACHE_S = 0.5                 # one `podman stats` sample opens 4-6 files: one RPC for all
NOTE = "kata-py.txt"


def files(kinds: tuple[str, ...], cg: GuestCgroup) -> dict[str, str]:
    """The files of one view."""
    out = {NOTE: ("The container's cgroup from inside its kata-py VM (read-only view, "
                  "kata_py/statsview.py).\nThe host cgroup underneath holds the "
                  "VM's host processes.\n")}
    for kind in kinds:
        out.update(render(kind, cg))
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
    """One view: a directory of files whose names and contents come from the
    guest (hugepage sizes, the v2 tree's files). A name keeps its node id for
    the life of the view."""

    entry_valid_s = 1

    def __init__(self, kinds: tuple[str, ...], snapshot: Callable[[], GuestCgroup]) -> None:
        self.kinds = kinds
        self._snapshot = snapshot
        self._names: list[str] = []          # node id = index + 2
        self._ids: dict[str, int] = {}

    def _files(self) -> dict[str, str]:
        return files(self.kinds, self._snapshot())

    def _id(self, name: str) -> int:
        if name not in self._ids:
            self._names.append(name)
            self._ids[name] = len(self._names) + 1
        return self._ids[name]

    def kind(self, node: int) -> int | None:
        if node == fuse.ROOT_ID:
            return stat.S_IFDIR
        return stat.S_IFREG if 2 <= node < len(self._names) + 2 else None

    def lookup(self, parent: int, name: str) -> int | None:
        if parent != fuse.ROOT_ID or name not in self._files():
            return None
        return self._id(name)

    def children(self, node: int) -> list[tuple[int, str, int]]:
        return [(self._id(name), name, stat.S_IFREG) for name in sorted(self._files())]

    def read(self, node: int) -> bytes:
        try:
            return self._files()[self._names[node - 2]].encode()
        except KeyError:
            raise OSError(errno.ENOENT, "no longer in the guest's cgroup") from None

    def readlink(self, node: int) -> bytes:
        raise OSError(errno.EINVAL, "no links here")


class StatsView:
    """The FUSE views of one container, served by one thread of its monitor."""

    def __init__(self, fetch: Callable[[], GuestCgroup],
                 points: list[tuple[Path, tuple[str, ...]]]) -> None:
        self._fetch = fetch
        self._points = points
        self._mounted: list[Path] = []
        self._server = fuse.Server("stats-view")
        self._snapshot: tuple[float, GuestCgroup] | None = None   # only the serving thread uses it

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

    def _stats(self) -> GuestCgroup:
        now = time.monotonic()
        if self._snapshot is None or now - self._snapshot[0] > CACHE_S:
            self._snapshot = (now, self._fetch())
        return self._snapshot[1]
