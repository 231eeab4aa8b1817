"""ttrpc, the RPC protocol containerd speaks to shims: framing, server, client.

Owns the wire format of containerd/ttrpc's PROTOCOL.md (ttrpc v1.1, used by
containerd 1.6, and v1.2, containerd 1.7): a frame is a 10-byte big-endian
header (uint32 payload length, uint32 stream id, uint8 type, uint8 flags) and
at most 4 MiB of payload; a request frame carries a `ttrpc.Request`, the
response frame on the same stream id a `ttrpc.Response` (protocols/ttrpc.proto
keeps request.proto's package and field numbers). Codes are gRPC's.

Choices (Go's server.go and services.go decide where they say something):
- Threads, not asyncio: handlers block (gRPC to the agent, subprocesses,
  files). Each connection has a reader thread and each request a thread of its
  own, so containerd's never-ending `Wait` cannot starve the calls it makes
  next on the same connection (Waits would exhaust a pool). A write lock per
  connection keeps frames whole.
- A frame over 4 MiB is read and dropped and its stream answered
  RESOURCE_EXHAUSTED; the connection goes on. A request on an even stream id,
  or one not above the last, or that does not decode, is answered
  INVALID_ARGUMENT (v1.2's rules and texts). Unknown service or method:
  UNIMPLEMENTED "service X" / "method X"; a payload the method's class cannot
  decode: INTERNAL. A handler raises `TtrpcError` for a status; any other
  exception is logged and becomes UNKNOWN with its text. An answer over 4 MiB
  becomes RESOURCE_EXHAUSTED (Go drops the connection instead).
- No streaming: every method is unary and request flags are ignored, so a
  streaming method is an unknown one (UNIMPLEMENTED, as Go answers). Data
  frames and unknown frame types are ignored, as v1.1 does "for future compat".
- A peer closing mid-frame, or any socket error, ends that connection only.
- `Server.shutdown` is Go's `Server.Close`: stop accepting, close every
  connection now (answers of running calls are dropped), join threads within
  a bound. A handler may call it.
- The client sends under one lock, so stream ids (odd, from 1) reach the wire
  in increasing order, which v1.2 servers insist on.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from google.protobuf.message import DecodeError, Message

from kata_py.protocols.ttrpc_pb2 import KeyValue, Request, Response, Status

log = logging.getLogger(__name__)

HEADER = struct.Struct(">IIBB")    # length, stream id, type, flags
HEADER_SIZE = HEADER.size          # 10
MAX_MESSAGE_SIZE = 4 << 20
TYPE_REQUEST, TYPE_RESPONSE, TYPE_DATA = 1, 2, 3
FLAG_REMOTE_CLOSED, FLAG_REMOTE_OPEN, FLAG_NO_DATA = 1, 2, 4

OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED = 0, 1, 2, 3, 4
NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED, RESOURCE_EXHAUSTED = 5, 6, 7, 8
FAILED_PRECONDITION, ABORTED, OUT_OF_RANGE, UNIMPLEMENTED, INTERNAL = 9, 10, 11, 12, 13
UNAVAILABLE = 14

M = TypeVar("M", bound=Message)


class TtrpcError(Exception):
    """A non-OK status (code is a gRPC code)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"ttrpc status {code}: {message}")
        self.code = code
        self.message = message


