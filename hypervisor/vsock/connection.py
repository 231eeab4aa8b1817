"""One vsock stream connection between the guest and a host unix socket, sans I/O.

Owns the per-connection state machine and credit flow control of virtio spec
v1.2 section 5.10.6.3 ("Buffer Space Management") and 5.10.6.5 ("Stream
Sockets"): connecting → established → closed, SHUTDOWN/RST handling, and the
two credit windows:

- guest → host: we advertise ``buf_alloc``/``fwd_cnt``; ``fwd_cnt`` grows only
  when bytes have reached the host socket, so at most ``buf_alloc`` bytes of
  guest data are ever buffered here. A guest that overruns it is reset.
- host → guest: we may send ``peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`` bytes.
  When that is zero and data waits we ask once with CREDIT_REQUEST; the guest's
  CREDIT_UPDATE (or any packet) reopens the window.

It performs no I/O: the muxer feeds it guest packets and host bytes, asks it
for the next packet to the guest, and writes :attr:`Connection.to_host` out.
Host bytes are buffered up to ``host_buffer_bytes`` only (also before the
guest answered a REQUEST).
"""

from __future__ import annotations

import enum
import logging

from .packet import (
    HOST_CID,
    MAX_PAYLOAD_BYTES,
    SHUTDOWN_BOTH,
    SHUTDOWN_RCV,
    SHUTDOWN_SEND,
    Header,
    Op,
    Packet,
)

log = logging.getLogger(__name__)

DEFAULT_BUF_ALLOC_BYTES = 256 * 1024
DEFAULT_HOST_BUFFER_BYTES = 64 * 1024
COUNTER_MASK = 0xFFFFFFFF            # rx/tx/fwd counters are le32 on the wire and wrap (5.10.6.3)


class State(enum.Enum):
    CONNECTING = "connecting"  # host-initiated: REQUEST queued or sent, no RESPONSE yet
    ESTABLISHED = "established"
    CLOSED = "closed"  # no more packets after a pending RST; host side drains then closes


class _Out(enum.Enum):
    RST = enum.auto()
    REQUEST = enum.auto()
    RESPONSE = enum.auto()
    RW = enum.auto()
    SHUTDOWN = enum.auto()
    CREDIT_UPDATE = enum.auto()
    CREDIT_REQUEST = enum.auto()


