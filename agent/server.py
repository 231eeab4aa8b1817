"""The agent's gRPC services: thin handlers that log, delegate, map errors.

Each RPC handler calls one `do_*` function and every exception goes through
`errors.status_for`, the single exception → status-code mapping. The server
listens on vsock port 1024 in the guest; tests run it on a unix socket.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any, TypeVar

import google.protobuf
import grpc

from kata_py import __version__
from kata_py.agent import guest, network, relay, restore, shared
from kata_py.agent.containers import ContainerManager
from kata_py.agent.errors import DeadlineExceeded, FailedPrecondition, status_for
from kata_py.agent.protocols import agent_pb2 as pb
from kata_py.agent.protocols import agent_pb2_grpc as pb_grpc
from kata_py.agent.reaper import Reaper
from kata_py.agent.zygote import Zygote

log = logging.getLogger(__name__)

# gRPC listens here inside the guest; agent/relay.py carries vsock port 1024 to it.
GRPC_UNIX_SOCKET = "/run/kata-py/agent-grpc.sock"
# Every live process holds up to three long-polls (ReadStdout, ReadStderr,
# WaitProcess), each on a worker thread of this synchronous server; with 8
# workers, a container and two execs left no thread for a third exec or a
# StartContainer until a long-poll ended (up to its 60 s deadline). Threads
# are started on demand, so the cap costs nothing until it is needed.
SERVER_THREADS = 128
LONG_POLL_SLICE_S = 1.0   # a long-poll whose client went away frees its thread within this

R = TypeVar("R")
READ_DEFAULT_BYTES = 64 * 1024


def _long_poll(context: grpc.ServicerContext,
               wait: Callable[[float | None], R | None]) -> R | None:
    """`wait(timeout)` until it returns a value, the RPC's deadline passes or
    its client cancels it (gRPC keeps running a cancelled handler: waiting in
    slices gives the worker thread back). None on deadline or cancellation."""
    while True:
        remaining = context.time_remaining()
        last = remaining is not None and remaining <= LONG_POLL_SLICE_S
        result = wait(max(0.0, remaining) if last else LONG_POLL_SLICE_S)
        if result is not None or last or not context.is_active():
            return result


def _void(fn: Callable[[], None]) -> Callable[[], pb.Empty]:
    """An RPC body for a call that answers with Empty."""
    def run() -> pb.Empty:
        fn()
        return pb.Empty()
    return run


def _handle(context: grpc.ServicerContext, name: str, fn: Callable[[], R]) -> R:
    log.debug("rpc %s", name)
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - every error becomes a status
        code, message = status_for(exc)
        log.log(logging.ERROR if code == "INTERNAL" else logging.INFO,
                "rpc %s failed: %s: %s", name, code, message, exc_info=code == "INTERNAL")
        context.abort(grpc.StatusCode[code], message)
        raise  # unreachable: abort raises


class HealthService(pb_grpc.HealthServicer):
    def Check(self, request: pb.CheckRequest, context: grpc.ServicerContext) -> Any:
        return pb.HealthCheckResponse(status=pb.HealthCheckResponse.SERVING)

    def Version(self, request: pb.CheckRequest, context: grpc.ServicerContext) -> Any:
        return pb.VersionCheckResponse(
            grpc_version=grpc.__version__,
            agent_version=__version__,
            protobuf_version=google.protobuf.__version__,
            python_version=sys.version.split()[0],
        )


class AgentService(pb_grpc.AgentServiceServicer):
    def __init__(self, shared_dir: Path, on_destroy: Callable[[], None],
                 containers: ContainerManager | None = None) -> None:
        self.shared_dir = shared_dir
        self.on_destroy = on_destroy
        self._containers = containers

    @property
    def containers(self) -> ContainerManager:
        if self._containers is None:
            raise FailedPrecondition("this agent runs without a reaper: no containers")
        return self._containers

    def GetGuestDetails(self, request: pb.GuestDetailsRequest,
                        context: grpc.ServicerContext) -> Any:
        return _handle(context, "GetGuestDetails", self.do_get_guest_details)

    def ReadSharedFile(self, request: pb.ReadSharedFileRequest,
                       context: grpc.ServicerContext) -> Any:
        return _handle(context, "ReadSharedFile",
                       lambda: self.do_read_shared_file(request.path, request.max_bytes))

    def DestroySandbox(self, request: pb.DestroySandboxRequest,
                       context: grpc.ServicerContext) -> Any:
        return _handle(context, "DestroySandbox", self.do_destroy_sandbox)

    def CreateContainer(self, request: pb.CreateContainerRequest,
                        context: grpc.ServicerContext) -> Any:
        return _handle(context, "CreateContainer", lambda: pb.CreateContainerResponse(
            pid=self.containers.create(request.container_id, request.launch_config_json)))

    def ExecProcess(self, request: pb.ExecProcessRequest,
                    context: grpc.ServicerContext) -> Any:
        return _handle(context, "ExecProcess", lambda: pb.CreateContainerResponse(
            pid=self.containers.exec(request.container_id, request.exec_id,
                                     request.launch_config_json)))

    def StartContainer(self, request: pb.ContainerRequest,
                       context: grpc.ServicerContext) -> Any:
        return _handle(context, "StartContainer", _void(
            lambda: self.containers.start(request.container_id, request.exec_id)))

    def WaitProcess(self, request: pb.ContainerRequest, context: grpc.ServicerContext) -> Any:
        def do() -> pb.WaitProcessResponse:
            code = _long_poll(context, lambda timeout_s: self.containers.wait(
                request.container_id, timeout_s, request.exec_id))
            if code is None:
                raise DeadlineExceeded(f"container {request.container_id} is still running")
            return pb.WaitProcessResponse(exit_status=code)
        return _handle(context, "WaitProcess", do)

    def SignalProcess(self, request: pb.SignalProcessRequest,
                      context: grpc.ServicerContext) -> Any:
        return _handle(context, "SignalProcess", _void(
            lambda: self.containers.signal(request.container_id, request.signal, request.all,
                                           request.exec_id)))

    def WriteStdin(self, request: pb.WriteStreamRequest, context: grpc.ServicerContext) -> Any:
        return _handle(context, "WriteStdin", lambda: pb.WriteStreamResponse(
            written=self.containers.write_stdin(request.container_id, request.data,
                                                request.exec_id)))

    def CloseStdin(self, request: pb.ContainerRequest, context: grpc.ServicerContext) -> Any:
        return _handle(context, "CloseStdin", _void(
            lambda: self.containers.close_stdin(request.container_id, request.exec_id)))

    def ReadStdout(self, request: pb.ReadStreamRequest, context: grpc.ServicerContext) -> Any:
        return _handle(context, "ReadStdout", lambda: self._read(request, context, "stdout"))

    def ReadStderr(self, request: pb.ReadStreamRequest, context: grpc.ServicerContext) -> Any:
        return _handle(context, "ReadStderr", lambda: self._read(request, context, "stderr"))

    def RemoveContainer(self, request: pb.ContainerRequest,
                        context: grpc.ServicerContext) -> Any:
        return _handle(context, "RemoveContainer", _void(
            lambda: self.containers.remove(request.container_id, request.exec_id)))

    def TtyWinResize(self, request: pb.TtyWinResizeRequest,
                     context: grpc.ServicerContext) -> Any:
        return _handle(context, "TtyWinResize", _void(
            lambda: self.containers.resize_tty(request.container_id, request.rows,
                                               request.cols, request.exec_id)))

    def UpdateContainer(self, request: pb.UpdateContainerRequest,
                        context: grpc.ServicerContext) -> Any:
        return _handle(context, "UpdateContainer", _void(
            lambda: self.containers.update(request.container_id, request.resources_json)))

    def StatsContainer(self, request: pb.ContainerRequest,
                       context: grpc.ServicerContext) -> Any:
        def do() -> pb.StatsContainerResponse:
            files, shares = self.containers.stats(request.container_id)
            return pb.StatsContainerResponse(files=files, cpu_shares=shares)
        return _handle(context, "StatsContainer", do)

    def PauseContainer(self, request: pb.ContainerRequest,
                       context: grpc.ServicerContext) -> Any:
        return _handle(context, "PauseContainer", _void(
            lambda: self.containers.pause(request.container_id)))

    def ResumeContainer(self, request: pb.ContainerRequest,
                        context: grpc.ServicerContext) -> Any:
        return _handle(context, "ResumeContainer", _void(
            lambda: self.containers.resume(request.container_id)))

    def ReadProcesses(self, request: pb.ContainerRequest,
                      context: grpc.ServicerContext) -> Any:
        def do() -> pb.ReadProcessesResponse:
            found = self.containers.read_processes(request.container_id)
            return pb.ReadProcessesResponse(
                processes=[pb.ProcFiles(pid=f.pid, stat=f.stat, status=f.status,
                                        cmdline=f.cmdline, pid_ns=f.pid_ns) for f in found],
                boottime_ns=time.clock_gettime_ns(time.CLOCK_BOOTTIME))
        return _handle(context, "ReadProcesses", do)

    def ConfigureNetwork(self, request: pb.ConfigureNetworkRequest,
                         context: grpc.ServicerContext) -> Any:
        return _handle(context, "ConfigureNetwork", _void(
            lambda: self.do_configure_network(request)))

    def RestoreSandbox(self, request: pb.RestoreSandboxRequest,
                       context: grpc.ServicerContext) -> Any:
        return _handle(context, "RestoreSandbox", _void(lambda: restore.restore(
            request.realtime_ns, request.entropy, request.mount_shared, self.shared_dir)))

    def _read(self, request: pb.ReadStreamRequest, context: grpc.ServicerContext,
              which: str) -> pb.ReadStreamResponse:
        c = self.containers.get(request.container_id, request.exec_id)
        stream = c.stdout if which == "stdout" else c.stderr
        data = _long_poll(context, lambda timeout_s: stream.read(
            request.max_bytes or READ_DEFAULT_BYTES, timeout_s))
        if data is None:
            raise DeadlineExceeded(f"no {which} from container {request.container_id} yet")
        return pb.ReadStreamResponse(data=data)

    def do_get_guest_details(self) -> pb.GuestDetailsResponse:
        facts = guest.read_facts()
        return pb.GuestDetailsResponse(
            kernel_release=facts.kernel_release,
            mem_total_bytes=facts.mem_total_bytes,
            online_cpus=facts.online_cpus,
            agent_version=__version__,
            shared_dir=str(self.shared_dir),
            shared_dir_mounted=guest.is_mountpoint(self.shared_dir),
            uptime_seconds=facts.uptime_seconds,
        )

    def do_read_shared_file(self, path: str, max_bytes: int) -> pb.ReadSharedFileResponse:
        data, size = shared.read_file(self.shared_dir, path, max_bytes)
        return pb.ReadSharedFileResponse(data=data, size=size)

    def do_configure_network(self, request: pb.ConfigureNetworkRequest) -> None:
        network.configure(
            [network.Interface(i.name, i.mac, i.mtu,
                               tuple((a.address, a.prefix_len) for a in i.addresses))
             for i in request.interfaces],
            [network.Route(r.destination, r.gateway, r.device, r.source)
             for r in request.routes])

    def do_destroy_sandbox(self) -> pb.Empty:
        log.info("sandbox destroy requested")
        # Before the reply: the host ends QEMU as soon as it has it, so the
        # sync at power-off may never run (mmap'd writes to the share).
        os.sync()
        self.on_destroy()
        return pb.Empty()


class AgentServer:
    """The gRPC server plus the event that ends it (DestroySandbox).

    `listen` is a gRPC address (`unix:PATH` in tests) or `vsock:PORT`: then
    gRPC listens on GRPC_UNIX_SOCKET and a relay accepts on the vsock port.
    """

    def __init__(self, listen: str, shared_dir: Path, reaper: Reaper | None = None,
                 zygote: Zygote | None = None) -> None:
        self.stopping = threading.Event()
        limit = shared.GRPC_MESSAGE_MAX_BYTES
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=SERVER_THREADS),
                                  options=[("grpc.max_receive_message_length", limit),
                                           ("grpc.max_send_message_length", limit)])
        pb_grpc.add_HealthServicer_to_server(HealthService(), self.server)
        containers = ContainerManager(reaper, zygote) if reaper is not None else None
        pb_grpc.add_AgentServiceServicer_to_server(
            AgentService(shared_dir, self.stopping.set, containers), self.server)
        self.listen = listen
        self.relay: relay.Relay | None = None
        grpc_address = listen
        if listen.startswith("vsock:"):
            Path(GRPC_UNIX_SOCKET).parent.mkdir(parents=True, exist_ok=True)
            Path(GRPC_UNIX_SOCKET).unlink(missing_ok=True)
            grpc_address = f"unix:{GRPC_UNIX_SOCKET}"
        if self.server.add_insecure_port(grpc_address) == 0:
            raise OSError(f"cannot listen on {grpc_address}")

    def start(self) -> None:
        self.server.start()
        if self.listen.startswith("vsock:"):
            port = int(self.listen.split(":", 1)[1])
            self.relay = relay.Relay(relay.listen_vsock(port), relay.dial_unix(GRPC_UNIX_SOCKET),
                                     name="vsock-relay").start()
        log.info("agent %s listening on %s", __version__, self.listen)

    def stop(self, grace_s: float = 1.0) -> None:
        """Finish in-flight RPCs (so DestroySandbox's reply is sent), then stop."""
        self.server.stop(grace_s).wait()
        if self.relay is not None:
            self.relay.close()
