"""The lifecycle core's container: one container in its sandbox VM, driven
in-process by a front end — the runc front end's monitor (kata_py/monitor.py, one
per container) or the containerd shim (kata_py/shimv2/, many per process).

It owns the path from a bundle to a container waiting in the guest — the
spec parsed once, checked and translated (translate.py), the VM sized
(sizing.py), the sandbox booted and watched (sandbox.py), the rootfs and
bind sources shared, CreateContainer — and the verbs on it over the
sandbox's agent connection. It keeps no records and knows no protocol:
front ends persist what they need and check statuses with lifecycle.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from kata_py.errors import ConfigError, KataError, StateError
from kata_py.network import netns_path
from kata_py.sandbox import Sandbox

# The OCI spec and the launch description are imported where used: the
# runc front end's one-shot verbs (kill, pause, …) attach without them
# (tests/unit/test_verb_imports.py).
if TYPE_CHECKING:
    from kata_py.config import RuntimeConfig
    from kata_py.guest_cgroup import GuestCgroup
    from kata_py.spec import Process, Spec

log = logging.getLogger(__name__)

STATS_TIMEOUT_S = 5.0       # a reader of the guest's figures waits at most this


class GuestAgent(Protocol):
    """What the core asks of a sandbox's agent (kata_py/agent_client.py's
    AgentClient over vsock; tests/unit/fakes.py's FakeAgent)."""

    def create_container(self, container_id: str, launch_config_json: bytes) -> int: ...
    def exec_process(self, container_id: str, exec_id: str,
                     launch_config_json: bytes) -> int: ...
    def start_container(self, container_id: str) -> None: ...
    def wait_process(self, container_id: str, timeout_s: float,
                     exec_id: str = "") -> int | None: ...
    def write_stdin(self, container_id: str, data: bytes, exec_id: str = "") -> int: ...
    def read_output(self, container_id: str, stream: str, timeout_s: float,
                    max_bytes: int = 0, exec_id: str = "") -> bytes | None: ...
    def remove_container(self, container_id: str, exec_id: str = "") -> None: ...
    def signal_process(self, container_id: str, signum: int, all_processes: bool = False,
                       exec_id: str = "") -> None: ...
    def resize_tty(self, container_id: str, rows: int, cols: int,
                   exec_id: str = "") -> None: ...
    def close_stdin(self, container_id: str, exec_id: str = "") -> None: ...
    def pause_container(self, container_id: str) -> None: ...
    def resume_container(self, container_id: str) -> None: ...
    def update_container(self, container_id: str, resources_json: bytes) -> None: ...
    def stats(self, container_id: str, timeout_s: float = ...) -> GuestCgroup: ...
    def read_processes(self, container_id: str, timeout_s: float = ...
                       ) -> tuple[list[tuple[int, bytes, bytes, bytes, str]], int]: ...


@dataclass(frozen=True)
class CreateRequest:
    """What a front end asks for: the container `id` from the bundle's
    config.json. `rootfs` replaces the spec's root.path (containerd mounts
    the snapshot at <bundle>/rootfs); `no_pivot` is runc's --no-pivot."""

    id: str
    bundle: Path
    rootfs: Path | None = None
    no_pivot: bool = False


@dataclass(frozen=True)
class ExecRequest:
    """A process to start in a created or running container (OCI `process`)."""

    exec_id: str
    process: Process


@dataclass(frozen=True)
class KillRequest:
    signal: int
    all: bool = False           # every process of the container (runc kill --all)
    exec_id: str = ""


RESOURCE_FIELDS = {   # OCI linux.resources path -> launch_config.Resources field
    ("memory", "limit"): "memory_limit", ("memory", "reservation"): "memory_reservation",
    ("memory", "swap"): "memory_swap", ("cpu", "shares"): "cpu_shares",
    ("cpu", "quota"): "cpu_quota", ("cpu", "period"): "cpu_period",
    ("cpu", "cpus"): "cpuset_cpus", ("cpu", "mems"): "cpuset_mems",
    ("pids", "limit"): "pids_limit",
}


