"""The agent's gRPC services, run on the host over a unix socket, driven by
the host's AgentClient: the same code paths as in the guest, minus the VM."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kata_py.agent.server import AgentServer
from kata_py.agent.shared import GRPC_MESSAGE_MAX_BYTES, READ_CAP_BYTES
from kata_py.agent_client import AgentClient
from kata_py.errors import AgentError, NotFoundError


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[AgentServer, AgentClient, Path]]:
    share = tmp_path / "share"
    share.mkdir()
    sock = tmp_path / "agent.sock"
    server = AgentServer(f"unix:{sock}", share)
    server.start()
    client = AgentClient(f"unix:{sock}")
    yield server, client, share
    client.close()
    server.stop(0)


def test_health_check_says_serving(agent: tuple[AgentServer, AgentClient, Path]) -> None:
    _, client, _ = agent
    assert client.check(timeout_s=5)


def test_guest_details_describe_the_running_kernel(
        agent: tuple[AgentServer, AgentClient, Path]) -> None:
    _, client, _ = agent
    details = client.guest_details()
    assert details.kernel_release == os.uname().release
    assert details.online_cpus >= 1
    assert details.mem_total_bytes > 64 << 20
    assert details.shared_dir_mounted is False


def test_shared_file_is_read_back(agent: tuple[AgentServer, AgentClient, Path]) -> None:
    _, client, share = agent
    (share / "sub").mkdir()
    (share / "sub" / "hello.txt").write_bytes(b"from the host\n")
    assert client.read_shared_file("sub/hello.txt") == b"from the host\n"
    assert client.read_shared_file("sub/hello.txt", max_bytes=4) == b"from"


def test_a_shared_file_of_the_read_cap_comes_back_whole(
        agent: tuple[AgentServer, AgentClient, Path]) -> None:
    """Its reply is just over gRPC's default 4 MiB receive limit."""
    _, client, share = agent
    (share / "big").write_bytes(b"x" * (READ_CAP_BYTES + 1))
    assert client.read_shared_file("big") == b"x" * READ_CAP_BYTES


def test_a_request_over_4_mib_reaches_the_agent_and_one_over_its_limit_does_not(
        agent: tuple[AgentServer, AgentClient, Path]) -> None:
    _, client, _ = agent
    with pytest.raises(AgentError) as caught:       # the handler's answer: no containers here
        client.create_container("c1", b"{" * (8 << 20))
    assert caught.value.code == "FAILED_PRECONDITION"
    with pytest.raises(AgentError) as caught:
        client.create_container("c1", b"{" * GRPC_MESSAGE_MAX_BYTES)
    assert caught.value.code == "RESOURCE_EXHAUSTED"


@pytest.mark.parametrize("path", ["../etc/passwd", "/etc/passwd", "a/../../x", ""])
def test_paths_escaping_the_share_are_refused(
        agent: tuple[AgentServer, AgentClient, Path], path: str) -> None:
    _, client, _ = agent
    with pytest.raises(AgentError, match="INVALID_ARGUMENT"):
        client.read_shared_file(path)


def test_symlink_out_of_the_share_is_refused(
        agent: tuple[AgentServer, AgentClient, Path]) -> None:
    _, client, share = agent
    (share / "evil").symlink_to("/etc/hostname")
    with pytest.raises(AgentError, match="leads outside the share"):
        client.read_shared_file("evil")


def test_missing_shared_file_is_not_found(
        agent: tuple[AgentServer, AgentClient, Path]) -> None:
    _, client, _ = agent
    with pytest.raises(NotFoundError, match="No such file"):
        client.read_shared_file("nope.txt")


