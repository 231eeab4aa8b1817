"""The real backend driven by a fake guest: vhost-user front-end + virtio driver, no QEMU.

FakeVirtioDriver plays QEMU *and* the guest's virtio-vsock driver: it owns a
memfd as guest RAM (two regions, the second at a non-zero mmap offset and a
high guest-physical address), lays out split rings, and configures the
backend over its vhost-user socket exactly as QEMU does (features, config,
SET_MEM_TABLE with the memfd, vring num/base/addr/kick/call/enable). Rx
buffers are chained like Linux 6.1 posts them (44-byte header + 4096 bytes).
"""

from __future__ import annotations

import concurrent.futures
import mmap
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kata_py.hypervisor.vsock.backend import Backend
from kata_py.hypervisor.vsock.client import VsockDialError, dial
from kata_py.hypervisor.vsock.packet import (
    HEADER_SIZE,
    SHUTDOWN_BOTH,
    SHUTDOWN_SEND,
    Header,
    Op,
    Packet,
)
from kata_py.hypervisor.vsock.vhost_user import (
    BACKEND_PROTOCOL_FEATURES,
    FLAG_NEED_REPLY,
    FLAG_VERSION,
    HEADER,
    Request,
    encode,
)

GUEST_CID = 7
REGION_BYTES = 2 * 1024 * 1024
HIGH_GPA = 0x1_0000_0000
UVA_BASE = 0x7F00_0000_0000
QUEUE_SIZE = 64
BUF_BYTES = 4096
RX, TX = 0, 1
WAIT_S = 5.0


