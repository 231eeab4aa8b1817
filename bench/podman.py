"""podman benchmark, kata-py beside runc and crun in one run (`--runtime` per run):

- `podman run --rm IMG true` with `--network none`, then with podman's
  default bridge network: median wall time (kata-py N runs, the others 4N),
  kata-py/runc, and kata-py minus the bare-QEMU floor of bench/boot.py,
  measured in the same run (goal: `podman run --rm` <= floor + 0.5 s);
- network throughput, kata-py vs runc: iperf3 in the container, as the client
  of an iperf3 server in a network namespace made by this benchmark, 5 s each
  way (`-R` for server -> container), `-J` output parsed, Mbit/s;
- bind-volume throughput, kata-py (virtio-fs) vs runc (a bind mount): GNU
  dd of 256 MiB with `conv=fsync` into `-v DIR:/data`, then read back by a
  fresh container (guest page cache cold, host page cache warm), MB/s.

Network topology (the container is the client, so both runtimes take the same
path and no readiness of a server inside a VM has to be polled):

    container 10.88.0.x ── podman0 bridge (netavark) ── host: routes, NAT ──
      veth kpb<pid>h 10.213.K.1/30 ═══ kpb<pid>n 10.213.K.2/30 in netns kpb-<pid>: iperf3 -s

netavark masquerades the container's traffic leaving 10.88.0.0/16, so the
server sees 10.213.K.1; the namespace also routes 10.88.0.0/16 back through
the host. K is a /30 free on this host. Namespace, veth and server are
removed in `finally`.

podman is private to the run, as in tests/e2e/conftest.py (whose functions
this imports): containers.conf and storage under a temporary directory — never
/etc/containers or /var/lib/containers — and kata-py through a wrapper with
its own `--root` (the wrapper also notes each call, printed with kata-py's
logs if anything of a container is left behind). The wrapper runs the
installed /usr/local/bin/kata-py, the command engines call, as
bench/containers.py does (run scripts/setup.sh first so that it is this
checkout's); without it, this checkout's .venv. Images come from `podman
import`: busybox (the e2e tarball) and a tiny bench image (busybox plus the
host's /usr/bin/iperf3 and GNU /usr/bin/dd, the libraries ldd lists and the
dynamic loader), its tarball cached in /var/cache/kata-py/bench/. Everything
of the run is removed at the end. A measurement that fails is reported with
its error; the others still run. Usage:
    .venv/bin/python bench/podman.py [--runs 5] [--json]
(crun on a hybrid-cgroup host needs the hugetlb v1 controller mounted; see
shared/DESIGN.md.)
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.e2e.conftest import (  # noqa: E402
    IMAGE,
    KATA_PY,
    Podman,
    _unmount_below,
    busybox_tar,
    new_podman,
)

CACHE = Path("/var/cache/kata-py/bench")
# what containers.conf.d/kata-py.conf names first, the command engines call
# (scripts/setup.sh installs it from this checkout); else this checkout's .venv
INSTALLED = Path("/usr/local/bin/kata-py")
CALLS_LOG = "kata-py-calls.log"
IPERF3 = Path("/usr/bin/iperf3")
GNU_DD = Path("/usr/bin/dd")             # busybox-static's dd prints no "bytes copied" line
HOST_BINARIES = (IPERF3, GNU_DD)         # copied into the bench image with their libraries
BENCH_IMAGE = "localhost/kata-py-bench:latest"
BENCH_LAYOUT = b"bench image v1"         # bump when bench_tar() changes what it writes
IPERF_SECONDS = 5
IPERF_CONNECT_TIMEOUT_MS = 5000
DD_MIB = 256
GOAL_OVER_FLOOR_S = 0.5
PODMAN_TIMEOUT_S = 180.0                 # one podman verb; a kata-py VM boots in ~6 s (TCG)
SERVER_READY_TIMEOUT_S = 10.0
PODMAN_SUBNET = "10.88.0.0/16"           # podman's default bridge network
TEST_NET = ipaddress.IPv4Network("10.213.0.0/16")
NONE = ("--network", "none")

T = TypeVar("T")


class BenchError(Exception):
    """A measurement failed; the message says which command and why."""


def _run(argv: list[str], timeout: float = 30.0,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         timeout=timeout, check=False)
    if check and res.returncode != 0:
        raise BenchError(f"{' '.join(argv)}: exit {res.returncode}: {res.stderr.strip()}")
    return res


def _first_line(argv: list[str]) -> str:
    try:
        out = _run(argv, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.splitlines()[0] if out else "?"


# ---------------------------------------------------------------- podman

def _podman_ok(podman: Podman, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        res = podman(*args, timeout=PODMAN_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"podman {' '.join(args)}: no answer in {PODMAN_TIMEOUT_S:.0f} s") \
            from exc
    if res.returncode != 0:
        tail = " | ".join(res.stderr.strip().splitlines()[-3:])
        raise BenchError(f"podman {' '.join(args)}: exit {res.returncode}: {tail}")
    return res


@contextmanager
def private_podman() -> Iterator[Podman]:
    """A podman with its own config, storage and kata-py root below a temp
    dir; every container and image of it, and the dir, removed at the end."""
    # the runtime calls podman/conmon made, for a leak's post-mortem
    podman = new_podman("kpbp", lambda base: f'echo "$(date +%T.%N) $*" >> {base / CALLS_LOG}\n',
                        kata_py=INSTALLED if INSTALLED.exists() else KATA_PY)
    base = podman.base
    calls = base / CALLS_LOG
    try:
        yield podman
    finally:
        for args in (("rm", "--all", "--force", "--time", "0"), ("rmi", "--all", "--force")):
            try:
                podman(*args)
            except subprocess.TimeoutExpired:
                print(f"bench: podman {' '.join(args)} timed out", file=sys.stderr)
        left = podman.leftovers()
        if left:
            print("bench: left behind by kata-py/conmon:\n  " + "\n  ".join(left),
                  file=sys.stderr)
            print_kata_logs(podman.kata_root, calls)
        _unmount_below(base)
        shutil.rmtree(base, ignore_errors=True)


def print_kata_logs(kata_root: Path, calls: Path) -> None:
    """What kata-py left in its root and the runtime calls for those ids, on
    stderr (stdout may be JSON)."""
    ids = {p.name for p in kata_root.glob("containers/*")}
    for path in [*kata_root.glob("containers/*/monitor.log"), *kata_root.glob("vm/*/*.log")]:
        tail = path.read_text(errors="replace").splitlines()[-20:]
        print(f"----- {path} (last 20 lines)\n" + "\n".join(tail), file=sys.stderr)
    lines = calls.read_text(errors="replace").splitlines() if calls.exists() else []
    print(f"----- runtime calls for {', '.join(sorted(ids))}\n"
          + "\n".join(line for line in lines if any(i in line for i in ids)), file=sys.stderr)


def runtimes() -> dict[str, str]:
    """Name -> what `podman --runtime` gets (kata-py: the conf's wrapper)."""
    found = {"kata-py": "kata-py"}
    for name in ("runc", "crun"):
        path = shutil.which(name)
        if path:
            found[name] = path
    return found


def timed_run(podman: Podman, runtime: str, *args: str) -> float:
    start = time.monotonic()
    _podman_ok(podman, "--runtime", runtime, "run", "--rm", *args)
    return time.monotonic() - start


# ---------------------------------------------------------------- the bench image

def shared_libraries(binary: Path) -> list[Path]:
    """What ldd lists for binary, the dynamic loader included (no vdso)."""
    out = _run(["ldd", str(binary)]).stdout
    return [Path(m.group(1)) for m in re.finditer(r"(/\S+) \(0x[0-9a-f]+\)", out)]


def bench_tar() -> Path:
    """busybox (the e2e tarball) + the host's iperf3 and GNU dd + their
    libraries at the paths ldd names, as regular files (the loader too);
    cached by the content of all of them."""
    for binary in HOST_BINARIES:
        if not binary.exists():
            raise BenchError(f"{binary} is missing: apt-get install iperf3 coreutils")
    base_tar = busybox_tar()
    files = {}
    for binary in HOST_BINARIES:
        files[binary] = binary.read_bytes()
        files.update((lib, lib.read_bytes()) for lib in shared_libraries(binary))
    digest = hashlib.sha256(base_tar.name.encode() + BENCH_LAYOUT)
    for path, data in sorted(files.items()):
        digest.update(str(path).encode() + hashlib.sha256(data).digest())
    path = CACHE / f"bench-{digest.hexdigest()[:12]}.tar"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tarfile.open(base_tar) as src, tarfile.open(tmp, "w") as tar:
        names = set()
        for member in src.getmembers():
            tar.addfile(member, src.extractfile(member) if member.isfile() else None)
            names.add(member.name)
        for file, data in sorted(files.items()):
            rel = file.relative_to("/")
            for parent in reversed(rel.parents[:-1]):
                if str(parent) not in names:
                    info = tarfile.TarInfo(str(parent))
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                    names.add(str(parent))
            info = tarfile.TarInfo(str(rel))
            info.mode, info.size = 0o755, len(data)
            with open(file, "rb") as f:
                tar.addfile(info, f)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------- test network

def free_test_subnet() -> ipaddress.IPv4Network:
    """A /30 in 10.213.0.0/16 that no address or route of this host overlaps,
    starting at a pid-derived place so concurrent runs rarely collide."""
    used: list[ipaddress.IPv4Network] = []
    for argv in (["ip", "-4", "-o", "addr", "show"], ["ip", "-4", "route", "show", "table", "all"]):
        for m in re.finditer(r"\b(10\.213\.\d+\.\d+(?:/\d+)?)", _run(argv).stdout):
            used.append(ipaddress.IPv4Network(m.group(1), strict=False))
    subnets = list(TEST_NET.subnets(new_prefix=30))
    start = (os.getpid() * 64) % len(subnets)
    for net in subnets[start:] + subnets[:start]:
        if not any(net.overlaps(u) for u in used):
            return net
    raise BenchError("no free /30 in 10.213.0.0/16 for the test network")


@contextmanager
def iperf_server(work: Path) -> Iterator[str]:
    """Netns kpb-<pid> joined to the host by a veth, iperf3 -s in it; yields
    the server's address. All of it removed on the way out."""
    pid = os.getpid()
    ns, host_if, ns_if = f"kpb-{pid}", f"kpb{pid}h", f"kpb{pid}n"
    net = free_test_subnet()
    host_ip, server_ip = (str(a) for a in net.hosts())
    log = work / "iperf3-server.log"
    server: subprocess.Popen[bytes] | None = None
    try:
        _run(["ip", "netns", "add", ns])
        _run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if,
              "netns", ns])
        _run(["ip", "addr", "add", f"{host_ip}/30", "dev", host_if])
        _run(["ip", "link", "set", host_if, "up"])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "-n", ns, "addr", "add", f"{server_ip}/30", "dev", ns_if])
        _run(["ip", "-n", ns, "link", "set", ns_if, "up"])
        _run(["ip", "-n", ns, "route", "add", PODMAN_SUBNET, "via", host_ip])
        with open(log, "wb") as out:   # `ip netns exec` execs: the pid is iperf3's
            server = subprocess.Popen(["ip", "netns", "exec", ns, str(IPERF3), "-s", "-B",
                                       server_ip, "--forceflush"], stdin=subprocess.DEVNULL,
                                      stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
        while b"listening" not in log.read_bytes():
            if server.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"iperf3 server in {ns} did not start: "
                                 f"{log.read_text(errors='replace').strip()}")
            time.sleep(0.1)
        yield server_ip
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=5)
        _run(["ip", "link", "del", host_if], check=False)
        _run(["ip", "netns", "del", ns], check=False)


