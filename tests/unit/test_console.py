"""The --console-socket protocol and pty plumbing, end to end on the host."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from kata_py.console import get_winsize, open_pty, recv_console, send_console, set_winsize
from kata_py.errors import ResourceError


def test_master_sent_over_the_console_socket_drives_the_slave(tmp_path: Path) -> None:
    path = tmp_path / "console.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    received: dict[str, object] = {}

    def receive() -> None:
        conn, _ = listener.accept()
        with conn:
            received["fd"], received["name"] = recv_console(conn)

    t = threading.Thread(target=receive)
    t.start()
    pty = open_pty()
    send_console(path, pty.master, pty.name)
    t.join(5)
    master = received["fd"]
    assert isinstance(master, int) and received["name"] == pty.name
    assert received["name"].startswith("/dev/pts/")  # type: ignore[union-attr]
    # The received master is the same terminal: what it writes, the slave reads.
    os.close(pty.master)
    os.write(master, b"hello\n")
    assert os.read(pty.slave, 100) == b"hello\n"
    # And the size the receiver sets is what the monitor sees on its side.
    set_winsize(master, 33, 101)
    assert get_winsize(pty.slave) == (33, 101)
    os.close(master)
    os.close(pty.slave)
    listener.close()


def test_unreachable_console_socket_is_a_clear_error(tmp_path: Path) -> None:
    pty = open_pty()
    try:
        with pytest.raises(ResourceError, match="cannot send the terminal to console socket"):
            send_console(tmp_path / "nobody.sock", pty.master, pty.name)
    finally:
        pty.close()


def test_message_without_fd_is_refused() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.send(b"/dev/pts/9")
        with pytest.raises(ResourceError, match="carried no file descriptor"):
            recv_console(b)


def test_raw_mode_lasts_for_the_block_and_restores_the_terminal() -> None:
    import termios

    from kata_py.console import raw_mode

    pty = open_pty()
    try:
        before = termios.tcgetattr(pty.slave)
        assert before[3] & termios.ICANON and before[3] & termios.ECHO
        with pytest.raises(RuntimeError), raw_mode(pty.slave):
            during = termios.tcgetattr(pty.slave)
            raise RuntimeError("the relay failed")
        assert not during[3] & (termios.ICANON | termios.ECHO | termios.ISIG)
        assert not during[1] & termios.OPOST      # the guest's pty does the output processing
        assert termios.tcgetattr(pty.slave) == before
    finally:
        pty.close()