class FakeVirtioDriver:
    """QEMU's vhost-user front-end plus a minimal guest virtio-vsock driver."""

    def __init__(self, vhost_path: str, guest_buf_alloc: int = 256 * 1024) -> None:
        self.guest_buf_alloc = guest_buf_alloc
        self.fwd_cnt: dict[int, int] = {}  # per guest port: bytes the "guest app" consumed
        self.memfd = os.memfd_create("fake-guest-ram")
        os.ftruncate(self.memfd, 2 * REGION_BYTES)
        self.ram = mmap.mmap(self.memfd, 2 * REGION_BYTES)
        self.kick = [os.eventfd(0, os.EFD_NONBLOCK) for _ in (RX, TX)]
        self.call = [os.eventfd(0, os.EFD_NONBLOCK) for _ in (RX, TX)]
        self.avail_idx = [0, 0]
        self.last_used = [0, 0]
        self.free = [list(range(QUEUE_SIZE)), list(range(QUEUE_SIZE))]
        self.chains: list[dict[int, list[int]]] = [{}, {}]
        self.inbox: list[Packet] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT_S)
        self.sock.connect(vhost_path)

    # -- guest memory: low region gpa 0 at memfd 0, high region at memfd 2 MiB --

    @staticmethod
    def offset(gpa: int) -> int:
        if gpa < REGION_BYTES:
            return gpa
        assert HIGH_GPA <= gpa < HIGH_GPA + REGION_BYTES
        return REGION_BYTES + gpa - HIGH_GPA

    @staticmethod
    def ring_offset(q: int) -> int:
        return 0x10000 * (q + 1)

    @staticmethod
    def buffer_gpa(q: int, desc: int) -> int:
        return HIGH_GPA + (q * QUEUE_SIZE + desc) * BUF_BYTES

    # -- vhost-user front-end ------------------------------------------------

    def request(self, req: int, payload: bytes = b"", fds: list[int] | None = None,
                flags: int = FLAG_VERSION, reply: bool = False) -> bytes | None:
        data = encode(req, payload, flags)
        if fds:
            socket.send_fds(self.sock, [data], fds)
        else:
            self.sock.sendall(data)
        if not reply:
            return None
        r, f, size = HEADER.unpack(self.sock.recv(HEADER.size, socket.MSG_WAITALL))
        assert r == req and f & 0x4
        return self.sock.recv(size, socket.MSG_WAITALL) if size else b""

    def u64(self, req: int) -> int:
        data = self.request(req, reply=True)
        assert data is not None
        return int(struct.unpack("<Q", data)[0])

    def setup(self) -> None:
        features = self.u64(Request.GET_FEATURES)
        self.request(Request.SET_OWNER)
        protocol = self.u64(Request.GET_PROTOCOL_FEATURES)
        assert protocol == BACKEND_PROTOCOL_FEATURES
        self.request(Request.SET_PROTOCOL_FEATURES, struct.pack("<Q", protocol))
        cfg = self.request(Request.GET_CONFIG, struct.pack("<III", 0, 8, 0) + bytes(8),
                           reply=True)
        assert cfg is not None and struct.unpack("<IIIQ", cfg)[3] == GUEST_CID
        self.request(Request.SET_FEATURES, struct.pack("<Q", features))
        regions = struct.pack("<II", 2, 0)
        regions += struct.pack("<QQQQ", 0, REGION_BYTES, UVA_BASE, 0)
        regions += struct.pack("<QQQQ", HIGH_GPA, REGION_BYTES, UVA_BASE + REGION_BYTES,
                               REGION_BYTES)
        ack = self.request(Request.SET_MEM_TABLE, regions, [self.memfd, self.memfd],
                           flags=FLAG_VERSION | FLAG_NEED_REPLY, reply=True)
        assert ack == struct.pack("<Q", 0)
        for q in (RX, TX):
            base = UVA_BASE + self.ring_offset(q)
            self.request(Request.SET_VRING_NUM, struct.pack("<II", q, QUEUE_SIZE))
            self.request(Request.SET_VRING_BASE, struct.pack("<II", q, 0))
            self.request(Request.SET_VRING_ADDR,
                         struct.pack("<IIQQQQ", q, 0, base, base + 0x2000, base + 0x1000, 0))
            self.request(Request.SET_VRING_CALL, struct.pack("<Q", q), [self.call[q]])
            self.request(Request.SET_VRING_KICK, struct.pack("<Q", q), [self.kick[q]])
            ack = self.request(Request.SET_VRING_ENABLE, struct.pack("<II", q, 1),
                               flags=FLAG_VERSION | FLAG_NEED_REPLY, reply=True)
            assert ack == struct.pack("<Q", 0)
            assert os.eventfd_read(self.call[q]) == 1  # a new call fd is signalled once
        for _ in range(QUEUE_SIZE // 2):
            self.post_rx_buffer(kick=False)
        os.eventfd_write(self.kick[RX], 1)

    def close(self) -> None:
        self.sock.close()
        for fd in (*self.kick, *self.call, self.memfd):
            os.close(fd)
        self.ram.close()

    # -- split ring, driver side --------------------------------------------

    def add_chain(self, q: int, bufs: list[tuple[bytes | int, bool]]) -> None:
        """bufs: (data to place, or writable length; device-writable?)"""
        descs = [self.free[q].pop() for _ in bufs]
        table = self.ring_offset(q)
        for i, (desc, (content, writable)) in enumerate(zip(descs, bufs, strict=True)):
            gpa = self.buffer_gpa(q, desc)
            if isinstance(content, int):
                length = content
            else:
                length = len(content)
                off = self.offset(gpa)
                self.ram[off : off + length] = content
            flags = (2 if writable else 0) | (1 if i + 1 < len(descs) else 0)
            nxt = descs[i + 1] if i + 1 < len(descs) else 0
            struct.pack_into("<QIHH", self.ram, table + 16 * desc, gpa, length, flags, nxt)
        avail = table + 0x1000
        struct.pack_into("<H", self.ram, avail + 4 + 2 * (self.avail_idx[q] % QUEUE_SIZE),
                         descs[0])
        self.avail_idx[q] = (self.avail_idx[q] + 1) & 0xFFFF
        struct.pack_into("<H", self.ram, avail + 2, self.avail_idx[q])
        self.chains[q][descs[0]] = descs

    def used(self, q: int) -> list[tuple[list[int], int]]:
        used = self.ring_offset(q) + 0x2000
        idx = struct.unpack_from("<H", self.ram, used + 2)[0]
        out = []
        while self.last_used[q] != idx:
            head, length = struct.unpack_from("<II", self.ram,
                                              used + 4 + 8 * (self.last_used[q] % QUEUE_SIZE))
            descs = self.chains[q].pop(head)
            self.free[q].extend(descs)
            out.append((descs, length))
            self.last_used[q] = (self.last_used[q] + 1) & 0xFFFF
        return out

    def set_no_interrupt(self, q: int, on: bool) -> None:
        struct.pack_into("<H", self.ram, self.ring_offset(q) + 0x1000, 1 if on else 0)

    def post_rx_buffer(self, kick: bool = True) -> None:
        self.add_chain(RX, [(HEADER_SIZE, True), (BUF_BYTES, True)])
        if kick:
            os.eventfd_write(self.kick[RX], 1)

    # -- vsock, guest side ---------------------------------------------------

    def send(self, op: Op, src_port: int, dst_port: int, payload: bytes = b"",
             flags: int = 0, buf_alloc: int | None = None) -> None:
        hdr = Header(src_cid=GUEST_CID, dst_cid=2, src_port=src_port, dst_port=dst_port, op=op,
                     length=len(payload), flags=flags,
                     buf_alloc=self.guest_buf_alloc if buf_alloc is None else buf_alloc,
                     fwd_cnt=self.fwd_cnt.get(src_port, 0))
        bufs: list[tuple[bytes | int, bool]] = [(hdr.encode(), False)]
        if payload:
            bufs.append((payload, False))
        deadline = time.monotonic() + WAIT_S
        self.used(TX)  # reclaim
        while len(self.free[TX]) < len(bufs):
            assert time.monotonic() < deadline, "backend does not consume the tx queue"
            time.sleep(0.001)
            self.used(TX)
        self.add_chain(TX, bufs)
        os.eventfd_write(self.kick[TX], 1)

    def receive(self, timeout_s: float = WAIT_S, want: int = 1) -> list[Packet]:
        """Packets the backend put on rx (at least ``want`` unless timed out)."""
        deadline = time.monotonic() + timeout_s
        packets = self.inbox
        self.inbox = []
        while len(packets) < want:
            for descs, length in self.used(RX):
                hdr_off = self.offset(self.buffer_gpa(RX, descs[0]))
                hdr = Header.decode(self.ram[hdr_off : hdr_off + HEADER_SIZE])
                assert length == HEADER_SIZE + hdr.length
                data_off = self.offset(self.buffer_gpa(RX, descs[1]))
                packets.append(Packet(hdr, self.ram[data_off : data_off + hdr.length]))
                self.post_rx_buffer()
            if len(packets) >= want:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if select.select([self.call[RX]], [], [], remaining)[0]:
                os.eventfd_read(self.call[RX])
        return packets

    def expect(self, op: Op, timeout_s: float = WAIT_S) -> Packet:
        """The next packet, which must be ``op``; later ones stay queued."""
        packets = self.receive(timeout_s)
        assert packets, f"no packet within {timeout_s} s, expected {op.name}"
        pkt, self.inbox = packets[0], packets[1:]
        assert pkt.header.op == op, pkt.header.describe()
        return pkt


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, str]:
    return {"vhost": str(tmp_path / "vhost.sock"), "uds": str(tmp_path / "vsock.sock"),
            "agent": str(tmp_path / "agent.sock"), "dir": str(tmp_path)}


