"""VM templates (Kata's "VM templating"): boot the guest once, save it when
its agent is ready, and start every sandbox by restoring that saved VM.

Why: under TCG a cold boot to agent-ready takes ≈4 s, three quarters of it
Python importing gRPC in the guest; a restore takes ≈0.4 s (bench/boot.py).

A template, one per VM shape (template_key(): QEMU binary, guest image,
kernel command line, vCPUs, memory, accelerator), lives in
<template_dir>/<key>/: `memory` (the guest's RAM, a sparse file), `state`
(QEMU's device state, saved with x-ignore-shared so the RAM is not in it)
and `template.json`. It is built by the first create that needs it (under a
file lock; ≈0.5 s more than a cold boot) and reused until an input changes;
at most MAX_TEMPLATES are kept.

The template VM is a q35 with empty PCIe root ports, booted with
`kata_py.template=1` and no virtio-fs, vsock or NIC: vhost-user devices
cannot be migrated in QEMU 7.2. A clone (restore_argv side, plug()):
1. copies `memory` into a fresh memfd (sparse: only the pages the template
   touched, ≈120 MiB, ≈60 ms). Not a MAP_PRIVATE mapping of the template,
   as Kata does: vhost-user back-ends map guest RAM by fd and would not see
   a private copy's writes. So clones share no memory, and no side channel;
2. starts QEMU paused with `-incoming fd:N` on `state`;
3. hot-plugs the vsock device, the virtio-fs device and the NICs (their tap
   fds passed over QMP), then resumes the VM;
4. once the agent answers, sends RestoreSandbox: the clock (the template's
   until then), a reseed of the kernel RNG with host entropy (otherwise all
   clones draw the same bytes), and the share's mount.
Left alike in every clone, and said in the README: the guest kernel's and
the agent's address-space layout (KASLR is off anyway: `nokaslr`).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import json
import logging
import os
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kata_py.agent.shared import READY_LINE
from kata_py.errors import LOGS_HINT, HypervisorError
from kata_py.hypervisor import qemu
from kata_py.hypervisor.process import ProcessRef, log_tail

log = logging.getLogger(__name__)

LAYOUT_VERSION = 1          # bump when the template VM's devices or this format change
VSOCK_PORT, SHARE_PORT, FIRST_NIC_PORT = 0, 1, 2
NIC_PORTS = 3               # a sandbox with more NICs boots cold
HOTPLUG_PORTS = FIRST_NIC_PORT + NIC_PORTS
MAX_TEMPLATES = 4
SAVE_TIMEOUT_S = 60.0
RESTORE_TIMEOUT_S = 30.0
POLL_S = 0.01
TEMPLATE_PARAM = "kata_py.template=1"
META = "template.json"
# RAM lives in a shared file, so the saved state leaves it out (and a restore
# keeps the file's contents): the capability QEMU added for templating.
IGNORE_SHARED = {"capabilities": [{"capability": "x-ignore-shared", "state": True}]}
FAILED_BUILD = "failed-build"   # in template_dir: the last failed build's logs
BUILD_HINT = ("rerun with --debug for the template VM's console, or set [factory] "
              "template = false to boot every sandbox")


class TemplateTimeout(HypervisorError):
    """The template VM booted but its agent never answered: the sandbox
    boots instead (sandbox.py). Seen on this 2-core TCG host about once in
    50 builds, with the guest's console reporting soft lockups (both vCPUs
    stuck for 25-50 s); the next build and a plain boot went through.
    """


@dataclass(frozen=True)
class Template:
    dir: Path
    key: str

    @property
    def memory(self) -> Path:
        return self.dir / "memory"

    @property
    def state(self) -> Path:
        return self.dir / "state"

    def complete(self) -> bool:
        return all(p.is_file() for p in (self.memory, self.state, self.dir / META))


def template_vm(vm: qemu.VmConfig) -> qemu.VmConfig:
    """The template's shape of vm: q35 with hot-plug ports, nothing to plug yet."""
    return replace(vm, machine="q35", vsock=None, virtiofs_socket=None, nics=(),
                   # first: whatever the config appends may end with "-- init args"
                   kernel_params=f"{TEMPLATE_PARAM} {vm.kernel_params}",
                   hotplug_ports=HOTPLUG_PORTS, incoming_fd=None, memory_fd=None)


