"""cgroup v2 for one container: create, limit, join, freeze/thaw, read.

Owns the translation of OCI `linux.resources` (config-linux.md, "Control
groups") onto cgroup v2 interface files, following runc's
libcontainer/cgroups/fs2 and the runtime-spec's cgroup v2 conversion
(runc `ConvertCPUSharesToCgroupV2Value`, `ConvertMemorySwapToCgroupV2Value`):

    memory.limit        → memory.max        (-1 → "max")
    memory.reservation  → memory.low
    memory.swap         → memory.swap.max   (= swap - limit; OCI swap is memory+swap)
    cpu.shares          → cpu.weight        (1 + (shares - 2) * 9999 / 262142)
    cpu.quota/period    → cpu.max           ("<quota|max> <period>")
    cpu.cpus / mems     → cpuset.cpus / cpuset.mems
    pids.limit          → pids.max          (<= 0 → "max")
    unified             → written verbatim
    devices             → not a file on cgroup v2: an eBPF program
                          (devices.py) the launcher attaches to the cgroup

The cgroup2 hierarchy is mounted at `Cgroup.root` (/sys/fs/cgroup in the
guest). Controllers are enabled in every ancestor's cgroup.subtree_control on
the way down. This module never decides *which* cgroup a container gets —
the agent does — and never kills processes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from kata_py.agent.launch_config import Cgroup, Resources

FREEZE_TIMEOUT_S = 5.0
_CPU_PERIOD_DEFAULT_US = 100_000


class CgroupError(OSError):
    """A cgroup operation failed; the message names the file."""


def cpu_weight_from_shares(shares: int) -> int:
    """OCI cpu.shares (2..262144) → cgroup v2 cpu.weight (1..10000); 0 → unset (0)."""
    if shares == 0:
        return 0
    return 1 + ((shares - 2) * 9999) // 262142


def swap_max(memory_swap: int, memory_limit: int | None) -> str:
    """OCI memory.swap (memory+swap) → memory.swap.max (swap only)."""
    if memory_swap == -1:
        return "max"
    if memory_limit is None or memory_limit <= 0:
        raise ValueError("linux.resources.memory.swap: needs a memory limit")
    if memory_swap < memory_limit:
        raise ValueError("linux.resources.memory.swap: must be >= memory.limit")
    return str(memory_swap - memory_limit)


def _max_or(value: int) -> str:
    return "max" if value < 0 else str(value)


def resource_files(res: Resources) -> dict[str, str]:
    """The cgroup v2 interface files and values for `res`, in write order."""
    files: dict[str, str] = {}
    if res.cpuset_cpus:
        files["cpuset.cpus"] = res.cpuset_cpus
    if res.cpuset_mems:
        files["cpuset.mems"] = res.cpuset_mems
    if res.memory_reservation is not None:
        files["memory.low"] = _max_or(res.memory_reservation)
    if res.memory_limit is not None:
        files["memory.max"] = _max_or(res.memory_limit)
    if res.memory_swap is not None and res.memory_swap != 0:
        files["memory.swap.max"] = swap_max(res.memory_swap, res.memory_limit)
    if res.cpu_shares:
        files["cpu.weight"] = str(cpu_weight_from_shares(res.cpu_shares))
    if res.cpu_quota is not None or res.cpu_period is not None:
        quota = res.cpu_quota if res.cpu_quota is not None else -1
        period = res.cpu_period or _CPU_PERIOD_DEFAULT_US
        files["cpu.max"] = f"{quota if quota > 0 else 'max'} {period}"
    if res.pids_limit is not None and res.pids_limit != 0:
        files["pids.max"] = str(res.pids_limit) if res.pids_limit > 0 else "max"
    files.update(res.unified)
    return files


def cgroup_dir(cg: Cgroup) -> Path:
    """Absolute directory of the container's cgroup."""
    rel = cg.path.strip("/")
    if not rel or ".." in rel.split("/"):
        raise ValueError(f"cgroup path {cg.path!r}: must be a relative path below the root")
    return Path(cg.root) / rel


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        raise CgroupError(exc.errno, f"write {value!r} to {path}: {exc.strerror}") from exc