@pytest.fixture
def backend(paths: dict[str, str]) -> Iterator[Backend]:
    b = Backend(paths["vhost"], paths["uds"], GUEST_CID, {1024: paths["agent"]},
                connect_timeout_s=1.0)
    codes: list[int] = []
    t = threading.Thread(target=lambda: codes.append(b.run()), daemon=True)
    t.start()
    yield b
    b.stop()
    t.join(WAIT_S)
    assert not t.is_alive()


@pytest.fixture
def driver(backend: Backend, paths: dict[str, str]) -> Iterator[FakeVirtioDriver]:
    d = FakeVirtioDriver(paths["vhost"])
    d.setup()
    yield d
    d.close()


def dial_async(path: str, port: int, timeout_s: float = WAIT_S
               ) -> concurrent.futures.Future[socket.socket]:
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    fut = pool.submit(dial, path, port, timeout_s)
    pool.shutdown(wait=False)
    return fut


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    sock.settimeout(WAIT_S)
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, f"EOF after {len(buf)} of {n} bytes"
        buf += chunk
    return buf


def open_host_stream(driver: FakeVirtioDriver, paths: dict[str, str], port: int = 1024
                     ) -> tuple[socket.socket, Header]:
    fut = dial_async(paths["uds"], port)
    req = driver.expect(Op.REQUEST).header
    assert (req.dst_cid, req.dst_port, req.src_cid) == (GUEST_CID, port, 2)
    assert req.src_port >= 1 << 30
    driver.send(Op.RESPONSE, port, req.src_port)
    return fut.result(WAIT_S), req