def iperf_results(stdout: str) -> list[dict[str, Any]]:
    """The JSON documents iperf3 -J printed one after another."""
    decoder, pos = json.JSONDecoder(), 0
    docs: list[dict[str, Any]] = []
    while True:
        while pos < len(stdout) and stdout[pos].isspace():
            pos += 1
        if pos >= len(stdout):
            return docs
        doc, pos = decoder.raw_decode(stdout, pos)
        docs.append(doc)


def measure_iperf(podman: Podman, runtime: str, server_ip: str) -> tuple[float, float]:
    """(container -> netns, netns -> container) in Mbit/s, as the receiver counted."""
    client = (f"iperf3 -c {server_ip} -t {IPERF_SECONDS} -J "
              f"--connect-timeout {IPERF_CONNECT_TIMEOUT_MS}")
    res = _podman_ok(podman, "--runtime", runtime, "run", "--rm", BENCH_IMAGE, "sh", "-c",
                     f"{client}; {client} -R")
    try:
        docs = iperf_results(res.stdout)
    except ValueError as exc:
        raise BenchError(f"iperf3 -J output unreadable: {res.stdout[:200]!r}") from exc
    if len(docs) != 2 or any("error" in d for d in docs):
        raise BenchError("iperf3: " + "; ".join(str(d.get("error", "?")) for d in docs))
    up, down = (d["end"]["sum_received"]["bits_per_second"] / 1e6 for d in docs)
    return up, down