def _enable_controllers(root: Path, target: Path, wanted: set[str]) -> None:
    """Create every level down to `target`, enabling `wanted` controllers in each
    ancestor's subtree_control on the way (a child only gets what its parent
    delegates)."""
    current = root
    for part in target.relative_to(root).parts:
        _delegate(current, wanted)
        current = current / part
        current.mkdir(exist_ok=True)


def _delegate(cgroup: Path, wanted: set[str]) -> None:
    """Enable in cgroup's subtree_control those of `wanted` it has and lacks."""
    available = set((cgroup / "cgroup.controllers").read_text().split())
    enabled = set((cgroup / "cgroup.subtree_control").read_text().split())
    missing = (wanted & available) - enabled
    if missing:
        _write(cgroup / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(missing)))


DEFAULT_CONTROLLERS = frozenset({"memory", "cpu", "pids"})


def prepare_parent(root: Path, parent: str) -> None:
    """The containers' parent cgroup, with the default controllers delegated to
    it and enabled for its children: the agent does this once at start, so
    that it is part of a VM template and a create only adds its own
    directory (the gain measured was small: ≈ 0.01 s of a create under TCG)."""
    path = root / parent
    _enable_controllers(root, path, set(DEFAULT_CONTROLLERS))
    _delegate(path, set(DEFAULT_CONTROLLERS))


def create(cg: Cgroup) -> Path:
    """Create the cgroup (and parents) with the controllers its limits need."""
    path = cgroup_dir(cg)
    root = Path(cg.root)
    # Like runc on cgroup v2: the usual controllers for every container, so
    # that stats work and `update` can set limits the spec did not have.
    wanted = {name.split(".", 1)[0] for name in resource_files(cg.resources)}
    wanted |= DEFAULT_CONTROLLERS
    _enable_controllers(root, path, wanted)
    path.mkdir(parents=True, exist_ok=True)
    return path


def apply(path: Path, res: Resources) -> None:
    """Write the limits; a controller not enabled here is an error naming the file."""
    for name, value in resource_files(res).items():
        if not (path / name).exists():
            raise CgroupError(2, f"{path / name}: no such cgroup file (controller "
                                 f"{name.split('.', 1)[0]!r} not available)")
        _write(path / name, value)


def join(path: Path, pid: int = 0) -> None:
    """Move `pid` (0 = the caller) into the cgroup."""
    _write(path / "cgroup.procs", str(pid or os.getpid()))


def _events(path: Path) -> dict[str, str]:
    lines = (path / "cgroup.events").read_text().splitlines()
    return dict(line.split(" ", 1) for line in lines if " " in line)


def _set_frozen(path: Path, frozen: bool) -> None:
    _write(path / "cgroup.freeze", "1" if frozen else "0")
    deadline = time.monotonic() + FREEZE_TIMEOUT_S
    want = "1" if frozen else "0"
    while _events(path).get("frozen") != want:
        if time.monotonic() > deadline:
            raise CgroupError(62, f"{path}: not {'frozen' if frozen else 'thawed'} after "
                                  f"{FREEZE_TIMEOUT_S}s")
        time.sleep(0.01)


def freeze(path: Path) -> None:
    """cgroup.freeze = 1 and wait until cgroup.events says frozen (OCI pause)."""
    _set_frozen(path, True)


def thaw(path: Path) -> None:
    """cgroup.freeze = 0 and wait until thawed (OCI resume)."""
    _set_frozen(path, False)


STAT_PREFIXES = ("memory.", "cpu.", "cpuset.", "pids.", "io.", "hugetlb.")


def interface_files(path: Path) -> dict[str, str]:
    """Every readable file of the controllers' interfaces in the cgroup, by
    name, as read (StatsContainer: the host parses and renders them)."""
    files: dict[str, str] = {}
    with os.scandir(path) as entries:
        for entry in entries:
            if not entry.name.startswith(STAT_PREFIXES) or entry.name.endswith(".pressure"):
                continue
            if not entry.stat().st_mode & 0o444:      # memory.reclaim: write-only
                continue
            try:
                with open(entry.path) as f:
                    files[entry.name] = f.read()
            except OSError:
                continue                              # a file that refuses reads
    return files


def remove(path: Path) -> None:
    """rmdir the (empty) cgroup; missing is fine."""
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
