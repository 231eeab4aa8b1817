"""The container's cgroup on the *host* (config.json `linux.cgroupsPath`).

kata-py puts the sandbox's host processes — the monitor, QEMU, virtiofsd and
the vsock backend — into that cgroup, in every mounted hierarchy (cgroup v1
controllers and the v2 tree), the way Kata's `sandbox_cgroup_only` does. So
engines that read host cgroups (`podman stats`, `podman inspect`) account the
whole VM to the container, and the engine's parent cgroup holds the sandbox.

No limits are written on the host: the spec's limits are enforced in the
guest, and the VM is sized from them; a host memory limit equal to the
container's would OOM-kill QEMU, whose guest overhead is on top of it.

Path forms, as runc reads them: `/a/b` (below each hierarchy's root),
`a/b` (the same; runc makes it relative to its own cgroup, which for a
runtime started by an engine is the root in practice), and systemd's
`slice:prefix:name` → `/<slice path>/<prefix>-<name>.scope`. Failures are
logged and never fatal: a host without some controller still runs the VM.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

MOUNTINFO = "/proc/self/mountinfo"
REMOVE_WAIT_S = 3.0


def relative_path(cgroups_path: str) -> str:
    """The cgroup below each hierarchy's root ("" when none is asked for)."""
    if not cgroups_path:
        return ""
    if ":" in cgroups_path and not cgroups_path.startswith("/"):
        parts = cgroups_path.split(":")
        if len(parts) != 3:
            raise ValueError(f"cgroupsPath {cgroups_path!r}: expected slice:prefix:name")
        slice_, prefix, name = parts
        path = "/" + "/".join(_slice_dirs(slice_ or "system.slice"))
        return f"{path}/{prefix}-{name}.scope" if prefix else f"{path}/{name}"
    parts = [p for p in cgroups_path.split("/") if p and p != "."]
    if ".." in parts:
        raise ValueError(f"cgroupsPath {cgroups_path!r}: must not contain '..'")
    return "/" + "/".join(parts)


def _slice_dirs(slice_: str) -> list[str]:
    """systemd's slice nesting: a-b-c.slice lives in a.slice/a-b.slice/."""
    if slice_ == "-.slice":
        return []
    stem = slice_.removesuffix(".slice")
    words = stem.split("-")
    return ["-".join(words[:i + 1]) + ".slice" for i in range(len(words))]


def mounted_hierarchies(mountinfo: str | None = None
                        ) -> list[tuple[Path, str, frozenset[str]]]:
    """The cgroup hierarchies whose root we see: mount point, fstype (cgroup
    or cgroup2) and, for v1, its controllers (from the super options)."""
    if mountinfo is None:
        with open(MOUNTINFO) as f:
            mountinfo = f.read()
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        try:
            dash = fields.index("-")
            fstype, options = fields[dash + 1], fields[dash + 3]
        except (ValueError, IndexError):
            continue
        if fstype in ("cgroup", "cgroup2") and fields[3] == "/":
            found.append((Path(fields[4].replace("\\040", " ")), fstype,
                          frozenset(options.split(","))))
    return found


def hierarchies(mountinfo: str | None = None) -> list[Path]:
    """Mount points of the cgroup hierarchies whose root we see (v1 and v2)."""
    return [mount for mount, _, _ in mounted_hierarchies(mountinfo)]


def _init_cpuset(directory: Path) -> None:
    """A v1 cpuset cgroup accepts tasks only once cpus and mems are set."""
    for name in ("cpuset.cpus", "cpuset.mems"):
        own = directory / name
        if own.exists() and not own.read_text().strip():
            own.write_text((directory.parent / name).read_text())


def join(path: str, pid: int | None = None) -> None:
    """Create `path` in every hierarchy and move `pid` (default: us) into it;
    children started afterwards (QEMU, virtiofsd, backend) inherit it."""
    if not path:
        return
    pid = pid or os.getpid()
    for mount in hierarchies():
        directory = mount / path.lstrip("/")
        try:
            new = [d for d in (directory, *directory.parents) if not d.exists()]
            directory.mkdir(parents=True, exist_ok=True)
            for d in reversed(new):
                if (d / "cpuset.cpus").exists():
                    _init_cpuset(d)
            (directory / "cgroup.procs").write_text(str(pid))
        except OSError as exc:
            log.warning("host cgroup %s: %s (the sandbox runs outside it)", directory, exc)


def _leave(directory: Path) -> None:
    """A monitor tearing down its own failed create is still inside: move to the parent."""
    try:
        if str(os.getpid()) in (directory / "cgroup.procs").read_text().split():
            (directory.parent / "cgroup.procs").write_text(str(os.getpid()))
    except OSError:
        pass


def remove(path: str) -> None:
    """Remove the leaf `path` from every hierarchy once its processes are
    gone (parents belong to the engine). Never raises."""
    if not path:
        return
    with open(MOUNTINFO) as f:
        mountinfo = f.read()
    points = {line.split()[4] for line in mountinfo.splitlines()}
    for mount in hierarchies(mountinfo):
        directory = mount / path.lstrip("/")
        if str(directory) in points:
            # the guest-stats view (statsview.py) of a monitor that did not unmount it
            from kata_py import host_mounts
            while host_mounts.detach(directory):
                pass
        _leave(directory)
        deadline = time.monotonic() + REMOVE_WAIT_S
        while directory.exists():
            try:
                directory.rmdir()
            except FileNotFoundError:
                break
            except OSError as exc:
                if time.monotonic() > deadline:
                    with contextlib.suppress(OSError):
                        left = (directory / "cgroup.procs").read_text().split()
                        log.warning("host cgroup %s not removed (%s; pids %s)",
                                    directory, exc.strerror, " ".join(left) or "none")
                    break
                time.sleep(0.05)
