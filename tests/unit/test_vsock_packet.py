"""virtio_vsock_hdr encoding (virtio spec 5.10.6)."""

import struct

import pytest

from kata_py.hypervisor.vsock.packet import HEADER_SIZE, Header, Op, PacketError


def test_header_is_44_bytes_little_endian_in_spec_field_order() -> None:
    hdr = Header(src_cid=3, dst_cid=2, src_port=1024, dst_port=1 << 30, op=Op.RW, length=5,
                 flags=0, buf_alloc=262144, fwd_cnt=77)
    raw = hdr.encode()
    assert len(raw) == HEADER_SIZE == 44
    assert struct.unpack("<QQIIIHHIII", raw) == (3, 2, 1024, 1 << 30, 5, 1, 5, 0, 262144, 77)


def test_header_decode_round_trips_and_ignores_trailing_payload() -> None:
    hdr = Header(src_cid=2, dst_cid=42, src_port=7, dst_port=9, op=Op.SHUTDOWN, flags=3,
                 buf_alloc=1, fwd_cnt=2)
    assert Header.decode(hdr.encode() + b"payload") == hdr


def test_short_header_is_rejected() -> None:
    with pytest.raises(PacketError, match="44 bytes"):
        Header.decode(b"\0" * 43)


def test_op_numbers_match_the_spec() -> None:
    assert [Op.REQUEST, Op.RESPONSE, Op.RST, Op.SHUTDOWN, Op.RW, Op.CREDIT_UPDATE,
            Op.CREDIT_REQUEST] == [1, 2, 3, 4, 5, 6, 7]


def test_describe_names_the_op() -> None:
    text = Header(src_cid=3, dst_cid=2, src_port=5, dst_port=6, op=Op.RST).describe()
    assert text.startswith("RST 3:5 -> 2:6")