# ---------------------------------------------------------------- bind volume

def dd_mb_s(stderr: str) -> float:
    """MB/s (10^6) from GNU dd's summary line:
    `268435456 bytes (268 MB, 256 MiB) copied, 1.23 s, 218 MB/s`."""
    m = re.search(r"^(\d+) bytes \(.*\) copied, ([\d.]+(?:e[-+]?\d+)?) s", stderr, re.M)
    if not m:
        raise BenchError(f"no dd summary line in: {stderr.strip()[-200:]!r}")
    return int(m.group(1)) / 1e6 / max(float(m.group(2)), 1e-6)


def measure_dd(podman: Podman, runtime: str, volume: Path) -> tuple[float, float]:
    """(write, read) MB/s through `-v volume:/data`; each in its own container."""
    target = volume / "f"
    try:
        write = _podman_ok(podman, "--runtime", runtime, "run", "--rm", *NONE, "-v",
                           f"{volume}:/data", BENCH_IMAGE, str(GNU_DD), "if=/dev/zero",
                           "of=/data/f", "bs=1M", f"count={DD_MIB}", "conv=fsync")
        read = _podman_ok(podman, "--runtime", runtime, "run", "--rm", *NONE, "-v",
                          f"{volume}:/data", BENCH_IMAGE, str(GNU_DD), "if=/data/f",
                          "of=/dev/null", "bs=1M")
    finally:
        target.unlink(missing_ok=True)
    return dd_mb_s(write.stderr), dd_mb_s(read.stderr)


