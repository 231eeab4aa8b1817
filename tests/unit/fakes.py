"""Fakes of the lifecycle core's two dependencies — the sandbox (VM and
daemons, kata_py/sandbox.py) and the guest agent (kata_py/agent_client.py)
— with injectable faults, for fast tests of the core's transitions. QEMU
and the agent themselves are tested for real (tests/integration)."""

from __future__ import annotations

from typing import Any

from kata_py.config import RuntimeConfig
from kata_py.errors import AgentError, HypervisorError, KataError
from kata_py.sandbox import BootTimes, Sandbox


class FakeAgent:
    """Records every call as (method, args...); `faults[method]` is raised
    instead of answering."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.faults: dict[str, KataError] = {}
        self.closed = False

    def _call(self, method: str, *args: Any) -> None:
        self.calls.append((method, *args))
        if method in self.faults:
            raise self.faults[method]

    def create_container(self, container_id: str, launch_config_json: bytes) -> int:
        self._call("create_container", container_id)
        return 0

    def exec_process(self, container_id: str, exec_id: str, launch_config_json: bytes) -> int:
        self._call("exec_process", container_id, exec_id)
        return 0

    def start_container(self, container_id: str) -> None:
        self._call("start_container", container_id)

    def signal_process(self, container_id: str, signum: int, all_processes: bool = False,
                       exec_id: str = "") -> None:
        self._call("signal_process", container_id, signum, all_processes, exec_id)

    def pause_container(self, container_id: str) -> None:
        self._call("pause_container", container_id)

    def resume_container(self, container_id: str) -> None:
        self._call("resume_container", container_id)

    def update_container(self, container_id: str, resources_json: bytes) -> None:
        self._call("update_container", container_id, resources_json)

    def destroy_sandbox(self) -> None:
        self._call("destroy_sandbox")

    def close(self) -> None:
        self.closed = True


class FakeSandbox(Sandbox):
    """A Sandbox whose VM is a FakeAgent: membership and the stop policy are
    the real ones; start, share and stop only record. `boot_fault` and
    `share_fault` are raised by start and share; `agent_faults` are handed
    to the agent."""

    made: list[FakeSandbox] = []      # every instance, in order (reset per test)
    boot_fault: KataError | None = None
    share_fault: KataError | None = None
    agent_faults: dict[str, KataError] = {}

    def __init__(self, sandbox_id: str, cfg: RuntimeConfig, **kwargs: Any) -> None:
        super().__init__(sandbox_id, cfg, **kwargs)
        self.fake_agent = FakeAgent()
        self.fake_agent.faults = dict(self.agent_faults)
        self.events: list[str] = []
        self.shared: list[str] = []
        FakeSandbox.made.append(self)

    def start(self) -> BootTimes:
        self.events.append("start")
        if self.boot_fault is not None:
            raise self.boot_fault
        self.agent = self.fake_agent   # type: ignore[assignment]
        return BootTimes("fake", daemons_s=0, qemu_s=0, agent_s=0, total_s=0.01)

    def watch(self) -> None:
        self.events.append("watch")

    def share(self, item: Any, searchable: bool = False) -> str:
        if self.share_fault is not None:
            raise self.share_fault
        self.shared.append(item.target)
        return f"/run/kata-containers/shared/{item.target}"

    def stop(self, guest_flushed: bool = False) -> None:
        self.events.append("stop")
        self._stopping.set()
        if self.agent is not None:
            if not guest_flushed:
                self.fake_agent.destroy_sandbox()
            self.fake_agent.close()
            self.agent = None


BOOT_FAULT = HypervisorError("QEMU exited during boot", "see the console log")
AGENT_FAULT = AgentError("agent CreateContainer failed: no such file", "check process.args")
