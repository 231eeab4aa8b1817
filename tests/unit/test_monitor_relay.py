"""The monitor's relay with a fake agent: the guest pty follows the host
terminal's size, in order, and a host terminal not sized yet never shrinks
the guest pty to 0x0."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kata_py import monitor
from kata_py.console import open_pty, set_winsize
from kata_py.hypervisor.process import ProcessRef
from kata_py.state import ContainerState, StateStore, now_rfc3339


class FakeAgent:
    """Just enough of AgentClient for relay(): no output, exit status 0 once
    `done` is set. resize_tty applies a size when it returns, as the agent
    does; `during_first_resize` runs inside the first one, to change the
    host terminal's size while that RPC is in flight."""

    def __init__(self) -> None:
        self.applied: list[tuple[int, int]] = []
        self.in_flight = 0
        self.overlapped = False
        self.done = threading.Event()
        self.during_first_resize: list[object] = []

    def read_output(self, *args: object, **kwargs: object) -> bytes:
        return b""

    def write_stdin(self, *args: object, **kwargs: object) -> int:
        return 0

    def close_stdin(self, *args: object, **kwargs: object) -> None:
        pass

    def signal_process(self, *args: object, **kwargs: object) -> None:
        pass

    def wait_process(self, cid: str, timeout_s: float, exec_id: str = "") -> int | None:
        return 0 if self.done.wait(min(timeout_s, 0.1)) else None

    def resize_tty(self, cid: str, rows: int, cols: int, exec_id: str = "") -> None:
        self.in_flight += 1
        self.overlapped |= self.in_flight > 1
        if len(self.applied) == 0 and self.during_first_resize:
            action = self.during_first_resize.pop()
            assert callable(action)
            action()
            time.sleep(0.5)            # a slow VM: the RPC is still in flight
        self.applied.append((rows, cols))
        self.in_flight -= 1


@pytest.fixture
def handlers() -> Iterator[None]:
    """relay() installs signal handlers in this (main) thread: put them back."""
    saved = {sig: signal.getsignal(sig) for sig in (*monitor.FORWARDED_SIGNALS, signal.SIGWINCH)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _relay_until(agent: FakeAgent, tty: int, settled: float) -> int:
    def finish() -> None:
        time.sleep(settled)
        agent.done.set()

    threading.Thread(target=finish, daemon=True).start()
    return monitor.relay(agent, "c1", tty=tty)  # type: ignore[arg-type]


def test_the_guest_ends_at_the_latest_size_when_resizes_race(handlers: None) -> None:
    pty = open_pty()
    try:
        set_winsize(pty.master, 24, 80)
        agent = FakeAgent()

        def user_resizes() -> None:
            set_winsize(pty.master, 40, 100)
            os.kill(os.getpid(), signal.SIGWINCH)   # what the kernel sends the monitor

        agent.during_first_resize.append(user_resizes)
        assert _relay_until(agent, pty.slave, settled=2.0) == 0
        assert agent.applied[-1] == (40, 100), agent.applied
        assert not agent.overlapped, "resizes must reach the agent one at a time"
    finally:
        pty.close()


def test_an_unsized_host_terminal_leaves_the_guest_pty_alone(handlers: None) -> None:
    pty = open_pty()
    try:
        agent = FakeAgent()
        assert _relay_until(agent, pty.slave, settled=0.5) == 0
        assert agent.applied == []
    finally:
        pty.close()


class StartAgent:
    def __init__(self) -> None:
        self.calls: list[object] = []

    def resize_tty(self, cid: str, rows: int, cols: int, exec_id: str = "") -> None:
        self.calls.append(("resize", rows, cols))

    def start_container(self, cid: str) -> None:
        self.calls.append("start")


@pytest.mark.parametrize("size", [(30, 100), (0, 0)])
def test_start_gives_the_guest_pty_a_size_the_engine_set_before(
        size: tuple[int, int], tmp_path: Path) -> None:
    """podman resizes conmon's end before or just after it starts; a size that
    is there goes to the guest before the process runs (as with runc's pty);
    and the monitor records the start itself."""
    pty = open_pty()
    try:
        if size != (0, 0):
            set_winsize(pty.master, *size)
        agent = StartAgent()
        s = monitor.Monitor.__new__(monitor.Monitor)
        s.cid, s.tty = "c1", pty.slave
        s.sandbox = type("FakeSandbox", (), {"agent": agent})()  # type: ignore[assignment]
        s.store = StateStore(tmp_path)
        me = ProcessRef.of(os.getpid())
        s.store.create(ContainerState(id="c1", bundle="/b", rootfs="/b/r", status="created",
                                      created=now_rfc3339(), pid=me.pid,
                                      pid_start_time=me.start_time))
        s._start()
        assert agent.calls == ([("resize", *size), "start"] if size != (0, 0) else ["start"])
        assert s.store.load("c1").status == "running"
    finally:
        os.close(pty.master)
        os.close(pty.slave)


class TypingAgent(FakeAgent):
    """A process that prints one line and exits once it has read stdin."""

    def __init__(self) -> None:
        super().__init__()
        self.output = [b"from the guest\r\n"]
        self.stdin = b""

    def read_output(self, cid: str, stream: str, **kwargs: object) -> bytes:
        return self.output.pop() if stream == "stdout" and self.output else b""

    def write_stdin(self, cid: str, data: bytes, exec_id: str = "") -> int:
        self.stdin += data
        self.done.set()
        return len(data)


def test_a_terminal_relay_can_write_its_output_to_stdout_as_exec_t_does(
        handlers: None) -> None:
    """A foreground `exec -t` reads the caller's terminal (stdin) and writes
    to stdout, which may be a file, as runc's does."""
    pty = open_pty()
    read_end, write_end = os.pipe()
    try:
        os.write(pty.master, b"typed\n")
        agent = TypingAgent()
        code = monitor.relay(agent, "c1", "e1", tty=pty.slave,  # type: ignore[arg-type]
                          tty_output=write_end)
        assert code == 0
        assert os.read(read_end, 100) == b"from the guest\r\n"
        assert agent.stdin == b"typed\n"
    finally:
        pty.close()
        os.close(read_end)
        os.close(write_end)
