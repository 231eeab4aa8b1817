"""The QEMU driver: a typed VM config, its argv, launch, QMP control, stop.

The argv is assembled from one small function per device/option group so
each can be unit-tested against golden output (tests/unit/test_qemu_argv.py).
QEMU is the child of the process that starts the sandbox (kata-py's
monitor, or the containerd shim) and dies with it (PR_SET_PDEATHSIG,
process.py): a VM never outlives the process that `state` and `delete`
know it by. Launch returns once QEMU
answers a QMP command, which its main loop only does after every device
(vhost-user sockets included) is initialised, so launch errors surface as
QEMU's exit with the reason in the per-sandbox log. NICs are taps that
kata_py/network.py opened in the container's network namespace; QEMU gets
them as inherited fds (`-netdev tap,fd=N`), never by name.

Machine: `microvm` by default: no PCI, no legacy devices, the smallest
device model. Measured under TCG (bench/boot.py, medians of 5): the bare
kernel boots 0.25 s faster than on q35 (2.02 s vs 2.28 s); a whole sandbox
to agent-ready is equal within this host's noise (6.43 s vs 6.36 s). q35
stays available (`machine = "q35"`) for guests that need PCI. All vhost-user devices need guest
RAM that the back-ends can map, so memory is a shared memfd backend.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from kata_py.errors import LOGS_HINT, HypervisorError
from kata_py.hypervisor.process import ProcessRef, log_tail, spawn_daemon

log = logging.getLogger(__name__)
T = TypeVar("T")

Machine = Literal["microvm", "q35"]
Accelerator = Literal["kvm", "tcg"]

LAUNCH_TIMEOUT_S = 30.0
LAUNCH_POLL_S = 0.005
QMP_TIMEOUT_S = 5.0
QUIT_WAIT_S = 3.0
VIRTIOFS_TAG = "kataShared"


@dataclass(frozen=True)
class VsockDevice:
    """vhost-user: path of the backend's vhost-user socket; vhost: kernel CID."""

    kind: Literal["vhost-user", "vhost"]
    socket: Path | None = None
    guest_cid: int = 3


@dataclass(frozen=True)
class NetDevice:
    """A virtio-net NIC backed by a tap the host already opened
    (kata_py/network.py); QEMU inherits `fd` under the same number."""

    id: str
    fd: int
    mac: str


@dataclass(frozen=True)
class VmConfig:
    name: str
    binary: str
    machine: Machine
    accelerator: Accelerator
    vcpus: int
    memory_mib: int
    kernel: Path
    initrd: Path | None
    kernel_params: str
    console_log: Path
    qmp_socket: Path
    pidfile: Path
    vsock: VsockDevice | None
    virtiofs_socket: Path | None = None
    rootfs: Path | None = None
    tcg_tb_size_mib: int = 32
    nics: tuple[NetDevice, ...] = ()
    extra_args: tuple[str, ...] = field(default_factory=tuple)
    # VM templates (kata_py/factory.py): guest RAM in a file, or in an fd
    # QEMU inherits (shared, and left out of the migration stream:
    # x-ignore-shared), empty PCIe root ports to hot-plug into (q35), and a
    # saved device state to load (an inherited fd) into the paused VM.
    memory_file: Path | None = None
    memory_fd: int | None = None
    hotplug_ports: int = 0
    incoming_fd: int | None = None

    def pass_fds(self) -> list[int]:
        """The fds QEMU must inherit: NIC taps, guest RAM, the saved state."""
        return [nic.fd for nic in self.nics] + [
            fd for fd in (self.memory_fd, self.incoming_fd) if fd is not None]


def _device(cfg: VmConfig, base: str) -> str:
    """virtio device model name for the machine's bus (mmio vs pci)."""
    return f"{base}-device" if cfg.machine == "microvm" else f"{base}-pci"


def machine_args(cfg: VmConfig) -> list[str]:
    if cfg.machine == "microvm":
        # acpi=on: Debian's cloud kernel has no MP-table support, so without
        # ACPI it finds no local APIC and stalls once init loads modules.
        return ["-machine", "microvm,memory-backend=mem,acpi=on,x-option-roms=off",
                "-global", "virtio-mmio.force-legacy=false"]
    return ["-machine", "q35,memory-backend=mem"]


def accel_args(cfg: VmConfig) -> list[str]:
    if cfg.accelerator == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", f"tcg,tb-size={cfg.tcg_tb_size_mib}", "-cpu", "max"]


