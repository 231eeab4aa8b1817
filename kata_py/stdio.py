"""The stdio relay of the lifecycle core: host file descriptors joined to one
process in the guest over the agent — its stdout and stderr copied out, the
host's input copied in — and the process's exit status once its output is
drained.

Thread-safe and free of signal handlers, so one server can relay many
containers and execs at once (the containerd shim); forwarding signals and
following a terminal's size belong to the front end that owns a terminal
(the runc front end's monitor, kata_py/monitor.py).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from kata_py.errors import KataError

if TYPE_CHECKING:
    from kata_py.container import GuestAgent

log = logging.getLogger(__name__)

WAIT_SLICE_S = 60.0
DRAIN_WAIT_S = 10.0
READ_MAX_BYTES = 1 << 20   # per ReadStdout/ReadStderr: fewer round trips through the VM
INPUT_CHUNK = 64 * 1024
AGENT_GONE_EXIT = 255      # the exit status when the agent (the VM) went away first

Opener = Callable[[], int]   # returns an fd; may block (a FIFO waits for its other end)


def copy_out(agent: GuestAgent, cid: str, exec_id: str, stream: str, fd: int | Opener,
             release: bool = False) -> None:
    """Copy the process's `stream` ("stdout"/"stderr") to fd until EOF. An
    opener is called here, on this thread, and its fd closed at the end. At
    EOF, with `release`, fd stops referring to the caller's file (/dev/null
    takes its number, which must not be reused): runc passes the caller's
    stdio through, so the caller sees EOF as soon as the container's process
    has closed it, even while that process runs on."""
    name = exec_id or cid
    owned = callable(fd)
    try:
        target = fd() if callable(fd) else fd
    except OSError as exc:
        log.warning("%s of %s: cannot open its destination: %s", stream, name, exc)
        return
    try:
        while True:
            try:
                data = agent.read_output(cid, stream, timeout_s=WAIT_SLICE_S,
                                         max_bytes=READ_MAX_BYTES, exec_id=exec_id)
            except KataError as exc:
                log.info("%s of %s: no more output: %s", stream, name, exc)
                return
            if data is None:
                continue
            if not data:
                break
            try:
                os.write(target, data)
            except OSError as exc:
                log.info("%s of %s: the reader went away: %s", stream, name, exc)
                return
        if release and not owned:
            null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.dup2(null, target)
            finally:
                os.close(null)
    finally:
        if owned:
            os.close(target)


def copy_in(agent: GuestAgent, cid: str, exec_id: str, fd: int | Opener) -> None:
    """Copy fd to the process's stdin until EOF, then close it in the guest."""
    name = exec_id or cid
    owned = callable(fd)
    try:
        source = fd() if callable(fd) else fd
    except OSError as exc:
        log.warning("stdin of %s: cannot open its source: %s", name, exc)
        return
    try:
        while data := os.read(source, INPUT_CHUNK):
            agent.write_stdin(cid, data, exec_id)
    except (OSError, KataError) as exc:
        log.info("stdin of %s: stopped: %s", name, exc)
    finally:
        if owned:
            os.close(source)
    try:
        agent.close_stdin(cid, exec_id)
    except KataError as exc:
        log.info("stdin of %s: not closed in the guest: %s", name, exc)


class Relay:
    """One process's stdio and exit. Any of the fds may be None (not
    relayed); an `Opener` is opened on the pump's own thread."""

    def __init__(self, agent: GuestAgent, cid: str, exec_id: str = "",
                 stdin: int | Opener | None = None, stdout: int | Opener | None = None,
                 stderr: int | Opener | None = None, release: bool = False) -> None:
        self.agent, self.cid, self.exec_id = agent, cid, exec_id
        self._outputs = [threading.Thread(
            target=copy_out, args=(agent, cid, exec_id, stream, fd, release), daemon=True,
            name=f"{stream}-{exec_id or cid}")
            for stream, fd in (("stdout", stdout), ("stderr", stderr)) if fd is not None]
        self._input = None if stdin is None else threading.Thread(
            target=copy_in, args=(agent, cid, exec_id, stdin), daemon=True,
            name=f"stdin-{exec_id or cid}")

    def start(self) -> None:
        for t in self._outputs:
            t.start()
        if self._input is not None:
            self._input.start()

    def wait(self) -> int:
        """Block until the process exits and its output is drained; its exit
        status (128+N for signal N), or AGENT_GONE_EXIT when the agent went
        away first."""
        code: int | None = None
        while code is None:
            try:
                code = self.agent.wait_process(self.cid, WAIT_SLICE_S, self.exec_id)
            except KataError as exc:
                log.warning("agent gone while waiting for %s: %s", self.exec_id or self.cid,
                            exc)
                return AGENT_GONE_EXIT
        for t in self._outputs:
            t.join(DRAIN_WAIT_S)
        return code
