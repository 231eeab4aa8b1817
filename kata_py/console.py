"""Host terminals for containers with `process.terminal`: the pty the monitor
allocates and the `--console-socket` protocol runc established.

Protocol (runc's, which conmon and containerd speak): connect a SOCK_STREAM
unix socket to the console socket path and send one message whose payload
is the terminal's name and whose SCM_RIGHTS control message carries the pty
*master* fd. The receiver (conmon) then owns the master; the monitor keeps the
slave and relays it to the guest process's terminal, forwarding window-size
changes (the slave is the monitor's controlling terminal, so it gets SIGWINCH).
A foreground `exec -t` uses the caller's own terminal instead, in raw mode.
"""

from __future__ import annotations

import array
import fcntl
import os
import socket
import struct
import termios
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kata_py.errors import ResourceError

MAX_NAME_BYTES = 4096


@dataclass(frozen=True)
class Pty:
    master: int
    slave: int
    name: str           # the slave's path, e.g. /dev/pts/3

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


def open_pty() -> Pty:
    """A new pty pair (both ends close-on-exec)."""
    master, slave = os.openpty()
    os.set_inheritable(master, False)
    os.set_inheritable(slave, False)
    return Pty(master, slave, os.ttyname(slave))


def send_console(socket_path: Path, master_fd: int, name: str) -> None:
    """Hand the pty master to whoever listens on socket_path (runc's protocol)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(socket_path))
            fds = array.array("i", [master_fd])
            sock.sendmsg([name.encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
    except OSError as exc:
        raise ResourceError(f"cannot send the terminal to console socket {socket_path}: "
                            f"{exc.strerror or exc}",
                            "check that --console-socket names a listening unix socket") from exc


def recv_console(conn: socket.socket) -> tuple[int, str]:
    """Receive (master fd, terminal name) from an accepted console-socket connection."""
    fds = array.array("i")
    msg, ancdata, _, _ = conn.recvmsg(MAX_NAME_BYTES, socket.CMSG_LEN(fds.itemsize))
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    if not fds:
        raise ResourceError("the console socket message carried no file descriptor",
                            "the sender must pass the pty master with SCM_RIGHTS")
    return fds[0], msg.decode(errors="replace")


def get_winsize(fd: int) -> tuple[int, int]:
    """(rows, columns) of the terminal on fd."""
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(8)))
    return rows, cols


def set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


@contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """The terminal on fd in raw mode for as long as the block runs, then as
    it was: a foreground `exec -t` hands the caller's keys to the guest's pty
    untouched, as runc does with its own terminal."""
    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSANOW)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