def test_host_dial_gets_ok_after_guest_response_and_bytes_flow_both_ways(
        driver: FakeVirtioDriver, paths: dict[str, str]) -> None:
    sock, req = open_host_stream(driver, paths)
    with sock:
        sock.sendall(b"ping")
        rw = driver.expect(Op.RW)
        assert rw.payload == b"ping" and rw.header.dst_port == 1024
        driver.send(Op.RW, 1024, req.src_port, b"pong")
        assert recv_exactly(sock, 4) == b"pong"


def test_dial_to_unlistened_port_fails_when_guest_resets(
        driver: FakeVirtioDriver, paths: dict[str, str]) -> None:
    fut = dial_async(paths["uds"], 9999)
    req = driver.expect(Op.REQUEST).header
    driver.send(Op.RST, 9999, req.src_port)
    with pytest.raises(VsockDialError, match="port 9999"):
        fut.result(WAIT_S)


def test_dial_fails_after_connect_timeout_without_guest_answer(
        driver: FakeVirtioDriver, paths: dict[str, str]) -> None:
    fut = dial_async(paths["uds"], 1234)
    req = driver.expect(Op.REQUEST).header
    with pytest.raises(VsockDialError, match="port 1234"):
        fut.result(WAIT_S)
    rst = driver.expect(Op.RST).header
    assert rst.dst_port == 1234 and rst.src_port == req.src_port


def test_host_ports_are_distinct_for_live_connections(
        driver: FakeVirtioDriver, paths: dict[str, str]) -> None:
    a, req_a = open_host_stream(driver, paths)
    b, req_b = open_host_stream(driver, paths)
    with a, b:
        assert req_a.src_port != req_b.src_port


def test_guest_rst_closes_host_socket(driver: FakeVirtioDriver, paths: dict[str, str]) -> None:
    sock, req = open_host_stream(driver, paths)
    with sock:
        driver.send(Op.RST, 1024, req.src_port)
        sock.settimeout(WAIT_S)
        assert sock.recv(10) == b""


def test_host_close_sends_shutdown_and_guest_shutdown_gets_rst(
        driver: FakeVirtioDriver, paths: dict[str, str], backend: Backend) -> None:
    sock, req = open_host_stream(driver, paths)
    sock.sendall(b"bye")
    sock.close()
    assert driver.expect(Op.RW).payload == b"bye"
    assert driver.expect(Op.SHUTDOWN).header.flags == SHUTDOWN_SEND
    driver.send(Op.SHUTDOWN, 1024, req.src_port, flags=SHUTDOWN_BOTH)
    driver.expect(Op.RST)
    deadline = time.monotonic() + WAIT_S
    while backend.muxer.stream_count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backend.muxer.stream_count == 0


def test_port_listener_buffers_data_until_guest_accepts(
        driver: FakeVirtioDriver, paths: dict[str, str]) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with sock:
        sock.connect(paths["agent"])
        sock.sendall(b"PRI * HTTP/2.0")
        req = driver.expect(Op.REQUEST).header
        assert req.dst_port == 1024
        driver.send(Op.RESPONSE, 1024, req.src_port)
        assert driver.expect(Op.RW).payload == b"PRI * HTTP/2.0"
        driver.send(Op.RW, 1024, req.src_port, b"SETTINGS")
        assert recv_exactly(sock, 8) == b"SETTINGS"  # no "OK" line on per-port listeners


