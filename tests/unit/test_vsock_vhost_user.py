"""vhost-user framing and session state (QEMU docs/interop/vhost-user.rst)."""

import mmap
import os
import socket
import struct

import pytest

from kata_py.hypervisor.vsock.vhost_user import (
    BACKEND_FEATURES,
    F_PROTOCOL_FEATURES,
    FLAG_NEED_REPLY,
    FLAG_REPLY,
    FLAG_VERSION,
    HEADER,
    PROTOCOL_F_CONFIG,
    VIRTIO_F_VERSION_1,
    VRING_INVALID_FD,
    Message,
    ProtocolError,
    Request,
    Session,
    encode,
    read_message,
)


def send(sock: socket.socket, request: int, payload: bytes, fds: list[int] | None = None,
         flags: int = FLAG_VERSION) -> None:
    data = encode(request, payload, flags)
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.sendall(data)


def decode_reply(raw: bytes) -> tuple[int, int, bytes]:
    request, flags, size = HEADER.unpack_from(raw)
    assert len(raw) == HEADER.size + size
    return request, flags, raw[HEADER.size :]


def msg(request: int, payload: bytes = b"", flags: int = FLAG_VERSION,
        fds: list[int] | None = None) -> Message:
    return Message(request, flags, payload, fds or [])


@pytest.fixture
def closed_kicks() -> list[int]:
    """Kick fds the session announced it was about to close."""
    return []


@pytest.fixture
def session(closed_kicks: list[int]) -> Session:
    return Session(guest_cid=42, before_fd_close=closed_kicks.append)


def test_read_message_returns_header_payload_and_fds() -> None:
    a, b = socket.socketpair()
    r, w = os.pipe()
    try:
        send(a, Request.SET_VRING_KICK, struct.pack("<Q", 1), [r])
        m = read_message(b)
        assert m is not None
        assert (m.request, m.flags, m.payload) == (Request.SET_VRING_KICK, 1, struct.pack("<Q", 1))
        assert len(m.fds) == 1
        os.write(w, b"x")
        assert os.read(m.fds[0], 1) == b"x"
        os.close(m.fds[0])
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()


def test_read_message_reports_clean_eof_as_none() -> None:
    a, b = socket.socketpair()
    a.close()
    assert read_message(b) is None
    b.close()


def test_read_message_rejects_truncated_payload() -> None:
    a, b = socket.socketpair()
    a.sendall(HEADER.pack(Request.SET_FEATURES, FLAG_VERSION, 8) + b"\0\0")
    a.close()
    with pytest.raises(ProtocolError, match="middle of a message"):
        read_message(b)
    b.close()


def test_get_features_offers_version_1_and_protocol_features_only(session: Session) -> None:
    reply = session.handle(msg(Request.GET_FEATURES))
    assert reply is not None
    request, flags, payload = decode_reply(reply)
    assert (request, flags) == (Request.GET_FEATURES, FLAG_VERSION | FLAG_REPLY)
    assert struct.unpack("<Q", payload)[0] == BACKEND_FEATURES
    assert BACKEND_FEATURES == VIRTIO_F_VERSION_1 | F_PROTOCOL_FEATURES


def test_get_protocol_features_includes_config(session: Session) -> None:
    reply = session.handle(msg(Request.GET_PROTOCOL_FEATURES))
    assert reply is not None
    assert struct.unpack("<Q", decode_reply(reply)[2])[0] & PROTOCOL_F_CONFIG


def test_get_config_returns_guest_cid_with_request_header(session: Session) -> None:
    reply = session.handle(msg(Request.GET_CONFIG, struct.pack("<III", 0, 8, 0) + b"\0" * 8))
    assert reply is not None
    _req, _flags, payload = decode_reply(reply)
    assert struct.unpack("<IIIQ", payload) == (0, 8, 0, 42)


def test_need_reply_without_natural_reply_gets_zero_ack(session: Session) -> None:
    reply = session.handle(msg(Request.SET_OWNER, flags=FLAG_VERSION | FLAG_NEED_REPLY))
    assert reply is not None
    assert decode_reply(reply) == (Request.SET_OWNER, FLAG_VERSION | FLAG_REPLY,
                                   struct.pack("<Q", 0))


