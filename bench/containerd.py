"""containerd benchmark, kata-py's shim v2 beside runc's in one run:

- `ctr run --rm IMG ID true` with `io.containerd.kata-py.v2`, with
  `io.containerd.runc.v2` and with crun through runc.v2 (`--runc-binary`):
  median wall time (kata-py N runs, the others 4N, interleaved), kata-py/runc,
  and kata-py minus the bare-QEMU floor of bench/boot.py measured in the same
  run (goal: <= floor + 0.5 s);
- `ctr task exec ID true` into a running task of each runtime: median latency;
- host memory of that running task: PSS of its shim and everything below it
  (for kata-py: the shim daemon, QEMU, virtiofsd, the vsock backend), what
  a Kubernetes RuntimeClass's `overhead.podFixed` should cover.

containerd is private to the run, as in the e2e tests (tests/e2e/ctrd.py):
its own config, root, state and sockets under a temporary directory, the
busybox image imported from the e2e tarball, no registry; the host's
containerd is never touched. The shim is the installed
/usr/local/bin/containerd-shim-kata-py-v2 (scripts/setup.sh), else this
checkout's. Everything of the run is removed at the end. Usage:
    .venv/bin/python bench/containerd.py [--runs 5] [--json]
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from podman import (  # noqa: E402  (bench/podman.py: this script's directory is on sys.path)
    BenchError,
    _first_line,
    _median,
    floor_s,
    host_load,
    measure,
    outcome,
    parse_args,
    print_rows,
)

from tests.e2e.ctrd import IMAGE, RUNTIME, Containerd, remove, start_containerd  # noqa: E402

INSTALLED_SHIM = Path("/usr/local/bin/containerd-shim-kata-py-v2")
CTR_TIMEOUT_S = 180.0
RUNC_V2 = "io.containerd.runc.v2"
_ids = itertools.count()


def runtimes() -> dict[str, tuple[str, ...]]:
    """Name -> the `ctr run` options that select it."""
    found: dict[str, tuple[str, ...]] = {"kata-py": ("--runtime", RUNTIME)}
    for name in ("runc", "crun"):
        path = shutil.which(name)
        if path:
            found[name] = ("--runtime", RUNC_V2, "--runc-binary", path)
    return found


def _ctr_ok(ctrd: Containerd, *args: str) -> None:
    try:
        r = ctrd.ctr(*args, timeout=CTR_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"ctr {' '.join(args)}: no answer in {CTR_TIMEOUT_S:.0f} s") from exc
    if r.returncode != 0:
        tail = " | ".join(r.stderr.strip().splitlines()[-3:])
        raise BenchError(f"ctr {' '.join(args)}: exit {r.returncode}: {tail}")


def timed_run(ctrd: Containerd, options: tuple[str, ...]) -> float:
    start = time.monotonic()
    _ctr_ok(ctrd, "run", "--rm", *options, IMAGE, f"b{next(_ids)}", "true")
    return time.monotonic() - start


def timed_exec(ctrd: Containerd, task: str) -> float:
    start = time.monotonic()
    _ctr_ok(ctrd, "tasks", "exec", "--exec-id", f"e{next(_ids)}", task, "true")
    return time.monotonic() - start


@contextmanager
def private_containerd() -> Iterator[Containerd]:
    base = Path(tempfile.mkdtemp(prefix="kpbc-", dir="/tmp"))
    shim = str(INSTALLED_SHIM) if INSTALLED_SHIM.exists() else None
    ctrd = start_containerd(base, shim) if shim else start_containerd(base)
    try:
        yield ctrd
    finally:
        for task in ctrd.ctr("tasks", "ls", "-q").stdout.split():
            ctrd.ctr("tasks", "kill", "-s", "KILL", task)
            deadline = time.monotonic() + 60
            while ctrd.ctr("tasks", "delete", task).returncode != 0 \
                    and time.monotonic() < deadline:
                time.sleep(0.5)
        for container in ctrd.ctr("containers", "ls", "-q").stdout.split():
            ctrd.ctr("containers", "delete", container)
        ctrd.stop()
        remove(base)


def bench_run_true(ctrd: Containerd, rts: dict[str, tuple[str, ...]], runs: int,
                   results: dict[str, dict[str, Any]], errors: dict[str, str]) -> None:
    """`ctr run --rm IMG ID true`; kata-py runs times, the others 4x,
    interleaved so that drift hits every runtime alike."""
    for name, options in rts.items():        # not counted: each one's first run
        measure(f"warm-up {name}", partial(timed_run, ctrd, options), 1, errors)
    samples: dict[str, list[float]] = {name: [] for name in rts}
    for _ in range(runs):
        for name, options in rts.items():
            label = f"{name} run"
            if label not in errors:
                samples[name] += measure(label, partial(timed_run, ctrd, options),
                                         1 if name == "kata-py" else 4, errors)
    for name in rts:
        results[name]["run_true_s"] = _median(samples[name])
        results[name]["run_true_samples_s"] = samples[name]


def bench_exec(ctrd: Containerd, rts: dict[str, tuple[str, ...]], runs: int,
               results: dict[str, dict[str, Any]], errors: dict[str, str]) -> None:
    """`ctr task exec ID true` into a running task of each runtime."""
    for name, options in rts.items():
        task = f"x-{name}"
        try:
            _ctr_ok(ctrd, "run", "-d", *options, IMAGE, task, "sleep", "3600")
        except BenchError as exc:
            errors[f"{name} exec set-up"] = str(exc)
            continue
        samples = measure(f"{name} exec", partial(timed_exec, ctrd, task), 4 * runs, errors)
        results[name]["exec_true_s"] = _median(samples[1:])     # the first warms up
        results[name]["exec_true_samples_s"] = samples
        try:
            results[name]["task_pss_mib"] = task_pss_kib(ctrd, task) / 1024
        except (OSError, ValueError, BenchError) as exc:
            errors[f"{name} memory"] = str(exc)


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(proc.name))
    return tree


def _pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def task_pss_kib(ctrd: Containerd, task: str) -> int:
    """PSS of the task's shim (the parent of the pid containerd lists: runc's
    container process, kata-py's QEMU) and all its descendants."""
    rows = [line.split() for line in ctrd.ctr("tasks", "ls").stdout.splitlines()[1:]]
    pid = next((int(r[1]) for r in rows if r and r[0] == task), 0)
    if not pid:
        raise BenchError(f"task {task} not listed")
    stat = Path(f"/proc/{pid}/stat").read_text()
    shim = int(stat.rsplit(")", 1)[1].split()[1])
    tree, total, todo = _children(), 0, [shim]
    while todo:
        current = todo.pop()
        total += _pss_kib(current)
        todo += tree.get(current, [])
    return total