# ---------------------------------------------------------------- the run

def _median(samples: list[float]) -> float | None:
    return statistics.median(samples) if samples else None


def measure(label: str, fn: Callable[[], T], reps: int, errors: dict[str, str]) -> list[T]:
    """fn() reps times; on failure stop, note the error under label, keep what ran."""
    samples = []
    for _ in range(reps):
        try:
            samples.append(fn())
        except BenchError as exc:
            errors[label] = str(exc)
            print(f"bench: {label}: {exc}", file=sys.stderr)
            break
    return samples


def bench_run_true(podman: Podman, rts: dict[str, str], runs: int,
                   results: dict[str, dict[str, Any]], errors: dict[str, str]) -> None:
    """`run --rm IMG true`, --network none then the default network; kata-py
    runs times, the others 4x, interleaved so that drift hits every runtime alike."""
    for mode, net in (("none", NONE), ("default", ())):
        # Not counted: podman's first run in a fresh storage, and kata-py's first
        # (which builds its VM template if there is none yet).
        for warm in dict.fromkeys((rts.get("runc", "kata-py"), rts.get("kata-py"))):
            if warm is not None:
                measure(f"warm-up {warm} network={mode}",
                        partial(timed_run, podman, warm, *net, IMAGE, "true"), 1, errors)
        samples: dict[str, list[float]] = {name: [] for name in rts}
        for _ in range(runs):
            for name, rt in rts.items():
                label = f"{name} run network={mode}"
                if label not in errors:
                    samples[name] += measure(label, partial(timed_run, podman, rt, *net, IMAGE,
                                                            "true"),
                                             1 if name == "kata-py" else 4, errors)
        for name in rts:
            results[name][f"run_true_{mode}_s"] = _median(samples[name])
            results[name][f"run_true_{mode}_samples_s"] = samples[name]


