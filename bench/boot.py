"""Sandbox boot benchmark, in one run:

- floor:   bare QEMU booting the guest image's kernel to a trivial init that
           reboots at once (QEMU start → exit), same machine/accelerator/memory;
- kata-py: Sandbox.start() until the agent answers health (state dir,
           virtiofsd, vsock backend, QEMU, guest boot, agent start), booting
           each VM (cold, [factory] template = false) on each machine;
- template: the same, restored from a VM template (kata_py/factory.py: the
           default), after one template build in a private directory that
           is timed too; its ratio is to the smallest floor measured;
- memory:  RSS and PSS of qemu, virtiofsd and the vsock backend for one
           idle sandbox.

Medians of --runs (≥ 5) and the kata-py/floor ratio, for each machine type
in --machines (microvm is the default machine; q35 is measured beside it to
keep that choice honest). Usage:
    .venv/bin/python bench/boot.py [--runs 7] [--machines microvm,q35] [--no-template] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from kata_py.config import load_config
from kata_py.hypervisor import accel
from kata_py.image import load_image
from kata_py.sandbox import Sandbox, guest_kernel_params


def floor_boot_s(cfg, image, accelerator: str, work: Path, machine: str) -> float:  # type: ignore[no-untyped-def]
    initrd = work / "floor-initrd"
    initrd.write_bytes(accel.newc_cpio({"init": (0o100755, accel.reboot_init_elf())}))
    hv = cfg.hypervisor
    accel_arg = ["-accel", "kvm", "-cpu", "host"] if accelerator == "kvm" else \
        ["-accel", f"tcg,tb-size={hv.tcg_tb_size_mib}", "-cpu", "max"]
    argv = [shutil.which(hv.path) or hv.path, "-nodefaults", "-no-user-config", "-nographic",
            "-no-reboot", "-machine",
            "microvm,acpi=on,x-option-roms=off" if machine == "microvm" else machine, *accel_arg,
            "-smp", str(hv.vcpus), "-m", f"{hv.memory_mib}M", "-kernel", str(image.kernel),
            "-initrd", str(initrd), "-append",
            guest_kernel_params(image, cfg) + " rdinit=/init",
            "-serial", "none", "-display", "none"]
    start = time.monotonic()
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   timeout=120)
    return time.monotonic() - start


def smaps(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB from /proc/PID/smaps_rollup."""
    rss = pss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


def guest_ram_kib(qemu_pid: int) -> int:
    """KiB allocated in QEMU's guest-RAM memfd. Restored VMs get theirs filled by
    the runtime (the template's pages), so QEMU's RSS misses what it has not
    touched; this counts it all, booted or restored."""
    seen: dict[int, int] = {}     # by inode: a restored QEMU holds its memfd twice
    for fd in Path(f"/proc/{qemu_pid}/fd").iterdir():
        try:
            if os.readlink(fd).startswith("/memfd:"):
                st = os.stat(fd)
                seen[st.st_ino] = st.st_blocks * 512 // 1024
        except OSError:
            pass
    return sum(seen.values())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--machines", default="microvm,q35")
    parser.add_argument("--no-template", action="store_true")
    args = parser.parse_args()
    runs = max(5, args.runs)
    work = Path(tempfile.mkdtemp(prefix="kpb-", dir="/tmp"))
    base = replace(load_config(None), state_dir=str(work / "s"))
    base = replace(base, factory=replace(base.factory, template=False,
                                         template_dir=str(work / "templates")))
    image = load_image(Path(base.hypervisor.image_dir))
    qemu = shutil.which(base.hypervisor.path) or base.hypervisor.path
    choice = accel.choose(base.hypervisor.accelerator, qemu, image.kernel,  # type: ignore[arg-type]
                          Path(base.state_dir))
    results: dict[str, dict[str, object]] = {}
    try:
        for machine in args.machines.split(","):
            cfg = replace(base, hypervisor=replace(base.hypervisor, machine=machine))
            results[machine] = measure(cfg, image, choice.accelerator, work, machine, runs)
        if not args.no_template:
            results["template"] = measure_template(
                replace(base, factory=replace(base.factory, template=True)), runs,
                min(float(r["floor_median_s"]) for r in results.values()))  # type: ignore[arg-type]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps({"accelerator": choice.accelerator, "runs": runs,
                          "image_format": image.manifest.get("format"),
                          "machines": results}, indent=1))
        return
    print(f"accelerator: {choice.accelerator}; image: {image.manifest.get('format')}; "
          f"{runs} runs each; medians")
    for machine, r in results.items():
        if machine == "template":
            print("[template: restored from a VM template (q35, PCI hot-plug)]")
            print(f"  {'template build (once per VM shape)':<42} {r['build_s']:.3f} s")
            print(f"  {'kata-py restore to agent ready':<42} {r['kata_py_ready_median_s']:.3f} s"
                  f"   ratio {r['ratio']:.2f}x the smallest floor (goal <= 2x)")
        else:
            print(f"[{machine}: cold boot]")
            print(f"  {'bare QEMU boot to trivial init (floor)':<42} "
                  f"{r['floor_median_s']:.3f} s")
            print(f"  {'kata-py boot to agent ready':<42} {r['kata_py_ready_median_s']:.3f} s"
                  f"   ratio {r['ratio']:.2f}x floor (goal <= 2x)")
        memory = r["memory_kib"]
        assert isinstance(memory, dict)
        print("  idle sandbox memory (KiB):")
        procs = {n: m for n, m in memory.items() if n != "guest RAM"}
        for name, m in procs.items():
            print(f"    {name:<14} RSS {m['rss']:>8}  PSS {m['pss']:>8}")
        print(f"    {'total':<14} RSS {sum(m['rss'] for m in procs.values()):>8}  "
              f"PSS {sum(m['pss'] for m in procs.values()):>8}")
        if "guest RAM" in memory:
            print(f"    guest RAM allocated (memfd, in or out of QEMU's RSS) "
                  f"{memory['guest RAM']['rss']} KiB")


