"""Host processes kata-py starts and must be able to stop later: identity by
pid *and* start time (so a reused pid is never signalled), liveness, and the
stop ladder SIGTERM → SIGKILL → wait.

The processes may be our children (started in this process) or not (seen
by a later `kata-py` invocation), so liveness reads /proc rather than
relying on waitpid, and reaps when the process is our child.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# util-linux (Essential in Debian): prctl(PR_SET_PDEATHSIG), then exec.
DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "KILL", "--")
POLL_INTERVAL_S = 0.01
PIDFD_WAIT_CAP_S = 0.2
TERM_TIMEOUT_S = 2.0
KILL_TIMEOUT_S = 2.0


def read_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22)."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces and parentheses.
    return raw[raw.rindex(")") + 2:].split()


@dataclass(frozen=True)
class ProcessRef:
    """A process we started, identified by pid and start time."""

    pid: int
    start_time: int
    name: str = ""

    @classmethod
    def of(cls, pid: int, name: str = "") -> ProcessRef:
        start = read_start_time(pid)
        if start is None:
            raise ProcessLookupError(f"{name or 'process'} {pid} is not running")
        return cls(pid, start, name)

    def alive(self) -> bool:
        """Running (not a zombie) and still the same process as when recorded."""
        fields = _stat_fields(self.pid)
        if fields is None or int(fields[19]) != self.start_time:
            return False
        if fields[0] in ("Z", "X"):
            _reap(self.pid)
            return False
        return True

    def signal(self, sig: int) -> bool:
        """Send `sig` if this is still our process; False when it is gone."""
        if not self.alive():
            return False
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def wait(self, timeout_s: float) -> bool:
        """Wait until the process is gone; True if it went within timeout_s.
        On a pidfd when one can be had (any process, not only our children),
        which wakes at the exit instead of at the next 10 ms poll."""
        deadline = time.monotonic() + timeout_s
        if not self.alive():
            return True
        try:
            pidfd = os.pidfd_open(self.pid)
        except OSError:
            pidfd = -1
        try:
            while self.alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if pidfd >= 0:
                    # capped: the pid may have been reused before the open
                    select.select([pidfd], [], [], min(left, PIDFD_WAIT_CAP_S))
                else:
                    time.sleep(POLL_INTERVAL_S)
            return True
        finally:
            if pidfd >= 0:
                os.close(pidfd)

    def stop(self, term_timeout_s: float = TERM_TIMEOUT_S,
             kill_timeout_s: float = KILL_TIMEOUT_S) -> None:
        """SIGTERM, then SIGKILL if it does not go; logs what it had to do."""
        if not self.signal(signal.SIGTERM):
            return
        if self.wait(term_timeout_s):
            return
        log.warning("%s (pid %d) ignored SIGTERM for %.1fs; sending SIGKILL",
                    self.name or "process", self.pid, term_timeout_s)
        self.signal(signal.SIGKILL)
        if not self.wait(kill_timeout_s):
            log.error("%s (pid %d) survived SIGKILL", self.name or "process", self.pid)

    def to_json(self) -> dict[str, object]:
        return {"pid": self.pid, "start_time": self.start_time, "name": self.name}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> ProcessRef:
        return cls(int(str(data["pid"])), int(str(data["start_time"])), str(data.get("name", "")))


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# An abort raised by a signal handler (the monitor's, while a create runs) is
# held while the main thread starts a daemon and hands it to its owner:
# raised between the fork and that hand-over, it would leave the daemon
# running where no teardown looks for it.
_hold_depth = 0
_held_abort: BaseException | None = None


def raise_abort(exc: BaseException) -> None:
    """For a signal handler: raise exc now, or, while a daemon is being
    started, as soon as its owner has it."""
    global _held_abort
    if _hold_depth:
        _held_abort = exc
        return
    raise exc


@contextmanager
def _aborts_held() -> Iterator[None]:
    global _hold_depth, _held_abort
    if threading.current_thread() is not threading.main_thread():
        yield                 # signal handlers run only in the main thread
        return
    held: BaseException | None = None
    _hold_depth += 1
    try:
        yield
    finally:
        _hold_depth -= 1
        if not _hold_depth:
            held, _held_abort = _held_abort, None
    if held is not None:
        raise held


def spawn_daemon(argv: list[str], log_path: Path, name: str, pass_fds: tuple[int, ...] = (),
                 on_start: Callable[[ProcessRef], None] | None = None,
                 ) -> tuple[subprocess.Popen[bytes], ProcessRef]:
    """Start a helper daemon (QEMU, virtiofsd, the vsock backend) in its own
    session, stdout/stderr to log_path, killed when the calling thread ends.

    Own session: it must not get the terminal's signals; the sandbox stops
    it explicitly. Parent-death signal (SIGKILL, set by setpriv before it
    execs the daemon: no preexec_fn, which is unsafe once threads run): when
    the process that owns the sandbox dies, even by SIGKILL, its VM and
    daemons go with it instead of running on unseen by `state` and `delete`.
    The kernel ties it to the *thread* that forks, so a sandbox must be
    started from a thread that outlives it (the monitor's main thread).

    `on_start` receives the process before an abort (raise_abort) can
    unwind past it: the owner's teardown then finds it.
    """
    with _aborts_held():
        with open(log_path, "ab") as out:
            proc = subprocess.Popen([*DIE_WITH_PARENT, *argv], stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=out, start_new_session=True,
                                    pass_fds=pass_fds, close_fds=True)
        try:
            ref = ProcessRef.of(proc.pid, name)
        except ProcessLookupError:
            proc.wait()
            ref = ProcessRef(proc.pid, -1, name)
        if on_start is not None:
            on_start(ref)
    log.debug("started %s pid %d: %s", name, proc.pid, " ".join(argv))
    return proc, ref


def log_tail(path: Path, lines: int = 10) -> str:
    """The last lines of a log file, for error messages ('' if unreadable)."""
    try:
        data = path.read_bytes()[-8192:]
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])