ROWS = (("ctr run --rm IMG true (s)", "run_true_s", "{:.3f}"),
        ("ctr task exec ID true (s)", "exec_true_s", "{:.3f}"),
        ("task's host PSS (MiB)", "task_pss_mib", "{:.1f}"))


def print_table(report: dict[str, Any]) -> None:
    c = report["conditions"]
    print(f"{c['accelerator']}; kata-py {c['runs_kata_py']} runs, others {c['runs_others']}, "
          f"exec {c['exec_runs']} each; medians; load {c['load_at_start']['load_average'][0]}"
          f" -> {c['load_at_end']['load_average'][0]}; shim: {c['shim']}")
    print_rows(report, ROWS, 30, "kata-py ctr run --rm")

def main() -> None:
    args = parse_args(__doc__)
    runs = max(1, args.runs)
    load_before = host_load()
    rts = runtimes()
    errors: dict[str, str] = {}
    results: dict[str, dict[str, Any]] = {name: {} for name in rts}
    with private_containerd() as ctrd:
        bench_run_true(ctrd, rts, runs, results, errors)
        bench_exec(ctrd, rts, runs, results, errors)
        floor, accelerator = floor_s(ctrd.base / "k", ctrd.base / "floor", runs)
    report = {"conditions": {"runs_kata_py": runs, "runs_others": 4 * runs,
                             "exec_runs": 4 * runs - 1, "accelerator": accelerator,
                             "containerd": _first_line(["containerd", "--version"]),
                             "runc": _first_line(["runc", "--version"]),
                             "crun": _first_line(["crun", "--version"]),
                             "shim": str(INSTALLED_SHIM if INSTALLED_SHIM.exists()
                                         else "this checkout's .venv"),
                             "load_at_start": load_before, "load_at_end": host_load()},
              **outcome(results, ROWS, "run_true_s", floor), "errors": errors}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_table(report)

if __name__ == "__main__":
    main()
