"""Host-side dialer for the hybrid vsock backend's ``CONNECT`` handshake.

Owns the client half of the protocol served by ``muxer`` (Firecracker
docs/vsock.md, "host-initiated connections"): connect to the backend's unix
socket, send ``CONNECT <port>\\n``, read ``OK <host_port>\\n``. The backend
closes the socket instead when the guest resets the connection (nobody
listens on that port) or does not answer in time.
"""

from __future__ import annotations

import socket
import time


class VsockDialError(ConnectionError):
    """The guest port could not be reached through the backend's unix socket."""

    def __init__(self, uds_path: str, port: int, reason: str) -> None:
        super().__init__(f"vsock port {port} via {uds_path}: {reason}")
        self.uds_path = uds_path
        self.port = port


MAX_REPLY_BYTES = 64


def dial(uds_path: str, port: int, timeout_s: float) -> socket.socket:
    """A connected, blocking stream to guest ``port``; raises :class:`VsockDialError`.

    The returned socket has no timeout set. Bytes the guest sends right after
    accepting are not lost: the reply line is read one byte at a time.
    """
    deadline = time.monotonic() + timeout_s
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_s)
        try:
            sock.connect(uds_path)
            sock.sendall(f"CONNECT {port}\n".encode())
            line = _read_line(sock, deadline)
        except TimeoutError:
            raise VsockDialError(uds_path, port, f"no answer within {timeout_s:g} s") from None
        except OSError as e:
            raise VsockDialError(uds_path, port, f"backend socket error: {e}") from e
        if not line:
            raise VsockDialError(uds_path, port,
                                 "connection refused by the guest (reset or timed out)")
        words = line.split()
        if len(words) != 2 or words[0] != "OK" or not words[1].isdigit():
            raise VsockDialError(uds_path, port, f"unexpected reply {line!r}")
        sock.settimeout(None)
        return sock
    except BaseException:
        sock.close()
        raise


def _read_line(sock: socket.socket, deadline: float) -> str:
    """One ``\\n``-terminated line, or "" if the peer closed first."""
    buf = bytearray()
    while len(buf) < MAX_REPLY_BYTES:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        ch = sock.recv(1)
        if not ch:
            return ""
        if ch == b"\n":
            return buf.decode("ascii", "replace")
        buf += ch
    return buf.decode("ascii", "replace")