def sandbox_runs(cfg, name: str, runs: int) -> tuple[list[float], dict[str, tuple[int, int]]]:  # type: ignore[no-untyped-def]
    """Start and stop `runs` sandboxes: agent-ready times, and the first one's
    memory after 2 s idle."""
    ready: list[float] = []
    memory: dict[str, tuple[int, int]] = {}
    for i in range(runs):
        sb = Sandbox(f"bench-{name}-{i}", cfg)
        try:
            ready.append(sb.start().total_s)
            if i == 0:
                time.sleep(2)  # idle
                procs = [p for p in [sb.vm, *sb.daemons] if p is not None]
                memory = {p.name: smaps(p.pid) for p in procs}
                if sb.vm is not None:
                    memory["guest RAM"] = (guest_ram_kib(sb.vm.pid), 0)
        finally:
            sb.stop()
    return ready, memory


def measure_template(cfg, runs: int, floor_s: float) -> dict[str, object]:  # type: ignore[no-untyped-def]
    from kata_py import factory
    sb = Sandbox("bench-template-build", cfg)   # builds the template, then is restored
    try:
        sb.start()
    finally:
        sb.stop()
    meta = next(Path(cfg.factory.template_dir).glob(f"*/{factory.META}"))
    build_s = float(json.loads(meta.read_text())["build_s"])
    ready, memory = sandbox_runs(cfg, "template", runs)
    return {
        "build_s": build_s, "floor_median_s": floor_s,
        "kata_py_ready_median_s": statistics.median(ready),
        "ratio": statistics.median(ready) / floor_s, "kata_py_ready_s": ready,
        "memory_kib": {k: {"rss": v[0], "pss": v[1]} for k, v in memory.items()},
    }


def measure(cfg, image, accelerator: str, work: Path, machine: str,  # type: ignore[no-untyped-def]
            runs: int) -> dict[str, object]:
    floor = [floor_boot_s(cfg, image, accelerator, work, machine) for _ in range(runs)]
    ready, memory = sandbox_runs(cfg, machine, runs)
    return {
        "floor_median_s": statistics.median(floor),
        "kata_py_ready_median_s": statistics.median(ready),
        "ratio": statistics.median(ready) / statistics.median(floor),
        "floor_s": floor, "kata_py_ready_s": ready,
        "memory_kib": {k: {"rss": v[0], "pss": v[1]} for k, v in memory.items()},
    }


if __name__ == "__main__":
    main()
