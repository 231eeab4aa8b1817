"""Child reaping for the agent, which is PID 1 of the guest.

As PID 1 the agent must collect every orphan, yet the processes it started
itself (container launchers) need their exit status delivered to whoever
waits on them. So one reaper owns all waitpid() calls: nothing else in the
agent may wait for children (no Popen.wait — spawn with posix_spawn).

Mechanism: a no-op SIGCHLD handler plus `signal.set_wakeup_fd` makes the
interpreter write the signal number to a pipe; a reaper thread reads it and
runs `waitpid(-1, WNOHANG)` until no exited child is left. No locks are taken
in a signal handler (it would deadlock if the main thread held them). A child
that exits before anyone watches it keeps its status for a later `watch()`.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
from collections import OrderedDict

log = logging.getLogger(__name__)

UNCLAIMED_MAX = 4096       # statuses of exited, not-yet-watched children kept
SAFETY_POLL_S = 1.0        # reap even if a wakeup byte was lost


def exit_code(status: int) -> int:
    """Shell convention: the exit code, or 128+N when killed by signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


class Exit:
    """The future exit of one child."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._done = threading.Event()
        self.code: int | None = None

    def _set(self, code: int) -> None:
        self.code = code
        self._done.set()

    def wait(self, timeout_s: float | None = None) -> int | None:
        """The exit code (128+N for signal N), or None if still running at timeout."""
        self._done.wait(timeout_s)
        return self.code


class Reaper:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[int, Exit] = {}
        self._unclaimed: OrderedDict[int, int] = OrderedDict()
        self._rfd, self._wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="reaper", daemon=True)
        self._old_handler: object = None
        self._old_wakeup = -1

    def install(self) -> Reaper:
        """Start reaping (call from the main thread: it sets signal handling)."""
        self._old_handler = signal.signal(signal.SIGCHLD, lambda s, f: None)
        self._old_wakeup = signal.set_wakeup_fd(self._wfd, warn_on_full_buffer=False)
        self._thread.start()
        os.write(self._wfd, bytes([signal.SIGCHLD]))  # children that exited before
        return self

    def uninstall(self) -> None:
        signal.set_wakeup_fd(self._old_wakeup)
        signal.signal(signal.SIGCHLD, self._old_handler)  # type: ignore[arg-type]
        self._stopped.set()
        os.write(self._wfd, b"\0")
        self._thread.join(5)
        os.close(self._rfd)
        os.close(self._wfd)

    def watch(self, pid: int) -> Exit:
        """The Exit of child `pid` (which may already have exited)."""
        ex = Exit(pid)
        with self._lock:
            code = self._unclaimed.pop(pid, None)
            if code is None:
                self._watched[pid] = ex
        if code is not None:
            ex._set(code)
        return ex

    def _loop(self) -> None:
        while not self._stopped.is_set():
            ready, _, _ = select.select([self._rfd], [], [], SAFETY_POLL_S)
            if ready:
                try:
                    os.read(self._rfd, 512)
                except BlockingIOError:
                    pass
            self.reap()

    def reap(self) -> None:
        """Collect every exited child now."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = exit_code(status)
            with self._lock:
                ex = self._watched.pop(pid, None)
                if ex is None:
                    self._unclaimed[pid] = code
                    while len(self._unclaimed) > UNCLAIMED_MAX:
                        self._unclaimed.popitem(last=False)
            if ex is not None:
                ex._set(code)
            log.debug("reaped pid %d: exit %d", pid, code)
