"""The container's filesystem view, built the way runc's rootfs_linux.go does.

Owns, inside the container's (already unshared) mount namespace:
- root propagation (`linux.rootfsPropagation`, default rslave like runc) and
  the bind mount of the rootfs onto itself so it can be pivoted;
- the spec's `mounts[]` in order (config.md "Mounts"): option strings are
  split into mount(2) flags, propagation flags and filesystem data; bind
  mounts get their flags by a second MS_REMOUNT|MS_BIND, as mount(8) does;
- /dev: `linux.devices` plus runc's default devices (null, zero, full,
  random, urandom, tty; mknod, falling back to bind-mounting the guest's node),
  /dev/ptmx → pts/ptmx and the /dev/fd, stdin, stdout, stderr symlinks;
- pivot_root(".", ".") into the rootfs (runc's pivotRoot) or, with no_pivot,
  MS_MOVE + chroot (runc's msMoveRoot);
- after the pivot: `linux.maskedPaths` (/dev/null bound over files, an empty
  read-only tmpfs over directories), `linux.readonlyPaths` (bind + remount ro)
  and `root.readonly` (remount / ro).

Destinations are resolved inside the rootfs (symlinks followed as if the
rootfs were /, like runc's securejoin), so a symlink in the image cannot send a
mount outside it. Nothing here forks or touches namespaces; the launcher calls
these in runc's order.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterable

from kata_py.agent import linux
from kata_py.agent.launch_config import Device, Mount

_FLAGS: dict[str, tuple[bool, int]] = {  # option → (clear?, flag)
    "ro": (False, linux.MS_RDONLY), "rw": (True, linux.MS_RDONLY),
    "nosuid": (False, linux.MS_NOSUID), "suid": (True, linux.MS_NOSUID),
    "nodev": (False, linux.MS_NODEV), "dev": (True, linux.MS_NODEV),
    "noexec": (False, linux.MS_NOEXEC), "exec": (True, linux.MS_NOEXEC),
    "sync": (False, linux.MS_SYNCHRONOUS), "async": (True, linux.MS_SYNCHRONOUS),
    "dirsync": (False, linux.MS_DIRSYNC), "remount": (False, linux.MS_REMOUNT),
    "mand": (False, linux.MS_MANDLOCK), "nomand": (True, linux.MS_MANDLOCK),
    "noatime": (False, linux.MS_NOATIME), "atime": (True, linux.MS_NOATIME),
    "nodiratime": (False, linux.MS_NODIRATIME), "diratime": (True, linux.MS_NODIRATIME),
    "relatime": (False, linux.MS_RELATIME), "norelatime": (True, linux.MS_RELATIME),
    "strictatime": (False, linux.MS_STRICTATIME),
    "nostrictatime": (True, linux.MS_STRICTATIME),
    "nosymfollow": (False, linux.MS_NOSYMFOLLOW), "symfollow": (True, linux.MS_NOSYMFOLLOW),
    "bind": (False, linux.MS_BIND), "rbind": (False, linux.MS_BIND | linux.MS_REC),
    "iversion": (False, linux.MS_I_VERSION), "noiversion": (True, linux.MS_I_VERSION),
    "lazytime": (False, linux.MS_LAZYTIME), "nolazytime": (True, linux.MS_LAZYTIME),
    "silent": (False, linux.MS_SILENT), "loud": (True, linux.MS_SILENT),
}
# runc's extensions: not mount(2) data. tmpcopyup: a tmpfs starts with a copy
# of what the image has at its destination (podman sets it on every tmpfs).
_EXTENSIONS = frozenset({"tmpcopyup"})
_PROPAGATION = {
    "private": linux.MS_PRIVATE, "rprivate": linux.MS_PRIVATE | linux.MS_REC,
    "shared": linux.MS_SHARED, "rshared": linux.MS_SHARED | linux.MS_REC,
    "slave": linux.MS_SLAVE, "rslave": linux.MS_SLAVE | linux.MS_REC,
    "unbindable": linux.MS_UNBINDABLE, "runbindable": linux.MS_UNBINDABLE | linux.MS_REC,
}
_MAX_SYMLINKS = 255

DEFAULT_DEVICES = (
    Device("/dev/null", "c", 1, 3), Device("/dev/zero", "c", 1, 5),
    Device("/dev/full", "c", 1, 7), Device("/dev/random", "c", 1, 8),
    Device("/dev/urandom", "c", 1, 9), Device("/dev/tty", "c", 5, 0),
)
_DEV_SYMLINKS = (("/proc/self/fd", "fd"), ("/proc/self/fd/0", "stdin"),
                 ("/proc/self/fd/1", "stdout"), ("/proc/self/fd/2", "stderr"))


def parse_options(options: Iterable[str]) -> tuple[int, tuple[int, ...], str]:
    """mount(8)-style options → (flags, propagation flags, data string)."""
    flags = 0
    propagation: list[int] = []
    data: list[str] = []
    for option in options:
        if option in _FLAGS:
            clear, flag = _FLAGS[option]
            flags = flags & ~flag if clear else flags | flag
        elif option in _PROPAGATION:
            propagation.append(_PROPAGATION[option])
        elif option != "defaults" and option not in _EXTENSIONS:
            data.append(option)
    return flags, tuple(propagation), ",".join(data)


def secure_join(root: str, path: str) -> str:
    """`path` resolved inside `root`, following symlinks as if `root` were "/"."""
    parts = [p for p in path.split("/") if p]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        if os.path.islink(candidate):
            links += 1
            if links > _MAX_SYMLINKS:
                raise OSError(errno.ELOOP, f"too many symlinks resolving {path}", path)
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def set_root_propagation(propagation: str) -> None:
    """Make / rslave (runc's default) or the spec's rootfsPropagation, recursively."""
    flag = _PROPAGATION.get(propagation or "rslave")
    if flag is None:
        raise ValueError(f"linux.rootfsPropagation: unknown value {propagation!r}")
    linux.mount(None, "/", None, flag | linux.MS_REC)


def unescape(field: str) -> str:
    """A mountinfo path with its octal escapes (\\040 for a space) decoded.
    Not the unicode_escape codec: it would be imported on first use, perhaps
    inside a user namespace that cannot read the library, and it mangles UTF-8."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_point_of(path: str) -> str:
    """The mount point (from /proc/self/mountinfo) whose mount holds `path`."""
    best = "/"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = unescape(line.split()[4])
            if (path == point or path.startswith(point.rstrip("/") + "/")) and \
                    len(point) > len(best):
                best = point
    return best


def make_parent_mount_private(rootfs: str) -> None:
    """runc rootfsParentMountPrivate: pivot_root refuses a shared parent mount."""
    linux.mount(None, mount_point_of(rootfs), None, linux.MS_PRIVATE)


def bind_rootfs(rootfs: str) -> None:
    """Bind the rootfs onto itself: pivot_root needs it to be a mount point."""
    linux.mount(rootfs, rootfs, "bind", linux.MS_BIND | linux.MS_REC)


def is_bind(m: Mount) -> bool:
    return m.type == "bind" or bool(parse_options(m.options)[0] & linux.MS_BIND)


def create_mountpoint(dest: str, source: str, bind: bool) -> None:
    """A missing mount point: a file for a bind of a file, else a directory."""
    if bind and os.path.exists(source) and not os.path.isdir(source):
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if not os.path.exists(dest):
            with open(dest, "a"):
                pass
        return
    os.makedirs(dest, exist_ok=True)


def mount_one(rootfs: str, m: Mount) -> None:
    """One entry of the spec's mounts[] below `rootfs`."""
    dest = secure_join(rootfs, m.destination)
    flags, propagation, data = parse_options(m.options)
    bind = bool(flags & linux.MS_BIND) or m.type == "bind"
    create_mountpoint(dest, m.source, bind)
    if bind:
        linux.mount(m.source, dest, "bind", linux.MS_BIND | (flags & linux.MS_REC))
        extra = flags & ~(linux.MS_BIND | linux.MS_REC | linux.MS_REMOUNT)
        if extra:
            linux.mount(dest, dest, None,
                        extra | linux.MS_BIND | linux.MS_REMOUNT | _preserved_flags(dest))
    elif m.type == "tmpfs" and "tmpcopyup" in m.options:
        # The image's directory stays reachable through an fd once the tmpfs covers it.
        below = os.open(dest, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            linux.mount(m.source or "tmpfs", dest, "tmpfs", flags & ~linux.MS_RDONLY,
                        data or None)
            copy_tree(f"/proc/self/fd/{below}", dest)
        finally:
            os.close(below)
        if flags & linux.MS_RDONLY:
            linux.mount(dest, dest, None, flags | linux.MS_REMOUNT)
    else:
        fstype = "cgroup2" if m.type == "cgroup" else m.type  # the guest is cgroup v2 only
        try:
            linux.mount(m.source or fstype, dest, fstype, flags, data or None)
        except PermissionError:
            if fstype != "sysfs":
                raise
            # A user namespace without its own network namespace may not
            # mount a sysfs: bind the guest's, read-only (what `runc spec
            # --rootless` writes for that case).
            linux.mount("/sys", dest, "bind", linux.MS_BIND | linux.MS_REC)
            linux.mount(dest, dest, None, linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY
                        | _preserved_flags(dest))
    for flag in propagation:
        linux.mount(None, dest, None, flag)


def copy_tree(src: str, dst: str) -> None:
    """Copy src's entries into the existing directory dst, keeping type, mode,
    owner and times (runc's tmpcopyup); sockets are skipped."""
    import shutil  # only containers with tmpcopyup mounts pay for it

    for entry in os.scandir(src):
        source, target = entry.path, os.path.join(dst, entry.name)
        st = entry.stat(follow_symlinks=False)
        if entry.is_symlink():
            os.symlink(os.readlink(source), target)
        elif entry.is_dir(follow_symlinks=False):
            os.mkdir(target)
            copy_tree(source, target)
        elif entry.is_file(follow_symlinks=False):
            with open(source, "rb") as fin, open(target, "xb") as fout:
                shutil.copyfileobj(fin, fout)
        elif stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            os.mknod(target, st.st_mode, st.st_rdev)
        else:
            continue
        os.chown(target, st.st_uid, st.st_gid, follow_symlinks=False)
        if not entry.is_symlink():
            os.chmod(target, stat.S_IMODE(st.st_mode))
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _device_mode(dev: Device) -> int:
    kinds = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}
    if dev.type not in kinds:
        raise ValueError(f"linux.devices: {dev.path}: unknown type {dev.type!r}")
    return kinds[dev.type] | (dev.file_mode & 0o7777)


def create_device(rootfs: str, dev: Device) -> None:
    """mknod the device (bind the guest's node when mknod is not permitted)."""
    dest = secure_join(rootfs, dev.path)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    if os.path.lexists(dest):
        os.unlink(dest)
    try:
        os.mknod(dest, _device_mode(dev), os.makedev(dev.major, dev.minor))
    except PermissionError:
        with open(dest, "a"):
            pass
        linux.mount(dev.path, dest, "bind", linux.MS_BIND)
        return
    os.chown(dest, dev.uid, dev.gid)
    os.chmod(dest, dev.file_mode & 0o7777)


def setup_dev(rootfs: str, devices: Iterable[Device], default_devices: bool) -> None:
    """Devices, /dev/ptmx → pts/ptmx and the /proc/self/fd symlinks (runc setupDev)."""
    devices = tuple(devices)
    if default_devices:
        given = {d.path for d in devices}
        devices = tuple(d for d in DEFAULT_DEVICES if d.path not in given) + devices
    for dev in devices:
        create_device(rootfs, dev)
    dev_dir = secure_join(rootfs, "/dev")
    os.makedirs(dev_dir, exist_ok=True)
    ptmx = os.path.join(dev_dir, "ptmx")
    if os.path.isdir(os.path.join(dev_dir, "pts")):
        if os.path.lexists(ptmx):
            os.unlink(ptmx)
        os.symlink("pts/ptmx", ptmx)
    links = _DEV_SYMLINKS + ((("/proc/kcore", "core"),) if os.path.exists("/proc/kcore") else ())
    for target, name in links:
        link = os.path.join(dev_dir, name)
        if not os.path.lexists(link):
            os.symlink(target, link)


def pivot_root(rootfs: str) -> None:
    """runc's pivotRoot: pivot_root(".", "."), then lazily detach the old root."""
    old_root = os.open("/", os.O_DIRECTORY | os.O_RDONLY)
    new_root = os.open(rootfs, os.O_DIRECTORY | os.O_RDONLY)
    try:
        os.fchdir(new_root)
        linux.pivot_root(".", ".")
        os.fchdir(old_root)
        linux.mount(None, ".", None, linux.MS_SLAVE | linux.MS_REC)
        linux.umount2(".", linux.MNT_DETACH)
    finally:
        os.close(old_root)
        os.close(new_root)
    os.chdir("/")


def move_root(rootfs: str) -> None:
    """runc's msMoveRoot (no_pivot, e.g. an initramfs root): MS_MOVE + chroot."""
    os.chdir(rootfs)
    linux.mount(rootfs, "/", None, linux.MS_MOVE)
    os.chroot(".")
    os.chdir("/")


def mask_path(path: str) -> None:
    """Hide `path`: /dev/null over a file, an empty read-only tmpfs over a dir."""
    try:
        linux.mount("/dev/null", path, None, linux.MS_BIND)
    except FileNotFoundError:
        return
    except NotADirectoryError:
        linux.mount("tmpfs", path, "tmpfs", linux.MS_RDONLY)


def _preserved_flags(path: str) -> int:
    """The flags a bind remount of `path` must keep: a mount made outside a
    user namespace has them locked inside it (EPERM if one is dropped), and
    a remount must never lose nosuid/nodev/noexec anyway."""
    st_flags = os.statvfs(path).f_flag
    keep = 0
    for st_flag, ms_flag in ((os.ST_NOSUID, linux.MS_NOSUID), (os.ST_NODEV, linux.MS_NODEV),
                             (os.ST_NOEXEC, linux.MS_NOEXEC), (os.ST_NOATIME, linux.MS_NOATIME),
                             (os.ST_NODIRATIME, linux.MS_NODIRATIME),
                             (os.ST_RELATIME, linux.MS_RELATIME)):
        if st_flags & st_flag:
            keep |= ms_flag
    return keep


def readonly_path(path: str) -> None:
    """Bind `path` onto itself and remount it read-only (missing paths are skipped)."""
    try:
        linux.mount(path, path, None, linux.MS_BIND | linux.MS_REC)
    except FileNotFoundError:
        return
    flags = linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY | _preserved_flags(path)
    linux.mount(path, path, None, flags)


def readonly_root() -> None:
    """root.readonly: remount / read-only, keeping nosuid/nodev/noexec."""
    flags = linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY | _preserved_flags("/")
    linux.mount(None, "/", None, flags)
