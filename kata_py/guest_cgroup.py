"""The container's guest cgroup, read on the host: parsed into runc's
statistics and rendered as the files of the host's cgroup hierarchies.

The agent sends the guest cgroup v2's interface files as read
(StatsContainer). This module owns every reading of them:

- `runc_stats`: runc's `events --stats` data (types.Stats), converted as
  runc's libcontainer/cgroups/fs2 reads a cgroup v2 tree;
- `render`: what the host cgroup of the container shows (statsview.py mounts
  it there) — in the v2 tree the guest's files as they are; in each cgroup v1
  hierarchy the v1 files of that controller (`memory.limit_in_bytes`,
  `cpu.cfs_quota_us`, `cpu.shares`, `cpuset.cpus`, `pids.max`,
  `hugetlb.2MB.limit_in_bytes`, `blkio.throttle.*`, ...), converted back the
  way runc converts v1 settings to v2 (cgroups.py in the agent).

A figure the guest's kernel does not keep is left out rather than made up
(v2 has no hugetlb peak, no swappiness, no kmem accounting of its own).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kata_py.agent.cgroups import cpu_weight_from_shares

V1_NO_LIMIT = 9223372036854771712   # what a v1 limit file says for "no limit"
U64_MAX = (1 << 64) - 1             # what runc's statistics say for a v2 "max"
USER_HZ = 100
V2_DEFAULT_WEIGHT = 100             # cgroup v2's cpu.weight default ≙ v1's 1024 shares
V1_DEFAULT_SHARES = 1024
CPU_PERIOD_DEFAULT_US = 100_000

# The kinds of view: one per v1 controller the host may mount, and v2.
# A v1 hierarchy mounting several controllers together (cpu,cpuacct) gets the union.
KINDS = ("memory", "cpu", "cpuacct", "cpuset", "pids", "blkio", "hugetlb", "v2")

# memory.stat: the v1 key, from the v2 key
V1_MEMORY_STAT = (("cache", "file"), ("rss", "anon"), ("rss_huge", "anon_thp"),
                  ("shmem", "shmem"), ("mapped_file", "file_mapped"),
                  ("dirty", "file_dirty"), ("writeback", "file_writeback"),
                  ("pgfault", "pgfault"), ("pgmajfault", "pgmajfault"),
                  ("inactive_anon", "inactive_anon"), ("active_anon", "active_anon"),
                  ("inactive_file", "inactive_file"), ("active_file", "active_file"),
                  ("unevictable", "unevictable"))
CPUSET_ZERO = {"cpu_exclusive": 0, "mem_hardwall": 0, "mem_exclusive": 0, "memory_migrate": 0,
               "memory_spread_page": 0, "memory_spread_slab": 0, "memory_pressure": 0,
               "sched_load_balance": 0, "sched_relax_domain_level": 0}


@dataclass(frozen=True)
class GuestCgroup:
    """The guest cgroup's files (name → text) and the OCI cpu.shares last applied."""

    files: Mapping[str, str] = field(default_factory=dict)
    cpu_shares: int = 0

    def number(self, name: str) -> int | None:
        """A single-value file; None when missing, unparsable or "max"."""
        try:
            return int(self.files[name].split()[0])
        except (KeyError, IndexError, ValueError):
            return None

    def keyed(self, name: str) -> dict[str, int]:
        """A flat-keyed file ("key value" lines: cpu.stat, memory.stat, *.events)."""
        out: dict[str, int] = {}
        for line in self.files.get(name, "").splitlines():
            key, _, value = line.partition(" ")
            if value.strip().isdigit():
                out[key] = int(value)
        return out

    def devices(self, name: str) -> list[tuple[str, dict[str, str]]]:
        """A nested-keyed file per device ("MAJ:MIN k=v ..." lines: io.stat, io.max)."""
        rows = []
        for line in self.files.get(name, "").splitlines():
            device, *pairs = line.split()
            if ":" in device:
                rows.append((device, dict(p.partition("=")[::2] for p in pairs)))
        return rows

    def cpu_max(self) -> tuple[int | None, int]:
        """cpu.max as (quota in µs or None for max, period in µs)."""
        quota, _, period = self.files.get("cpu.max", "max").strip().partition(" ")
        return (None if quota == "max" else int(quota),
                int(period) if period else CPU_PERIOD_DEFAULT_US)

    def v1_shares(self) -> int:
        """cpu.shares as cgroup v1 would show it: the value applied when it
        still gives today's cpu.weight, else the smallest that converts to it."""
        weight = self.number("cpu.weight")
        if weight is None or (weight == V2_DEFAULT_WEIGHT and not self.cpu_shares):
            return V1_DEFAULT_SHARES
        if self.cpu_shares and cpu_weight_from_shares(self.cpu_shares) == weight:
            return self.cpu_shares
        return 2 + -(-(weight - 1) * 262142 // 9999)

    def hugepage_sizes(self) -> list[str]:
        return sorted({name.split(".")[1] for name in self.files
                       if name.startswith("hugetlb.") and name.endswith(".max")
                       and name.count(".") == 2})


# ---- runc's `events --stats` ----------------------------------------------------------

def runc_stats(cg: GuestCgroup) -> dict[str, Any]:
    """runc's types.Stats (runc types/events.go, events.go
    convertLibcontainerStats, fs2 readers): every field in its struct's order,
    Go's `omitempty` zeros left out, map keys sorted."""
    def some(**fields: int | None) -> dict[str, int]:        # omitempty
        return {k: v for k, v in fields.items() if v}

    cpu = cg.keyed("cpu.stat")
    raw = dict(sorted(cg.keyed("memory.stat").items()))
    usage, limit = cg.number("memory.current"), cg.number("memory.max")
    memory = {"limit": U64_MAX if limit is None else limit, **some(usage=usage), "failcnt": 0}
    swap = dict(memory)             # v1's memory+swap, as runc reports v2's swap
    if "memory.swap.current" in cg.files:
        swap_limit = cg.number("memory.swap.max")
        swap = {"limit": (U64_MAX if swap_limit is None or limit is None
                          else swap_limit + limit),
                **some(usage=(usage or 0) + (cg.number("memory.swap.current") or 0)),
                "failcnt": 0}
    io = cg.devices("io.stat")

    def blkio(ops: tuple[tuple[str, str], ...]) -> list[dict[str, Any]]:
        rows = []
        for device, values in io:
            major, _, minor = device.partition(":")
            for op, key in ops:
                row: dict[str, Any] = some(major=int(major), minor=int(minor))
                rows.append(row | {"op": op} | some(value=int(values.get(key, 0))))
        return rows
    blk = {"ioServiceBytesRecursive": blkio((("Read", "rbytes"), ("Write", "wbytes"))),
           "ioServicedRecursive": blkio((("Read", "rios"), ("Write", "wios")))}
    pids_max = cg.number("pids.max")
    return {
        "cpu": {"usage": {**some(total=_ns(cpu.get("usage_usec"))),
                          "kernel": _ns(cpu.get("system_usec")) or 0,
                          "user": _ns(cpu.get("user_usec")) or 0},
                "throttling": some(periods=cpu.get("nr_periods"),
                                   throttledPeriods=cpu.get("nr_throttled"),
                                   throttledTime=_ns(cpu.get("throttled_usec")))},
        "cpuset": CPUSET_ZERO,
        "memory": {**some(cache=raw.get("file")), "usage": memory, "swap": swap,
                   "kernel": {"limit": 0, "failcnt": 0}, "kernelTCP": {"limit": 0, "failcnt": 0},
                   **({"raw": raw} if raw else {})},
        "pids": some(current=cg.number("pids.current"), limit=pids_max),
        "blkio": {key: rows for key, rows in blk.items() if rows},
        "hugetlb": {size: some(usage=cg.number(f"hugetlb.{size}.current"))
                    | {"failcnt": cg.keyed(f"hugetlb.{size}.events").get("max", 0)}
                    for size in cg.hugepage_sizes()},
        "intel_rdt": {}, "network_interfaces": None}


def _ns(usec: int | None) -> int | None:
    return None if usec is None else usec * 1000


# ---- the host cgroup's files --------------------------------------------------------------

def _limit(value: int | None) -> str:
    return f"{V1_NO_LIMIT if value is None else value}\n"


def _memory(cg: GuestCgroup) -> dict[str, str]:
    usage = cg.number("memory.current") or 0
    peak = cg.number("memory.peak")
    limit = cg.number("memory.max")
    swap = cg.number("memory.swap.current") or 0
    swap_max = cg.number("memory.swap.max")
    events = cg.keyed("memory.events")
    stat = cg.keyed("memory.stat")
    memsw_limit = None if limit is None or swap_max is None else limit + swap_max
    low = cg.number("memory.low")
    v1 = [(v1_key, stat[v2_key]) for v1_key, v2_key in V1_MEMORY_STAT if v2_key in stat]
    v1.append(("swap", swap))
    table = "".join(f"{k} {v}\n" for k, v in v1)
    table += f"hierarchical_memory_limit {V1_NO_LIMIT if limit is None else limit}\n"
    table += f"hierarchical_memsw_limit {V1_NO_LIMIT if memsw_limit is None else memsw_limit}\n"
    table += "".join(f"total_{k} {v}\n" for k, v in v1)
    return {"memory.usage_in_bytes": f"{usage}\n",
            "memory.limit_in_bytes": _limit(limit),
            "memory.max_usage_in_bytes": f"{usage if peak is None else peak}\n",
            "memory.failcnt": f"{events.get('max', 0)}\n",
            "memory.soft_limit_in_bytes": _limit(low or None),
            "memory.memsw.usage_in_bytes": f"{usage + swap}\n",
            "memory.memsw.limit_in_bytes": _limit(memsw_limit),
            "memory.memsw.max_usage_in_bytes": f"{(usage if peak is None else peak) + swap}\n",
            "memory.memsw.failcnt": f"{events.get('max', 0)}\n",
            "memory.oom_control": (f"oom_kill_disable 0\nunder_oom 0\n"
                                   f"oom_kill {events.get('oom_kill', 0)}\n"),
            "memory.use_hierarchy": "1\n",
            "memory.stat": table}


def _cpu(cg: GuestCgroup) -> dict[str, str]:
    quota, period = cg.cpu_max()
    stat = cg.keyed("cpu.stat")
    return {"cpu.cfs_quota_us": f"{-1 if quota is None else quota}\n",
            "cpu.cfs_period_us": f"{period}\n",
            "cpu.shares": f"{cg.v1_shares()}\n",
            "cpu.stat": (f"nr_periods {stat.get('nr_periods', 0)}\n"
                         f"nr_throttled {stat.get('nr_throttled', 0)}\n"
                         f"throttled_time {stat.get('throttled_usec', 0) * 1000}\n")}


def _cpuacct(cg: GuestCgroup) -> dict[str, str]:
    stat = cg.keyed("cpu.stat")
    usec, user, system = (stat.get(k, 0) for k in ("usage_usec", "user_usec", "system_usec"))
    return {"cpuacct.usage": f"{usec * 1000}\n",
            "cpuacct.usage_user": f"{user * 1000}\n",
            "cpuacct.usage_sys": f"{system * 1000}\n",
            "cpuacct.usage_percpu": "\n",       # the guest's split is not reported
            "cpuacct.stat": (f"user {user * USER_HZ // 1_000_000}\n"
                             f"system {system * USER_HZ // 1_000_000}\n")}


def _cpuset(cg: GuestCgroup) -> dict[str, str]:
    out = {}
    for kind in ("cpus", "mems"):
        effective = cg.files.get(f"cpuset.{kind}.effective", "").strip()
        own = cg.files.get(f"cpuset.{kind}", "").strip() or effective
        out[f"cpuset.{kind}"] = f"{own}\n"
        out[f"cpuset.effective_{kind}"] = f"{effective}\n"
    return out


def _pids(cg: GuestCgroup) -> dict[str, str]:
    return {"pids.current": f"{cg.number('pids.current') or 0}\n",
            "pids.max": cg.files.get("pids.max", "max\n"),
            "pids.events": f"max {cg.keyed('pids.events').get('max', 0)}\n"}


def _blkio(cg: GuestCgroup) -> dict[str, str]:
    def table(read: str, write: str) -> str:
        rows, total = "", 0
        for device, values in cg.devices("io.stat"):
            r, w = int(values.get(read, 0)), int(values.get(write, 0))
            total += r + w
            rows += "".join(f"{device} {op} {value}\n" for op, value in
                            (("Read", r), ("Write", w), ("Sync", 0), ("Async", 0),
                             ("Discard", 0), ("Total", r + w)))
        return rows + f"Total {total}\n"

    def throttle(key: str) -> str:
        return "".join(f"{device} {values[key]}\n" for device, values in cg.devices("io.max")
                       if values.get(key, "max") != "max")
    out = {}
    for prefix in ("blkio.", "blkio.throttle."):
        out[prefix + "io_service_bytes_recursive"] = table("rbytes", "wbytes")
        out[prefix + "io_serviced_recursive"] = table("rios", "wios")
    out.update({"blkio.throttle.read_bps_device": throttle("rbps"),
                "blkio.throttle.write_bps_device": throttle("wbps"),
                "blkio.throttle.read_iops_device": throttle("riops"),
                "blkio.throttle.write_iops_device": throttle("wiops")})
    return out


def _hugetlb(cg: GuestCgroup) -> dict[str, str]:
    out = {}
    for size in cg.hugepage_sizes():
        p = f"hugetlb.{size}."           # the same size names in v1 and v2
        out[p + "limit_in_bytes"] = _limit(cg.number(p + "max"))
        out[p + "usage_in_bytes"] = f"{cg.number(p + 'current') or 0}\n"
        out[p + "failcnt"] = f"{cg.keyed(p + 'events').get('max', 0)}\n"
        if p + "rsvd.max" in cg.files:
            out[p + "rsvd.limit_in_bytes"] = _limit(cg.number(p + "rsvd.max"))
            out[p + "rsvd.usage_in_bytes"] = f"{cg.number(p + 'rsvd.current') or 0}\n"
    return out


def _v2(cg: GuestCgroup) -> dict[str, str]:
    return dict(cg.files)


RENDERERS: dict[str, Callable[[GuestCgroup], dict[str, str]]] = {
    "memory": _memory, "cpu": _cpu, "cpuacct": _cpuacct, "cpuset": _cpuset, "pids": _pids,
    "blkio": _blkio, "hugetlb": _hugetlb, "v2": _v2}


def render(kind: str, cg: GuestCgroup) -> dict[str, str]:
    """The files of one kind of host hierarchy, from the guest's cgroup."""
    try:
        return RENDERERS[kind](cg)
    except KeyError:
        raise ValueError(f"unknown kind {kind!r}") from None
