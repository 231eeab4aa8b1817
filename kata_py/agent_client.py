"""Host side of the agent protocol: one gRPC channel per sandbox, domain
verbs with named timeouts, and the one mapping of gRPC status → KataError.

Generated protobuf types stay inside this module: callers get plain values.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from kata_py.agent import deferred
from kata_py.agent.shared import GRPC_MESSAGE_MAX_BYTES
from kata_py.errors import AgentError, NotFoundError

deferred.defer()    # modules grpc and protobuf import but a sync client never uses
import grpc  # noqa: E402

from kata_py.agent.protocols import agent_pb2 as pb  # noqa: E402
from kata_py.agent.protocols import agent_pb2_grpc as pb_grpc  # noqa: E402

if TYPE_CHECKING:
    from kata_py.guest_cgroup import GuestCgroup
    from kata_py.network import Interface, Route

T = TypeVar("T")

RPC_TIMEOUT_S = 10.0
HEALTH_PROBE_TIMEOUT_S = 0.5
HEALTH_PROBE_MAX_S = 4.0    # boot probes double up to this
DESTROY_TIMEOUT_S = 3.0
CREATE_TIMEOUT_S = 60.0     # the guest builds the container (slow under TCG)
# Reconnect fast while the guest boots: gRPC's default backoff starts at 1 s.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 250),
    # The agent's limit both ways (a ReadSharedFile reply of READ_CAP_BYTES
    # is just over gRPC's default 4 MiB); translate.py checks requests first.
    ("grpc.max_receive_message_length", GRPC_MESSAGE_MAX_BYTES),
    ("grpc.max_send_message_length", GRPC_MESSAGE_MAX_BYTES),
]


@dataclass(frozen=True)
class GuestDetails:
    kernel_release: str
    mem_total_bytes: int
    online_cpus: int
    agent_version: str
    shared_dir: str
    shared_dir_mounted: bool
    uptime_seconds: float


def _agent_error(rpc: str, exc: grpc.RpcError) -> Exception:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    name = code.name if code else "UNKNOWN"
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFoundError(f"agent {rpc}: {details}")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return AgentError(f"agent did not answer {rpc} ({name})",
                          "the guest may have crashed; see the sandbox console log",
                          code=name)
    return AgentError(f"agent {rpc} failed ({name}): {details}", code=name)


class AgentClient:
    def __init__(self, target: str) -> None:
        self.target = target
        self.channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self.health = pb_grpc.HealthStub(self.channel)
        self.agent = pb_grpc.AgentServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def _call(self, rpc: str, method: Callable[..., T], request: object,
              timeout_s: float = RPC_TIMEOUT_S) -> T:
        """One unary RPC. wait_for_ready: a short-lived CLI's first call must
        wait for the channel to connect (within the deadline), not fail fast."""
        try:
            return method(request, timeout=timeout_s, wait_for_ready=True)
        except grpc.RpcError as exc:
            raise _agent_error(rpc, exc) from exc

    def check(self, timeout_s: float = HEALTH_PROBE_TIMEOUT_S) -> bool:
        """One health probe: True if the agent says SERVING within timeout_s."""
        try:
            reply = self.health.Check(pb.CheckRequest(), timeout=timeout_s,
                                      wait_for_ready=True)
        except grpc.RpcError:
            return False
        return bool(reply.status == pb.HealthCheckResponse.SERVING)

    def wait_ready(self, deadline_s: float, still_booting: Callable[[], bool]) -> float:
        """Probe until the agent answers; stop early when still_booting() is False.

        Returns the seconds waited; raises AgentError at the deadline.
        """
        start = time.monotonic()
        probe_s = HEALTH_PROBE_TIMEOUT_S
        while time.monotonic() - start < deadline_s:
            left = deadline_s - (time.monotonic() - start)
            if self.check(min(probe_s, max(left, 0.05))):
                return time.monotonic() - start
            # Each probe waits for the channel (wait_for_ready), so a longer one
            # costs no latency once the agent listens; but a fixed 0.5 s would
            # never see an agent whose answer takes longer (TCG on a busy host).
            probe_s = min(probe_s * 2, HEALTH_PROBE_MAX_S)
            if not still_booting():
                raise AgentError("the VM stopped before the agent answered",
                                 "rerun with --debug to see the guest's console")
        raise AgentError(f"the agent did not answer within {deadline_s:.0f}s",
                         "raise [agent] boot_timeout_s on slow hosts; rerun with --debug to "
                         "see the guest's console")

    def version(self) -> dict[str, str]:
        r = self._call("Version", self.health.Version,
                       pb.CheckRequest())
        return {"agent": r.agent_version, "grpc": r.grpc_version,
                "protobuf": r.protobuf_version, "python": r.python_version}

    def guest_details(self) -> GuestDetails:
        r = self._call("GetGuestDetails", self.agent.GetGuestDetails,
                       pb.GuestDetailsRequest())
        return GuestDetails(r.kernel_release, r.mem_total_bytes, r.online_cpus,
                            r.agent_version, r.shared_dir, r.shared_dir_mounted,
                            r.uptime_seconds)

    def read_shared_file(self, path: str, max_bytes: int = 0) -> bytes:
        r = self._call("ReadSharedFile", self.agent.ReadSharedFile,
                       pb.ReadSharedFileRequest(path=path, max_bytes=max_bytes))
        return bytes(r.data)

    # -- containers -------------------------------------------------------

    def create_container(self, container_id: str, launch_config_json: bytes) -> int:
        """Build the container in the guest; its process waits for start. Returns its pid."""
        r = self._call("CreateContainer", self.agent.CreateContainer,
                       pb.CreateContainerRequest(container_id=container_id,
                                                 launch_config_json=launch_config_json),
                       CREATE_TIMEOUT_S)
        return int(r.pid)

    def exec_process(self, container_id: str, exec_id: str, launch_config_json: bytes) -> int:
        """Run a new process in the running container; returns its guest pid."""
        r = self._call("ExecProcess", self.agent.ExecProcess,
                       pb.ExecProcessRequest(container_id=container_id, exec_id=exec_id,
                                             launch_config_json=launch_config_json),
                       CREATE_TIMEOUT_S)
        return int(r.pid)

    def start_container(self, container_id: str) -> None:
        self._call("StartContainer", self.agent.StartContainer,
                   pb.ContainerRequest(container_id=container_id))

    def wait_process(self, container_id: str, timeout_s: float,
                     exec_id: str = "") -> int | None:
        """The exit status (128+N for signal N), or None if still running at timeout_s."""
        try:
            r = self.agent.WaitProcess(pb.ContainerRequest(container_id=container_id,
                                                           exec_id=exec_id),
                                       timeout=timeout_s, wait_for_ready=True)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return None
            raise _agent_error("WaitProcess", exc) from exc
        return int(r.exit_status)

    def signal_process(self, container_id: str, signum: int, all_processes: bool = False,
                       exec_id: str = "") -> None:
        self._call("SignalProcess", self.agent.SignalProcess,
                   pb.SignalProcessRequest(container_id=container_id, signal=signum,
                                           all=all_processes, exec_id=exec_id))

    def write_stdin(self, container_id: str, data: bytes, exec_id: str = "") -> int:
        r = self._call("WriteStdin", self.agent.WriteStdin,
                       pb.WriteStreamRequest(container_id=container_id, data=data,
                                             exec_id=exec_id))
        return int(r.written)

    def close_stdin(self, container_id: str, exec_id: str = "") -> None:
        self._call("CloseStdin", self.agent.CloseStdin,
                   pb.ContainerRequest(container_id=container_id, exec_id=exec_id))

    def read_output(self, container_id: str, stream: str, timeout_s: float,
                    max_bytes: int = 0, exec_id: str = "") -> bytes | None:
        """Next output of stdout/stderr; b"" at end of stream, None at timeout."""
        rpc = self.agent.ReadStdout if stream == "stdout" else self.agent.ReadStderr
        try:
            r = rpc(pb.ReadStreamRequest(container_id=container_id, max_bytes=max_bytes,
                                         exec_id=exec_id),
                    timeout=timeout_s, wait_for_ready=True)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return None
            raise _agent_error(f"Read{stream.capitalize()}", exc) from exc
        return bytes(r.data)

    def remove_container(self, container_id: str, exec_id: str = "") -> None:
        self._call("RemoveContainer", self.agent.RemoveContainer,
                   pb.ContainerRequest(container_id=container_id, exec_id=exec_id))

    def resize_tty(self, container_id: str, rows: int, cols: int, exec_id: str = "") -> None:
        self._call("TtyWinResize", self.agent.TtyWinResize,
                   pb.TtyWinResizeRequest(container_id=container_id, exec_id=exec_id,
                                          rows=rows, cols=cols))

    def update_container(self, container_id: str, resources_json: bytes) -> None:
        self._call("UpdateContainer", self.agent.UpdateContainer,
                   pb.UpdateContainerRequest(container_id=container_id,
                                             resources_json=resources_json))

    def stats(self, container_id: str, timeout_s: float = RPC_TIMEOUT_S) -> GuestCgroup:
        """The container's guest cgroup (guest_cgroup.py reads it)."""
        from kata_py.guest_cgroup import GuestCgroup

        r = self._call("StatsContainer", self.agent.StatsContainer,
                       pb.ContainerRequest(container_id=container_id), timeout_s)
        return GuestCgroup(dict(r.files), int(r.cpu_shares))

    def pause_container(self, container_id: str) -> None:
        self._call("PauseContainer", self.agent.PauseContainer,
                   pb.ContainerRequest(container_id=container_id))

    def resume_container(self, container_id: str) -> None:
        self._call("ResumeContainer", self.agent.ResumeContainer,
                   pb.ContainerRequest(container_id=container_id))

    def read_processes(self, container_id: str, timeout_s: float = RPC_TIMEOUT_S
                       ) -> tuple[list[tuple[int, bytes, bytes, bytes, str]], int]:
        """The container's processes as its /proc shows them: (pid, stat,
        status, cmdline, pid namespace) each, and the guest's CLOCK_BOOTTIME
        in ns when read."""
        r = self._call("ReadProcesses", self.agent.ReadProcesses,
                       pb.ContainerRequest(container_id=container_id), timeout_s)
        return ([(int(p.pid), p.stat, p.status, p.cmdline, p.pid_ns) for p in r.processes],
                int(r.boottime_ns))

    def configure_network(self, interfaces: Sequence[Interface], routes: Sequence[Route]
                          ) -> None:
        """NICs (found by MAC), their addresses and the routes, in the guest."""
        request = pb.ConfigureNetworkRequest(
            interfaces=[pb.Interface(name=i.name, mac=i.mac, mtu=i.mtu, addresses=[
                pb.IPAddress(address=a.address, prefix_len=a.prefix_len)
                for a in i.addresses]) for i in interfaces],
            routes=[pb.Route(destination=r.destination, gateway=r.gateway, device=r.device,
                             source=r.source) for r in routes])
        self._call("ConfigureNetwork", self.agent.ConfigureNetwork, request)

    def restore_sandbox(self, entropy: bytes, mount_shared: bool) -> None:
        """A VM restored from a template: clock, RNG reseed, the share (factory.py)."""
        self._call("RestoreSandbox", self.agent.RestoreSandbox, pb.RestoreSandboxRequest(
            realtime_ns=time.time_ns(), entropy=entropy, mount_shared=mount_shared))

    def destroy_sandbox(self) -> None:
        self._call("DestroySandbox", self.agent.DestroySandbox,
                   pb.DestroySandboxRequest(), DESTROY_TIMEOUT_S)
