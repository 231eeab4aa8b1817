"""Bind mounts on the host that expose container files to the guest through
the sandbox's virtio-fs share (rootfs, bind-mount sources).

virtiofsd runs with sandbox=chroot in our mount namespace, so mounts made
below the shared directory after it started are visible to the guest.

Safety: a sandbox's state directory is only ever removed after every mount
below it is gone (`mounts_below`), or rmtree would delete the user's files
through the bind mount.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

from kata_py.errors import ResourceError

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MNT_DETACH = 0x2

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise ResourceError(f"{what}: {os.strerror(err)}",
                            "kata-py must run as root on the host")


# Every bind in the share: the guest can write through it (a setuid-root
# binary, a device node), and nothing on the host needs to exec or open
# devices there, so the host path must not honour either.
SHARE_MOUNT_FLAGS = MS_NOSUID | MS_NODEV | MS_NOEXEC

# mount_setattr(2) (Linux 5.12): the per-mount flags of a whole bind tree at once.
SYS_MOUNT_SETATTR = 442
AT_RECURSIVE = 0x8000
MOUNT_ATTR = {MS_RDONLY: 0x1, MS_NOSUID: 0x2, MS_NODEV: 0x4, MS_NOEXEC: 0x8}


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def bind(source: Path, target: Path, readonly: bool = False) -> None:
    """Recursively bind source (a directory or a file) onto target (created),
    nosuid, nodev and noexec on the host (SHARE_MOUNT_FLAGS), read-only if asked,
    submounts included."""
    if source.is_dir():
        target.mkdir(parents=True, exist_ok=True)
    else:
        if not source.exists():
            raise ResourceError(f"bind mount source {source} does not exist",
                                "fix the mount's source in config.json")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch(exist_ok=True)
    _check(_libc.mount(str(source).encode(), str(target).encode(), None,
                       MS_BIND | MS_REC, None), f"bind mount {source} on {target}")
    flags = SHARE_MOUNT_FLAGS | (MS_RDONLY if readonly else 0)
    try:
        restrict(target, flags)
    except ResourceError:
        _libc.umount2(str(target).encode(), MNT_DETACH)
        raise


def restrict(target: Path, flags: int) -> None:
    """Add `flags` (MS_RDONLY/NOSUID/NODEV/NOEXEC) to the mount at target and
    every mount below it."""
    attr = _MountAttr(sum(MOUNT_ATTR[f] for f in MOUNT_ATTR if flags & f), 0, 0, 0)
    rc = _libc.syscall(SYS_MOUNT_SETATTR, -100, str(target).encode(), AT_RECURSIVE,
                       ctypes.byref(attr), ctypes.sizeof(attr))
    if rc == 0:
        return
    if ctypes.get_errno() != errno.ENOSYS:
        _check(rc, f"restricting the bind mount {target}")
    # An older kernel: a bind remount sets one mount's flags, so each in
    # turn, with the ones it has already (a remount clears what it is not given).
    for point in reversed(mounts_below(target)):
        have = _mount_flags(point)
        _check(_libc.mount(None, str(point).encode(), None,
                           MS_BIND | MS_REMOUNT | have | flags, None),
               f"restricting the bind mount {point}")


def _mount_flags(point: Path) -> int:
    """The MS_ flags of the mount at point, as statvfs(3) reports them."""
    have = os.statvfs(point).f_flag
    return sum(ms for st, ms in ((os.ST_RDONLY, MS_RDONLY), (os.ST_NOSUID, MS_NOSUID),
                                 (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC))
               if have & st)


def mount(source: str, target: Path, fstype: str, flags: int, data: str) -> None:
    """mount(2); OSError with the errno on failure."""
    if _libc.mount(source.encode(), str(target).encode(), fstype.encode(), flags,
                   data.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype} on {target}: {os.strerror(err)}")


def detach(point: Path) -> bool:
    """Lazily unmount point (umount2 MNT_DETACH); False if nothing was mounted there."""
    return bool(_libc.umount2(str(point).encode(), MNT_DETACH) == 0)


def mounts_below(directory: Path) -> list[Path]:
    """Mount points at or below directory, deepest first."""
    prefix = str(directory.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def unmount_all(directory: Path) -> list[Path]:
    """Detach every mount below directory; returns the ones that remain."""
    for point in mounts_below(directory):
        _libc.umount2(str(point).encode(), MNT_DETACH)
    return mounts_below(directory)