def resources_update(oci: dict[str, Any]) -> dict[str, Any]:
    """OCI linux.resources JSON (runc update --resources, containerd's
    Update) → the guest's fields, what Container.update takes."""
    from kata_py.spec_linux import MEMORY_LIMIT_HINT, memory_limit_problem

    out: dict[str, Any] = {}
    for (group, key), field_name in RESOURCE_FIELDS.items():
        section = oci.get(group) or {}
        if not isinstance(section, dict):
            raise KataError(f"resources.{group} must be an object", "fix the resources JSON")
        if key in section and section[key] is not None:
            value = section[key]
            want = str if field_name.startswith("cpuset") else int
            if not isinstance(value, want) or isinstance(value, bool):
                raise KataError(f"resources.{group}.{key} must be a {want.__name__}",
                                "fix the resources JSON")
            problem = memory_limit_problem(value) if isinstance(value, int) else ""
            if field_name == "memory_limit" and problem:
                raise ConfigError(f"resources.memory.limit {problem}", MEMORY_LIMIT_HINT)
            out[field_name] = value
    return out


class Container:
    """A container created in a booted sandbox, one of its members. Build it
    with `create`; `stop` leaves the sandbox."""

    def __init__(self, request: CreateRequest, sandbox: Sandbox, spec: Spec | None = None) -> None:
        self.id = request.id
        self.request = request
        self.sandbox = sandbox
        self._spec = spec

    @classmethod
    def attach(cls, container_id: str, bundle: Path, sandbox: Sandbox) -> Container:
        """A handle on a container created earlier, by another process, in
        `sandbox` (Sandbox.load): the runc front end's one-shot verbs."""
        return cls(CreateRequest(container_id, bundle), sandbox)

    @property
    def spec(self) -> Spec:
        """The bundle's spec, read on first use for an attached container."""
        if self._spec is None:
            from kata_py.spec import load_spec

            self._spec = load_spec(self.request.bundle)
        return self._spec

    @property
    def own_pid_ns(self) -> bool:
        linux = self.spec.linux
        return linux is not None and any(ns.type == "pid" and not ns.path
                                         for ns in linux.namespaces)

    def flushed_by_exit(self, code: int) -> bool:
        """Whether the init's exit with `code` left nothing in the guest to
        write to the share, so stop(guest_flushed=True) may end QEMU without
        DestroySandbox: the agent synced before it reported the exit, and
        with its own pid namespace every writer of the container is gone."""
        from kata_py.stdio import AGENT_GONE_EXIT

        return self.own_pid_ns and code != AGENT_GONE_EXIT

    @staticmethod
    def boot(cfg: RuntimeConfig, sandbox_id: str, spec: Spec,
             new_sandbox: Callable[..., Sandbox] = Sandbox) -> Sandbox:
        """A new sandbox sized for `spec`, started and watched (a dead QEMU
        or daemon ends its containers and the VM); `new_sandbox` builds it
        (tests pass a fake). Nothing of it is left when it raises."""
        from kata_py.sizing import vm_size

        size = vm_size(spec, cfg.hypervisor)
        cfg = dataclasses.replace(cfg, hypervisor=dataclasses.replace(
            cfg.hypervisor, vcpus=size.vcpus, memory_mib=size.memory_mib))
        sandbox = new_sandbox(sandbox_id, cfg, netns=netns_path(spec))
        sandbox.start()
        try:
            sandbox.watch()
        except BaseException:
            sandbox.stop()
            raise
        return sandbox

    @classmethod
    def create(cls, cfg: RuntimeConfig, request: CreateRequest, spec: Spec | None = None,
               sandbox: Sandbox | None = None, owns_sandbox: bool = False,
               new_sandbox: Callable[..., Sandbox] = Sandbox) -> Container:
        """Create the container, waiting for start, in `sandbox` (started:
        a pod's, or one booted for it, `owns_sandbox`) or else in a new
        sandbox (`boot`). It joins the sandbox; on failure it leaves again —
        a sandbox of its own is stopped — and the error is raised: nothing
        of it is left."""
        from kata_py.spec import load_spec
        from kata_py.translate import to_launch_config

        try:
            spec = spec if spec is not None else load_spec(request.bundle)
            if request.rootfs is not None:
                spec = dataclasses.replace(spec, root=dataclasses.replace(
                    spec.root, path=request.rootfs))
            launch, shares = to_launch_config(spec, request.id, str(request.bundle))
        except BaseException:
            if sandbox is not None and owns_sandbox:
                sandbox.stop()
            raise
        launch = dataclasses.replace(launch, no_pivot=request.no_pivot)
        t_boot = time.monotonic()
        if sandbox is None:
            sandbox, owns_sandbox = cls.boot(cfg, request.id, spec, new_sandbox), True
        boot_s = time.monotonic() - t_boot
        try:
            sandbox.join(request.id)
        except BaseException:
            if owns_sandbox:
                sandbox.stop()
            raise
        try:
            t_shares = time.monotonic()
            for item in shares:
                sandbox.share(item, searchable=bool(launch.uid_mappings))
            from kata_py.agent import launch_config

            t_create = time.monotonic()
            cls._agent_of(sandbox).create_container(
                request.id, launch_config.to_json(launch).encode())
        except BaseException:
            sandbox.leave(request.id)
            raise
        log.info("container %s created: sandbox %.2fs, shares %.3fs, CreateContainer %.2fs",
                 request.id, boot_s, t_create - t_shares, time.monotonic() - t_create)
        return cls(request, sandbox, spec)

    @staticmethod
    def _agent_of(sandbox: Sandbox) -> GuestAgent:
        if sandbox.agent is None:
            raise StateError(f"sandbox {sandbox.id} has no agent", "it is stopped")
        return sandbox.agent

    @property
    def agent(self) -> GuestAgent:
        return self._agent_of(self.sandbox)

    # -- verbs -------------------------------------------------------------------

    def start(self) -> None:
        self.agent.start_container(self.id)

    def kill(self, request: KillRequest) -> None:
        self.agent.signal_process(self.id, request.signal, request.all, exec_id=request.exec_id)

    def exec(self, request: ExecRequest) -> None:
        """Create and start the process (the agent starts an exec at once)."""
        from kata_py.agent import launch_config as lc
        from kata_py.translate import check_size, launch_process

        config = lc.LaunchConfig(container_id=self.id, rootfs="/",
                                 process=launch_process(request.process),
                                 fds=lc.Fds(sync=3, start=4))
        check_size(config, "exec")
        self.agent.exec_process(self.id, request.exec_id, lc.to_json(config).encode())

    def resize(self, rows: int, cols: int, exec_id: str = "") -> None:
        self.agent.resize_tty(self.id, rows, cols, exec_id=exec_id)

    def close_stdin(self, exec_id: str = "") -> None:
        self.agent.close_stdin(self.id, exec_id)

    def pause(self) -> None:
        self.agent.pause_container(self.id)

    def resume(self) -> None:
        self.agent.resume_container(self.id)

    def update(self, changes: dict[str, Any]) -> None:
        """Change the guest cgroup's limits (launch_config.Resources fields)."""
        if not changes:
            raise KataError("nothing to update", "give at least one resource")
        self.agent.update_container(self.id, json.dumps(changes).encode())

    def stats(self) -> GuestCgroup:
        return self.agent.stats(self.id, STATS_TIMEOUT_S)

    def processes(self) -> tuple[list[tuple[int, bytes, bytes, bytes, str]], int]:
        return self.agent.read_processes(self.id, STATS_TIMEOUT_S)

    def stop(self, guest_flushed: bool = False) -> None:
        """Leave the sandbox, which stops if its policy says so; never raises."""
        try:
            self.sandbox.leave(self.id, guest_flushed=guest_flushed)
        except Exception:  # noqa: BLE001 - the sandbox's own cleanup logged it
            log.exception("stopping the sandbox of %s", self.id)
