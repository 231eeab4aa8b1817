"""`kata-py check`: can this host run kata-py, and why not.

Each check returns a line; failures say what to install or change. With
`boot`, a throwaway sandbox is booted and timed, then torn down.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from kata_py.config import RuntimeConfig
from kata_py.errors import KataError


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    ok: bool = True
    failure: str = ""

    def note(self, name: str, detail: str) -> None:
        self.lines.append(f"--    {name:<13} {detail}")

    def add(self, name: str, good: bool, detail: str) -> None:
        self.lines.append(f"{'ok  ' if good else 'FAIL'}  {name:<13} {detail}")
        if not good and self.ok:
            self.ok = False
            self.failure = f"{name}: {detail}"


def _qemu_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.splitlines()[0].replace("QEMU emulator version ", "") if out else "?"


def run_checks(cfg: RuntimeConfig, boot: bool = False) -> Report:
    from kata_py.hypervisor import accel, virtiofsd
    from kata_py.hypervisor.vsock.transport import VHOST_VSOCK_DEVICE, kernel_vhost_usable
    from kata_py.image import load_image

    report = Report()
    qemu = shutil.which(cfg.hypervisor.path)
    report.add("qemu", bool(qemu),
               f"{qemu} ({_qemu_version(qemu)})" if qemu else
               f"{cfg.hypervisor.path} not found: apt-get install qemu-system-x86")
    try:
        report.add("virtiofsd", True, virtiofsd.find_virtiofsd(cfg.virtiofsd.path))
    except KataError as exc:
        report.add("virtiofsd", False, str(exc))
    mode = cfg.vsock.transport
    if mode == "vhost" or (mode == "auto" and kernel_vhost_usable()):
        report.add("vsock", kernel_vhost_usable(), f"kernel vhost-vsock ({VHOST_VSOCK_DEVICE})")
    else:
        why = "forced" if mode == "vhost-user" else f"no {VHOST_VSOCK_DEVICE}"
        report.add("vsock", True, f"vhost-user backend in Python ({why})")
    if cfg.stats_view:
        if os.path.exists("/dev/fuse"):
            report.add("stats view", True, "/dev/fuse: engines read the guest's cgroup figures")
        else:
            report.note("stats view", "no /dev/fuse (modprobe fuse): engines' stats will show "
                                      "the VM's host processes")
    image = None
    try:
        image = load_image(Path(cfg.hypervisor.image_dir))
        image.verify()
        parts = ", ".join(p.name for p in (image.kernel, image.initrd, image.rootfs) if p)
        report.add("guest image", True,
                   f"{image.directory} (kernel {image.kernel_release}; {parts})")
    except KataError as exc:
        report.add("guest image", False, str(exc))
    if qemu and image:
        choice = accel.choose(cfg.hypervisor.accelerator, qemu,  # type: ignore[arg-type]
                              image.kernel, Path(cfg.state_dir))
        tested = "tested" if choice.tested else "not tested"
        report.add("accelerator", True, f"{choice.accelerator} ({tested}: {choice.reason})")
    elif qemu:
        report.note("accelerator", "not tested: the probe boots the guest image's kernel")
    if boot and report.ok:
        _boot(cfg, report)
    return report


def _boot(cfg: RuntimeConfig, report: Report) -> None:
    from kata_py.sandbox import Sandbox

    sandbox = Sandbox(f"check-{os.getpid()}", cfg)
    try:
        times = sandbox.start()
        assert sandbox.agent is not None
        details = sandbox.agent.guest_details()
    except KataError as exc:
        report.add("boot", False, str(exc))
        return
    finally:
        sandbox.stop()
    how = (f"restored from VM template {times.template}" if times.template
           else f"VM boot {times.agent_s:.2f}s")
    report.add("boot", True, f"agent ready {times.total_s:.2f}s after start "
                             f"({how}, {times.accelerator})")
    report.add("guest", True, f"kernel {details.kernel_release}, "
                              f"{details.mem_total_bytes >> 20} MiB, {details.online_cpus} "
                              f"CPU(s), share mounted: {details.shared_dir_mounted}")
