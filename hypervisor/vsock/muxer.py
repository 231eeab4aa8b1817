"""Host side of the vsock device: guest streams ⇄ unix sockets ("hybrid vsock").

Mirrors Firecracker's hybrid vsock (docs/vsock.md) on top of
:class:`~kata_py.hypervisor.vsock.connection.Connection`:

- host → guest, main listener ``--uds PATH``: a client connects, writes
  ``CONNECT <port>\\n`` and reads ``OK <host_port>\\n`` once the guest answered
  our REQUEST with RESPONSE; on RST or timeout the socket is just closed.
- host → guest, per-port listeners ``--listen PORT=PATH``: connecting to PATH
  means "connect to guest port PORT", no handshake; bytes written before the
  guest answers are buffered (bounded) and delivered after RESPONSE.
- guest → host: a REQUEST to CID 2 port P connects to ``<uds PATH>_<P>``; if
  nobody listens there the guest gets RST.

Host-side ports of host-initiated streams are allocated from 2**30 upward and
never reused while live. The muxer registers its sockets in the caller's
``selectors`` selector (``key.data`` is a callback taking the event mask); it
never touches virtqueues: the backend pulls packets with
:meth:`Muxer.next_rx_packet` and pushes guest packets with :meth:`Muxer.recv`.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import logging
import os
import selectors
import socket
import stat
import time
from collections.abc import Callable

from .connection import Connection, State
from .packet import HOST_CID, TYPE_STREAM, Header, Op, Packet

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
HANDSHAKE_TIMEOUT_S = 10.0
HANDSHAKE_MAX_BYTES = 64
FIRST_HOST_PORT = 1 << 30
MAX_CONTROL_PACKETS = 1024
ACCEPT_BATCH = 16

Key = tuple[int, int]  # (host port, guest port)


class SocketInUseError(OSError):
    """A listener path is taken by a live socket or by a non-socket file."""


def listen_unix(path: str, backlog: int = 64) -> socket.socket:
    """Bind and listen on ``path``; a stale socket file (nobody listening) is replaced."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise SocketInUseError(errno.EADDRINUSE, f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale: its listener is gone
        else:
            raise SocketInUseError(errno.EADDRINUSE, f"socket {path} is in use by another process")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"cannot listen on {path}: {e.strerror}") from e
    return sock


@dataclasses.dataclass(eq=False)
class _Stream:
    sock: socket.socket
    conn: Connection
    announce: bool  # main-listener client: write "OK <port>\n" on RESPONSE
    deadline: float | None
    preamble: bytearray = dataclasses.field(default_factory=bytearray)
    events: int = 0


@dataclasses.dataclass(eq=False)
class _Handshake:
    sock: socket.socket
    deadline: float
    buf: bytearray = dataclasses.field(default_factory=bytearray)


