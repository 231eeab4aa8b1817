"""The agent's gRPC services, run on the host over a unix socket, driven by
the host's AgentClient: the same code paths as in the guest, minus the VM."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kata_py.agent.server import AgentServer
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


def test_destroy_sandbox_replies_then_stops_the_server(
        agent: tuple[AgentServer, AgentClient, Path]) -> None:
    server, client, _ = agent
    client.destroy_sandbox()
    assert server.stopping.wait(5)


def test_an_agent_that_is_not_there_is_reported_unavailable(tmp_path: Path) -> None:
    client = AgentClient(f"unix:{tmp_path / 'none.sock'}")
    assert client.check(timeout_s=0.3) is False
    with pytest.raises(AgentError, match="did not answer"):
        client.wait_ready(0.6, lambda: True)
    with pytest.raises(AgentError, match="VM stopped before the agent answered"):
        client.wait_ready(5, lambda: False)
    client.close()


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
