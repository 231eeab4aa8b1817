#!/usr/bin/env python3
"""Time guest boots: QEMU start -> a marker line on the serial console.

    .venv/bin/python guest-image/measure_boot.py [-n 5] CACHE_DIR[:KERNEL] ...

Boots the image described by CACHE_DIR/manifest.json (optionally with another
kernel file) on a microvm (the machine the host runtime uses) under TCG and
reports the median, min and max time until ``--marker`` appears on ttyS0.
Several variants are booted interleaved, so load from other work on the host
spreads over all of them alike. Build the image with a
probe in place of the agent (README.md, "Measuring") so the marker means
"python has imported grpc". A development tool: nothing in the runtime uses it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path

MARKER = "KATA_PY_PROBE grpc-imported"
TIMEOUT_S = 60.0
KERNEL_ARGS = (
    "console=ttyS0 panic=-1 quiet cryptomgr.notests edd=off mitigations=off audit=0 "
    "nokaslr random.trust_cpu=on i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd no_timer_check"
)


def host_tsc_khz() -> int:
    """The host TSC frequency; microvm guests hang ~9% of boots without it (DESIGN.md)."""
    m = re.search(r"cpu MHz\s*:\s*([0-9.]+)", Path("/proc/cpuinfo").read_text())
    if m is None:
        raise SystemExit("measure_boot: no 'cpu MHz' in /proc/cpuinfo")
    return round(float(m.group(1)) * 1000)


def qemu_argv(
    kernel: Path, initrd: Path, rootfs: Path | None, params: str, acpi: bool = True
) -> list[str]:
    """A microvm line like the host runtime's. Keep ACPI on: Debian's cloud kernel
    has no MP-table support, so with acpi=off the guest has no APIC and hangs
    as soon as a driver waits (README.md, "Pitfalls")."""
    machine_args = "reboot=k" if acpi else "acpi=off reboot=t"
    append = f"{KERNEL_ARGS} {machine_args} tsc_early_khz={host_tsc_khz()} {params}".strip()
    argv = [
        "qemu-system-x86_64",
        "-M",
        f"microvm,memory-backend=mem,acpi={'on' if acpi else 'off'}",
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        "512M",
        "-smp",
        "1",
        "-object",
        "memory-backend-memfd,id=mem,size=512M,share=on",
        "-global",
        "virtio-mmio.force-legacy=false",
        "-kernel",
        str(kernel),
        "-initrd",
        str(initrd),
        "-append",
        append,
        "-nographic",
        "-nodefaults",
        "-serial",
        "stdio",
        "-no-reboot",
    ]
    if rootfs is not None:
        argv += [
            "-drive",
            f"file={rootfs},if=none,id=root,format=raw,readonly=on",
            "-device",
            "virtio-blk-device,drive=root",
        ]
    return argv


def boot_once(argv: list[str], marker: str) -> tuple[float | None, float, str]:
    """(seconds to marker or None, seconds to exit, console output)."""
    start = time.monotonic()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdout is not None
    out, seen = b"", None
    try:
        while time.monotonic() - start < TIMEOUT_S:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if not ready:
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            out += chunk
            if seen is None and marker.encode() in out:
                seen = time.monotonic() - start
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return seen, time.monotonic() - start, out.decode(errors="replace")


def variant_argv(spec: str, acpi: bool) -> tuple[str, list[str]]:
    """``CACHE_DIR[:KERNEL]`` -> (label, QEMU argv) for the image in CACHE_DIR."""
    cache_s, _, kernel_s = spec.partition(":")
    cache = Path(cache_s)
    m = json.loads((cache / "manifest.json").read_text())
    kernel = Path(kernel_s) if kernel_s else cache / m["kernel"]
    rootfs = cache / m["rootfs"] if m["rootfs"] else None
    label = f"{m['format']} {cache.name} {kernel.name}"
    return label, qemu_argv(kernel, cache / m["initrd"], rootfs, m["kernel_params"], acpi)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "variants",
        nargs="+",
        metavar="CACHE_DIR[:KERNEL]",
        help="images to boot; several are interleaved boot by boot",
    )
    p.add_argument("-n", type=int, default=5, help="boots per variant (default 5)")
    p.add_argument("--marker", default=MARKER)
    p.add_argument("--acpi", choices=("on", "off"), default="on", help="microvm ACPI (default on)")
    p.add_argument("--show-console", action="store_true")
    a = p.parse_args()
    variants = [variant_argv(v, a.acpi == "on") for v in a.variants]
    marks: dict[str, list[float]] = {label: [] for label, _ in variants}
    parts: dict[str, dict[str, list[float]]] = {label: {} for label, _ in variants}
    for i in range(a.n):
        for label, argv in variants:
            seen, ended, console = boot_once(argv, a.marker)
            shown = "MISSING" if seen is None else f"{seen:.3f} s"
            print(f"boot {i + 1} {label}: marker {shown}, exit {ended:.3f} s", flush=True)
            if seen is None or a.show_console:
                print(console[-3000:])
            if seen is not None:
                marks[label].append(seen)
                for key, value in re.findall(r"(\w+_s)=([0-9.]+)", console):
                    parts[label].setdefault(key, []).append(float(value))
                if "guest_s" in parts[label]:
                    # wall time minus guest uptime: QEMU start + firmware + kernel load
                    parts[label].setdefault("pre_kernel_s", []).append(
                        seen - parts[label]["guest_s"][-1]
                    )
    for label, times in marks.items():
        if times:
            print(
                f"{label}: median {statistics.median(times):.3f} s (min {min(times):.3f}, "
                f"max {max(times):.3f}, {len(times)}/{a.n} boots)"
            )
            for key, values in sorted(parts[label].items()):
                print(f"    {key}: median {statistics.median(values):.3f}")
    return 0 if all(len(t) == a.n for t in marks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
