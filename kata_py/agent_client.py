"""Host side of the agent protocol: one gRPC channel per sandbox, domain
verbs with named timeouts, and the one mapping of gRPC status → KataError.

Generated protobuf types stay inside this module: callers get plain values.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from kata_py.agent.protocols import agent_pb2 as pb
from kata_py.agent.protocols import agent_pb2_grpc as pb_grpc
from kata_py.errors import AgentError, NotFoundError

T = TypeVar("T")

RPC_TIMEOUT_S = 10.0
HEALTH_PROBE_TIMEOUT_S = 0.5
DESTROY_TIMEOUT_S = 3.0
# Reconnect fast while the guest boots: gRPC's default backoff starts at 1 s.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 250),
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

    def _call(self, rpc: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
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
        while time.monotonic() - start < deadline_s:
            if self.check():
                return time.monotonic() - start
            if not still_booting():
                raise AgentError("the VM stopped before the agent answered",
                                 "see the sandbox console log")
        raise AgentError(f"the agent did not answer within {deadline_s:.0f}s",
                         "see the sandbox console log; raise [agent] boot_timeout_s on "
                         "slow hosts")

    def version(self) -> dict[str, str]:
        r = self._call("Version", lambda: self.health.Version(pb.CheckRequest(),
                                                              timeout=RPC_TIMEOUT_S))
        return {"agent": r.agent_version, "grpc": r.grpc_version,
                "protobuf": r.protobuf_version, "python": r.python_version}

    def guest_details(self) -> GuestDetails:
        r = self._call("GetGuestDetails", lambda: self.agent.GetGuestDetails(
            pb.GuestDetailsRequest(), timeout=RPC_TIMEOUT_S))
        return GuestDetails(r.kernel_release, r.mem_total_bytes, r.online_cpus,
                            r.agent_version, r.shared_dir, r.shared_dir_mounted,
                            r.uptime_seconds)

    def read_shared_file(self, path: str, max_bytes: int = 0) -> bytes:
        r = self._call("ReadSharedFile", lambda: self.agent.ReadSharedFile(
            pb.ReadSharedFileRequest(path=path, max_bytes=max_bytes), timeout=RPC_TIMEOUT_S))
        return bytes(r.data)

    def destroy_sandbox(self) -> None:
        self._call("DestroySandbox", lambda: self.agent.DestroySandbox(
            pb.DestroySandboxRequest(), timeout=DESTROY_TIMEOUT_S))
