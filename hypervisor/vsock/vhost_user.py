"""vhost-user back-end protocol: message framing and the front-end session state.

Follows QEMU docs/interop/vhost-user.rst ("Message Specification", "Front-end
message types", "Ring states", "Starting and stopping rings"). Owns:

- framing: a 12-byte header (``u32 request, u32 flags, u32 size``) then
  ``size`` payload bytes, file descriptors riding as SCM_RIGHTS with the
  header; replies carry version 1 and the REPLY flag;
- :class:`Session`: what the front-end (QEMU) told us: features, protocol
  features, the memory table, each vring's num/addr/base/kick/call/enable,
  and the read-only device config space ``struct virtio_vsock_config { le64
  guest_cid; }`` (virtio spec 5.10.4) answered through GET_CONFIG.

It never touches the event loop; the owner learns about kick fds through
``before_fd_close`` and :attr:`Session.queues`. Only the rx (0) and tx (1)
queues are ours: QEMU keeps the vsock event queue.
"""

from __future__ import annotations

import array
import dataclasses
import enum
import logging
import os
import socket
import struct
from collections.abc import Callable

from .virtqueue import GuestMemory, RegionSpec, VirtQueue

log = logging.getLogger(__name__)

HEADER = struct.Struct("<III")
FLAG_VERSION = 0x1
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8
VRING_INVALID_FD = 0x100
VRING_INDEX_MASK = 0xFF
MAX_PAYLOAD_BYTES = 4096
MAX_FDS = 16
MAX_MEM_REGIONS = 8

VIRTIO_F_VERSION_1 = 1 << 32
F_PROTOCOL_FEATURES = 1 << 30
PROTOCOL_F_REPLY_ACK = 1 << 3
PROTOCOL_F_CONFIG = 1 << 9

BACKEND_FEATURES = VIRTIO_F_VERSION_1 | F_PROTOCOL_FEATURES
BACKEND_PROTOCOL_FEATURES = PROTOCOL_F_CONFIG | PROTOCOL_F_REPLY_ACK

RX_QUEUE = 0
TX_QUEUE = 1
NUM_QUEUES = 2


