"""The container's pid-file process (the holder), and the mount namespace
it gives the host in place of the container's.

Engines join the mount namespace of the pid in the pid file: podman's
`top` reads /proc there (psgo) and its `cp` copies to and from "/" there.
Under runc that is the container's own namespace. The monitor cannot be that
process: it mounts on the host and needs the host's /proc. (When it was,
`podman cp f CTR:/etc/x` on a running container wrote the host's /etc/x.)

So `create` forks the holder and the holder forks the monitor:

- The holder is the pid in the pid file, which conmon waits on. It
  forwards the signals it gets to the monitor and exits with the monitor's
  status, which is the container's (killed by the monitor's signal if the
  monitor was). Once the guest has made the container, it enters a mount
  namespace of its own (a slave of the host's, so nothing it mounts shows
  on the host) whose root is the container's rootfs with the engine's bind
  mounts at their destinations: the files the guest sees through
  virtio-fs, so `podman cp` reads and writes what the container does. Its
  /proc is the guest's processes (procview.py, served by the monitor over a
  /dev/fuse fd the monitor passes), its /dev an empty tmpfs (psgo looks for
  ttys there). A rootfs that is read-only in the container is read-only
  here too. tmpfs mounts exist only in the guest: `cp` into one writes
  the rootfs underneath it.
- The monitor is its child and dies with it (PR_SET_PDEATHSIG): `kill -9` of
  the pid ends the container's host side as it did when the monitor was that
  pid; `delete` finds the monitor from monitor.json and cleans up the rest.

The holder's Python imports nothing after it has entered the namespace:
its old root, and with it the interpreter's files, is gone from its view.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import platform
import select
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from kata_py import fuse
from kata_py.errors import ResourceError

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_SLAVE = 0x20, 0x1000, 0x4000, 1 << 19
MNT_DETACH = 0x2
PR_SET_PDEATHSIG = 1
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT)
ENTER_TIMEOUT_S = 10.0
MAX_LINKS = 40               # symlinks followed resolving a destination in the rootfs
NOT_SHOWN = ("/proc", "/sys", "/dev")   # the guest's own; binds below them are not shown

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


@dataclass(frozen=True)
class Bind:
    source: str          # on the host
    destination: str     # in the container
    readonly: bool


# ---- in create's forked child -------------------------------------------------

def split(notify_fd: int) -> int:
    """Fork the monitor off this process, which becomes the holder. Returns,
    in the monitor, the fd of its link to the holder; never returns in the holder."""
    holder_end, monitor_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    holder = os.getpid()
    pid = os.fork()
    if pid == 0:
        holder_end.close()
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != holder:          # it died before the prctl
            os._exit(1)
        return monitor_end.detach()
    monitor_end.close()
    os.close(notify_fd)                      # the monitor answers create
    try:
        _hold(pid, holder_end)
    finally:
        os._exit(1)      # never back into the caller: its code is the monitor's


def _hold(monitor: int, link: socket.socket) -> NoReturn:
    """The holder's life: serve the monitor's one request, forward signals,
    exit as the monitor did."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)                    # the container's stdio is the monitor's alone
    os.close(null)
    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, lambda signum, frame: _forward(monitor, signum))
    pidfd = os.pidfd_open(monitor)
    watched: list[int | socket.socket] = [pidfd, link]
    while pidfd not in select.select(watched, [], [])[0]:
        try:
            message, fds, _, _ = socket.recv_fds(link, 65536, 1)
        except OSError:
            message, fds = b"", []
        if not message:
            watched.remove(link)
            continue
        reply = _enter(message, fds)
        try:
            link.send(reply.encode())
        except OSError:
            pass
    _, status = os.waitpid(monitor, 0)
    if os.WIFSIGNALED(status):
        killed = os.WTERMSIG(status)
        if killed not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(killed, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [killed])
        os.kill(os.getpid(), killed)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _forward(monitor: int, signum: int) -> None:
    try:
        os.kill(monitor, signum)
    except ProcessLookupError:
        pass