def test_guest_initiated_connection_reaches_host_listener_at_uds_port_path(
        driver: FakeVirtioDriver, paths: dict[str, str]) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with listener:
        listener.bind(paths["uds"] + "_5000")
        listener.listen()
        driver.send(Op.REQUEST, 49152, 5000)
        resp = driver.expect(Op.RESPONSE).header
        assert (resp.src_port, resp.dst_port) == (5000, 49152)
        listener.settimeout(WAIT_S)
        conn, _ = listener.accept()
        with conn:
            driver.send(Op.RW, 49152, 5000, b"from guest")
            assert recv_exactly(conn, 10) == b"from guest"
            conn.sendall(b"from host")
            assert driver.expect(Op.RW).payload == b"from host"


def test_guest_connection_to_missing_host_listener_gets_rst(driver: FakeVirtioDriver) -> None:
    driver.send(Op.REQUEST, 49153, 6000)
    rst = driver.expect(Op.RST).header
    assert (rst.src_port, rst.dst_port, rst.dst_cid) == (6000, 49153, GUEST_CID)


def test_packet_for_unknown_connection_gets_rst(driver: FakeVirtioDriver) -> None:
    driver.send(Op.RW, 49154, 7000, b"stray")
    driver.expect(Op.RST)


def test_large_host_transfer_respects_guest_credit(paths: dict[str, str],
                                                   backend: Backend) -> None:
    driver = FakeVirtioDriver(paths["vhost"], guest_buf_alloc=16384)
    driver.setup()
    try:
        sock, req = open_host_stream(driver, paths)
        data = os.urandom(300_000)
        sender = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
        sender.start()
        got = bytearray()
        while len(got) < len(data):
            pkts = driver.receive()
            assert pkts, f"stalled after {len(got)} bytes"
            for p in pkts:
                if p.header.op == Op.RW:
                    got += p.payload
                    # never more in flight than the guest advertised
                    assert p.header.length <= 16384
                    assert len(got) - driver.fwd_cnt.get(1024, 0) <= 16384
            # the "guest app" consumes everything and says so
            driver.fwd_cnt[1024] = len(got)
            driver.send(Op.CREDIT_UPDATE, 1024, req.src_port)
        assert bytes(got) == data
        sender.join(WAIT_S)
        sock.close()
    finally:
        driver.close()


def test_large_guest_transfer_reaches_host_intact(driver: FakeVirtioDriver,
                                                   paths: dict[str, str]) -> None:
    sock, req = open_host_stream(driver, paths)
    data = os.urandom(200_000)  # below the backend's 256 KiB buf_alloc: no need to wait
    with sock:
        for pos in range(0, len(data), BUF_BYTES):
            driver.send(Op.RW, 1024, req.src_port, data[pos : pos + BUF_BYTES])
        assert recv_exactly(sock, len(data)) == data


def test_no_interrupt_flag_suppresses_call_eventfd(driver: FakeVirtioDriver) -> None:
    driver.set_no_interrupt(RX, True)
    driver.send(Op.RW, 49155, 7001, b"x")  # answered with RST on rx
    deadline = time.monotonic() + WAIT_S
    while not driver.used(RX) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not select.select([driver.call[RX]], [], [], 0.1)[0]
    driver.post_rx_buffer()
    driver.set_no_interrupt(RX, False)


def test_backend_exits_and_unlinks_sockets_when_frontend_disconnects(
        paths: dict[str, str]) -> None:
    b = Backend(paths["vhost"], paths["uds"], GUEST_CID, {1024: paths["agent"]})
    t = threading.Thread(target=b.run, daemon=True)
    t.start()
    d = FakeVirtioDriver(paths["vhost"])
    d.setup()
    d.close()
    t.join(WAIT_S)
    assert not t.is_alive()
    assert os.listdir(paths["dir"]) == []
