"""The virtio-vsock packet header (virtio spec v1.2, section 5.10.6 "Device Operation").

Owns the 44-byte ``struct virtio_vsock_hdr`` and its constants; converts
between bytes and a frozen :class:`Header`. It knows nothing about queues,
connections or sockets::

    le64 src_cid; le64 dst_cid; le32 src_port; le32 dst_port; le32 len;
    le16 type; le16 op; le32 flags; le32 buf_alloc; le32 fwd_cnt;
"""

from __future__ import annotations

import dataclasses
import enum
import struct

HEADER_STRUCT = struct.Struct("<QQIIIHHIII")
HEADER_SIZE = HEADER_STRUCT.size  # 44

HOST_CID = 2
TYPE_STREAM = 1

# Shutdown flags carried in ``flags`` of an OP_SHUTDOWN packet (5.10.6.5).
SHUTDOWN_RCV = 1
SHUTDOWN_SEND = 2
SHUTDOWN_BOTH = SHUTDOWN_RCV | SHUTDOWN_SEND

# Linux caps one packet's payload at 64 KiB (VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
MAX_PAYLOAD_BYTES = 64 * 1024


class Op(enum.IntEnum):
    """``op`` field values (5.10.6)."""

    INVALID = 0
    REQUEST = 1
    RESPONSE = 2
    RST = 3
    SHUTDOWN = 4
    RW = 5
    CREDIT_UPDATE = 6
    CREDIT_REQUEST = 7


class PacketError(ValueError):
    """A header that cannot be decoded (too short)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Header:
    """One decoded ``virtio_vsock_hdr``; ``length`` is the payload size in bytes."""

    src_cid: int
    dst_cid: int
    src_port: int
    dst_port: int
    op: int
    length: int = 0
    type: int = TYPE_STREAM
    flags: int = 0
    buf_alloc: int = 0
    fwd_cnt: int = 0

    def encode(self) -> bytes:
        return HEADER_STRUCT.pack(
            self.src_cid,
            self.dst_cid,
            self.src_port,
            self.dst_port,
            self.length,
            self.type,
            self.op,
            self.flags,
            self.buf_alloc,
            self.fwd_cnt,
        )

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Header:
        if len(data) < HEADER_SIZE:
            raise PacketError(f"vsock header needs {HEADER_SIZE} bytes, got {len(data)}")
        (src_cid, dst_cid, src_port, dst_port, length, type_, op, flags, buf_alloc,
         fwd_cnt) = HEADER_STRUCT.unpack_from(data)
        return cls(
            src_cid=src_cid,
            dst_cid=dst_cid,
            src_port=src_port,
            dst_port=dst_port,
            op=op,
            length=length,
            type=type_,
            flags=flags,
            buf_alloc=buf_alloc,
            fwd_cnt=fwd_cnt,
        )

    def describe(self) -> str:
        """A short human form for debug logs: ``RW 3:1024 -> 2:1073741824 len=5``."""
        try:
            name = Op(self.op).name
        except ValueError:
            name = f"op{self.op}"
        return (
            f"{name} {self.src_cid}:{self.src_port} -> {self.dst_cid}:{self.dst_port}"
            f" len={self.length} flags={self.flags} buf_alloc={self.buf_alloc}"
            f" fwd_cnt={self.fwd_cnt}"
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Packet:
    """A header plus its payload (empty except for OP_RW)."""

    header: Header
    payload: bytes = b""