class Connection:
    """State of one stream; ``local_port`` is the host side, ``peer_port`` the guest's."""

    def __init__(
        self,
        guest_cid: int,
        local_port: int,
        peer_port: int,
        *,
        host_initiated: bool,
        buf_alloc: int = DEFAULT_BUF_ALLOC_BYTES,
        host_buffer_bytes: int = DEFAULT_HOST_BUFFER_BYTES,
    ) -> None:
        self.guest_cid = guest_cid
        self.local_port = local_port
        self.peer_port = peer_port
        self.buf_alloc = buf_alloc
        self.host_buffer_bytes = host_buffer_bytes
        self.state = State.CONNECTING if host_initiated else State.ESTABLISHED
        # guest -> host
        self.to_host = bytearray()
        self.rx_cnt = 0
        self.fwd_cnt = 0
        self._sent_fwd_cnt = 0
        self._credit_update_asked = False
        # host -> guest
        self.from_host = bytearray()
        self.tx_cnt = 0
        self.peer_buf_alloc = 0
        self.peer_fwd_cnt = 0
        self._credit_requested = False
        # lifecycle
        self.peer_shutdown = 0
        self.host_eof = False
        self._shutdown_sent = False
        self.host_write_shut = False
        self._rst_pending = False
        self._request_pending = host_initiated
        self._response_pending = not host_initiated

    def __repr__(self) -> str:
        return (f"<Connection {self.local_port}<->{self.guest_cid}:{self.peer_port}"
                f" {self.state.value}>")

    # ---- credit -------------------------------------------------------------

    @property
    def peer_credit(self) -> int:
        """Bytes we may still send to the guest without overrunning its buffer."""
        return max(0, self.peer_buf_alloc - ((self.tx_cnt - self.peer_fwd_cnt) & COUNTER_MASK))

    @property
    def peer_view_of_free(self) -> int:
        """Free space the guest believes we have, from the last fwd_cnt we sent."""
        return self.buf_alloc - ((self.rx_cnt - self._sent_fwd_cnt) & COUNTER_MASK)

    def _credit_update_due(self) -> bool:
        if self._credit_update_asked:
            return True
        return (self.fwd_cnt != self._sent_fwd_cnt
                and self.peer_view_of_free < self.buf_alloc // 4)

    # ---- inputs -------------------------------------------------------------

    def update_peer_credit(self, hdr: Header) -> None:
        """Every guest packet carries its buf_alloc and fwd_cnt (5.10.6.3)."""
        if (hdr.buf_alloc, hdr.fwd_cnt) != (self.peer_buf_alloc, self.peer_fwd_cnt):
            self._credit_requested = False  # the window moved: we may ask again later
        self.peer_buf_alloc = hdr.buf_alloc
        self.peer_fwd_cnt = hdr.fwd_cnt

    def recv(self, hdr: Header, payload: bytes = b"") -> None:
        """Apply one packet the guest sent on this connection."""
        self.update_peer_credit(hdr)
        if self.state is State.CLOSED:
            return
        op = hdr.op
        if op == Op.RST:
            log.debug("%r: guest reset", self)
            self._abort(send_rst=False)
        elif op == Op.RESPONSE and self.state is State.CONNECTING and self._guest_knows_us:
            self.state = State.ESTABLISHED
        elif op == Op.RW and self.state is State.ESTABLISHED:
            self._recv_data(payload)
        elif op == Op.CREDIT_UPDATE and self.state is State.ESTABLISHED:
            pass  # the window was refreshed above
        elif op == Op.CREDIT_REQUEST and self.state is State.ESTABLISHED:
            self._credit_update_asked = True
        elif op == Op.SHUTDOWN and self.state is State.ESTABLISHED:
            self.peer_shutdown |= hdr.flags & SHUTDOWN_BOTH
            if self.peer_shutdown & SHUTDOWN_RCV:
                self.from_host.clear()
            self._maybe_finish()
        else:
            log.warning("%r: unexpected %s from guest, resetting", self, hdr.describe())
            self._abort(send_rst=True)

    def _recv_data(self, payload: bytes) -> None:
        if self.peer_shutdown & SHUTDOWN_SEND:
            log.warning("%r: data after the guest's SHUTDOWN(SEND), resetting", self)
            self._abort(send_rst=True)
            return
        if len(self.to_host) + len(payload) > self.buf_alloc:
            log.warning("%r: guest overran our credit (%d buffered + %d > %d), resetting",
                        self, len(self.to_host), len(payload), self.buf_alloc)
            self._abort(send_rst=True)
            return
        self.rx_cnt = (self.rx_cnt + len(payload)) & COUNTER_MASK
        self.to_host += payload

    def host_read_room(self) -> int:
        """How many more bytes the host socket may hand us now (0: stop reading)."""
        if self.state is State.CLOSED or self.host_eof or self.peer_shutdown & SHUTDOWN_RCV:
            return 0
        return max(0, self.host_buffer_bytes - len(self.from_host))

    def push_host_data(self, data: bytes) -> None:
        """Bytes read from the host socket, to be sent to the guest."""
        if self.state is State.CLOSED or self.peer_shutdown & SHUTDOWN_RCV:
            return
        self.from_host += data

    def set_host_eof(self) -> None:
        """The host socket will send no more: the guest gets SHUTDOWN(SEND) once drained."""
        self.host_eof = True
        if self.state is State.CONNECTING and not self.from_host and not self._guest_knows_us:
            self._abort(send_rst=False)  # the guest never heard of us
        self._maybe_finish()

    def host_written(self, n: int) -> None:
        """``n`` bytes of :attr:`to_host` reached the host socket."""
        del self.to_host[:n]
        self.fwd_cnt = (self.fwd_cnt + n) & COUNTER_MASK
        self._maybe_finish()

    def host_write_shutdown_done(self) -> None:
        """The muxer shut the host socket's write side after the guest's SHUTDOWN(SEND)."""
        self.host_write_shut = True
        self._maybe_finish()

    def host_failed(self) -> None:
        """The host socket broke (reset, EPIPE): the guest gets RST if it knows us."""
        self.to_host.clear()
        self._abort(send_rst=self._guest_knows_us)

    def connect_timed_out(self) -> None:
        if self.state is State.CONNECTING:
            log.info("%r: guest did not answer the REQUEST in time", self)
            self._abort(send_rst=self._guest_knows_us)

    @property
    def _guest_knows_us(self) -> bool:
        """False only while our REQUEST is still queued here."""
        return not self._request_pending

    def _abort(self, send_rst: bool) -> None:
        self._rst_pending = send_rst and self.state is not State.CLOSED
        self.state = State.CLOSED
        self._request_pending = self._response_pending = False
        self.from_host.clear()
        if not send_rst:
            self.to_host.clear()

    def _maybe_finish(self) -> None:
        """Both directions done (or the guest closed): end with RST (5.10.6.5)."""
        if self.state is not State.ESTABLISHED:
            return
        guest_done = self.peer_shutdown == SHUTDOWN_BOTH
        both_half_closed = (self.peer_shutdown & SHUTDOWN_SEND and self._shutdown_sent
                            and not self.to_host)
        if guest_done or both_half_closed:
            self._rst_pending = True
            self.state = State.CLOSED
            self.from_host.clear()

    # ---- outputs ------------------------------------------------------------

    @property
    def wants_host_write_shutdown(self) -> bool:
        return (bool(self.peer_shutdown & SHUTDOWN_SEND) and not self.to_host
                and not self.host_write_shut and self.state is State.ESTABLISHED)

    @property
    def finished(self) -> bool:
        """Nothing left to do: the muxer closes the host socket and forgets us."""
        return self.state is State.CLOSED and not self._rst_pending and not self.to_host

    def _choose(self) -> _Out | None:
        if self._rst_pending:
            return _Out.RST
        if self.state is State.CLOSED:
            return None
        if self._request_pending:
            return _Out.REQUEST
        if self.state is State.CONNECTING:
            return None
        if self._response_pending:
            return _Out.RESPONSE
        if self.from_host and self.peer_credit > 0:
            return _Out.RW
        if self.host_eof and not self.from_host and not self._shutdown_sent:
            return _Out.SHUTDOWN
        if self._credit_update_due():
            return _Out.CREDIT_UPDATE
        if self.from_host and not self._credit_requested:
            return _Out.CREDIT_REQUEST
        return None

    def has_packet(self) -> bool:
        return self._choose() is not None

    def next_packet(self, max_payload: int = MAX_PAYLOAD_BYTES) -> Packet | None:
        """The next packet for the guest, with at most ``max_payload`` data bytes."""
        out = self._choose()
        if out is None:
            return None
        payload = b""
        flags = 0
        if out is _Out.RST:
            self._rst_pending = False
            op = Op.RST
        elif out is _Out.REQUEST:
            self._request_pending = False
            op = Op.REQUEST
        elif out is _Out.RESPONSE:
            self._response_pending = False
            op = Op.RESPONSE
        elif out is _Out.RW:
            n = min(len(self.from_host), self.peer_credit, max_payload, MAX_PAYLOAD_BYTES)
            if n <= 0:
                return None
            payload = bytes(self.from_host[:n])
            del self.from_host[:n]
            self.tx_cnt = (self.tx_cnt + n) & COUNTER_MASK
            op = Op.RW
        elif out is _Out.SHUTDOWN:
            self._shutdown_sent = True
            flags = SHUTDOWN_SEND
            op = Op.SHUTDOWN
        elif out is _Out.CREDIT_UPDATE:
            op = Op.CREDIT_UPDATE
        else:
            self._credit_requested = True
            op = Op.CREDIT_REQUEST
        self._credit_update_asked = False
        self._sent_fwd_cnt = self.fwd_cnt
        hdr = Header(
            src_cid=HOST_CID,
            dst_cid=self.guest_cid,
            src_port=self.local_port,
            dst_port=self.peer_port,
            op=op,
            length=len(payload),
            flags=flags,
            buf_alloc=self.buf_alloc,
            fwd_cnt=self.fwd_cnt,
        )
        if out is _Out.SHUTDOWN:
            self._maybe_finish()
        return Packet(hdr, payload)
