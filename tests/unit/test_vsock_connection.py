"""Connection state machine and credit flow control (virtio spec 5.10.6.3-5.10.6.5)."""

from kata_py.hypervisor.vsock.connection import Connection, State
from kata_py.hypervisor.vsock.packet import (
    SHUTDOWN_BOTH,
    SHUTDOWN_RCV,
    SHUTDOWN_SEND,
    Header,
    Op,
    Packet,
)

GUEST_CID = 3
HOST_PORT = 1 << 30
GUEST_PORT = 1024


def guest(op: Op, length: int = 0, flags: int = 0, buf_alloc: int = 65536,
          fwd_cnt: int = 0) -> Header:
    return Header(src_cid=GUEST_CID, dst_cid=2, src_port=GUEST_PORT, dst_port=HOST_PORT, op=op,
                  length=length, flags=flags, buf_alloc=buf_alloc, fwd_cnt=fwd_cnt)


def drain(conn: Connection, max_payload: int = 4096) -> list[Packet]:
    out = []
    while (pkt := conn.next_packet(max_payload)) is not None:
        out.append(pkt)
    return out


def ops(packets: list[Packet]) -> list[int]:
    return [p.header.op for p in packets]


def established(buf_alloc: int = 65536, **kw: int) -> Connection:
    conn = Connection(GUEST_CID, HOST_PORT, GUEST_PORT, host_initiated=True, **kw)
    assert ops(drain(conn)) == [Op.REQUEST]
    conn.recv(guest(Op.RESPONSE, buf_alloc=buf_alloc))
    assert conn.state is State.ESTABLISHED
    return conn


def test_host_initiated_connection_sends_request_and_waits_for_response() -> None:
    conn = Connection(GUEST_CID, HOST_PORT, GUEST_PORT, host_initiated=True)
    [req] = drain(conn)
    h = req.header
    assert (h.op, h.src_cid, h.dst_cid, h.src_port, h.dst_port) == (
        Op.REQUEST, 2, GUEST_CID, HOST_PORT, GUEST_PORT)
    assert h.buf_alloc == conn.buf_alloc and h.fwd_cnt == 0
    assert conn.state is State.CONNECTING
    conn.recv(guest(Op.RESPONSE))
    assert conn.state.value == "established"


def test_host_bytes_wait_for_response_then_flow_as_rw() -> None:
    conn = Connection(GUEST_CID, HOST_PORT, GUEST_PORT, host_initiated=True)
    conn.push_host_data(b"early")
    assert ops(drain(conn)) == [Op.REQUEST]
    conn.recv(guest(Op.RESPONSE))
    [rw] = drain(conn)
    assert rw.header.op == Op.RW and rw.payload == b"early" and rw.header.length == 5


def test_full_lifecycle_request_response_rw_shutdown_rst() -> None:
    conn = established()
    conn.recv(guest(Op.RW, length=4), b"ping")
    assert bytes(conn.to_host) == b"ping"
    conn.host_written(4)
    conn.push_host_data(b"pong")
    [rw] = drain(conn)
    assert rw.payload == b"pong" and rw.header.fwd_cnt == 4
    conn.recv(guest(Op.SHUTDOWN, flags=SHUTDOWN_BOTH))
    assert ops(drain(conn)) == [Op.RST]
    assert conn.finished


def test_guest_full_shutdown_waits_for_buffered_bytes_to_reach_host() -> None:
    conn = established()
    conn.recv(guest(Op.RW, length=3), b"abc")
    conn.recv(guest(Op.SHUTDOWN, flags=SHUTDOWN_BOTH))
    assert ops(drain(conn)) == [Op.RST]
    assert not conn.finished
    conn.host_written(3)
    assert conn.finished


def test_guest_rst_drops_everything_without_answer() -> None:
    conn = established()
    conn.recv(guest(Op.RW, length=3), b"abc")
    conn.push_host_data(b"xyz")
    conn.recv(guest(Op.RST))
    assert drain(conn) == []
    assert conn.finished and conn.state is State.CLOSED


def test_host_eof_sends_shutdown_send_after_pending_data() -> None:
    conn = established()
    conn.push_host_data(b"last")
    conn.set_host_eof()
    packets = drain(conn)
    assert ops(packets) == [Op.RW, Op.SHUTDOWN]
    assert packets[1].header.flags == SHUTDOWN_SEND
    assert conn.host_read_room() == 0
    assert conn.state is State.ESTABLISHED  # the guest may still write


def test_both_half_closes_end_with_our_rst() -> None:
    conn = established()
    conn.set_host_eof()
    assert ops(drain(conn)) == [Op.SHUTDOWN]
    conn.recv(guest(Op.SHUTDOWN, flags=SHUTDOWN_SEND))
    assert ops(drain(conn)) == [Op.RST]
    assert conn.finished


def test_guest_shutdown_send_asks_muxer_to_half_close_host_socket() -> None:
    conn = established()
    conn.recv(guest(Op.RW, length=2), b"hi")
    conn.recv(guest(Op.SHUTDOWN, flags=SHUTDOWN_SEND))
    assert not conn.wants_host_write_shutdown  # "hi" first
    conn.host_written(2)
    assert conn.wants_host_write_shutdown
    conn.host_write_shutdown_done()
    assert not conn.wants_host_write_shutdown
    conn.push_host_data(b"reply")
    assert ops(drain(conn)) == [Op.RW]


def test_guest_shutdown_rcv_discards_and_stops_host_reads() -> None:
    conn = established()
    conn.push_host_data(b"unwanted")
    conn.recv(guest(Op.SHUTDOWN, flags=SHUTDOWN_RCV))
    assert conn.host_read_room() == 0
    assert drain(conn) == []


