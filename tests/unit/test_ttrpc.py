"""kata_py.shimv2.ttrpc against containerd/ttrpc's wire format, over real unix sockets."""

from __future__ import annotations

import functools
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from google.protobuf.empty_pb2 import Empty
from google.protobuf.wrappers_pb2 import BytesValue, StringValue

from kata_py.private import bind_unix
from kata_py.protocols.ttrpc_pb2 import KeyValue, Request, Response, Status
from kata_py.shimv2 import ttrpc

SVC = "test.v1.Svc"


class Fixture:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.release = threading.Event()
        self.waiting = threading.Semaphore(0)
        self.seen: list[ttrpc.CallContext] = []
        self.server = ttrpc.Server()
        self.server.register(SVC, {
            "Echo": (StringValue, lambda req, ctx: StringValue(value=req.value)),
            "Ctx": (Empty, self.ctx),
            "Wait": (Empty, self.wait),
            "Fail": (Empty, self.fail),
            "Bug": (Empty, self.bug),
        })
        self.server.start(bind_unix(path))

    def ctx(self, req: Empty, ctx: ttrpc.CallContext) -> Empty:
        self.seen.append(ctx)
        return Empty()

    def wait(self, req: Empty, ctx: ttrpc.CallContext) -> Empty:
        self.waiting.release()
        assert self.release.wait(10)
        return Empty()

    def fail(self, req: Empty, ctx: ttrpc.CallContext) -> Empty:
        raise ttrpc.TtrpcError(ttrpc.NOT_FOUND, "no such thing")

    def bug(self, req: Empty, ctx: ttrpc.CallContext) -> Empty:
        raise ValueError("handler bug")

    def client(self) -> ttrpc.Client:
        return ttrpc.Client(self.path)

    def echo(self, client: ttrpc.Client, text: str) -> str:
        return client.call(SVC, "Echo", StringValue(value=text), StringValue, timeout=5).value


@pytest.fixture
def fx(tmp_path: Path) -> Iterator[Fixture]:
    f = Fixture(tmp_path / "s")
    yield f
    f.release.set()
    f.server.shutdown(timeout=2)


def frame(stream_id: int, mtype: int, payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">IIBB", len(payload), stream_id, mtype, flags) + payload


