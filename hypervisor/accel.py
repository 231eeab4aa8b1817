"""Accelerator probe: use KVM only if a real guest boots with it.

A /dev/kvm that opens is not enough — on nested or restricted hosts KVM can
run real-mode code yet hang an ordinary Linux guest. So the probe boot-tests
the guest kernel itself with a 150-byte hand-made /init that reboots at
once (QEMU runs with -no-reboot, so the reboot ends it). If that does not
finish within the deadline the answer is TCG, with one warning line.

The answer is cached per host boot (keyed by /proc/sys/kernel/random/boot_id,
the QEMU binary and the kernel) under the runtime state directory, so only
the first sandbox after a host boot pays for the probe.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kata_py.hypervisor.qemu import Accelerator
from kata_py.private import private_dir

log = logging.getLogger(__name__)

ProbeMode = Literal["auto", "kvm", "tcg"]
PROBE_DEADLINE_S = 4.0
KVM_DEVICE = Path("/dev/kvm")
CACHE_NAME = "accel.json"


@dataclass(frozen=True)
class AccelChoice:
    accelerator: Accelerator
    reason: str
    tested: bool          # a guest really booted with kvm (or kvm was refused)
    probe_seconds: float = 0.0


def reboot_init_elf() -> bytes:
    """A static x86-64 ELF that calls reboot(LINUX_REBOOT_CMD_RESTART)."""
    code = bytes.fromhex(
        "b8a9000000"      # mov eax, 169 (SYS_reboot)
        "bfaddee1fe"      # mov edi, 0xfee1dead
        "be69191228"      # mov esi, 0x28121969
        "ba67452301"      # mov edx, 0x01234567 (RESTART)
        "0f05"            # syscall
        "ebfe"            # jmp .
    )
    base, hdr_size = 0x400000, 64 + 56
    total = hdr_size + len(code)
    ehdr = (b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
            + struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, base + hdr_size, 64, 0, 0,
                          64, 56, 1, 0, 0, 0))
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, total, total, 0x1000)
    return ehdr + phdr + code


def newc_cpio(files: dict[str, tuple[int, bytes]]) -> bytes:
    """A newc cpio archive of {name: (mode, data)} (the initramfs format)."""
    out = bytearray()
    entries = [*files.items(), ("TRAILER!!!", (0, b""))]
    for ino, (name, (mode, data)) in enumerate(entries, start=1):
        encoded = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
        out += b"070701" + "".join(f"{v:08x}" for v in fields).encode() + encoded
        out += bytes(-len(out) % 4)      # name padded to 4 bytes
        out += data
        out += bytes(-len(out) % 4)      # data padded to 4 bytes
    return bytes(out)


def probe_kvm(qemu_binary: str, kernel: Path,
              deadline_s: float = PROBE_DEADLINE_S) -> tuple[bool, str, float]:
    """Boot `kernel` under KVM to the probe init; (booted, why-not, seconds)."""
    if not KVM_DEVICE.exists():
        return False, "/dev/kvm does not exist", 0.0
    if not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        return False, "/dev/kvm is not accessible", 0.0
    with tempfile.TemporaryDirectory(prefix="kata-py-probe-") as tmp:
        initrd = Path(tmp) / "initrd"
        initrd.write_bytes(newc_cpio({"init": (0o100755, reboot_init_elf())}))
        argv = [qemu_binary, "-machine", "microvm,acpi=on,x-option-roms=off",
                "-accel", "kvm", "-cpu", "host", "-m", "128M", "-nodefaults",
                "-no-user-config", "-nographic", "-no-reboot", "-display", "none",
                "-kernel", str(kernel), "-initrd", str(initrd),
                "-append", "console=none quiet panic=-1 reboot=t rdinit=/init"]
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            _, err = proc.communicate(timeout=deadline_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return False, f"a KVM guest did not boot within {deadline_s:.0f}s", deadline_s
        elapsed = time.monotonic() - start
        if proc.returncode != 0:
            first = err.decode(errors="replace").strip().splitlines()
            return False, f"QEMU with KVM failed: {first[-1] if first else proc.returncode}", \
                elapsed
        return True, f"a KVM guest booted in {elapsed:.2f}s", elapsed


def _cache_key(qemu_binary: str, kernel: Path) -> str:
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    stat = kernel.stat()
    return f"{boot_id}:{qemu_binary}:{kernel}:{stat.st_size}:{stat.st_mtime_ns}"


def choose(mode: ProbeMode, qemu_binary: str, kernel: Path,
           cache_dir: Path | None = None) -> AccelChoice:
    """The accelerator to use: forced by `mode`, or probed (cached) for auto."""
    if mode == "kvm":
        return AccelChoice("kvm", "forced by configuration", tested=False)
    if mode == "tcg":
        return AccelChoice("tcg", "forced by configuration", tested=False)
    cache = cache_dir / CACHE_NAME if cache_dir else None
    key = _cache_key(qemu_binary, kernel)
    if cache is not None:
        try:
            data = json.loads(cache.read_text())
            if data.get("key") == key:
                return AccelChoice(data["accelerator"], data["reason"], True,
                                   float(data.get("probe_seconds", 0.0)))
        except (OSError, ValueError, KeyError):
            pass
    ok, reason, seconds = probe_kvm(qemu_binary, kernel)
    choice = AccelChoice("kvm" if ok else "tcg", reason, tested=True, probe_seconds=seconds)
    if not ok:
        log.warning("KVM unusable (%s): using TCG software emulation, expect slower VMs", reason)
    if cache is not None:
        private_dir(cache.parent)
        # one per writer: two first creates at once each probe and write it
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"key": key, "accelerator": choice.accelerator,
                                   "reason": reason, "probe_seconds": seconds}))
        os.replace(tmp, cache)
    return choice