class TtrpcClosedError(TtrpcError):
    """The client's connection is gone: pending and later calls fail so."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(UNAVAILABLE, "ttrpc: closed" + (f" ({reason})" if reason else ""))


def oversize(length: int) -> str:
    return f"message length {length} exceed maximum message size of {MAX_MESSAGE_SIZE}"


@dataclass(frozen=True)
class CallContext:
    """A handler's call: metadata (key → values, as sent) and the deadline
    (time.monotonic() seconds) from timeout_nano, None without one."""

    service: str
    method: str
    metadata: dict[str, list[str]] = field(default_factory=dict)
    deadline: float | None = None

    def value(self, key: str) -> str | None:
        values = self.metadata.get(key) or self.metadata.get(key.lower())
        return values[0] if values else None

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()


Handler = Callable[[Any, CallContext], Message]
Method = tuple[type[Message], Handler]
Frame = tuple[int, int, int, int, bytes | None]   # length, stream id, type, flags, payload


class _Channel:
    """A connected socket: frames in (one reader thread), out (any thread)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.write_lock = threading.Lock()

    def _read(self, n: int) -> bytes:
        buf = memoryview(bytearray(n))
        got = 0
        while got < n:
            k = self.sock.recv_into(buf[got:], n - got)
            if k == 0:
                raise EOFError(f"peer closed mid-frame ({got} of {n} bytes)")
            got += k
        return bytes(buf)

    def recv(self) -> Frame | None:
        """The next frame, None at a clean end; an oversize payload is
        discarded and comes back as None."""
        first = self.sock.recv(HEADER_SIZE)
        if not first:
            return None
        header = first + self._read(HEADER_SIZE - len(first))
        length, stream_id, mtype, flags = HEADER.unpack(header)
        if length <= MAX_MESSAGE_SIZE:
            return length, stream_id, mtype, flags, self._read(length)
        for offset in range(0, length, 1 << 16):
            self._read(min(1 << 16, length - offset))
        return length, stream_id, mtype, flags, None

    def send(self, stream_id: int, mtype: int, payload: bytes, flags: int = 0) -> None:
        with self.write_lock:
            self.sock.sendall(HEADER.pack(len(payload), stream_id, mtype, flags) + payload)

    def shutdown(self) -> None:
        """Any thread: wakes the reader (EOF) and blocked writers (EPIPE)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        """The reader thread, at its end: the fd goes once no send uses it."""
        self.shutdown()
        with self.write_lock:
            self.sock.close()



class Server:
    """Serves registered services on listening unix sockets until shutdown."""

    def __init__(self) -> None:
        self._services: dict[str, dict[str, Method]] = {}
        self._lock = threading.Lock()
        self._conns: set[_ServerConn] = set()
        self._serving: list[threading.Thread] = []
        self._closing = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()

    def register(self, name: str, methods: Mapping[str, Method]) -> None:
        """Add service `name` (e.g. "containerd.task.v2.Task"): method name →
        (request message class, handler(request, CallContext) -> message)."""
        with self._lock:
            if name in self._services:
                raise ValueError(f"duplicate service {name} registered")
            self._services[name] = dict(methods)

    def start(self, listener: socket.socket) -> threading.Thread:
        """`serve` on a new thread."""
        thread = threading.Thread(target=self.serve, args=(listener,), name="ttrpc-accept",
                                  daemon=True)
        thread.start()
        return thread

    def serve(self, listener: socket.socket) -> None:
        """Accept connections on a bound, listening socket until shutdown;
        then close it."""
        with self._lock:
            self._serving.append(threading.current_thread())
        listener.setblocking(False)
        backoff = 0.0
        with listener, selectors.DefaultSelector() as sel:
            sel.register(listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)   # readable once closing
            while sel.select() and not self._closing.is_set():
                try:
                    sock, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:      # EMFILE and the like: back off, retry
                    backoff = min(max(backoff * 2, 0.001), 1.0)
                    log.error("ttrpc: accept failed (%s); retrying in %.3fs", exc, backoff)
                    self._closing.wait(backoff)
                    continue
                backoff = 0.0
                sock.setblocking(True)
                with self._lock:
                    if self._closing.is_set():
                        sock.close()
                        break
                    conn = _ServerConn(self, sock)
                    self._conns.add(conn)
                conn.reader.start()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop accepting, close all connections, join threads for ≤ timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._closing.set()
            conns, threads = list(self._conns), list(self._serving)
        self._wake_w.send(b"x")
        for conn in conns:
            conn.chan.shutdown()
            threads += [conn.reader, *conn.handlers.copy().values()]
        threads = [t for t in threads if t is not threading.current_thread()]
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if stuck := [t.name for t in threads if t.is_alive()]:
            log.warning("ttrpc: shutdown left threads running: %s", stuck)

    def _dispatch(self, req: Request) -> tuple[int, str, bytes]:
        """Run one request: status code, status message, response payload."""
        method = self._services.get(req.service)
        if method is None:
            return UNIMPLEMENTED, f"service {req.service}", b""
        if (entry := method.get(req.method)) is None:
            return UNIMPLEMENTED, f"method {req.method}", b""
        cls, handler = entry
        try:
            msg = cls.FromString(req.payload)
        except DecodeError as exc:
            return INTERNAL, f"ttrpc: error unmarshalling payload: {exc}", b""
        metadata: dict[str, list[str]] = {}
        for kv in req.metadata:
            metadata.setdefault(kv.key, []).append(kv.value)
        deadline = time.monotonic() + req.timeout_nano / 1e9 if req.timeout_nano else None
        try:
            result = handler(msg, CallContext(req.service, req.method, metadata, deadline))
        except TtrpcError as exc:
            return exc.code, exc.message, b""
        except Exception as exc:
            log.exception("ttrpc: /%s/%s failed", req.service, req.method)
            return UNKNOWN, str(exc) or type(exc).__name__, b""
        if not isinstance(result, Message):
            return INTERNAL, f"ttrpc: error unsupported response type: {type(result)}", b""
        return OK, "", result.SerializeToString()


class _ServerConn:
    def __init__(self, server: Server, sock: socket.socket) -> None:
        self.server = server
        self.chan = _Channel(sock)
        self.last_id = 0
        self.handlers: dict[int, threading.Thread] = {}   # stream id → running call
        self.reader = threading.Thread(target=self._run, name="ttrpc-conn", daemon=True)

    def _run(self) -> None:
        try:
            while (frame := self.chan.recv()) is not None:
                self._frame(*frame)
        except (EOFError, OSError) as exc:
            log.debug("ttrpc: connection ends: %s", exc)
        except Exception:
            log.exception("ttrpc: connection failed")
        finally:
            self.chan.close()
            with self.server._lock:
                self.server._conns.discard(self)

    def _frame(self, length: int, stream_id: int, mtype: int, flags: int,
               payload: bytes | None) -> None:
        if payload is None:
            log.warning("ttrpc: stream %d: %s", stream_id, oversize(length))
            return self.respond(stream_id, RESOURCE_EXHAUSTED, oversize(length))
        if mtype != TYPE_REQUEST:
            return log.debug("ttrpc: frame of type %d on stream %d ignored", mtype, stream_id)
        if stream_id % 2 != 1:
            return self.respond(stream_id, INVALID_ARGUMENT,
                                "StreamID must be odd for client initiated streams")
        if stream_id <= self.last_id:
            return self.respond(stream_id, INVALID_ARGUMENT,
                                "StreamID cannot be re-used and must increment")
        self.last_id = stream_id
        try:
            req = Request.FromString(payload)
        except DecodeError as exc:
            return self.respond(stream_id, INVALID_ARGUMENT, f"unmarshal request error: {exc}")
        thread = threading.Thread(target=self._call, args=(stream_id, req), daemon=True,
                                  name=f"ttrpc-{req.method}-{stream_id}")
        self.handlers[stream_id] = thread
        thread.start()

    def _call(self, stream_id: int, req: Request) -> None:
        try:
            self.respond(stream_id, *self.server._dispatch(req))
        finally:
            self.handlers.pop(stream_id, None)

    def respond(self, stream_id: int, code: int, message: str, payload: bytes = b"") -> None:
        data = Response(status=Status(code=code, message=message),
                        payload=payload).SerializeToString()
        if len(data) > MAX_MESSAGE_SIZE:
            status = Status(code=RESOURCE_EXHAUSTED, message=oversize(len(data)))
            data = Response(status=status).SerializeToString()
        try:
            self.chan.send(stream_id, TYPE_RESPONSE, data)
        except OSError as exc:
            log.debug("ttrpc: stream %d: response lost: %s", stream_id, exc)


class _Pending:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Response | TtrpcError | None = None


class Client:
    """A ttrpc connection to a unix socket; `call` is safe from any thread."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(os.fspath(path))
        except BaseException:
            sock.close()
            raise
        self._chan = _Channel(sock)
        self._send_lock = threading.Lock()     # held from id allocation to sent frame
        self._lock = threading.Lock()          # _pending, _closed
        self._next_id = 1
        self._pending: dict[int, _Pending] = {}
        self._closed: TtrpcClosedError | None = None
        self._reader = threading.Thread(target=self._run, name="ttrpc-client", daemon=True)
        self._reader.start()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, service: str, method: str, request: Message, response_class: type[M],
             timeout: float | None = None,
             metadata: Mapping[str, str | Sequence[str]] | None = None) -> M:
        """/service/method; raises TtrpcError for a non-OK status or after
        timeout seconds (DEADLINE_EXCEEDED), TtrpcClosedError without a
        connection."""
        req = Request(service=service, method=method, payload=request.SerializeToString())
        if timeout is not None:
            if timeout <= 0:
                raise TtrpcError(DEADLINE_EXCEEDED, "context deadline exceeded")
            req.timeout_nano = int(timeout * 1e9)
        for key, values in (metadata or {}).items():
            for value in [values] if isinstance(values, str) else values:
                req.metadata.append(KeyValue(key=key, value=value))
        data = req.SerializeToString()
        if len(data) > MAX_MESSAGE_SIZE:
            raise TtrpcError(RESOURCE_EXHAUSTED, oversize(len(data)))
        pending = _Pending()
        with self._send_lock:
            with self._lock:
                if self._closed is not None:
                    raise self._closed
                stream_id, self._next_id = self._next_id, self._next_id + 2
                if stream_id > 0xFFFFFFFF:
                    raise TtrpcError(RESOURCE_EXHAUSTED, "ttrpc: stream ids used up")
                self._pending[stream_id] = pending
            try:
                self._chan.send(stream_id, TYPE_REQUEST, data)
            except OSError as exc:
                self._fail_all(TtrpcClosedError(str(exc)))
        if not pending.done.wait(timeout):
            with self._lock:
                self._pending.pop(stream_id, None)
            raise TtrpcError(DEADLINE_EXCEEDED, "context deadline exceeded")
        if isinstance(pending.result, TtrpcError):
            raise pending.result
        assert pending.result is not None
        if (status := pending.result.status).code != OK:
            raise TtrpcError(status.code, status.message)
        try:
            return response_class.FromString(pending.result.payload)
        except DecodeError as exc:
            raise TtrpcError(INTERNAL, f"ttrpc: error unmarshalling response: {exc}") from exc

    def close(self) -> None:
        """Close the connection; pending calls fail with TtrpcClosedError."""
        self._fail_all(TtrpcClosedError())
        self._chan.shutdown()
        if self._reader is not threading.current_thread():
            self._reader.join(5.0)

    def _run(self) -> None:
        reason = "connection closed by server"
        try:
            while (frame := self._chan.recv()) is not None:
                length, stream_id, mtype, _, payload = frame
                with self._lock:
                    pending = self._pending.pop(stream_id, None) if mtype == TYPE_RESPONSE else None
                if pending is None:    # late (timed out) answers, data frames
                    log.debug("ttrpc: frame of type %d for stream %d dropped", mtype, stream_id)
                    continue
                try:
                    pending.result = (Response.FromString(payload) if payload is not None else
                                      TtrpcError(RESOURCE_EXHAUSTED, oversize(length)))
                except DecodeError as exc:
                    pending.result = TtrpcError(INTERNAL, f"ttrpc: bad response: {exc}")
                pending.done.set()
        except (EOFError, OSError) as exc:
            reason = str(exc)
        except Exception as exc:
            log.exception("ttrpc: client reader failed")
            reason = str(exc)
        finally:
            self._fail_all(TtrpcClosedError(reason))
            self._chan.close()

    def _fail_all(self, error: TtrpcClosedError) -> None:
        with self._lock:
            self._closed = self._closed or error
            pending, self._pending = list(self._pending.values()), {}
        for p in pending:
            p.result = error
            p.done.set()