def test_destroy_sandbox_syncs_replies_then_stops_the_server(
        agent: tuple[AgentServer, AgentClient, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The sync comes before the reply: the host ends QEMU once it has the reply."""
    server, client, _ = agent
    calls: list[str] = []
    monkeypatch.setattr(os, "sync", lambda: calls.append(
        "sync, stopping" if server.stopping.is_set() else "sync"))
    client.destroy_sandbox()
    assert calls == ["sync"]
    assert server.stopping.wait(5)


def test_an_agent_that_is_not_there_is_reported_unavailable(tmp_path: Path) -> None:
    client = AgentClient(f"unix:{tmp_path / 'none.sock'}")
    assert client.check(timeout_s=0.3) is False
    with pytest.raises(AgentError, match="did not answer"):
        client.wait_ready(0.6, lambda: True)
    with pytest.raises(AgentError, match="VM stopped before the agent answered"):
        client.wait_ready(5, lambda: False)
    client.close()


def test_an_agent_slower_than_one_probe_is_still_found_ready(tmp_path: Path) -> None:
    """Under TCG on a busy host a health answer can take longer than the first
    probe's 0.5 s; the probes grow, so boot does not wait out its deadline."""
    from concurrent import futures

    import grpc

    from kata_py.agent.protocols import agent_pb2 as pb
    from kata_py.agent.protocols import agent_pb2_grpc as pb_grpc

    class SlowHealth(pb_grpc.HealthServicer):
        def Check(self, request: pb.CheckRequest, context: grpc.ServicerContext) -> object:
            time.sleep(0.8)
            return pb.HealthCheckResponse(status=pb.HealthCheckResponse.SERVING)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_HealthServicer_to_server(SlowHealth(), server)
    server.add_insecure_port(f"unix:{tmp_path / 'slow.sock'}")
    server.start()
    client = AgentClient(f"unix:{tmp_path / 'slow.sock'}")
    try:
        assert client.wait_ready(15, lambda: True) < 15
    finally:
        client.close()
        server.stop(0)


def test_the_launcher_starts_without_site_only_where_kata_py_is_laid_out_as_installed(
        tmp_path: Path) -> None:
    from kata_py.agent.containers import _launcher_start

    installed = tmp_path / "dist-packages" / "kata_py" / "agent"
    installed.mkdir(parents=True)
    (installed.parent / "__init__.py").write_text("")
    (installed / "launcher.py").write_text("")
    start = _launcher_start(str(installed / "containers.py"))
    assert start[:2] == ("-S", "-c") and repr(str(tmp_path / "dist-packages")) in start[2]
    checkout = tmp_path / "repo" / "agent"          # setuptools maps agent/ to kata_py.agent
    checkout.mkdir(parents=True)
    (checkout / "launcher.py").write_text("")
    assert _launcher_start(str(checkout / "containers.py")) == ("-m", "kata_py.agent.launcher")


class _Context:
    """The two calls _long_poll makes on a grpc.ServicerContext."""

    def __init__(self, remaining: float | None, active_for: int) -> None:
        self.remaining = remaining
        self.active_for = active_for

    def time_remaining(self) -> float | None:
        return self.remaining

    def is_active(self) -> bool:
        self.active_for -= 1
        return self.active_for >= 0


def test_a_long_poll_gives_its_thread_back_when_the_client_goes_away() -> None:
    from kata_py.agent import server
    slices: list[float | None] = []
    ctx = _Context(remaining=None, active_for=2)   # no deadline; cancelled after 3 slices
    assert server._long_poll(ctx, lambda t: slices.append(t)) is None  # type: ignore[arg-type, func-returns-value]
    assert slices == [server.LONG_POLL_SLICE_S] * 3


def test_a_long_poll_returns_what_came_and_ends_at_its_deadline() -> None:
    from kata_py.agent import server
    answers = iter([None, None, b"data"])
    ctx = _Context(remaining=30.0, active_for=99)
    assert server._long_poll(ctx, lambda t: next(answers)) == b"data"  # type: ignore[arg-type]
    slices: list[float | None] = []
    ctx = _Context(remaining=0.25, active_for=99)
    assert server._long_poll(ctx, lambda t: slices.append(t)) is None  # type: ignore[arg-type, func-returns-value]
    assert slices == [0.25]        # the last slice is what is left of the deadline


def test_the_container_inits_exit_is_reported_after_a_sync_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """WaitProcess syncs before it reports the init's exit (its pid namespace,
    and so every writer of the container, is gone): the monitor then ends the VM
    without DestroySandbox. Exec'd processes and a still-running init do not sync."""
    from kata_py.agent.containers import Container, ContainerManager, process_key
    from kata_py.agent.reaper import Exit, Reaper

    syncs: list[str] = []
    manager = ContainerManager(Reaper())
    for key in ("c1", process_key("c1", "e1")):
        manager.containers[key] = Container(key, None, 7, Exit(7), None, None, None,  # type: ignore[arg-type]
                                            -1, None, None)
    monkeypatch.setattr(os, "sync", lambda: syncs.append(
        f"sync, code {manager.containers['c1'].launcher.code}"))
    assert manager.wait("c1", 0) is None and syncs == []            # still running
    manager.containers[process_key("c1", "e1")].launcher._set(0)
    assert manager.wait("c1", 0, "e1") == 0 and syncs == []         # an exec'd process
    manager.containers["c1"].launcher._set(137)
    assert manager.wait("c1", 0) == 137
    assert manager.wait("c1", 0) == 137
    assert syncs == ["sync, code 137"]