def bench_throughput(podman: Podman, rts: dict[str, str], io_runs: int,
                     results: dict[str, dict[str, Any]], errors: dict[str, str]) -> None:
    """Bind-volume dd and iperf3, kata-py vs runc, io_runs times each."""
    pair = [n for n in ("kata-py", "runc") if n in rts]
    volume = podman.base / "vol"
    volume.mkdir()
    for name in pair:
        dd = measure(f"{name} dd", partial(measure_dd, podman, rts[name], volume), io_runs,
                     errors)
        results[name]["dd_write_mb_s"] = _median([w for w, _ in dd])
        results[name]["dd_read_mb_s"] = _median([r for _, r in dd])
    try:
        with iperf_server(podman.base) as server_ip:
            for name in pair:
                bw = measure(f"{name} iperf3", partial(measure_iperf, podman, rts[name],
                                                       server_ip), io_runs, errors)
                results[name]["iperf_to_netns_mbit_s"] = _median([u for u, _ in bw])
                results[name]["iperf_from_netns_mbit_s"] = _median([d for _, d in bw])
    except BenchError as exc:
        errors["iperf3 set-up"] = str(exc)
        print(f"bench: iperf3 set-up: {exc}", file=sys.stderr)


def floor_s(kata_root: Path, work: Path, runs: int) -> tuple[float, str]:
    """Median bare-QEMU boot (bench/boot.py), same config as podman's kata-py."""
    import boot  # bench/boot.py: this script's directory is first on sys.path

    from kata_py.config import load_config
    from kata_py.hypervisor import accel
    from kata_py.image import load_image

    cfg = replace(load_config(None), state_dir=str(kata_root))
    image = load_image(Path(cfg.hypervisor.image_dir))
    qemu = shutil.which(cfg.hypervisor.path) or cfg.hypervisor.path
    choice = accel.choose(cfg.hypervisor.accelerator, qemu, image.kernel, kata_root)
    work.mkdir(exist_ok=True)
    return statistics.median(boot.floor_boot_s(cfg, image, choice.accelerator, work,
                                               cfg.hypervisor.machine)
                             for _ in range(runs)), choice.accelerator


def conditions(runs: int, accelerator: str) -> dict[str, Any]:
    from kata_py.config import load_config

    cfg = load_config(None)
    return {"runs_kata_py": runs, "runs_others": 4 * runs, "io_runs": max(3, runs // 2),
            "accelerator": accelerator, "machine": cfg.hypervisor.machine,
            "vm_vcpus": cfg.hypervisor.vcpus, "vm_memory_mib": cfg.hypervisor.memory_mib,
            "virtiofsd_cache": cfg.virtiofsd.cache, "host_kernel": platform.release(),
            "kata_py": str(INSTALLED if INSTALLED.exists() else KATA_PY),
            "host_cpus": os.cpu_count(), "podman": _first_line(["podman", "--version"]),
            "runc": _first_line(["runc", "--version"]),
            "crun": _first_line(["crun", "--version"]),
            "iperf3": _first_line([str(IPERF3), "--version"]),
            "volume_fs": _run(["findmnt", "-no", "FSTYPE", "-T", "/tmp"],
                              check=False).stdout.strip()}


def host_load() -> dict[str, Any]:
    """Load average and QEMUs running (ours included): other engineers' VMs
    share these 2 cores and slow kata-py's figures down."""
    qemus = 0
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "comm").read_text().startswith("qemu-system"):
                qemus += 1
        except OSError:
            continue
    return {"load_average": [round(x, 2) for x in os.getloadavg()], "qemu_processes": qemus}


