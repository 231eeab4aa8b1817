"""The sandbox: one micro-VM with its helper daemons, and the only owner of
start and teardown order.

Start:  state dir → network (taps, kata_py/network.py) → virtiofsd → vsock
        transport (meanwhile: the VM template's RAM copied, kata_py/factory.py)
        → QEMU, restored from the template with its devices hot-plugged, or
        booted → agent answers health → RestoreSandbox (restored only) →
        agent ConfigureNetwork.
Stop:   agent (DestroySandbox) → VM (TERM → KILL) → virtiofsd and
        vsock backend → network (taps, ingress qdiscs) → host bind mounts in
        the share → state dir (never removed while anything below it is
        still mounted).
Any failure during start runs the same stop, so a failed start leaves no
process, socket or directory behind; the error keeps the last console lines
because the logs go with the state directory.

Members: the containers created in it join it and leave it when they
stop; its stop policy says which departure stops it — the last member's
(one VM per container: the runc front end, containerd's plain tasks) or
the sandbox container's (a pod's, whose exit ends the pod, as with Kata).

On disk: <state_dir>/vm/<id>/ holds sandbox.json (pids with start times,
the network namespace and its taps; written atomically), the sockets, the
logs and shared/ (the virtio-fs share).
"""

from __future__ import annotations

import logging
import os
import re
import select
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from kata_py import host_mounts, network, records
from kata_py.agent.shared import READY_LINE, SHARED_DIR
from kata_py.config import RuntimeConfig
from kata_py.errors import (
    ConfigError,
    ExistsError,
    HypervisorError,
    KataError,
    NotFoundError,
    StateError,
)
from kata_py.hypervisor import accel, qemu, virtiofsd
from kata_py.hypervisor.process import ProcessRef, log_tail
from kata_py.hypervisor.vsock.transport import (
    KernelVhostTransport,
    UserBackendTransport,
    VsockTransport,
    select_transport,
)
from kata_py.image import GuestImage, load_image
from kata_py.private import private_dir
from kata_py.records import SANDBOX_FILE

if TYPE_CHECKING:
    from kata_py.agent_client import AgentClient
    from kata_py.factory import Template
    from kata_py.translate import HostShare

log = logging.getLogger(__name__)

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
UNIX_PATH_MAX = 107
DAEMON_EXIT_WAIT_S = 1.0
WATCH_SLICE_S = 1.0        # watch(): a pid reused before its pidfd was opened is seen by then
BLAME_WAIT_S = 2.0         # _lose(): QEMU exiting anyway, after a daemon it dropped; gone_reason()


def validate_id(sandbox_id: str) -> None:
    if not ID_PATTERN.match(sandbox_id):
        raise ConfigError(f"invalid sandbox id {sandbox_id!r}",
                          "use 1-64 characters from [A-Za-z0-9_.-], starting alphanumeric")


def _host_tsc_khz() -> int | None:
    """The host TSC rate; TCG's guest TSC runs at host rate, and microvm has no
    other clock to calibrate against (boots hang without tsc_early_khz)."""
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/tsc_freq_khz").read_text())
    except (OSError, ValueError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
    except OSError:
        pass
    return None


def guest_kernel_params(image: GuestImage, cfg: RuntimeConfig) -> str:
    # Boot-time savers measured on TCG (see shared/DESIGN.md): no crypto
    # self-tests, no EDD/i8042 probing, no mitigations, fixed TSC rate.
    params = ["console=ttyS0", "quiet", "panic=-1", "reboot=t", "cryptomgr.notests",
              "edd=off", "mitigations=off", "audit=0", "nokaslr", "random.trust_cpu=on",
              "i8042.noaux", "i8042.nomux", "i8042.nopnp", "i8042.dumbkbd", "no_timer_check"]
    khz = _host_tsc_khz()
    if khz:
        params.append(f"tsc_early_khz={khz}")
    params.append(f"kata_py.agent.log={cfg.agent.log_level}")
    return " ".join(params + [image.kernel_params, cfg.hypervisor.kernel_params]).strip()


class _Opening:
    """Sandbox._open_template() in a thread: result() joins it and returns its
    value or raises its exception; discard() joins it and closes its fds."""

    def __init__(self, fn: Callable[[qemu.VmConfig], tuple[Template, int, int]],
                 vm_cfg: qemu.VmConfig) -> None:
        self._value: tuple[Template, int, int] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, vm_cfg),
                                        name="template", daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[qemu.VmConfig], tuple[Template, int, int]],
             vm_cfg: qemu.VmConfig) -> None:
        try:
            self._value = fn(vm_cfg)
        except BaseException as exc:  # noqa: BLE001 - handed to result()
            self._error = exc

    def result(self) -> tuple[Template, int, int]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value

    def discard(self) -> None:
        self._thread.join()
        if self._value is not None:
            os.close(self._value[1])
            os.close(self._value[2])