class Request(enum.IntEnum):
    """Front-end request codes (vhost-user.rst "Front-end message types")."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SET_BACKEND_REQ_FD = 21
    GET_CONFIG = 24
    SET_CONFIG = 25
    RESET_DEVICE = 34


# Requests whose reply is their natural answer; NEED_REPLY is ignored for them.
_REPLYING = {
    Request.GET_FEATURES,
    Request.GET_PROTOCOL_FEATURES,
    Request.GET_VRING_BASE,
    Request.GET_QUEUE_NUM,
    Request.GET_CONFIG,
}


class ProtocolError(Exception):
    """The front-end sent something we cannot parse; the session must end."""


@dataclasses.dataclass(slots=True)
class Message:
    request: int
    flags: int
    payload: bytes
    fds: list[int]

    def u64(self) -> int:
        self._need(8)
        return int(struct.unpack_from("<Q", self.payload)[0])

    def state(self) -> tuple[int, int]:
        """A ``vhost_vring_state``: (index, num)."""
        self._need(8)
        index, num = struct.unpack_from("<II", self.payload)
        return int(index), int(num)

    def _need(self, n: int) -> None:
        if len(self.payload) < n:
            raise ProtocolError(f"request {self.request}: payload {len(self.payload)} < {n} bytes")


def encode(request: int, payload: bytes, flags: int = FLAG_VERSION) -> bytes:
    return HEADER.pack(request, flags, len(payload)) + payload


def encode_reply(request: int, payload: bytes) -> bytes:
    return encode(request, payload, FLAG_VERSION | FLAG_REPLY)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ProtocolError("front-end closed the socket in the middle of a message")
        buf += chunk
    return bytes(buf)


def read_message(sock: socket.socket) -> Message | None:
    """One message from a blocking socket, or None on a clean EOF."""
    fds = array.array("i")
    data, ancdata, msg_flags, _addr = sock.recvmsg(
        HEADER.size, socket.CMSG_SPACE(MAX_FDS * fds.itemsize), socket.MSG_CMSG_CLOEXEC
    )
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(cdata[: len(cdata) - (len(cdata) % fds.itemsize)])
    fd_list = list(fds)
    try:
        if not data:
            if fd_list:
                raise ProtocolError("EOF carrying file descriptors")
            return None
        if msg_flags & socket.MSG_CTRUNC:
            raise ProtocolError("too many file descriptors in one message")
        if len(data) < HEADER.size:
            data += _recv_exact(sock, HEADER.size - len(data))
        request, flags, size = HEADER.unpack(data)
        if size > MAX_PAYLOAD_BYTES:
            raise ProtocolError(f"request {request}: payload size {size} is too large")
        payload = _recv_exact(sock, size) if size else b""
    except BaseException:
        for fd in fd_list:
            os.close(fd)
        raise
    return Message(request, flags, payload, fd_list)


class Session:
    """The state one front-end connection builds up, and the answers it gets."""

    def __init__(self, guest_cid: int, before_fd_close: Callable[[int], None]) -> None:
        self.guest_cid = guest_cid
        self.features = 0
        self.protocol_features = 0
        self.memory: GuestMemory | None = None
        self.queues = [VirtQueue(i) for i in range(NUM_QUEUES)]
        self._before_fd_close = before_fd_close

    @property
    def config_space(self) -> bytes:
        return struct.pack("<Q", self.guest_cid)

    def close(self) -> None:
        for q in self.queues:
            self._stop(q)
            self._set_call(q, None)
        if self.memory is not None:
            self.memory.close()
            self.memory = None

    def handle(self, msg: Message) -> bytes | None:
        """Apply one message; returns the encoded reply, if one is due."""
        fds = list(msg.fds)
        try:
            name = Request(msg.request).name
        except ValueError:
            name = f"request {msg.request}"
        log.debug("vhost-user %s flags=%#x size=%d fds=%d", name, msg.flags, len(msg.payload),
                  len(fds))
        try:
            reply = self._dispatch(msg, fds)
        finally:
            for fd in fds:  # whatever a handler did not take
                os.close(fd)
        if reply is not None:
            return encode_reply(msg.request, reply)
        if msg.flags & FLAG_NEED_REPLY and msg.request not in _REPLYING:
            status = 1 if msg.request not in Request._value2member_map_ else 0
            return encode_reply(msg.request, struct.pack("<Q", status))
        return None

    def _dispatch(self, msg: Message, fds: list[int]) -> bytes | None:
        r = msg.request
        if r == Request.GET_FEATURES:
            return struct.pack("<Q", BACKEND_FEATURES)
        if r == Request.SET_FEATURES:
            self.features = msg.u64()
            return None
        if r == Request.GET_PROTOCOL_FEATURES:
            return struct.pack("<Q", BACKEND_PROTOCOL_FEATURES)
        if r == Request.SET_PROTOCOL_FEATURES:
            self.protocol_features = msg.u64() & BACKEND_PROTOCOL_FEATURES
            return None
        if r == Request.GET_QUEUE_NUM:
            return struct.pack("<Q", NUM_QUEUES)
        if r in (Request.SET_OWNER, Request.SET_CONFIG, Request.SET_VRING_ERR,
                 Request.SET_BACKEND_REQ_FD):
            return None  # nothing to keep; any fd is closed by handle()
        if r in (Request.RESET_OWNER, Request.RESET_DEVICE):
            self._reset()
            return None
        if r == Request.SET_MEM_TABLE:
            self._set_mem_table(msg, fds)
            return None
        if r == Request.GET_CONFIG:
            return self._get_config(msg)
        if r in (Request.SET_VRING_NUM, Request.SET_VRING_BASE, Request.SET_VRING_ENABLE,
                 Request.GET_VRING_BASE):
            return self._vring_state(msg)
        if r == Request.SET_VRING_ADDR:
            self._set_vring_addr(msg)
            return None
        if r in (Request.SET_VRING_KICK, Request.SET_VRING_CALL):
            self._set_vring_fd(msg, fds)
            return None
        log.warning("vhost-user: ignoring unsupported request %d", r)
        return None

    def _queue(self, index: int) -> VirtQueue | None:
        if 0 <= index < NUM_QUEUES:
            return self.queues[index]
        log.warning("vhost-user: ignoring vring index %d (only rx=0 and tx=1 are ours)", index)
        return None

    def _vring_state(self, msg: Message) -> bytes | None:
        index, num = msg.state()
        q = self._queue(index)
        if msg.request == Request.GET_VRING_BASE:
            base = 0 if q is None else q.last_avail_idx
            if q is not None:
                self._stop(q)
            return struct.pack("<II", index, base)
        if q is None:
            return None
        if msg.request == Request.SET_VRING_NUM:
            if num == 0 or num > 32768 or num & (num - 1):
                raise ProtocolError(f"vring {index}: size {num} is not a power of two <= 32768")
            q.size = num
        elif msg.request == Request.SET_VRING_BASE:
            q.last_avail_idx = q.used_idx = num & 0xFFFF
        else:  # SET_VRING_ENABLE
            q.enabled = bool(num)
        return None

    def _set_vring_addr(self, msg: Message) -> None:
        if len(msg.payload) < 40:
            raise ProtocolError(f"SET_VRING_ADDR payload is {len(msg.payload)} bytes, need 40")
        index, _flags, desc, used, avail, _log_addr = struct.unpack_from("<IIQQQQ", msg.payload)
        q = self._queue(index)
        if q is None:
            return
        q.desc_addr, q.used_addr, q.avail_addr = desc, used, avail
        q.detach()
        self._attach(q)

    def _set_vring_fd(self, msg: Message, fds: list[int]) -> None:
        value = msg.u64()
        q = self._queue(value & VRING_INDEX_MASK)
        fd: int | None = None
        if not value & VRING_INVALID_FD:
            if not fds:
                raise ProtocolError(f"request {msg.request} without a file descriptor")
            fd = fds.pop(0)
        if q is None:
            if fd is not None:
                os.close(fd)
            return
        if msg.request == Request.SET_VRING_CALL:
            self._set_call(q, fd)
            return
        if fd is None:
            log.warning("vring %d: kick without an fd; the ring is polled", q.index)
        self._set_kick(q, fd)
        q.started = True
        if not self.features & F_PROTOCOL_FEATURES:
            q.enabled = True
        self._attach(q)

    def _set_kick(self, q: VirtQueue, fd: int | None) -> None:
        if q.kick_fd is not None:
            self._before_fd_close(q.kick_fd)
            os.close(q.kick_fd)
        q.kick_fd = fd

    def _set_call(self, q: VirtQueue, fd: int | None) -> None:
        if q.call_fd is not None:
            os.close(q.call_fd)
        q.call_fd = fd
        if fd is not None:
            # QEMU swaps call fds without waiting (e.g. while the guest masks
            # a vector); an interrupt signalled on the old fd in between would
            # be lost. One spurious interrupt makes the driver look at its
            # used ring instead (libvhost-user does the same).
            try:
                os.eventfd_write(fd, 1)
            except OSError as exc:
                log.warning("vring %d: new call eventfd cannot be signalled: %s", q.index, exc)

    def _stop(self, q: VirtQueue) -> None:
        q.started = False
        self._set_kick(q, None)
        q.detach()

    def _attach(self, q: VirtQueue) -> None:
        if self.memory is None or not q.started or q.size == 0:
            return
        try:
            q.attach(self.memory)
        except Exception as e:  # a bad address: leave the ring unmapped, keep serving
            log.error("vring %d: cannot map rings: %s", q.index, e)
            q.detach()

    def _reset(self) -> None:
        for q in self.queues:
            self._stop(q)
            self._set_call(q, None)
            q.enabled = False
            q.last_avail_idx = q.used_idx = 0
        self.features = 0

    def _set_mem_table(self, msg: Message, fds: list[int]) -> None:
        if len(msg.payload) < 8:
            raise ProtocolError("SET_MEM_TABLE payload too short")
        (count,) = struct.unpack_from("<I", msg.payload)
        if count > MAX_MEM_REGIONS or len(msg.payload) < 8 + 32 * count or len(fds) < count:
            raise ProtocolError(f"SET_MEM_TABLE: {count} regions, {len(fds)} fds, "
                                f"{len(msg.payload)} payload bytes")
        regions: list[tuple[RegionSpec, int]] = []
        for i in range(count):
            gpa, size, uva, off = struct.unpack_from("<QQQQ", msg.payload, 8 + 32 * i)
            regions.append((RegionSpec(gpa, size, uva, off), fds.pop(0)))
            log.debug("mem region %d: gpa=%#x size=%#x uva=%#x offset=%#x", i, gpa, size, uva,
                      off)
        new = GuestMemory(regions)  # takes ownership of the fds
        old, self.memory = self.memory, new
        for q in self.queues:
            q.detach()
            self._attach(q)
        if old is not None:
            old.close()

    def _get_config(self, msg: Message) -> bytes:
        if len(msg.payload) < 12:
            raise ProtocolError("GET_CONFIG payload too short")
        offset, size, flags = struct.unpack_from("<III", msg.payload)
        data = self.config_space[offset : offset + size].ljust(size, b"\0")
        return struct.pack("<III", offset, size, flags) + data
