"""Container benchmark, kata-py beside runc and crun in one run:

- `run` of /bin/true, cold (a new VM each time for kata-py): median wall time;
  for kata-py both ways: restored from the VM template (the default; one
  uncounted run first, which builds the template if there is none) and
  booted ([factory] template = false);
- `state` latency on a running container: median of 20 (kata-py through
  /usr/local/bin/kata-py, the installed command podman calls);
- `exec` latency of /bin/true into that running container: median of 10;
- stdout throughput: `run` of `dd if=/dev/zero bs=1M count=64` to a pipe
  the benchmark drains, minus the median `run` of /bin/true: MB/s;
- kata-py's `run` against the bare-QEMU floor of bench/boot.py (goal ≤ 1.3×).

Runtimes that are not installed are reported as such. Usage:
    .venv/bin/python bench/containers.py [--runs 5] [--json]
(crun on a hybrid-cgroup host needs `mount -t cgroup -o hugetlb cgroup
/sys/fs/cgroup/hugetlb`; see shared/DESIGN.md.)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DD_MIB = 64


def _load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def runtimes() -> dict[str, list[str]]:
    # The command engines call (scripts/setup.sh installs it), else this venv's.
    script = next((p for p in (Path("/usr/local/bin/kata-py"),
                               Path(sys.executable).parent / "kata-py") if p.exists()), None)
    found = {"kata-py": [str(script)] if script else [sys.executable, "-m", "kata_py.cli"]}
    print(f"kata-py: {found['kata-py'][0]}", file=sys.stderr)
    for name in ("runc", "crun"):
        if shutil.which(name):
            found[name] = [name]
    return found


def bundle(work: Path, name: str, args: list[str]) -> Path:
    maker = _load(REPO / "scripts" / "make-bundle.py", "make_bundle")
    path = maker.make_bundle(work / name, args)
    config = json.loads((path / "config.json").read_text())
    config["ociVersion"] = "1.0.2"  # what Debian 12's runc 1.1 and crun 1.8 accept
    (path / "config.json").write_text(json.dumps(config))
    return Path(path)


def timed(argv: list[str], stdout: Any = subprocess.DEVNULL) -> float:
    start = time.monotonic()
    subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.DEVNULL,
                   check=True, timeout=600)
    return time.monotonic() - start


def usable(found: dict[str, list[str]], work: Path) -> dict[str, list[str]]:
    """The runtimes whose `run` of /bin/true works here; the others are named
    with their error (e.g. crun on a hybrid-cgroup host, see above) before
    any measuring starts."""
    true_b = bundle(work, "true", ["/bin/true"])
    ok = {}
    for name, cli in found.items():
        r = subprocess.run([*cli, "--root", str(work / "probe" / name), "run", "-b",
                            str(true_b), "probe"], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=600)
        if r.returncode == 0:
            ok[name] = cli
        else:
            print(f"{name}: left out, its run of /bin/true failed: "
                  f"{(r.stderr.strip().splitlines() or ['?'])[-1]}", file=sys.stderr)
    if "kata-py" not in ok:
        raise SystemExit("bench: kata-py cannot run a container here; try scripts/setup.sh")
    return ok


def measure(name: str, cli: list[str], root: Path, work: Path, runs: int) -> dict[str, float]:
    base = [*cli, "--root", str(root / name)]
    true_b = bundle(work, "true", ["/bin/true"])
    dd_b = bundle(work, "dd", ["dd", "if=/dev/zero", "bs=1M", f"count={DD_MIB}"])
    sleep_b = bundle(work, "sleep", ["sleep", "600"])
    n = runs if name == "kata-py" else runs * 4
    extra: dict[str, float] = {}
    if name == "kata-py":
        timed([*base, "run", "-b", str(true_b), "warm-up"])   # builds the template, if need be
        booted_cfg = work / "booted.toml"
        booted_cfg.write_text("[factory]\ntemplate = false\n")
        booted = [timed([*cli, "--config", str(booted_cfg), "--root", str(root / name), "run",
                         "-b", str(true_b), f"b{i}"]) for i in range(runs)]
        extra["run_true_booted_median_s"] = statistics.median(booted)
    run_true = [timed([*base, "run", "-b", str(true_b), f"t{i}"]) for i in range(n)]
    run_dd = [timed([*base, "run", "-b", str(dd_b), f"d{i}"], subprocess.PIPE)
              for i in range(max(3, runs // 2))]
    subprocess.run([*base, "run", "-d", "-b", str(sleep_b), "s"], stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                   timeout=600)
    try:
        state = [timed([*base, "state", "s"]) for _ in range(20)]
        exec_true = [timed([*base, "exec", "s", "/bin/true"]) for _ in range(10)]
    finally:
        subprocess.run([*base, "delete", "--force", "s"], capture_output=True, timeout=600)
    copy_s = max(statistics.median(run_dd) - statistics.median(run_true), 1e-3)
    return {"run_true_median_s": statistics.median(run_true),
            "state_median_ms": statistics.median(state) * 1000,
            "exec_median_ms": statistics.median(exec_true) * 1000,
            "stdout_mb_s": DD_MIB / copy_s, **extra}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    runs = max(5, args.runs)
    work = Path(tempfile.mkdtemp(prefix="kpbc-", dir="/tmp"))
    results: dict[str, dict[str, float]] = {}
    try:
        for name, cli in usable(runtimes(), work).items():
            results[name] = measure(name, cli, work / "roots", work, runs)
        boot = _load(REPO / "bench" / "boot.py", "boot")
        from kata_py.config import load_config
        from kata_py.hypervisor import accel
        from kata_py.image import load_image

        cfg = replace(load_config(None), state_dir=str(work / "roots" / "kata-py"))
        image = load_image(Path(cfg.hypervisor.image_dir))
        choice = accel.choose(cfg.hypervisor.accelerator, shutil.which(cfg.hypervisor.path)
                              or cfg.hypervisor.path, image.kernel,  # type: ignore[arg-type]
                              Path(cfg.state_dir))
        floor = statistics.median(boot.floor_boot_s(cfg, image, choice.accelerator, work,
                                                    cfg.hypervisor.machine)
                                  for _ in range(runs))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    kp = results["kata-py"]
    report = {"runs": runs, "floor_s": floor, "results": results,
              "kata_run_vs_floor": kp["run_true_median_s"] / floor,
              "kata_booted_run_vs_floor": kp["run_true_booted_median_s"] / floor}
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"{'':<28}" + "".join(f"{n:>12}" for n in results))
    rows = (("run /bin/true (s, median)", "run_true_median_s", "{:.3f}"),
            ("state (ms, median of 20)", "state_median_ms", "{:.1f}"),
            ("exec /bin/true (ms, median)", "exec_median_ms", "{:.1f}"),
            (f"stdout {DD_MIB} MiB (MB/s)", "stdout_mb_s", "{:.1f}"))
    for label, key, fmt in rows:
        print(f"{label:<28}" + "".join(f"{fmt.format(r[key]):>12}" for r in results.values()))
    for other in (n for n in results if n != "kata-py"):
        o = results[other]
        print(f"kata-py / {other}: run {kp['run_true_median_s'] / o['run_true_median_s']:.0f}x, "
              f"state {kp['state_median_ms'] / o['state_median_ms']:.1f}x, "
              f"exec {kp['exec_median_ms'] / o['exec_median_ms']:.0f}x, "
              f"stdout {kp['stdout_mb_s'] / o['stdout_mb_s']:.3f}x")
    print(f"bare-QEMU floor {floor:.3f} s; kata-py run / floor = "
          f"{report['kata_run_vs_floor']:.2f}x (goal <= 1.3x); state goal <= 30 ms")
    print(f"kata-py run with [factory] template = false (every VM booted): "
          f"{kp['run_true_booted_median_s']:.3f} s, "
          f"{report['kata_booted_run_vs_floor']:.2f}x floor")


if __name__ == "__main__":
    main()