@dataclass(frozen=True)
class BootTimes:
    accelerator: str
    daemons_s: float        # virtiofsd + vsock transport up
    qemu_s: float           # QEMU launched (devices realised; restored and plugged)
    agent_s: float          # QEMU launched → agent answered health
    total_s: float
    template: str = ""      # the VM template it was restored from (factory.py), if any


StopPolicy = Literal["last-member", "sandbox-container"]


class Sandbox:
    def __init__(self, sandbox_id: str, cfg: RuntimeConfig,
                 image: GuestImage | None = None, netns: Path | None = None,
                 stop_policy: StopPolicy = "last-member") -> None:
        """netns: the host network namespace the VM's NICs mirror (None: no NIC).
        stop_policy "sandbox-container": the member whose id is the sandbox's
        ends it (a pod's pause container); "last-member": the last one does."""
        validate_id(sandbox_id)
        self.id = sandbox_id
        self.cfg = cfg
        self._image = image
        self.dir = Path(cfg.state_dir) / "vm" / sandbox_id
        self.shared_dir = self.dir / "shared"
        self.console_log = self.dir / "console.log"
        self.qmp_socket = self.dir / "qmp.sock"
        self.transport: VsockTransport | None = None
        self.vm: ProcessRef | None = None
        self.daemons: list[ProcessRef] = []
        self.agent: AgentClient | None = None
        self.accelerator = ""
        self.netns = netns
        self.network: network.SandboxNetwork | None = None
        self.template: Template | None = None   # the VM template it was restored from
        self.lost: ProcessRef | None = None     # the process whose death ended it (watch())
        self.stop_policy: StopPolicy = stop_policy
        self.members: set[str] = set()
        self._members_lock = threading.Lock()
        self._stopping = threading.Event()

    # -- members -------------------------------------------------------------

    def join(self, container_id: str) -> None:
        """Count a container created in this sandbox as a member."""
        with self._members_lock:
            if self._stopping.is_set():
                raise StateError(f"sandbox {self.id} is stopping",
                                 f"create container {container_id} in a new sandbox")
            if container_id in self.members:
                raise ExistsError(f"container {container_id} is already in sandbox {self.id}",
                                  "pick another container id")
            self.members.add(container_id)

    def leave(self, container_id: str, guest_flushed: bool = False) -> bool:
        """A member stopped; stop the sandbox if the policy says this ends it.
        Returns whether it did. `guest_flushed` as for stop()."""
        with self._members_lock:
            self.members.discard(container_id)
            ends = (not self.members if self.stop_policy == "last-member"
                    else container_id == self.id or not self.members)
        if ends:
            self.stop(guest_flushed=guest_flushed)
        return ends

    # -- start ---------------------------------------------------------------

    def start(self) -> BootTimes:
        """Boot the VM and wait for the agent; on any failure, clean up and raise."""
        t0 = time.monotonic()
        image = self._image or load_image(Path(self.cfg.hypervisor.image_dir))
        qemu_binary = shutil.which(self.cfg.hypervisor.path)
        if not qemu_binary:
            raise NotFoundError(f"QEMU binary {self.cfg.hypervisor.path!r} not found",
                                "install qemu-system-x86 or set [hypervisor] path")
        fsd_binary = virtiofsd.find_virtiofsd(self.cfg.virtiofsd.path)
        choice = accel.choose(self.cfg.hypervisor.accelerator, qemu_binary,  # type: ignore[arg-type]
                              image.kernel, Path(self.cfg.state_dir))
        self.accelerator = choice.accelerator
        self._check_socket_paths()
        private_dir(self.dir.parent)
        try:
            self.dir.mkdir(mode=0o700)
        except FileExistsError as exc:
            raise ExistsError(f"sandbox {self.id} already exists in {self.dir}",
                              "pick another id or stop the existing sandbox") from exc
        try:
            return self._start_in_dir(t0, image, qemu_binary, fsd_binary)
        except BaseException as exc:
            if isinstance(exc, KataError):
                exc.message = self._with_console_reason(exc.message)
            self.log_tails("failed to start")
            self.stop()
            raise

    def _start_in_dir(self, t0: float, image: GuestImage, qemu_binary: str,
                      fsd_binary: str) -> BootTimes:
        t_network = time.monotonic()
        if self.netns is not None:
            self.network = network.setup(self.netns)
            self._save()
        network_s = time.monotonic() - t_network
        self.shared_dir.mkdir()
        fs_socket = self.dir / "virtiofs.sock"
        self.transport = select_transport(self.cfg.vsock.transport, self.dir)  # type: ignore[arg-type]
        hv = self.cfg.hypervisor
        vm_cfg = qemu.VmConfig(
            name=f"kata-py-{self.id}", binary=qemu_binary,
            machine=hv.machine, accelerator=self.accelerator,  # type: ignore[arg-type]
            vcpus=hv.vcpus, memory_mib=hv.memory_mib, kernel=image.kernel,
            initrd=image.initrd, rootfs=image.rootfs,
            kernel_params=guest_kernel_params(image, self.cfg),
            console_log=self.console_log, qmp_socket=self.qmp_socket,
            pidfile=self.dir / "qemu.pid", vsock=self.transport.device(),
            virtiofs_socket=fs_socket, tcg_tb_size_mib=hv.tcg_tb_size_mib,
            nics=self._nics())
        # The template's RAM is copied (or the template built) while the
        # daemons start: sendfile and QEMU run without the GIL.
        opening = _Opening(self._open_template, vm_cfg) if self._use_template(vm_cfg) else None
        try:
            virtiofsd.start(fsd_binary, self.shared_dir, fs_socket, self.dir / "virtiofsd.log",
                            self.daemons.append, self.cfg.virtiofsd.cache)
            self.transport.start(self.daemons.append)
            self._save()
        except BaseException:
            if opening is not None:
                opening.discard()
            raise
        t_daemons = time.monotonic()
        # gRPC is imported only once QEMU runs, while the guest boots: ~70 ms
        # off the path from `create` to QEMU's start.
        restored = self._template_result(opening) if opening is not None else None
        if restored is not None:
            self._restore(vm_cfg, *restored)
        else:
            self._boot(vm_cfg)
        t_qemu = time.monotonic()
        from kata_py.agent_client import AgentClient
        self.agent = AgentClient(self.transport.agent_target())
        vm = self.vm
        assert vm is not None
        self.agent.wait_ready(self.cfg.agent.boot_timeout_s, vm.alive)
        if self.template is not None:
            self.agent.restore_sandbox(os.urandom(64), mount_shared=True)
        t_ready = time.monotonic()
        if self.network is not None and self.network.interfaces:
            self.agent.configure_network(self.network.interfaces, self.network.routes)
            log.info("sandbox %s: taps %.3fs, guest network configured in %.3fs", self.id,
                     network_s, time.monotonic() - t_ready)
            t_ready = time.monotonic()
        log.info("sandbox %s ready in %.2fs (%s, %s)", self.id, t_ready - t0, self.accelerator,
                 f"restored from template {self.template.key}" if self.template else "booted")
        return BootTimes(self.accelerator, t_daemons - t0, t_qemu - t_daemons,
                         t_ready - t_qemu, t_ready - t0,
                         self.template.key if self.template else "")

    def _template_result(self, opening: _Opening) -> tuple[Template, int, int] | None:
        """The opened template; None (boot instead) when its VM booted but
        never answered, which a stalled TCG guest can do now and then: the
        template only speeds sandboxes up, and the next create builds it again."""
        from kata_py import factory
        try:
            return opening.result()
        except factory.TemplateTimeout as exc:
            log.warning("sandbox %s: building the VM template failed: %s; booting the sandbox "
                        "instead", self.id, exc)
            return None

    def _use_template(self, vm_cfg: qemu.VmConfig) -> bool:
        if not self.cfg.factory.template:
            return False
        from kata_py import factory
        if len(vm_cfg.nics) > factory.NIC_PORTS:
            log.info("sandbox %s: %d NICs, more than a VM template has ports for (%d); "
                     "booting it", self.id, len(vm_cfg.nics), factory.NIC_PORTS)
            return False
        return True

    def _boot(self, vm_cfg: qemu.VmConfig) -> None:
        try:
            qemu.launch(vm_cfg, self.dir / "qemu.log", self._vm_started)
        finally:
            if self.network is not None:
                self.network.close_fds()  # QEMU has its own copies (or failed)
        self._save()

    def _vm_started(self, vm: ProcessRef) -> None:
        self.vm = vm          # before anything can abort the start: stop() ends it

    def _restore(self, vm_cfg: qemu.VmConfig, tpl: Template, state_fd: int,
                 memory_fd: int) -> None:
        """Start the VM from its template: load the state, plug the devices."""
        from kata_py import factory
        try:
            qemu.launch(factory.restore_config(vm_cfg, tpl, memory_fd, state_fd),
                        self.dir / "qemu.log", self._vm_started)
        finally:
            os.close(memory_fd)
            os.close(state_fd)
        self.template = tpl
        self._save()
        assert self.vm is not None
        try:
            assert vm_cfg.vsock is not None and vm_cfg.virtiofs_socket is not None
            factory.plug(self.qmp_socket, state_fd, factory.Plug(
                vm_cfg.vsock, vm_cfg.virtiofs_socket, vm_cfg.nics), self.vm)
        except HypervisorError:
            if not self.vm.alive():   # QEMU refused the saved state
                factory.discard(tpl)
            raise
        finally:
            if self.network is not None:
                self.network.close_fds()

    def _open_template(self, vm_cfg: qemu.VmConfig) -> tuple[Template, int, int]:
        """The template (built if need be), its state opened, its RAM copied."""
        from kata_py import factory
        for attempt in (1, 2):
            tpl = factory.ensure(Path(self.cfg.factory.template_dir), vm_cfg,
                                 self.cfg.agent.boot_timeout_s)
            state_fd = -1
            try:
                state_fd = os.open(tpl.state, os.O_RDONLY | os.O_CLOEXEC)
                return tpl, state_fd, factory.copy_memory(tpl)
            except FileNotFoundError:
                if state_fd >= 0:
                    os.close(state_fd)
                if attempt == 2:
                    raise
                # pruned by another create since ensure(): build it again
            except BaseException:
                if state_fd >= 0:
                    os.close(state_fd)
                raise
        raise AssertionError("unreachable")

    def _nics(self) -> tuple[qemu.NetDevice, ...]:
        if self.network is None:
            return ()
        return tuple(qemu.NetDevice(f"net{i}", fd, iface.mac) for i, (fd, iface) in
                     enumerate(zip(self.network.tap_fds, self.network.interfaces, strict=True)))

    def _check_socket_paths(self) -> None:
        longest = self.dir / "vhost-vsock.sock"
        if len(str(longest)) > UNIX_PATH_MAX:
            raise ConfigError(f"state directory {self.dir} is too deep for unix sockets "
                              f"({len(str(longest))} > {UNIX_PATH_MAX} bytes)",
                              "use a shorter state_dir or sandbox id")

    def log_tails(self, what: str) -> None:
        """Before stop() removes the state dir, keep its logs in ours."""
        for name in ("virtiofsd.log", "vsock-backend.log", "qemu.log", "console.log"):
            tail = log_tail(self.dir / name, 30)
            if tail:
                log.info("sandbox %s %s; %s ends with:\n%s", self.id, what, name, tail)

    def watch(self) -> None:
        """Until stop(): should QEMU, virtiofsd or the vsock backend die on its
        own, the sandbox is lost: record which (`lost`, for gone_reason) and
        kill QEMU, so that everything waiting on the guest fails at once
        instead of hanging on a dead share or vsock device (a guest `sync`
        on a virtio-fs without its daemon never returns)."""
        watched: dict[int, ProcessRef] = {}
        for ref in [self.vm, *self.daemons]:
            if ref is None:
                continue
            try:
                watched[os.pidfd_open(ref.pid)] = ref
            except OSError:
                watched[-1 - len(watched)] = ref       # gone already: seen at once below
        threading.Thread(target=self._watch, args=(watched,), name="watch",
                         daemon=True).start()

    def _watch(self, watched: dict[int, ProcessRef]) -> None:
        try:
            while not self._stopping.is_set():
                dead = [ref for ref in watched.values() if not ref.alive()]
                if dead:
                    self._lose(dead[0])
                    return
                select.select([fd for fd in watched if fd >= 0], [], [], WATCH_SLICE_S)
        finally:
            for fd in watched:
                if fd >= 0:
                    os.close(fd)

    def _lose(self, ref: ProcessRef) -> None:
        # A VM on its way out (a guest panic, say) drops its vhost-user
        # daemons before its own exit: a daemon only is the cause if the
        # guest did not panic and QEMU is still running a moment later.
        if ref is not self.vm and self.vm is not None and (
                self._panic_line() or self.vm.wait(BLAME_WAIT_S)):
            ref = self.vm
        if self._stopping.is_set():
            return
        self.lost = ref
        log.error("sandbox %s: %s (pid %d) exited unexpectedly; stopping its VM", self.id,
                  ref.name, ref.pid)
        if self.vm is not None and ref is not self.vm:
            self.vm.signal(signal.SIGKILL)

    def dead_process(self) -> ProcessRef | None:
        """QEMU or a daemon of this sandbox that is no longer running, if any."""
        return next((ref for ref in [self.vm, *self.daemons] if ref is not None
                     and not ref.alive()), None)

    def gone_reason(self) -> str:
        """Why the agent stopped answering a running sandbox: its VM or one of
        its daemons ended (with the guest's panic line, if it panicked), or not."""
        ref = self.lost or self.dead_process()
        if ref is None and self.vm is not None and self.vm.wait(BLAME_WAIT_S):
            ref = self.vm   # killed, and still exiting when its vsock connections broke
        if ref is not None and ref is not self.vm:
            return f"its {ref.name} (pid {ref.pid}) exited unexpectedly"
        if self.vm is not None and not self.vm.alive():
            return self._with_console_reason(
                f"its VM (QEMU pid {self.vm.pid}) exited unexpectedly")
        return "its agent stopped answering"

    def _panic_line(self) -> str:
        """The guest kernel's panic line from the console's tail, or ""."""
        lines = log_tail(self.console_log, 60).splitlines()
        return next((ln.strip() for ln in lines if "Kernel panic" in ln), "")

    def _with_console_reason(self, message: str) -> str:
        """message plus the guest's last words, unless that is the agent's ready
        line; a kernel panic's own line rather than the trace that follows it."""
        panic = self._panic_line()
        if panic:
            return f"{message}: the guest kernel panicked (console: {panic})"
        tail = [ln for ln in log_tail(self.console_log, 20).splitlines() if ln.strip()]
        if not tail or tail[-1].startswith(READY_LINE):
            return message
        return f"{message} (console: {tail[-1].strip()})"

    # -- stop ----------------------------------------------------------------

    def stop(self, guest_flushed: bool = False) -> None:
        """Tear down in order; every step runs even if an earlier one failed.
        `guest_flushed`: nothing in the guest is left to write to the share
        (its only container has exited and the agent synced), so QEMU is
        ended without asking the agent first."""
        self._stopping.set()
        if self.agent is not None:
            if self.vm is not None and self.vm.alive() and not guest_flushed:
                try:
                    self.agent.destroy_sandbox()
                except KataError as exc:
                    log.info("sandbox %s: agent did not take DestroySandbox: %s", self.id, exc)
            self.agent.close()
            self.agent = None
        if self.vm is not None:
            try:
                qemu.stop_vm(self.vm)
            except HypervisorError as exc:
                log.error("sandbox %s: stopping QEMU: %s", self.id, exc)
        for daemon in self.daemons:
            # virtiofsd and the backend exit on their own once QEMU is gone.
            if not daemon.wait(DAEMON_EXIT_WAIT_S):
                daemon.stop()
        if self.network is not None:
            self.network.close_fds()
            network.teardown(self.network)
        remaining = host_mounts.unmount_all(self.dir) if self.dir.exists() else []
        if remaining:
            # Never rmtree through a bind mount: it would delete the user's files.
            log.error("sandbox %s: %s still mounted; leaving %s in place", self.id,
                      ", ".join(map(str, remaining)), self.dir)
            return
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.dir.exists():
            log.error("sandbox %s: could not remove %s", self.id, self.dir)

    def share(self, item: HostShare, searchable: bool = False) -> str:
        """Bind-mount a host path into the share; returns its path in the guest.
        `searchable`: the directories on the way to it get o+x (0711). The root
        of a container's user namespace is not root in the guest and must pass
        them to reach its rootfs and volumes; they stay unlistable, and the
        sandbox directory above them stays 0700, so no host user gets closer."""
        target = self.shared_dir / item.target
        host_mounts.bind(item.source, target, item.readonly)
        if searchable:
            for directory in target.parents:
                directory.chmod(0o711)
                if directory == self.shared_dir:
                    break
        return f"{SHARED_DIR}/{item.target}"

    # -- state ---------------------------------------------------------------

    def _save(self) -> None:
        state = {
            "id": self.id, "accelerator": self.accelerator,
            "vm": self.vm.to_json() if self.vm else None,
            "daemons": [d.to_json() for d in self.daemons],
            "vsock": {"kind": self.transport.kind, "cid": self.transport.device().guest_cid}
            if self.transport else None,
            "network": self.network.to_json() if self.network else None,
        }
        records.write(self.dir / SANDBOX_FILE, state)

    @classmethod
    def load(cls, sandbox_id: str, cfg: RuntimeConfig) -> Sandbox:
        """A handle on a sandbox started by another process (to query or stop it)."""
        sb = cls(sandbox_id, cfg)
        state: dict[str, Any] = records.read(
            sb.dir / SANDBOX_FILE, f"sandbox {sandbox_id}",
            f"stop its processes by hand and remove {sb.dir}")
        sb.accelerator = state.get("accelerator", "")
        sb.vm = ProcessRef.from_json(state["vm"]) if state.get("vm") else None
        sb.daemons = [ProcessRef.from_json(d) for d in state.get("daemons", [])]
        if state.get("network"):
            sb.network = network.SandboxNetwork.from_json(state["network"])
            sb.netns = sb.network.netns
        if state.get("vsock"):
            vsock = state["vsock"]
            sb.transport = (KernelVhostTransport(vsock["cid"]) if vsock["kind"] == "vhost"
                            else UserBackendTransport(sb.dir))
            from kata_py.agent_client import AgentClient
            sb.agent = AgentClient(sb.transport.agent_target())
        return sb
