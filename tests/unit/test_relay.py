"""The byte relay that carries vsock port 1024 to the agent's gRPC socket
(here unix → unix, the same code path as vsock → unix in the guest)."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kata_py.agent import relay
from kata_py.agent.server import AgentServer
from kata_py.agent_client import AgentClient


@contextmanager
def relayed(tmp_path: Path) -> Iterator[tuple[socket.socket, socket.socket]]:
    """(client, server): a client of the relay's front socket and the
    backend's end of the connection the relay dialled for it."""
    backend = relay.listen_unix(str(tmp_path / "backend.sock"))
    r = relay.Relay(relay.listen_unix(str(tmp_path / "front.sock")),
                    relay.dial_unix(str(tmp_path / "backend.sock"))).start()
    try:
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(tmp_path / "front.sock"))
        server, _ = backend.accept()
        yield client, server
    finally:
        r.close()
        backend.close()


def test_bytes_and_half_close_cross_the_relay(tmp_path: Path) -> None:
    with relayed(tmp_path) as (client, server):
        payload = os.urandom(1 << 20)

        def send() -> None:
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        server.settimeout(10)
        received = b""
        while chunk := server.recv(65536):
            received += chunk
        sender.join(10)
        assert received == payload
        server.sendall(b"reply")
        server.close()
        assert client.recv(100) == b"reply"
        assert client.recv(100) == b""
        client.close()


def test_connection_is_dropped_when_the_far_side_is_absent(tmp_path: Path) -> None:
    r = relay.Relay(relay.listen_unix(str(tmp_path / "front.sock")),
                    relay.dial_unix(str(tmp_path / "nobody.sock"))).start()
    try:
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(tmp_path / "front.sock"))
        client.settimeout(5)
        assert client.recv(10) == b""
        client.close()
    finally:
        r.close()


def test_grpc_works_through_the_relay(tmp_path: Path) -> None:
    server = AgentServer(f"unix:{tmp_path / 'grpc.sock'}", tmp_path)
    server.start()
    r = relay.Relay(relay.listen_unix(str(tmp_path / "front.sock")),
                    relay.dial_unix(str(tmp_path / "grpc.sock"))).start()
    client = AgentClient(f"unix:{tmp_path / 'front.sock'}")
    try:
        assert client.check(timeout_s=5)
        assert client.guest_details().online_cpus >= 1
    finally:
        client.close()
        r.close()
        server.stop(0)


def test_a_side_that_breaks_ends_the_connection_for_the_other(tmp_path: Path) -> None:
    with relayed(tmp_path) as (client, server):
        client.sendall(b"request")
        server.settimeout(10)
        assert server.recv(7) == b"request"
        client.sendall(b"unread")          # closing with unread bytes resets the relay's side
        threading.Event().wait(0.2)
        server.close()
        client.settimeout(10)
        assert client.recv(100) == b""     # not a hang until the client sends again
        client.close()