def read_frame(sock: socket.socket) -> tuple[int, int, int, bytes]:
    def exact(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "server closed the connection"
            data += chunk
        return data
    length, stream_id, mtype, flags = struct.unpack(">IIBB", exact(10))
    return stream_id, mtype, flags, exact(length)


def raw(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(path))
    return sock


def status_of(payload: bytes) -> tuple[int, str]:
    resp = Response.FromString(payload)
    return resp.status.code, resp.status.message


# Hand-encoded protobuf: tag = field << 3 | wire type (0 varint, 2 bytes).
REQ_ECHO_HI = (b"\x0a\x0btest.v1.Svc" b"\x12\x04Echo" b"\x1a\x04\x0a\x02hi"
               b"\x2a\x06\x0a\x01k\x12\x01v")
# The same with timeout_nano = 1e9 = 0x3b9aca00: tag 0x20, varint 80 94 eb dc 03.
REQ_ECHO_HI_1S = REQ_ECHO_HI[:-8] + b"\x20\x80\x94\xeb\xdc\x03" + REQ_ECHO_HI[-8:]


def test_header_and_messages_are_byte_exact() -> None:
    assert ttrpc.HEADER.pack(0x0102, 7, ttrpc.TYPE_RESPONSE, ttrpc.FLAG_REMOTE_CLOSED) == (
        b"\x00\x00\x01\x02\x00\x00\x00\x07\x02\x01")
    assert (ttrpc.HEADER_SIZE, ttrpc.MAX_MESSAGE_SIZE) == (10, 4194304)
    req = Request(service=SVC, method="Echo", payload=StringValue(value="hi").SerializeToString(),
                  timeout_nano=1_000_000_000, metadata=[KeyValue(key="k", value="v")])
    assert req.SerializeToString() == REQ_ECHO_HI_1S
    resp = Response(status=Status(code=5, message="nop"), payload=b"\x0a\x02yo")
    assert resp.SerializeToString() == b"\x0a\x07\x08\x05\x12\x03nop\x12\x04\x0a\x02yo"


def test_client_frames_are_byte_exact(tmp_path: Path) -> None:
    listener = bind_unix(tmp_path / "raw")
    listener.settimeout(5)
    replies = [frame(1, 2, b"\x0a\x00\x12\x04\x0a\x02yo"),
               frame(3, 2, b"\x0a\x07\x08\x05\x12\x03nop")]
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            for reply in replies:
                stream_id, mtype, flags, payload = read_frame(conn)
                got.append(frame(stream_id, mtype, payload, flags))
                conn.sendall(reply)

    thread = threading.Thread(target=serve)
    thread.start()
    with ttrpc.Client(tmp_path / "raw") as client:
        reply = client.call(SVC, "Echo", StringValue(value="hi"), StringValue,
                            metadata={"k": "v"})
        assert reply.value == "yo"
        with pytest.raises(ttrpc.TtrpcError) as err:
            client.call(SVC, "Echo", StringValue(value="hi"), StringValue, timeout=1.0,
                        metadata={"k": ["v"]})
    thread.join(5)
    listener.close()
    assert (err.value.code, err.value.message) == (5, "nop")
    assert got == [frame(1, 1, REQ_ECHO_HI), frame(3, 1, REQ_ECHO_HI_1S)]


def test_server_frames_are_byte_exact(fx: Fixture) -> None:
    with raw(fx.path) as sock:
        sock.sendall(frame(1, 1, REQ_ECHO_HI))
        assert read_frame(sock) == (1, 2, 0, b"\x0a\x00\x12\x04\x0a\x02hi")
        sock.sendall(frame(3, 1, b"\x0a\x04nope\x12\x01m"))
        assert read_frame(sock) == (3, 2, 0, b"\x0a\x10\x08\x0c\x12\x0cservice nope")


def test_round_trip_with_metadata_and_deadline(fx: Fixture) -> None:
    with fx.client() as client:
        assert fx.echo(client, "hello") == "hello"
        assert fx.echo(client, "") == ""
        client.call(SVC, "Ctx", Empty(), Empty, timeout=30,
                    metadata={"containerd-namespace": "k8s.io", "Multi": ["a", "b"]})
        client.call(SVC, "Ctx", Empty(), Empty)
    with_deadline, without = fx.seen
    assert with_deadline.metadata == {"containerd-namespace": ["k8s.io"], "Multi": ["a", "b"]}
    assert with_deadline.value("containerd-namespace") == "k8s.io"
    remaining = with_deadline.remaining()
    assert remaining is not None and 25 < remaining <= 30
    assert (without.metadata, without.deadline, without.value("x")) == ({}, None, None)


def test_unknown_service_and_method_are_unimplemented(fx: Fixture) -> None:
    with fx.client() as client:
        for service, method, message in [("nope.v1.X", "Echo", "service nope.v1.X"),
                                         (SVC, "Nope", "method Nope")]:
            with pytest.raises(ttrpc.TtrpcError) as err:
                client.call(service, method, Empty(), Empty)
            assert (err.value.code, err.value.message) == (ttrpc.UNIMPLEMENTED, message)


def test_handler_errors_reach_the_client(fx: Fixture) -> None:
    with fx.client() as client:
        with pytest.raises(ttrpc.TtrpcError) as err:
            client.call(SVC, "Fail", Empty(), Empty)
        assert (err.value.code, err.value.message) == (ttrpc.NOT_FOUND, "no such thing")
        with pytest.raises(ttrpc.TtrpcError) as err:
            client.call(SVC, "Bug", Empty(), Empty)
        assert (err.value.code, err.value.message) == (ttrpc.UNKNOWN, "handler bug")
        with pytest.raises(ttrpc.TtrpcError) as err:   # not UTF-8: no StringValue
            client.call(SVC, "Echo", BytesValue(value=b"\xff"), StringValue)
        assert err.value.code == ttrpc.INTERNAL
        assert err.value.message.startswith("ttrpc: error unmarshalling payload: ")
        assert fx.echo(client, "still fine") == "still fine"


def test_bad_frames_get_an_answer_and_the_connection_goes_on(fx: Fixture) -> None:
    with raw(fx.path) as sock:
        sock.sendall(struct.pack(">IIBB", ttrpc.MAX_MESSAGE_SIZE + 1, 1, 1, 0))
        sock.sendall(bytes(ttrpc.MAX_MESSAGE_SIZE + 1))
        stream_id, mtype, _, payload = read_frame(sock)
        assert (stream_id, mtype) == (1, 2)
        assert status_of(payload) == (ttrpc.RESOURCE_EXHAUSTED,
                                      "message length 4194305 exceed maximum message size "
                                      "of 4194304")
        sock.sendall(frame(2, 1, REQ_ECHO_HI))
        stream_id, _, _, payload = read_frame(sock)
        assert (stream_id, status_of(payload)) == (2, (
            ttrpc.INVALID_ARGUMENT, "StreamID must be odd for client initiated streams"))
        sock.sendall(frame(3, 1, b"\xff\xff"))
        stream_id, _, _, payload = read_frame(sock)
        assert stream_id == 3 and status_of(payload)[0] == ttrpc.INVALID_ARGUMENT
        sock.sendall(frame(5, 3, b"data", ttrpc.FLAG_REMOTE_CLOSED))   # ignored
        sock.sendall(frame(7, 1, REQ_ECHO_HI))
        assert read_frame(sock) == (7, 2, 0, b"\x0a\x00\x12\x04\x0a\x02hi")
        sock.sendall(frame(7, 1, REQ_ECHO_HI))                           # re-used id
        stream_id, _, _, payload = read_frame(sock)
        assert (stream_id, status_of(payload)) == (7, (
            ttrpc.INVALID_ARGUMENT, "StreamID cannot be re-used and must increment"))


def test_a_truncated_frame_ends_only_that_connection(fx: Fixture) -> None:
    with fx.client() as client:
        for cut in (3, 10, 10 + len(REQ_ECHO_HI) - 1):
            with raw(fx.path) as sock:
                sock.sendall(frame(1, 1, REQ_ECHO_HI)[:cut])
            assert fx.echo(client, f"after {cut}") == f"after {cut}"
        with fx.client() as other:
            assert fx.echo(other, "new connection") == "new connection"


def test_calls_run_concurrently_beside_a_blocked_wait(fx: Fixture) -> None:
    errors: list[BaseException] = []

    def run(fn: Callable[[], object]) -> threading.Thread:
        def target() -> None:
            try:
                fn()
            except BaseException as exc:
                errors.append(exc)
        thread = threading.Thread(target=target)
        thread.start()
        return thread

    with fx.client() as client:
        waiter = run(lambda: client.call(SVC, "Wait", Empty(), Empty, timeout=10))
        assert fx.waiting.acquire(timeout=5)
        for i in range(10):
            assert fx.echo(client, str(i)) == str(i)

        def many(i: int) -> None:
            with fx.client() as c:
                for j in range(5):
                    assert fx.echo(c, f"{i}.{j}") == f"{i}.{j}"
                assert fx.echo(client, f"shared {i}") == f"shared {i}"
        threads = [run(functools.partial(many, i)) for i in range(20)]
        for t in threads:
            t.join(10)
        assert waiter.is_alive() and not errors
        fx.release.set()
        waiter.join(5)
    assert not waiter.is_alive() and not errors


def test_the_bound_socket_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        sock = bind_unix(tmp_path / "s")
    finally:
        os.umask(old)
    with sock:
        assert stat.S_IMODE(os.stat(tmp_path / "s").st_mode) == 0o600
        assert stat.S_ISSOCK(os.stat(tmp_path / "s").st_mode)


def test_pending_calls_fail_when_the_server_goes_away(fx: Fixture) -> None:
    client = fx.client()
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            client.call(SVC, "Wait", Empty(), Empty)
        except BaseException as exc:
            outcome.append(exc)
    thread = threading.Thread(target=wait)
    thread.start()
    assert fx.waiting.acquire(timeout=5)
    started = time.monotonic()
    fx.server.shutdown(timeout=0.2)
    thread.join(5)
    assert time.monotonic() - started < 2
    assert len(outcome) == 1 and isinstance(outcome[0], ttrpc.TtrpcClosedError)
    assert outcome[0].code == ttrpc.UNAVAILABLE and "ttrpc: closed" in outcome[0].message
    with pytest.raises(ttrpc.TtrpcClosedError):
        fx.echo(client, "too late")
    client.close()
    with pytest.raises(ConnectionRefusedError):
        fx.client()


def test_a_call_times_out_and_the_connection_goes_on(fx: Fixture) -> None:
    with fx.client() as client:
        with pytest.raises(ttrpc.TtrpcError) as err:
            client.call(SVC, "Wait", Empty(), Empty, timeout=0.2)
        assert err.value.code == ttrpc.DEADLINE_EXCEEDED
        fx.release.set()                      # its late answer is dropped
        assert fx.echo(client, "next") == "next"