def test_unknown_request_with_need_reply_gets_failure(session: Session) -> None:
    reply = session.handle(msg(99, flags=FLAG_VERSION | FLAG_NEED_REPLY))
    assert reply is not None and struct.unpack("<Q", decode_reply(reply)[2])[0] != 0


def test_message_without_need_reply_gets_no_answer(session: Session) -> None:
    assert session.handle(msg(Request.SET_FEATURES, struct.pack("<Q", BACKEND_FEATURES))) is None
    assert session.features == BACKEND_FEATURES


def test_kick_with_invalid_fd_flag_starts_polled_ring(session: Session) -> None:
    session.handle(msg(Request.SET_VRING_NUM, struct.pack("<II", 1, 64)))
    session.handle(msg(Request.SET_VRING_KICK, struct.pack("<Q", 1 | VRING_INVALID_FD)))
    q = session.queues[1]
    assert q.started and q.kick_fd is None
    assert q.enabled  # no PROTOCOL_FEATURES negotiated: enabled on start


def test_ring_waits_for_enable_when_protocol_features_negotiated(
        session: Session, closed_kicks: list[int]) -> None:
    session.handle(msg(Request.SET_FEATURES, struct.pack("<Q", BACKEND_FEATURES)))
    fd = os.eventfd(0)
    session.handle(msg(Request.SET_VRING_KICK, struct.pack("<Q", 0), fds=[fd]))
    q = session.queues[0]
    assert q.started and not q.enabled and q.kick_fd == fd
    session.handle(msg(Request.SET_VRING_ENABLE, struct.pack("<II", 0, 1)))
    assert q.enabled
    session.close()
    assert closed_kicks == [fd]


def test_get_vring_base_stops_ring_and_returns_last_avail_index(
        session: Session, closed_kicks: list[int]) -> None:
    session.handle(msg(Request.SET_VRING_BASE, struct.pack("<II", 1, 7)))
    fd = os.eventfd(0)
    session.handle(msg(Request.SET_VRING_KICK, struct.pack("<Q", 1), fds=[fd]))
    reply = session.handle(msg(Request.GET_VRING_BASE, struct.pack("<II", 1, 0)))
    assert reply is not None
    assert struct.unpack("<II", decode_reply(reply)[2]) == (1, 7)
    q = session.queues[1]
    assert not q.started and q.kick_fd is None
    assert closed_kicks == [fd]


def test_vring_size_must_be_a_power_of_two(session: Session) -> None:
    with pytest.raises(ProtocolError, match="power of two"):
        session.handle(msg(Request.SET_VRING_NUM, struct.pack("<II", 0, 100)))


def test_event_queue_index_is_ignored(session: Session) -> None:
    fd = os.eventfd(0)
    session.handle(msg(Request.SET_VRING_CALL, struct.pack("<Q", 2), fds=[fd]))
    with pytest.raises(OSError):
        os.fstat(fd)  # closed, not leaked


def test_a_new_call_fd_is_signalled_once(session: Session) -> None:
    """An interrupt signalled on the old fd while QEMU swapped it would be lost."""
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    session.handle(msg(Request.SET_VRING_CALL, struct.pack("<Q", 0), fds=[fd]))
    assert session.queues[0].call_fd == fd
    assert os.eventfd_read(fd) == 1


def test_set_mem_table_maps_region_at_its_mmap_offset(session: Session) -> None:
    fd = os.memfd_create("guest")
    os.ftruncate(fd, 2 * mmap.PAGESIZE)
    os.pwrite(fd, b"second-page", mmap.PAGESIZE)
    region = struct.pack("<QQQQ", 0x1000_0000, mmap.PAGESIZE, 0x7F00_0000, mmap.PAGESIZE)
    session.handle(msg(Request.SET_MEM_TABLE, struct.pack("<II", 1, 0) + region,
                       fds=[os.dup(fd)]))
    assert session.memory is not None
    assert session.memory.read(0x1000_0000, 11) == b"second-page"
    session.memory.write(0x1000_0000 + 7, b"PAGE")
    assert os.pread(fd, 11, mmap.PAGESIZE) == b"second-PAGE"
    session.close()
    os.close(fd)