def _enter(message: bytes, fds: list[int]) -> str:
    """`ok`, `ok noproc <why>` (no /proc view) or `error <why>`."""
    fuse_fd = fds[0] if fds else None
    try:
        request = json.loads(message)
        binds = [Bind(*b) for b in request["binds"]]
        why = enter(Path(request["rootfs"]), bool(request["readonly"]), binds, fuse_fd,
                    bool(request.get("own_net")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"error {exc}"
    finally:
        for fd in fds:
            os.close(fd)
    return f"ok noproc {why}" if why else "ok"


# ---- the namespace ------------------------------------------------------------

def _call(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    _call(_libc.mount(source.encode() if source else None, target.encode(),
                      fstype.encode() if fstype else None, flags,
                      data.encode() if data else None), f"mount {source or fstype} on {target}")


def in_root(root: Path, path: str) -> Path:
    """path inside root, its symlinks resolved inside root (never out of it)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = root.joinpath(*done, part)
        if candidate.is_symlink():
            links += 1
            if links > MAX_LINKS:
                raise OSError(40, f"too many symlinks in {path}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        done.append(part)
    return root.joinpath(*done)


def _shown(destination: str) -> bool:
    clean = "/" + "/".join(p for p in destination.split("/") if p)
    return not any(clean == top or clean.startswith(top + "/") for top in NOT_SHOWN)


def enter(rootfs: Path, readonly: bool, binds: list[Bind], fuse_fd: int | None,
          own_net: bool = False) -> str:
    """Make this process's mount namespace the container's stand-in (see the
    module docstring); with `own_net` (the spec asks for a new network
    namespace) an empty network namespace too: tools that configure the
    container's network through the pid after create (buildah) must not
    reach the host's. Returns why there is no /proc view, or "" when there
    is. An error leaves the process in a half-made namespace: the caller
    (the monitor) fails the create, which ends the holder."""
    _call(_libc.unshare(CLONE_NEWNS | (CLONE_NEWNET if own_net else 0)),
          "unshare the mount namespace")
    _mount(None, "/", None, MS_REC | MS_SLAVE)
    root = str(rootfs)
    _mount(root, root, None, MS_BIND | MS_REC)
    dev = in_root(rootfs, "/dev")
    if dev.is_dir():
        _mount("tmpfs", str(dev), "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=64k")
        (dev / "pts").mkdir()
    for b in binds:
        if not _shown(b.destination) or not os.path.exists(b.source):
            continue
        target = in_root(rootfs, b.destination)
        if not target.exists() or target.is_dir() != os.path.isdir(b.source):
            continue               # the guest made no mount point there
        _mount(b.source, str(target), None, MS_BIND | MS_REC)
        if b.readonly:
            _mount(None, str(target), None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC)
    no_proc = ""
    proc = in_root(rootfs, "/proc")
    if fuse_fd is None:
        no_proc = "no FUSE connection"
    elif not proc.is_dir():
        no_proc = f"the rootfs has no /proc directory ({proc})"
    else:
        try:
            fuse.mount(fuse_fd, proc, "kata-py-proc")
        except OSError as exc:
            no_proc = str(exc)
    if readonly:
        _mount(None, root, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    os.chdir(root)
    number = SYS_PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise OSError(0, f"pivot_root: unknown on {platform.machine()}")
    _call(_libc.syscall(number, b".", b"."), f"pivot_root to {root}")
    _call(_libc.umount2(b".", MNT_DETACH), "detach the host's root")
    os.chdir("/")
    return no_proc


# ---- in the monitor --------------------------------------------------------------

class HolderLink:
    """The monitor's end of the link to its holder."""

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.pid = os.getppid()

    def enter(self, rootfs: Path, readonly: bool, binds: list[Bind],
              fuse_fd: int | None, own_net: bool = False) -> str:
        """Have the holder enter the container's stand-in namespace; returns
        why there is no /proc view there ("" when there is one)."""
        message = json.dumps({"rootfs": str(rootfs), "readonly": readonly, "own_net": own_net,
                              "binds": [[b.source, b.destination, b.readonly] for b in binds]})
        try:
            socket.send_fds(self.sock, [message.encode()], [] if fuse_fd is None else [fuse_fd])
            self.sock.settimeout(ENTER_TIMEOUT_S)
            reply = self.sock.recv(65536).decode(errors="replace")
        except OSError as exc:
            reply = f"error {exc}"
        if not reply.startswith("ok"):
            raise ResourceError(f"cannot give the host a view of the container's root "
                                f"{rootfs}: {reply.removeprefix('error ') or 'the holder died'}",
                                "rerun with --debug and report it; this is a kata-py bug")
        return reply.removeprefix("ok").removeprefix(" noproc ").strip()
