"""The lifecycle core (kata_py/container.py, the membership and stop policy
of kata_py/sandbox.py) over fakes of the sandbox and the agent
(tests/unit/fakes.py): what a create does on each failure, and which
container's stop ends the VM."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from kata_py.config import RuntimeConfig
from kata_py.container import Container, CreateRequest, KillRequest
from kata_py.errors import AgentError, ExistsError, HypervisorError, KataError, StateError
from kata_py.spec import Spec, parse_spec
from tests.unit.fakes import AGENT_FAULT, BOOT_FAULT, FakeSandbox


@pytest.fixture(autouse=True)
def fresh_fakes() -> Iterator[None]:
    FakeSandbox.made = []
    yield
    FakeSandbox.boot_fault = FakeSandbox.share_fault = None
    FakeSandbox.agent_faults = {}


@pytest.fixture
def cfg(tmp_path: Path) -> RuntimeConfig:
    return dataclasses.replace(RuntimeConfig(), state_dir=str(tmp_path / "state"))


def spec_in(bundle: Path, memory_limit: int | None = None) -> Spec:
    (bundle / "rootfs").mkdir(parents=True, exist_ok=True)
    doc: dict[str, object] = {"ociVersion": "1.2.0", "root": {"path": "rootfs"},
                              "process": {"args": ["sh"], "cwd": "/"}}
    if memory_limit is not None:
        doc["linux"] = {"resources": {"memory": {"limit": memory_limit}}}
    return parse_spec(doc, bundle)


def create(cfg: RuntimeConfig, tmp_path: Path, cid: str, sandbox: FakeSandbox | None = None,
           memory_limit: int | None = None) -> Container:
    bundle = tmp_path / cid
    return Container.create(cfg, CreateRequest(cid, bundle), spec_in(bundle, memory_limit),
                            sandbox=sandbox, new_sandbox=FakeSandbox)


def test_create_boots_a_sandbox_sized_for_the_spec_and_joins_it(cfg: RuntimeConfig,
                                                                 tmp_path: Path) -> None:
    container = create(cfg, tmp_path, "c1", memory_limit=1 << 30)
    (sandbox,) = FakeSandbox.made
    assert container.sandbox is sandbox and sandbox.members == {"c1"}
    assert sandbox.events == ["start", "watch"]
    assert sandbox.shared == ["c1/rootfs"]
    assert sandbox.fake_agent.calls == [("create_container", "c1")]
    assert sandbox.cfg.hypervisor.memory_mib > cfg.hypervisor.memory_mib   # 1 GiB limit + guest


def test_a_boot_failure_raises_and_joins_nothing(cfg: RuntimeConfig, tmp_path: Path) -> None:
    FakeSandbox.boot_fault = BOOT_FAULT
    with pytest.raises(HypervisorError, match="QEMU exited during boot"):
        create(cfg, tmp_path, "c1")
    (sandbox,) = FakeSandbox.made
    assert sandbox.members == set() and sandbox.fake_agent.calls == []


@pytest.mark.parametrize("fault", ["agent", "share"])
def test_a_failed_create_stops_the_new_sandbox_it_booted(cfg: RuntimeConfig, tmp_path: Path,
                                                          fault: str) -> None:
    if fault == "agent":
        FakeSandbox.agent_faults = {"create_container": AGENT_FAULT}
    else:
        FakeSandbox.share_fault = KataError("cannot bind the rootfs", "check the bundle")
    with pytest.raises(KataError):
        create(cfg, tmp_path, "c1")
    (sandbox,) = FakeSandbox.made
    assert sandbox.events == ["start", "watch", "stop"] and sandbox.members == set()
    assert sandbox.fake_agent.closed and sandbox.agent is None


def test_a_failed_create_in_a_shared_sandbox_leaves_it_running(cfg: RuntimeConfig,
                                                                tmp_path: Path) -> None:
    first = create(cfg, tmp_path, "c1")
    sandbox = first.sandbox
    assert isinstance(sandbox, FakeSandbox)
    sandbox.fake_agent.faults["create_container"] = AGENT_FAULT
    with pytest.raises(AgentError):
        create(cfg, tmp_path, "c2", sandbox=sandbox)
    assert sandbox.members == {"c1"} and "stop" not in sandbox.events
    assert len(FakeSandbox.made) == 1          # no second VM booted


@pytest.mark.parametrize("owned", [True, False])
def test_a_spec_refused_after_the_boot_stops_only_a_sandbox_booted_for_it(
        cfg: RuntimeConfig, tmp_path: Path, owned: bool) -> None:
    """The shim boots a task's VM at `start` and hands it to Create: a
    config.json refused then must not leave that VM running."""
    sandbox = Container.boot(cfg, "c1", spec_in(tmp_path / "c1"), FakeSandbox)
    (tmp_path / "gone").mkdir()             # no config.json
    with pytest.raises(KataError):
        Container.create(cfg, CreateRequest("c1", tmp_path / "gone"), sandbox=sandbox,
                         owns_sandbox=owned, new_sandbox=FakeSandbox)
    assert ("stop" in sandbox.events) is owned and sandbox.members == set()


def test_the_same_id_twice_in_one_sandbox_is_refused(cfg: RuntimeConfig, tmp_path: Path) -> None:
    first = create(cfg, tmp_path, "c1")
    with pytest.raises(ExistsError, match="already in sandbox c1"):
        create(cfg, tmp_path, "c1", sandbox=first.sandbox)    # type: ignore[arg-type]
    assert first.sandbox.members == {"c1"} and first.sandbox.agent is not None


def test_last_member_policy_stops_the_vm_with_its_last_container(cfg: RuntimeConfig,
                                                                 tmp_path: Path) -> None:
    first = create(cfg, tmp_path, "c1")
    sandbox = first.sandbox
    second = create(cfg, tmp_path, "c2", sandbox=sandbox)  # type: ignore[arg-type]
    first.stop()
    assert sandbox.agent is not None and sandbox.members == {"c2"}
    second.stop(guest_flushed=True)
    assert sandbox.agent is None and sandbox.members == set()
    assert ("destroy_sandbox",) not in sandbox.fake_agent.calls      # type: ignore[attr-defined]


def test_sandbox_container_policy_stops_the_vm_when_the_pods_container_goes(
        cfg: RuntimeConfig, tmp_path: Path) -> None:
    sandbox = FakeSandbox("pod", cfg, stop_policy="sandbox-container")
    sandbox.start()
    pause = create(cfg, tmp_path, "pod", sandbox=sandbox)
    app = create(cfg, tmp_path, "app", sandbox=sandbox)
    app.stop()
    assert sandbox.agent is not None
    pause.stop()
    assert sandbox.agent is None and sandbox.events[-1] == "stop"
    assert ("destroy_sandbox",) in sandbox.fake_agent.calls     # not flushed: asked first
    with pytest.raises(StateError, match="sandbox pod is stopping"):
        create(cfg, tmp_path, "late", sandbox=sandbox)


def test_verbs_reach_the_agent_with_the_containers_id(cfg: RuntimeConfig,
                                                      tmp_path: Path) -> None:
    container = create(cfg, tmp_path, "c1")
    container.start()
    container.kill(KillRequest(15, all=True))
    container.pause()
    container.resume()
    container.update({"memory_max": 1 << 28})
    assert container.sandbox.fake_agent.calls[1:] == [   # type: ignore[attr-defined]
        ("start_container", "c1"), ("signal_process", "c1", 15, True, ""),
        ("pause_container", "c1"), ("resume_container", "c1"),
        ("update_container", "c1", b'{"memory_max": 268435456}')]
    with pytest.raises(KataError, match="nothing to update"):
        container.update({})


def test_a_verb_on_a_stopped_sandbox_names_it(cfg: RuntimeConfig, tmp_path: Path) -> None:
    container = create(cfg, tmp_path, "c1")
    container.stop()
    with pytest.raises(StateError, match="sandbox c1 has no agent"):
        container.start()