def memory_args(cfg: VmConfig) -> list[str]:
    args = ["-smp", str(cfg.vcpus), "-m", f"{cfg.memory_mib}M"]
    if cfg.memory_fd is not None:
        path = f"/proc/self/fd/{cfg.memory_fd}"   # QEMU re-opens its inherited fd
    elif cfg.memory_file is not None:
        path = str(cfg.memory_file)
    else:
        return args + ["-object",
                       f"memory-backend-memfd,id=mem,size={cfg.memory_mib}M,share=on"]
    return args + ["-object", f"memory-backend-file,id=mem,size={cfg.memory_mib}M,"
                   f"mem-path={path},share=on"]


def hotplug_port_id(index: int) -> str:
    return f"hp{index}"


def hotplug_args(cfg: VmConfig) -> list[str]:
    args = []
    for i in range(cfg.hotplug_ports):
        args += ["-device", f"pcie-root-port,id={hotplug_port_id(i)},chassis={i + 1}"]
    if cfg.incoming_fd is not None:
        # defer: x-ignore-shared must be set (QMP) before the state is read
        args += ["-S", "-incoming", "defer"]
    return args


def boot_args(cfg: VmConfig) -> list[str]:
    args = ["-kernel", str(cfg.kernel)]
    if cfg.initrd is not None:
        args += ["-initrd", str(cfg.initrd)]
    return args + ["-append", cfg.kernel_params]


def console_args(cfg: VmConfig) -> list[str]:
    return ["-chardev", f"file,id=console,path={cfg.console_log}",
            "-serial", "chardev:console"]


def qmp_args(cfg: VmConfig) -> list[str]:
    return ["-chardev", f"socket,id=qmp,path={cfg.qmp_socket},server=on,wait=off",
            "-mon", "chardev=qmp,mode=control"]


def rootfs_args(cfg: VmConfig) -> list[str]:
    if cfg.rootfs is None:
        return []
    return ["-drive", f"file={cfg.rootfs},if=none,id=rootfs,format=raw,readonly=on",
            "-device", f"{_device(cfg, 'virtio-blk')},drive=rootfs"]


def virtiofs_args(cfg: VmConfig) -> list[str]:
    if cfg.virtiofs_socket is None:
        return []
    return ["-chardev", f"socket,id=fs0,path={cfg.virtiofs_socket}",
            "-device", f"{_device(cfg, 'vhost-user-fs')},chardev=fs0,tag={VIRTIOFS_TAG}"]


def vsock_args(cfg: VmConfig) -> list[str]:
    if cfg.vsock is None:
        return []
    if cfg.vsock.kind == "vhost":
        return ["-device", f"{_device(cfg, 'vhost-vsock')},guest-cid={cfg.vsock.guest_cid}"]
    return ["-chardev", f"socket,id=vsock0,path={cfg.vsock.socket}",
            "-device", f"{_device(cfg, 'vhost-user-vsock')},chardev=vsock0"]


def net_args(cfg: VmConfig) -> list[str]:
    # romfile= : no iPXE option ROM on PCI (nothing network-boots; it saves
    # loading one per NIC). microvm has no option ROMs at all.
    rom = ",romfile=" if cfg.machine != "microvm" else ""
    args = []
    for nic in cfg.nics:
        args += ["-netdev", f"tap,id={nic.id},fd={nic.fd}",
                 "-device", f"{_device(cfg, 'virtio-net')},netdev={nic.id},mac={nic.mac}{rom}"]
    return args


def daemon_args(cfg: VmConfig) -> list[str]:
    return ["-pidfile", str(cfg.pidfile)]     # for operators: the sandbox's QEMU


def build_argv(cfg: VmConfig) -> list[str]:
    """The complete QEMU command line for cfg."""
    return [
        cfg.binary, "-name", f"{cfg.name},debug-threads=on",
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        *machine_args(cfg), *accel_args(cfg), *memory_args(cfg), *boot_args(cfg),
        *console_args(cfg), *qmp_args(cfg), *rootfs_args(cfg), *virtiofs_args(cfg),
        *vsock_args(cfg), *net_args(cfg), *hotplug_args(cfg), *cfg.extra_args,
        *daemon_args(cfg),
    ]