def test_host_write_blocks_at_zero_peer_credit_and_resumes_after_credit_update() -> None:
    conn = established(buf_alloc=8)
    conn.push_host_data(b"0123456789")
    packets = drain(conn)
    assert ops(packets) == [Op.RW, Op.CREDIT_REQUEST]
    assert packets[0].payload == b"01234567"
    assert conn.peer_credit == 0
    assert drain(conn) == []  # asked once, now waits
    conn.recv(guest(Op.CREDIT_UPDATE, buf_alloc=8, fwd_cnt=8))
    [rw] = drain(conn)
    assert rw.payload == b"89"
    assert conn.tx_cnt == 10 and conn.peer_credit == 6


def test_rw_payload_respects_rx_buffer_size() -> None:
    conn = established(buf_alloc=1 << 20)
    conn.push_host_data(b"x" * 10000)
    sizes = [len(p.payload) for p in drain(conn, max_payload=4096)]
    assert sizes == [4096, 4096, 1808]


def test_credit_request_is_answered_with_credit_update() -> None:
    conn = established()
    conn.recv(guest(Op.RW, length=100), b"x" * 100)
    conn.host_written(100)
    conn.recv(guest(Op.CREDIT_REQUEST))
    [upd] = drain(conn)
    assert upd.header.op == Op.CREDIT_UPDATE
    assert (upd.header.buf_alloc, upd.header.fwd_cnt) == (conn.buf_alloc, 100)


def test_credit_update_is_volunteered_when_the_guest_may_starve() -> None:
    conn = established(buf_alloc=65536, host_buffer_bytes=4096)
    chunk = b"y" * 4096
    for _ in range(conn.buf_alloc // 4096 - 4):  # guest now sees < 1/4 free
        conn.recv(guest(Op.RW, length=len(chunk)), chunk)
    assert drain(conn) == []  # nothing forwarded yet: nothing to announce
    conn.host_written(len(conn.to_host))
    [upd] = drain(conn)
    assert upd.header.op == Op.CREDIT_UPDATE and upd.header.fwd_cnt == conn.fwd_cnt
    assert conn.peer_view_of_free == conn.buf_alloc


def test_guest_overrunning_our_credit_is_reset() -> None:
    conn = established(buf_alloc=65536)
    conn.buf_alloc = 16
    conn.recv(guest(Op.RW, length=17), b"z" * 17)
    assert ops(drain(conn)) == [Op.RST]
    assert conn.state is State.CLOSED


def test_host_read_room_is_bounded_by_the_host_buffer() -> None:
    conn = established(host_buffer_bytes=100)
    assert conn.host_read_room() == 100
    conn.push_host_data(b"a" * 60)
    assert conn.host_read_room() == 40


def test_unexpected_request_on_live_connection_is_reset() -> None:
    conn = established()
    conn.recv(guest(Op.REQUEST))
    assert ops(drain(conn)) == [Op.RST]


def test_guest_initiated_connection_answers_response_first() -> None:
    conn = Connection(GUEST_CID, 5000, 49152, host_initiated=False)
    conn.update_peer_credit(guest(Op.REQUEST, buf_alloc=4096))
    conn.push_host_data(b"hello")
    packets = drain(conn)
    assert ops(packets) == [Op.RESPONSE, Op.RW]
    assert packets[0].header.src_port == 5000 and packets[0].header.dst_port == 49152


def test_connect_timeout_resets_only_if_the_guest_saw_the_request() -> None:
    unsent = Connection(GUEST_CID, HOST_PORT, GUEST_PORT, host_initiated=True)
    unsent.connect_timed_out()
    assert drain(unsent) == [] and unsent.finished
    sent = Connection(GUEST_CID, HOST_PORT, GUEST_PORT, host_initiated=True)
    drain(sent)
    sent.connect_timed_out()
    assert ops(drain(sent)) == [Op.RST] and sent.finished


def test_host_failure_resets_the_guest() -> None:
    conn = established()
    conn.recv(guest(Op.RW, length=1), b"q")
    conn.host_failed()
    assert ops(drain(conn)) == [Op.RST]
    assert conn.finished


def test_counters_wrap_at_2_pow_32_both_ways() -> None:
    """After 4 GiB on one connection (a sandbox's gRPC connection lives as
    long as the sandbox) the le32 counters wrap: credit must still flow and
    headers must still encode."""
    near = (1 << 32) - 100
    # host -> guest: we sent `near` bytes, the guest forwarded all of them.
    conn = established(buf_alloc=1000)
    conn.tx_cnt = near
    conn.recv(guest(Op.CREDIT_UPDATE, buf_alloc=1000, fwd_cnt=near))
    conn.push_host_data(b"z" * 300)
    [rw] = drain(conn)
    assert len(rw.payload) == 300 and conn.tx_cnt == 200       # wrapped
    assert conn.peer_credit == 700
    conn.recv(guest(Op.CREDIT_UPDATE, buf_alloc=1000, fwd_cnt=200))  # the guest wrapped too
    assert conn.peer_credit == 1000
    # guest -> host: `near` bytes received and forwarded.
    conn = established()
    conn.rx_cnt = conn.fwd_cnt = near
    conn._sent_fwd_cnt = near
    chunk = b"w" * 200000           # the guest now sees < 1/4 free: an update is due
    conn.recv(guest(Op.RW, length=len(chunk)), chunk)
    assert conn.rx_cnt == (near + 200000) & 0xFFFFFFFF
    assert conn.peer_view_of_free == conn.buf_alloc - 200000
    conn.host_written(len(chunk))
    [upd] = drain(conn)
    assert upd.header.fwd_cnt == conn.fwd_cnt == (near + 200000) & 0xFFFFFFFF
    upd.header.encode()