ROWS = (("run --rm true, --network none (s)", "run_true_none_s", "{:.3f}"),
        ("run --rm true, default network (s)", "run_true_default_s", "{:.3f}"),
        (f"volume dd write {DD_MIB} MiB+fsync (MB/s)", "dd_write_mb_s", "{:.1f}"),
        (f"volume dd read {DD_MIB} MiB (MB/s)", "dd_read_mb_s", "{:.1f}"),
        ("iperf3 container -> netns (Mbit/s)", "iperf_to_netns_mbit_s", "{:.0f}"),
        ("iperf3 netns -> container (Mbit/s)", "iperf_from_netns_mbit_s", "{:.0f}"))


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def print_table(report: dict[str, Any]) -> None:
    c = report["conditions"]
    print(f"{c['accelerator']}, {c['machine']}; kata-py {c['runs_kata_py']} runs, others "
          f"{c['runs_others']}, throughput {c['io_runs']}; medians; virtiofsd "
          f"cache={c['virtiofsd_cache']}; volume on {c['volume_fs']}; load "
          f"{c['load_at_start']['load_average'][0]} -> {c['load_at_end']['load_average'][0]}, "
          f"QEMUs running at start {c['load_at_start']['qemu_processes']}; kata-py: "
          f"{c['kata_py']}")
    print_rows(report, ROWS, 40, "kata-py run --rm (--network none)")


def print_rows(report: dict[str, Any], rows: Any, width: int, goal_label: str) -> None:
    """The table's body, the goal line and the failures (shared by bench/containerd.py)."""
    results = report["results"]
    print(f"{'':<{width}}" + "".join(f"{n:>10}" for n in results) + f"{'kata/runc':>11}")
    for label, key, fmt in rows:
        cells = [r.get(key) for r in results.values()]
        ratio = report["ratios"][key]
        print(f"{label:<{width}}" + "".join(f"{'-' if v is None else fmt.format(v):>10}"
                                            for v in cells)
              + f"{'-' if ratio is None else f'{ratio:.3g}x':>11}")
    g = report["goal"]
    if g["kata_minus_floor_s"] is not None:
        print(f"bare-QEMU floor {report['floor_s']:.3f} s; {goal_label} - floor = "
              f"{g['kata_minus_floor_s']:.3f} s (goal <= {g['goal_s']} s: "
              f"{'met' if g['met'] else 'not met'})")
    for label, error in report["errors"].items():
        print(f"FAILED {label}: {error}")


def parse_args(doc: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="kata-py runs (others: 4x)")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args()


def outcome(results: dict[str, dict[str, Any]], rows: Any, goal_key: str,
            floor: float) -> dict[str, Any]:
    """Ratios kata-py/runc for every row and the goal on `goal_key` vs the floor."""
    kp, rc = results["kata-py"], results.get("runc", {})
    over = kp[goal_key] - floor if kp.get(goal_key) is not None else None
    return {"floor_s": floor, "results": results,
            "ratios": {key: _ratio(kp.get(key), rc.get(key)) for _, key, _ in rows},
            "goal": {"kata_minus_floor_s": over, "goal_s": GOAL_OVER_FLOOR_S,
                     "met": over is not None and over <= GOAL_OVER_FLOOR_S}}


def main() -> None:
    args = parse_args(__doc__)
    runs = max(1, args.runs)
    load_before = host_load()
    with private_podman() as podman:
        for tar, image in ((busybox_tar(), IMAGE), (bench_tar(), BENCH_IMAGE)):
            _podman_ok(podman, "import", "--change", 'CMD ["sh"]', str(tar), image)
        rts = runtimes()
        errors: dict[str, str] = {}
        results: dict[str, dict[str, Any]] = {name: {} for name in rts}
        bench_run_true(podman, rts, runs, results, errors)
        bench_throughput(podman, rts, max(3, runs // 2), results, errors)
        floor, accelerator = floor_s(podman.kata_root, podman.base / "floor", runs)
    report = {"conditions": {**conditions(runs, accelerator), "load_at_start": load_before,
                             "load_at_end": host_load()},
              **outcome(results, ROWS, "run_true_none_s", floor), "errors": errors}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_table(report)

if __name__ == "__main__":
    main()
