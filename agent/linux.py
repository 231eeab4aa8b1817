"""Thin ctypes wrappers over the Linux syscalls the launcher needs.

Owns: unshare(2), setns(2), mount(2)/umount2(2), pivot_root(2), sethostname(2)/
setdomainname(2), capget(2)/capset(2) and the prctl(2) calls for the
capability bounding set, ambient set, PR_SET_KEEPCAPS and PR_SET_NO_NEW_PRIVS.
The guest runs Debian's Python 3.11, which has neither `os.unshare` nor
`os.setns` (3.12), so everything goes through libc. Every wrapper raises
OSError with errno and the object it acted on; it never decides policy (which
namespaces, which mounts) — that belongs to launcher.py and mounts.py.

Capability names and numbers follow linux/capability.h (what the OCI
runtime-spec `process.capabilities` lists name).
"""

from __future__ import annotations

import ctypes
import os

# The interpreter already has libc loaded; find_library("c") would run ldconfig.
_libc = ctypes.CDLL(None, use_errno=True)

# <sched.h> namespace flags (OCI linux.namespaces[].type → flag).
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACE_FLAGS = {
    "mount": CLONE_NEWNS,
    "cgroup": CLONE_NEWCGROUP,
    "uts": CLONE_NEWUTS,
    "ipc": CLONE_NEWIPC,
    "user": CLONE_NEWUSER,
    "pid": CLONE_NEWPID,
    "network": CLONE_NEWNET,
}

# <sys/mount.h>
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_UNBINDABLE = 0x20000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_RELATIME = 0x200000
MS_I_VERSION = 0x800000
MS_STRICTATIME = 0x1000000
MS_LAZYTIME = 0x2000000
MNT_DETACH = 0x2

SYS_PIVOT_ROOT = 155  # x86_64

# <sys/prctl.h>
PR_SET_PDEATHSIG = 1
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_KEEPCAPS = 8
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

_LINUX_CAPABILITY_VERSION_3 = 0x20080522

CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
CAPABILITY_NUMBERS = {name: number for number, name in enumerate(CAPABILITIES)}


def _check(result: int, what: str, path: str | None = None) -> int:
    """Raise OSError(errno) naming `path` (or the call) as its filename."""
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path or what)
    return result


def unshare(flags: int) -> None:
    """unshare(2): move this process into new namespaces."""
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2): join the namespace `fd` refers to (0 = any type)."""
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def _opt(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    """mount(2); errors name the target."""
    result = _libc.mount(_opt(source), os.fsencode(target), _opt(fstype),
                         ctypes.c_ulong(flags), _opt(data))
    _check(result, f"mount {fstype or source or ''} on {target}", target)


def umount2(target: str, flags: int = 0) -> None:
    """umount2(2)."""
    _check(_libc.umount2(os.fsencode(target), ctypes.c_int(flags)), f"umount {target}", target)


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2) (no libc wrapper: raw syscall 155 on x86_64)."""
    result = _libc.syscall(ctypes.c_long(SYS_PIVOT_ROOT), os.fsencode(new_root),
                           os.fsencode(put_old))
    _check(result, f"pivot_root {new_root}", new_root)


def sethostname(name: str) -> None:
    """sethostname(2) in the current UTS namespace."""
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), f"sethostname {name!r}")


def setdomainname(name: str) -> None:
    """setdomainname(2) in the current UTS namespace."""
    raw = name.encode()
    _check(_libc.setdomainname(raw, ctypes.c_size_t(len(raw))), f"setdomainname {name!r}")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2) with integer arguments."""
    result = _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                         ctypes.c_ulong(arg4), ctypes.c_ulong(arg5))
    return _check(result, f"prctl({option})")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def capability_mask(names: tuple[str, ...]) -> int:
    """Bit mask of capability names; unknown names raise ValueError (the host
    drops them from config.json with a warning, as runc does, before they get here)."""
    mask = 0
    for name in names:
        if name not in CAPABILITY_NUMBERS:
            raise ValueError(f"unknown capability {name!r}")
        mask |= 1 << CAPABILITY_NUMBERS[name]
    return mask


def capget() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) masks of this thread."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(header), ctypes.byref(data)), "capget")
    low, high = data[0], data[1]
    return (low.effective | (high.effective << 32), low.permitted | (high.permitted << 32),
            low.inheritable | (high.inheritable << 32))


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """capset(2) for this thread with 64-bit masks."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in (0, 1):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")


def last_capability() -> int:
    """Highest capability number the running kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return len(CAPABILITIES) - 1


def kernel_capabilities() -> int:
    """Mask of every capability the running kernel knows (runc ignores the others)."""
    return (1 << (last_capability() + 1)) - 1


def drop_bounding_except(keep: int) -> None:
    """PR_CAPBSET_DROP every capability not in the `keep` mask (needs CAP_SETPCAP)."""
    for number in range(last_capability() + 1):
        if not keep & (1 << number) and prctl(PR_CAPBSET_READ, number) == 1:
            prctl(PR_CAPBSET_DROP, number)


def set_ambient(mask: int) -> int:
    """Clear the ambient set, then raise each capability in `mask`; returns
    the mask of those the kernel refused with EPERM (not both permitted and
    inheritable, or SECBIT_NO_CAP_AMBIENT_RAISE), which stay lowered: runc
    raises them one by one and only warns about these."""
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    refused = 0
    for number in range(last_capability() + 1):
        if mask & (1 << number):
            try:
                prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, number)
            except PermissionError:
                refused |= 1 << number
    return refused


def capability_names(mask: int) -> list[str]:
    """The CAP_* names of the bits in `mask` (CAP_<n> for numbers past the table)."""
    return [CAPABILITIES[n] if n < len(CAPABILITIES) else f"CAP_{n}"
            for n in range(mask.bit_length()) if mask & (1 << n)]


def set_keepcaps(keep: bool) -> None:
    """PR_SET_KEEPCAPS: keep permitted caps across setuid away from 0."""
    prctl(PR_SET_KEEPCAPS, int(keep))


def set_no_new_privs() -> None:
    """PR_SET_NO_NEW_PRIVS (OCI process.noNewPrivileges)."""
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def set_parent_death_signal(signum: int) -> None:
    """PR_SET_PDEATHSIG."""
    prctl(PR_SET_PDEATHSIG, signum)