def template_key(vm: qemu.VmConfig) -> str:
    """What a saved VM must share with the VM restored from it."""
    binary = Path(vm.binary).resolve()
    st = binary.stat()
    shape = template_vm(vm)
    inputs = {
        "layout": LAYOUT_VERSION, "qemu": [str(binary), st.st_size, st.st_mtime_ns],
        "kernel": str(shape.kernel), "initrd": str(shape.initrd), "rootfs": str(shape.rootfs),
        "params": shape.kernel_params, "vcpus": shape.vcpus, "memory_mib": shape.memory_mib,
        "accelerator": shape.accelerator, "tb": shape.tcg_tb_size_mib,
        "ports": shape.hotplug_ports,
        # with KVM the saved vCPUs are the host's (-cpu host): a new host kernel
        # or CPU must not restore them
        "host": [os.uname().release, _cpu_model()] if shape.accelerator == "kvm" else None,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return ""


def ensure(template_dir: Path, vm: qemu.VmConfig, boot_timeout_s: float) -> Template:
    """The template for vm's shape, built now if there is none (under a lock)."""
    key = template_key(vm)
    tpl = Template(template_dir / key, key)
    if tpl.complete():
        _touch(tpl)
        return tpl
    try:
        template_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = open(template_dir / ".lock", "w")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise HypervisorError(f"cannot keep VM templates in {template_dir}: {exc}",
                              "point [factory] template_dir at a writable directory, or set "
                              "[factory] template = false") from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # another create may be building it
        if tpl.complete():
            _touch(tpl)
            return tpl
        shutil.rmtree(tpl.dir, ignore_errors=True)
        build(tpl, vm, boot_timeout_s)
        _prune(template_dir, keep=tpl.dir)
    return tpl


def discard(tpl: Template) -> None:
    """Remove a template a restore failed on; the next create builds it afresh."""
    log.warning("removing VM template %s; the next sandbox rebuilds it", tpl.dir)
    shutil.rmtree(tpl.dir, ignore_errors=True)


def _touch(tpl: Template) -> None:
    try:
        os.utime(tpl.dir / META)
    except OSError:
        pass


def _prune(template_dir: Path, keep: Path) -> None:
    """Keep the MAX_TEMPLATES most recently used templates; drop build leftovers."""
    entries = []
    for d in template_dir.iterdir():
        if d.name.startswith(".build-"):
            shutil.rmtree(d, ignore_errors=True)
        elif d.is_dir() and d != keep and d.name != FAILED_BUILD:
            try:
                entries.append(((d / META).stat().st_mtime, d))
            except OSError:
                shutil.rmtree(d, ignore_errors=True)
    entries.sort(reverse=True)
    for _, d in entries[MAX_TEMPLATES - 1:]:
        log.info("removing least recently used VM template %s", d)
        shutil.rmtree(d, ignore_errors=True)


def build(tpl: Template, vm: qemu.VmConfig, boot_timeout_s: float) -> None:
    """Boot the template VM, wait for its agent, save it into tpl.dir (atomically)."""
    t0 = time.monotonic()
    work = tpl.dir.parent / f".build-{tpl.key}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o700)
    # A unix socket path has 107 bytes at most; template_dir may be deep.
    sockets = Path(tempfile.mkdtemp(prefix="kata-py-template-"))
    shape = replace(template_vm(vm), name=f"kata-py-template-{tpl.key}",
                    memory_file=work / "memory", console_log=work / "console.log",
                    qmp_socket=sockets / "qmp.sock", pidfile=work / "qemu.pid")
    proc: ProcessRef | None = None
    try:
        proc = qemu.launch(shape, work / "qemu.log")
        booted_s = _await_ready(shape.console_log, proc, boot_timeout_s)
        _save(shape.qmp_socket, work / "state")
        if not proc.wait(qemu.QUIT_WAIT_S):
            proc.stop()
        (work / META).write_text(json.dumps({
            "key": tpl.key, "created": time.time(), "boot_s": round(booted_s, 3),
            "build_s": round(time.monotonic() - t0, 3), "vcpus": vm.vcpus,
            "memory_mib": vm.memory_mib, "kernel_params": shape.kernel_params}, indent=1))
        os.rename(work, tpl.dir)
        shutil.rmtree(sockets, ignore_errors=True)
    except BaseException as exc:
        if proc is not None and proc.alive():
            proc.stop()
        for name, lines in (("console.log", 30), ("qemu.log", 5)):
            tail = log_tail(work / name, lines)
            if tail:
                log.info("VM template %s failed to build; %s ends with:\n%s", tpl.key, name,
                         tail)
        kept = _keep_failed_logs(work, tpl.dir.parent / FAILED_BUILD)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(sockets, ignore_errors=True)
        if isinstance(exc, HypervisorError):
            exc.message = f"building the VM template failed: {exc.message}" + (
                f" (its console and QEMU logs are kept in {kept})" if kept else "")
            exc.hint = BUILD_HINT
        elif isinstance(exc, OSError):
            raise HypervisorError(f"building the VM template in {tpl.dir.parent} failed: {exc}",
                                  "check that [factory] template_dir is on a writable "
                                  "filesystem with room for the guest's memory") from exc
        raise
    log.info("VM template %s built in %.2fs (agent ready after %.2fs)", tpl.key,
             time.monotonic() - t0, booted_s)


def _keep_failed_logs(work: Path, keep: Path) -> Path | None:
    """The failed build's console and QEMU logs, in place of the last failed
    build's: an engine (podman) shows only the error line, and the failed
    create's own logs go with its state."""
    try:
        shutil.rmtree(keep, ignore_errors=True)
        keep.mkdir(mode=0o700)
        for name in ("console.log", "qemu.log"):
            if (work / name).exists():
                shutil.copyfile(work / name, keep / name)
    except OSError as exc:
        log.info("cannot keep the failed template build's logs in %s: %s", keep, exc)
        return None
    return keep


def _await_ready(console: Path, proc: ProcessRef, timeout_s: float) -> float:
    """The template has no vsock yet: its agent's ready line on the console says it."""
    t0 = time.monotonic()
    needle = READY_LINE.encode()
    while time.monotonic() - t0 < timeout_s:
        try:
            if needle in console.read_bytes():
                return time.monotonic() - t0
        except FileNotFoundError:
            pass
        if not proc.alive():
            lines = [ln for ln in log_tail(console, 10).splitlines() if ln.strip()]
            last = f" (console: {lines[-1].strip()})" if lines else ""
            raise HypervisorError(f"the template VM stopped before the agent answered{last}",
                                  BUILD_HINT)
        time.sleep(0.05)
    raise TemplateTimeout(f"the template VM's agent did not answer within {timeout_s:.0f}s",
                          "raise [agent] boot_timeout_s on slow hosts")


def _save(qmp_socket: Path, state: Path) -> None:
    """Pause the VM, write its device state (not its RAM) to `state`, quit QEMU."""
    async def save(client: Any) -> None:
        await client.execute("stop")
        await client.execute("migrate-set-capabilities", IGNORE_SHARED)
        await client.execute("migrate", {"uri": f"exec:cat > {shlex.quote(str(state))}"})
        deadline = time.monotonic() + SAVE_TIMEOUT_S
        while True:
            info = await client.execute("query-migrate")
            status = info.get("status")
            if status == "completed":
                break
            if status in ("failed", "cancelled") or time.monotonic() > deadline:
                raise HypervisorError(f"saving the template VM {status or 'timed out'}: "
                                      f"{info.get('error-desc', '')}".rstrip(": "), BUILD_HINT)
            await asyncio.sleep(POLL_S)
        await client.execute("quit")
    qemu.qmp_session(qmp_socket, save, "save of the template VM", BUILD_HINT)


# -- clones -------------------------------------------------------------------

def copy_memory(tpl: Template) -> int:
    """A memfd holding the template's RAM: only its data extents are copied
    (SEEK_DATA/SEEK_HOLE), by sendfile inside the kernel (copy_file_range
    refuses to cross from the template's filesystem to shmem: EXDEV)."""
    fd = os.memfd_create(f"kata-py-{tpl.key}", 0)   # inheritable by QEMU via pass_fds
    try:
        with open(tpl.memory, "rb") as src:
            sfd = src.fileno()
            size = os.fstat(sfd).st_size
            os.ftruncate(fd, size)
            offset = 0
            while offset < size:
                try:
                    data = os.lseek(sfd, offset, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:   # no data after offset
                        break
                    raise
                hole = os.lseek(sfd, data, os.SEEK_HOLE)
                pos = data
                os.lseek(fd, pos, os.SEEK_SET)
                while pos < hole:
                    n = os.sendfile(fd, sfd, pos, hole - pos)
                    if n == 0:
                        raise OSError(errno.EIO, f"short copy of {tpl.memory}")
                    pos += n
                offset = hole
        return fd
    except BaseException:
        os.close(fd)
        raise


@dataclass(frozen=True)
class Plug:
    """What a restored VM gets hot-plugged before it resumes."""

    vsock: qemu.VsockDevice
    virtiofs_socket: Path
    nics: tuple[qemu.NetDevice, ...] = ()


def restore_config(vm: qemu.VmConfig, tpl: Template, memory_fd: int,
                   state_fd: int) -> qemu.VmConfig:
    """vm as a clone of tpl: the template's machine, paused, loading `state`."""
    return replace(template_vm(vm), name=vm.name, console_log=vm.console_log,
                   qmp_socket=vm.qmp_socket, pidfile=vm.pidfile,
                   memory_fd=memory_fd, incoming_fd=state_fd)


def plug(qmp_socket: Path, state_fd: int, devices: Plug, proc: ProcessRef) -> None:
    """Load the saved state (QEMU's inherited state_fd), hot-plug the devices,
    resume the VM."""
    async def restore(client: Any) -> None:
        await client.execute("migrate-set-capabilities", IGNORE_SHARED)
        await client.execute("migrate-incoming", {"uri": f"fd:{state_fd}"})
        deadline = time.monotonic() + RESTORE_TIMEOUT_S
        while (await client.execute("query-status"))["status"] == "inmigrate":
            if time.monotonic() > deadline:
                raise HypervisorError(f"restoring the VM from its template took over "
                                      f"{RESTORE_TIMEOUT_S:.0f}s", LOGS_HINT)
            await asyncio.sleep(POLL_S)
        for cmd, args in _plug_commands(devices):
            if cmd == "getfd":
                client.send_fd_scm(args.pop("fd"))
            await client.execute(cmd, args)
        await client.execute("cont")
    try:
        qemu.qmp_session(qmp_socket, restore, "restore from the VM template", LOGS_HINT)
    except HypervisorError:
        if not proc.alive():
            raise HypervisorError("QEMU exited while restoring the VM from its template",
                                  LOGS_HINT) from None
        raise


def _plug_commands(devices: Plug) -> list[tuple[str, dict[str, Any]]]:
    """The QMP commands that plug `devices`, in order (unit-tested)."""
    port = qemu.hotplug_port_id
    cmds: list[tuple[str, dict[str, Any]]] = []
    if devices.vsock.kind == "vhost":
        cmds.append(("device_add", {"driver": "vhost-vsock-pci", "id": "vsock",
                                    "guest-cid": devices.vsock.guest_cid,
                                    "bus": port(VSOCK_PORT)}))
    else:
        cmds += [("chardev-add", _unix_chardev("vsock0", devices.vsock.socket)),
                 ("device_add", {"driver": "vhost-user-vsock-pci", "id": "vsock",
                                 "chardev": "vsock0", "bus": port(VSOCK_PORT)})]
    cmds += [("chardev-add", _unix_chardev("fs0", devices.virtiofs_socket)),
             ("device_add", {"driver": "vhost-user-fs-pci", "id": "fs", "chardev": "fs0",
                             "tag": qemu.VIRTIOFS_TAG, "bus": port(SHARE_PORT)})]
    for i, nic in enumerate(devices.nics):
        name = f"{nic.id}fd"
        cmds += [("getfd", {"fdname": name, "fd": nic.fd}),
                 ("netdev_add", {"type": "tap", "id": nic.id, "fd": name}),
                 ("device_add", {"driver": "virtio-net-pci", "id": f"{nic.id}dev",
                                 "netdev": nic.id, "mac": nic.mac, "romfile": "",
                                 "bus": port(FIRST_NIC_PORT + i)})]
    return cmds


def _unix_chardev(chardev_id: str, path: Path | None) -> dict[str, Any]:
    return {"id": chardev_id, "backend": {"type": "socket", "data": {
        "addr": {"type": "unix", "data": {"path": str(path)}}, "server": False}}}
