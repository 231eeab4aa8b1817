"""A byte relay between a listening socket and a dialled one.

Why: the grpcio wheels on PyPI are built without vsock support ("VSOCK is
not supported" from add_insecure_port), so gRPC cannot listen on, or dial,
AF_VSOCK itself. The agent's gRPC server listens on a guest-local unix
socket and this relay accepts on vsock port 1024 and connects each
connection through; the host uses the same relay the other way round for
kernel vhost-vsock (unix listener → AF_VSOCK dial).

One thread accepts; each connection gets two pump threads (one per
direction) doing blocking recv/sendall and propagating half-close with
shutdown(SHUT_WR); an error on either side shuts both down. gRPC keeps
one long-lived connection, so this is a handful of threads, not one per RPC.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

CHUNK_BYTES = 256 * 1024


def _pump(src: socket.socket, dst: socket.socket, done: Callable[[], None]) -> None:
    try:
        while True:
            data = src.recv(CHUNK_BYTES)
            if not data:
                break
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError as exc:
        # A broken side ends both directions: the other pump, blocked in
        # recv(), wakes up, and the peer sees the connection end instead of
        # an RPC waiting out its deadline.
        log.debug("relay pump ended: %s", exc)
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
    finally:
        done()


class Relay:
    """Accept on `listener`; for each connection, call `dial()` and pump bytes."""

    def __init__(self, listener: socket.socket, dial: Callable[[], socket.socket],
                 name: str = "relay") -> None:
        self.listener = listener
        self.dial = dial
        self.name = name
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name=name, daemon=True)

    def start(self) -> Relay:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                if not self._closed.is_set():
                    log.exception("%s: accept failed", self.name)
                return
            try:
                peer = self.dial()
            except OSError as exc:
                log.warning("%s: cannot connect through: %s", self.name, exc)
                conn.close()
                continue
            self._join(conn, peer)

    def _join(self, a: socket.socket, b: socket.socket) -> None:
        remaining = [2]
        lock = threading.Lock()

        def done() -> None:
            with lock:
                remaining[0] -= 1
                if remaining[0] == 0:
                    a.close()
                    b.close()

        for src, dst in ((a, b), (b, a)):
            threading.Thread(target=_pump, args=(src, dst, done), daemon=True,
                             name=f"{self.name}-pump").start()


def listen_vsock(port: int, cid: int = socket.VMADDR_CID_ANY) -> socket.socket:
    sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    sock.bind((cid, port))
    sock.listen(16)
    return sock


def listen_unix(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(16)
    return sock


def dial_unix(path: str) -> Callable[[], socket.socket]:
    def dial() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        return sock
    return dial


def dial_vsock(cid: int, port: int) -> Callable[[], socket.socket]:
    def dial() -> socket.socket:
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        try:
            sock.connect((cid, port))
        except OSError:
            sock.close()
            raise
        return sock
    return dial