class Muxer:
    """All host sockets of one vsock device, multiplexed onto guest streams."""

    def __init__(
        self,
        selector: selectors.BaseSelector,
        guest_cid: int,
        uds_path: str,
        port_listeners: dict[int, str] | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self._sel = selector
        self.guest_cid = guest_cid
        self.uds_path = uds_path
        self._connect_timeout_s = connect_timeout_s
        self._streams: dict[Key, _Stream] = {}
        self._handshakes: dict[socket.socket, _Handshake] = {}
        self._rx_ready: collections.OrderedDict[Key, None] = collections.OrderedDict()
        self._control: collections.deque[Packet] = collections.deque()
        self._next_port = FIRST_HOST_PORT
        self._listeners: list[tuple[socket.socket, str]] = []
        try:
            self._listen(uds_path, self._accept_main)
            for port, path in (port_listeners or {}).items():
                self._listen(path, self._port_acceptor(port))
        except BaseException:
            self.close()
            raise

    def _listen(self, path: str, on_accept: Callable[[socket.socket], None]) -> None:
        sock = listen_unix(path)
        self._listeners.append((sock, path))
        self._sel.register(sock, selectors.EVENT_READ, lambda _ev: self._accept(sock, on_accept))

    def close(self) -> None:
        """Close every socket and unlink the listener paths we created."""
        for st in list(self._streams.values()):
            self._drop(st)
        for hs in list(self._handshakes.values()):
            self._drop_handshake(hs)
        for sock, path in self._listeners:
            self._sel.unregister(sock)
            sock.close()
            try:
                os.unlink(path)
            except OSError as e:
                log.warning("cannot remove %s: %s", path, e)
        self._listeners = []

    # ---- accepting host clients --------------------------------------------

    def _accept(self, listener: socket.socket, on_accept: Callable[[socket.socket], None]) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.error("accept failed: %s", e)
                return
            sock.setblocking(False)
            on_accept(sock)

    def _accept_main(self, sock: socket.socket) -> None:
        hs = _Handshake(sock, time.monotonic() + HANDSHAKE_TIMEOUT_S)
        self._handshakes[sock] = hs
        self._sel.register(sock, selectors.EVENT_READ, lambda _ev: self._read_handshake(hs))

    def _port_acceptor(self, port: int) -> Callable[[socket.socket], None]:
        def accept(sock: socket.socket) -> None:
            self._open_host_stream(sock, port, b"", announce=False)

        return accept

    def _read_handshake(self, hs: _Handshake) -> None:
        if self._handshakes.get(hs.sock) is not hs:
            return
        try:
            data = hs.sock.recv(HANDSHAKE_MAX_BYTES - len(hs.buf))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            log.info("host client went away during CONNECT: %s", e)
            data = b""
        if not data:
            self._drop_handshake(hs)
            return
        hs.buf += data
        line, sep, rest = bytes(hs.buf).partition(b"\n")
        if not sep:
            if len(hs.buf) >= HANDSHAKE_MAX_BYTES:
                log.warning("host client sent no CONNECT line in %d bytes", HANDSHAKE_MAX_BYTES)
                self._drop_handshake(hs)
            return
        words = line.decode("ascii", "replace").split()
        if len(words) != 2 or words[0] != "CONNECT" or not words[1].isdigit() \
                or int(words[1]) >= 1 << 32:
            log.warning("host client sent a bad handshake %r", line[:HANDSHAKE_MAX_BYTES])
            self._drop_handshake(hs)
            return
        self._sel.unregister(hs.sock)
        del self._handshakes[hs.sock]
        self._open_host_stream(hs.sock, int(words[1]), rest, announce=True)

    def _drop_handshake(self, hs: _Handshake) -> None:
        self._sel.unregister(hs.sock)
        hs.sock.close()
        del self._handshakes[hs.sock]

    def _allocate_port(self, guest_port: int) -> int:
        """The next free host port from 2**30 upward, wrapping before 2**32."""
        while True:
            port = self._next_port
            self._next_port = port + 1 if port < 0xFFFFFFFE else FIRST_HOST_PORT
            if (port, guest_port) not in self._streams:
                return port

    def _open_host_stream(self, sock: socket.socket, guest_port: int, data: bytes,
                          announce: bool) -> None:
        host_port = self._allocate_port(guest_port)
        conn = Connection(self.guest_cid, host_port, guest_port, host_initiated=True)
        conn.push_host_data(data)
        st = _Stream(sock, conn, announce, time.monotonic() + self._connect_timeout_s)
        self._streams[(host_port, guest_port)] = st
        log.debug("host client -> guest port %d as host port %d", guest_port, host_port)
        self._settle(st)

    # ---- guest packets -----------------------------------------------------

    def recv(self, hdr: Header, payload: bytes) -> None:
        """Dispatch one packet the guest put on its tx queue."""
        if hdr.dst_cid != HOST_CID or hdr.src_cid != self.guest_cid:
            log.warning("dropping packet with unexpected addresses: %s", hdr.describe())
            return
        key = (hdr.dst_port, hdr.src_port)
        st = self._streams.get(key)
        if hdr.type != TYPE_STREAM:
            log.warning("unsupported socket type %d: %s", hdr.type, hdr.describe())
            st = None
        elif st is not None:
            was_connecting = st.conn.state is State.CONNECTING
            st.conn.recv(hdr, payload)
            if was_connecting and st.conn.state is State.ESTABLISHED and st.announce:
                st.preamble += f"OK {st.conn.local_port}\n".encode()
            self._flush_to_host(st)
            self._settle(st)
            return
        elif hdr.op == Op.REQUEST:
            self._connect_guest_stream(hdr)
            return
        if hdr.op != Op.RST:
            self._reply_rst(hdr)

    def _reply_rst(self, hdr: Header) -> None:
        if len(self._control) >= MAX_CONTROL_PACKETS:
            log.warning("too many pending resets, dropping one for %s", hdr.describe())
            return
        rst = Header(src_cid=HOST_CID, dst_cid=self.guest_cid, src_port=hdr.dst_port,
                     dst_port=hdr.src_port, op=Op.RST, type=hdr.type)
        self._control.append(Packet(rst))

    def _connect_guest_stream(self, hdr: Header) -> None:
        path = f"{self.uds_path}_{hdr.dst_port}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(path)
        except OSError as e:  # ENOENT, ECONNREFUSED, EAGAIN (backlog full)
            log.info("guest port %d -> %s: %s; resetting", hdr.src_port, path, e)
            sock.close()
            self._reply_rst(hdr)
            return
        conn = Connection(self.guest_cid, hdr.dst_port, hdr.src_port, host_initiated=False)
        conn.update_peer_credit(hdr)
        st = _Stream(sock, conn, announce=False, deadline=None)
        self._streams[(hdr.dst_port, hdr.src_port)] = st
        log.debug("guest port %d connected to %s", hdr.src_port, path)
        self._settle(st)

    # ---- host socket I/O ---------------------------------------------------

    def _on_host_event(self, st: _Stream, events: int) -> None:
        if self._streams.get((st.conn.local_port, st.conn.peer_port)) is not st:
            return  # dropped earlier in this select() batch
        if events & selectors.EVENT_WRITE:
            self._flush_to_host(st)
        if events & selectors.EVENT_READ:
            self._read_from_host(st)
        self._settle(st)

    def _read_from_host(self, st: _Stream) -> None:
        room = st.conn.host_read_room()
        if room <= 0:
            return
        try:
            data = st.sock.recv(room)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            log.info("%r: host socket read failed: %s", st.conn, e)
            st.conn.host_failed()
            return
        if data:
            st.conn.push_host_data(data)
        else:
            st.conn.set_host_eof()

    def _flush_to_host(self, st: _Stream) -> None:
        try:
            while st.preamble:
                del st.preamble[: st.sock.send(st.preamble)]
            while st.conn.to_host:
                st.conn.host_written(st.sock.send(st.conn.to_host))
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as e:
            log.info("%r: host socket write failed: %s", st.conn, e)
            st.preamble.clear()
            st.conn.host_failed()

    def _settle(self, st: _Stream) -> None:
        """Bring socket state, selector interest and the rx schedule in line with ``conn``."""
        conn = st.conn
        key = (conn.local_port, conn.peer_port)
        if conn.wants_host_write_shutdown:
            try:
                st.sock.shutdown(socket.SHUT_WR)
            except OSError as e:
                log.debug("%r: shutdown(SHUT_WR): %s", conn, e)
            conn.host_write_shutdown_done()
        if conn.has_packet():
            self._rx_ready[key] = None
        if conn.finished and not st.preamble:
            self._drop(st)
            return
        events = 0
        if conn.host_read_room() > 0:
            events |= selectors.EVENT_READ
        if st.preamble or conn.to_host:
            events |= selectors.EVENT_WRITE
        if events == st.events:
            return
        if st.events == 0:
            self._sel.register(st.sock, events, lambda ev: self._on_host_event(st, ev))
        elif events == 0:
            self._sel.unregister(st.sock)
        else:
            self._sel.modify(st.sock, events, lambda ev: self._on_host_event(st, ev))
        st.events = events

    def _drop(self, st: _Stream) -> None:
        key = (st.conn.local_port, st.conn.peer_port)
        if st.events:
            self._sel.unregister(st.sock)
            st.events = 0
        st.sock.close()
        self._streams.pop(key, None)
        self._rx_ready.pop(key, None)
        log.debug("%r: closed", st.conn)

    # ---- toward the guest --------------------------------------------------

    def has_rx(self) -> bool:
        return bool(self._control or self._rx_ready)

    def next_rx_packet(self, max_payload: int) -> Packet | None:
        """The next packet for the guest's rx queue, or None when nothing is due."""
        if self._control:
            return self._control.popleft()
        # Each stream ready now gets one turn: one that has nothing that fits
        # (an rx buffer too small for any payload) is rescheduled by _settle and
        # must not be popped again in this call, or this would never return.
        for _ in range(len(self._rx_ready)):
            key, _ = self._rx_ready.popitem(last=False)
            st = self._streams.get(key)
            if st is None:
                continue
            pkt = st.conn.next_packet(max_payload)
            self._settle(st)  # reschedules itself if more is due
            if pkt is not None:
                return pkt
        return None

    # ---- timers ------------------------------------------------------------

    def next_deadline(self) -> float | None:
        times = [hs.deadline for hs in self._handshakes.values()]
        times += [st.deadline for st in self._streams.values()
                  if st.deadline is not None and st.conn.state is State.CONNECTING]
        return min(times, default=None)

    def expire(self, now: float) -> None:
        for hs in [h for h in self._handshakes.values() if h.deadline <= now]:
            log.info("host client sent no CONNECT line in %.0f s", HANDSHAKE_TIMEOUT_S)
            self._drop_handshake(hs)
        for st in list(self._streams.values()):
            if st.deadline is not None and st.deadline <= now:
                st.deadline = None
                st.conn.connect_timed_out()
                self._settle(st)

    @property
    def stream_count(self) -> int:
        return len(self._streams)