def launch(cfg: VmConfig, log_path: Path,
           on_start: Callable[[ProcessRef], None] | None = None) -> ProcessRef:
    """Start QEMU as our child, in a session of its own, dying with the
    calling thread (process.spawn_daemon, which hands it to `on_start`);
    returns once its devices are up (its main loop answers QMP), or stops
    it and raises, with the reason from its log."""
    argv = build_argv(cfg)
    log.debug("qemu argv: %s", " ".join(argv))
    try:
        # pass_fds: the NICs' tap fds (and a saved state)
        proc, ref = spawn_daemon(argv, log_path, "qemu", pass_fds=tuple(cfg.pass_fds()),
                                 on_start=on_start)
    except FileNotFoundError as exc:
        raise HypervisorError(f"QEMU binary {cfg.binary!r} not found",
                              "install qemu-system-x86 or set [hypervisor] path",
                              argv=argv) from exc
    try:
        _await_main_loop(cfg.qmp_socket, proc, LAUNCH_TIMEOUT_S)
    except TimeoutError as exc:
        ref.stop()
        raise HypervisorError(f"QEMU for {cfg.name} did not finish starting in "
                              f"{LAUNCH_TIMEOUT_S:.0f}s", LOGS_HINT,
                              argv=argv, log_tail=log_tail(log_path)) from exc
    except ProcessLookupError as exc:
        rc = proc.wait()
        tail = log_tail(log_path, 3)
        reason = tail.splitlines()[-1] if tail else f"exit code {rc}"
        raise HypervisorError(f"QEMU for {cfg.name} failed to start: {reason}",
                              LOGS_HINT, argv=argv, log_tail=tail, exit_code=rc) from exc
    except BaseException:
        ref.stop()            # an abort: the VM must not outlive the start it was for
        raise
    return ref


def _await_main_loop(qmp_socket: Path, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Wait until QEMU runs its main loop: it answers `qmp_capabilities`
    (the greeting may come from the monitor's own thread, the reply only
    from the main loop, after machine and device init). A raw socket, not
    qemu.qmp: no asyncio import on the path of every sandbox start.
    ProcessLookupError: QEMU exited; TimeoutError: neither in timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise ProcessLookupError(proc.pid)
        if time.monotonic() > deadline:
            raise TimeoutError
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(str(qmp_socket))
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                with sock.makefile("rwb") as stream:
                    if stream.readline():               # the greeting
                        stream.write(b'{"execute": "qmp_capabilities"}\n')
                        stream.flush()
                        if b'"return"' in stream.readline():
                            return
        except OSError:
            pass            # not listening yet, reset or timed out: look again
        time.sleep(LAUNCH_POLL_S)


def qmp_session(socket_path: Path, script: Callable[[Any], Awaitable[T]], what: str,
                hint: str = "the VM is not responding; it will be stopped",
                timeout_s: float = QMP_TIMEOUT_S) -> T:
    """Run `script(client)` on one QMP connection (qemu.qmp's QMPClient) and
    return its result; a QMP, socket or timeout error becomes a HypervisorError
    naming `what`. asyncio and qemu.qmp are imported only here: ~25 ms that a
    CLI verb which never talks QMP does not pay."""
    import asyncio

    from qemu.qmp import QMPClient, QMPError

    async def run() -> T:
        client = QMPClient("kata-py")
        try:
            await asyncio.wait_for(client.connect(str(socket_path)), timeout_s)
            return await script(client)
        finally:
            try:
                await client.disconnect()
            except Exception:  # noqa: BLE001 - quit closes the socket under us
                pass

    try:
        return asyncio.run(run())
    except (QMPError, TimeoutError, OSError, EOFError) as exc:
        raise HypervisorError(f"QMP {what} on {socket_path} failed: {exc!r}", hint) from exc


class Qmp:
    """QMP verbs for one VM, one connection each, with a named timeout."""

    def __init__(self, socket_path: Path, timeout_s: float = QMP_TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        async def one(client: Any) -> Any:
            import asyncio

            return await asyncio.wait_for(client.execute(command, arguments), self.timeout_s)

        return qmp_session(self.socket_path, one, command, timeout_s=self.timeout_s)

    def status(self) -> str:
        """The VM's run state ('running', 'paused', …)."""
        return str(self.execute("query-status")["status"])

    def stop(self) -> None:
        self.execute("stop")

    def cont(self) -> None:
        self.execute("cont")

    def powerdown(self) -> None:
        self.execute("system_powerdown")

    def quit(self) -> None:
        self.execute("quit")


def stop_vm(vm: ProcessRef) -> None:
    """The stop ladder: SIGTERM → SIGKILL, each waited for. QEMU takes SIGTERM
    as a host-requested shutdown, exactly like QMP `quit` (its devices and
    vhost-user connections are torn down the same way); the signal spares a
    verb the asyncio and qemu.qmp imports and a QMP handshake (≈ 35 ms)."""
    if vm.alive():
        vm.stop()
