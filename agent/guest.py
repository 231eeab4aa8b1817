"""Facts about the guest the agent runs in: kernel, memory, CPUs, mounts.

Pure reads of /proc and uname; nothing here changes the guest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GuestFacts:
    kernel_release: str
    mem_total_bytes: int
    online_cpus: int
    uptime_seconds: float


def read_facts(proc: Path = Path("/proc")) -> GuestFacts:
    """Read the guest's kernel release, memory, online CPUs and uptime."""
    return GuestFacts(
        kernel_release=os.uname().release,
        mem_total_bytes=_mem_total_bytes(proc / "meminfo"),
        online_cpus=len(os.sched_getaffinity(0)),
        uptime_seconds=float((proc / "uptime").read_text().split()[0]),
    )


def _mem_total_bytes(meminfo: Path) -> int:
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def is_mountpoint(path: Path, mounts: Path = Path("/proc/self/mounts")) -> bool:
    """Whether `path` is a mount point, according to the mount table."""
    target = str(path.resolve())
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return False
    return any(len(f) > 1 and f[1] == target for f in (line.split() for line in lines))
