"""The vsock transport seam: how QEMU gets a vsock device and how the host
reaches the agent's port 1024 through it.

- `vhost`: the kernel's vhost-vsock (/dev/vhost-vsock). QEMU opens the
  device itself; the host dials AF_VSOCK (CID, port). PyPI's grpcio has no
  vsock support, so an in-process relay (kata_py.agent.relay) listens on an
  abstract unix socket for gRPC and dials AF_VSOCK for each connection.
- `vhost-user`: no kernel module needed. kata-py runs its own vhost-user
  vsock backend process (hypervisor/vsock/backend.py); the host side of
  every guest port is a unix socket, like Firecracker's hybrid vsock. The
  backend offers a per-port listener for the agent (`agent.sock`), so gRPC
  dials `unix:…/agent.sock` with no handshake.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol

from kata_py.errors import LOGS_HINT, HypervisorError, ResourceError
from kata_py.hypervisor.process import ProcessRef, log_tail, spawn_daemon
from kata_py.hypervisor.qemu import VsockDevice

TransportMode = Literal["auto", "vhost", "vhost-user"]
AGENT_PORT = 1024
VHOST_VSOCK_DEVICE = Path("/dev/vhost-vsock")
BACKEND_READY_TIMEOUT_S = 10.0
GUEST_CID = 3


class VsockTransport(Protocol):
    @property
    def kind(self) -> str: ...

    def start(self, on_start: Callable[[ProcessRef], None]) -> None:
        """Start what the transport runs on the host, handing each process to on_start."""

    def device(self) -> VsockDevice: ...
    def agent_target(self) -> str: ...


class KernelVhostTransport:
    """Kernel vhost-vsock: nothing to run on the host."""

    kind = "vhost"

    def __init__(self, guest_cid: int) -> None:
        self.guest_cid = guest_cid
        self._relay_name = ""

    def start(self, on_start: Callable[[ProcessRef], None]) -> None:
        pass

    def device(self) -> VsockDevice:
        return VsockDevice("vhost", guest_cid=self.guest_cid)

    def agent_target(self) -> str:
        if not self._relay_name:
            from kata_py.agent import relay

            self._relay_name = f"kata-py-{os.getpid()}-{self.guest_cid}"
            relay.Relay(relay.listen_unix("\0" + self._relay_name),
                        relay.dial_vsock(self.guest_cid, AGENT_PORT), name="vsock-dial").start()
        return f"unix-abstract:{self._relay_name}"


class UserBackendTransport:
    """The Python vhost-user vsock backend, one process per sandbox."""

    kind = "vhost-user"

    def __init__(self, sandbox_dir: Path) -> None:
        self.vhost_socket = sandbox_dir / "vhost-vsock.sock"
        self.uds = sandbox_dir / "vsock.sock"
        self.agent_socket = sandbox_dir / "agent.sock"
        self.log_path = sandbox_dir / "vsock-backend.log"

    def start(self, on_start: Callable[[ProcessRef], None]) -> None:
        read_fd, write_fd = os.pipe()
        argv = [sys.executable, "-P", "-m", "kata_py.hypervisor.vsock.backend",  # -P: no cwd
                "--socket", str(self.vhost_socket), "--uds", str(self.uds),
                "--guest-cid", str(GUEST_CID),
                "--listen", f"{AGENT_PORT}={self.agent_socket}",
                "--ready-fd", str(write_fd), "--log", str(self.log_path)]
        try:
            proc, _ = spawn_daemon(argv, self.log_path, "vsock-backend",
                                   pass_fds=(write_fd,), on_start=on_start)
            os.close(write_fd)
            write_fd = -1
            if not _read_ready(read_fd, proc, BACKEND_READY_TIMEOUT_S):
                tail = log_tail(self.log_path, 3)
                raise HypervisorError("the vhost-user vsock backend failed to start",
                                      LOGS_HINT,
                                      argv=argv, log_tail=tail)
        finally:
            os.close(read_fd)
            if write_fd >= 0:
                os.close(write_fd)

    def device(self) -> VsockDevice:
        return VsockDevice("vhost-user", socket=self.vhost_socket, guest_cid=GUEST_CID)

    def agent_target(self) -> str:
        return f"unix:{self.agent_socket}"


def _read_ready(fd: int, proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Wait for the backend's `READY` line on fd (EOF or timeout: failed)."""
    deadline = time.monotonic() + timeout_s
    data = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 64)
        if not chunk:
            break
        data += chunk
        if b"READY" in data:
            return True
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    return False


def select_transport(mode: TransportMode, sandbox_dir: Path,
                     guest_cid: int = GUEST_CID) -> VsockTransport:
    """The transport for `mode`; auto prefers the kernel module when usable."""
    if mode == "auto":
        mode = "vhost" if kernel_vhost_usable() else "vhost-user"
    if mode == "vhost":
        if not kernel_vhost_usable():
            raise ResourceError(f"{VHOST_VSOCK_DEVICE} is missing or not accessible",
                                "load the vhost_vsock module or set [vsock] transport = "
                                "\"vhost-user\"")
        return KernelVhostTransport(guest_cid)
    return UserBackendTransport(sandbox_dir)


def kernel_vhost_usable() -> bool:
    return VHOST_VSOCK_DEVICE.exists() and os.access(VHOST_VSOCK_DEVICE, os.R_OK | os.W_OK)
