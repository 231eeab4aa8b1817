"""The launcher zygote: a process forked from the agent before it starts any
thread or imports gRPC, which imports the container launcher once and then
forks a ready launcher for each create and exec.

Why: under TCG a fresh `python3 -m kata_py.agent.launcher` spends ~1 s of
every create and exec starting the interpreter and importing its modules.
A fork of a process that has them already costs milliseconds. The agent
itself may not fork (it is multi-threaded), so the fork is done by this
single-threaded process, which gRPC never touched: the pattern of Android's
zygote and of crun's/runc's re-exec'd init, without the exec.

Protocol (SOCK_SEQPACKET pair, one request at a time):
    agent → zygote: the child's target fd numbers (uint32 each), with the fds
                    themselves in SCM_RIGHTS, in the same order;
    zygote → agent: "pid <N>" once the launcher runs, or "error <text>".

The zygote double-forks: its short-lived intermediate child forks the
launcher and exits at once, so the launcher is re-parented to the agent
(PID 1, or a child subreaper) and the agent's reaper (agent/reaper.py) gets
its exit status, exactly as for a posix_spawn()ed launcher. The launcher
starts in a new session with the agent's launcher environment and only its
target fds open, then runs `launcher.main(["--config-fd", N])`.

If the zygote is gone or does not answer, the agent falls back to
posix_spawn (agent/containers.py), so a broken zygote costs time, not
containers.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import sys
import threading
from collections.abc import Callable

REQUEST_MAX_FDS = 16
REPLY_TIMEOUT_S = 30.0      # the first request may wait for the zygote's imports
FD_LIMIT = 4096


class ZygoteError(Exception):
    """The zygote cannot serve; the caller falls back to posix_spawn."""


def _serve(sock: socket.socket, env: dict[str, str], config_fd: int) -> None:
    """The zygote's loop: single-threaded, never returns."""
    from kata_py.agent import launcher  # the point of the zygote: imported once
    launcher.preload()
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(sock, 4 * REQUEST_MAX_FDS, REQUEST_MAX_FDS)
        except OSError:
            os._exit(0)
        if not data:          # the agent closed its end
            os._exit(0)
        targets = list(struct.unpack(f"={len(data) // 4}I", data))
        try:
            fd_map = dict(zip(targets, fds, strict=True))   # ValueError on a mismatch
            pid = _fork_launcher(sock, fd_map, env, config_fd, launcher.main)
            reply = f"pid {pid}"
        except Exception as exc:  # noqa: BLE001 - reported to the agent, which falls back
            reply = f"error {type(exc).__name__}: {exc}"
        finally:
            for fd in fds:
                os.close(fd)
        sock.send(reply.encode())


def _fork_launcher(sock: socket.socket, fds: dict[int, int], env: dict[str, str],
                   config_fd: int, main: Callable[[list[str]], int]) -> int:
    """Double fork; the launcher's pid (the intermediate is reaped here)."""
    r, w = os.pipe()
    intermediate = os.fork()
    if intermediate == 0:
        try:
            os.close(r)
            pid = os.fork()
            if pid == 0:
                os.close(w)
                _become_launcher(sock, fds, env, config_fd, main)
            os.write(w, struct.pack("=i", pid))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        raw = f.read(4)
    os.waitpid(intermediate, 0)
    if len(raw) != 4:
        raise ZygoteError("the intermediate process died before forking the launcher")
    return int(struct.unpack("=i", raw)[0])


def _become_launcher(sock: socket.socket, fds: dict[int, int], env: dict[str, str],
                     config_fd: int, main: Callable[[list[str]], int]) -> None:
    """In the launcher: the fds, session and environment posix_spawn would give."""
    code = 1
    try:
        sock.close()
        os.setsid()
        # Copy every received fd above the targets first, so no dup2 below
        # overwrites a source still needed; then close all but the targets.
        base = max(fds) + 1
        high = {target: fcntl.fcntl(fd, fcntl.F_DUPFD, base) for target, fd in fds.items()}
        for target, fd in high.items():
            os.dup2(fd, target, inheritable=True)
        for fd in range(base):
            if fd not in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
        os.closerange(base, FD_LIMIT)
        os.environ.clear()
        os.environ.update(env)
        code = main(["--config-fd", str(config_fd)])
    except BaseException as exc:  # noqa: BLE001 - must never return into the zygote's loop
        try:
            print(f"kata-py launcher (zygote): {type(exc).__name__}: {exc}", file=sys.stderr)
        except BaseException:  # noqa: BLE001
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


class Zygote:
    """The agent's handle on its zygote."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self._sock = sock
        self._lock = threading.Lock()
        self.broken: str | None = None

    @classmethod
    def fork(cls, env: dict[str, str], config_fd: int) -> Zygote:
        """Fork the zygote. Call before any thread starts (fork-safety)."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            try:
                parent.close()
                _serve(child, env, config_fd)
            finally:
                os._exit(1)
        child.close()
        parent.settimeout(REPLY_TIMEOUT_S)
        return cls(pid, parent)

    def spawn(self, fds: dict[int, int]) -> int:
        """Fork a launcher with `fds` (target → fd) and return its pid."""
        with self._lock:
            if self.broken:
                raise ZygoteError(self.broken)
            try:
                targets = struct.pack(f"={len(fds)}I", *fds)
                socket.send_fds(self._sock, [targets], list(fds.values()))
                reply = self._sock.recv(256).decode(errors="replace")
            except OSError as exc:
                self.broken = f"the zygote does not answer ({exc})"
                self._sock.close()
                raise ZygoteError(self.broken) from exc
        kind, _, value = reply.partition(" ")
        if kind == "pid" and value.isdigit():
            return int(value)
        if not reply:
            self.broken = "the zygote exited"
            raise ZygoteError(self.broken)
        raise ZygoteError(value or reply)
