"""The default config.json that `kata-py spec` writes.

The same content as `runc spec` (runc libcontainer/specconv/example.go:
`Example`, and `ToRootless` for `--rootless`), so bundles made for runc and
for kata-py look alike. It returns plain JSON data and touches nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kata_py.records import OCI_VERSION

_DEFAULT_CAPABILITIES = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]


def _mounts() -> list[dict[str, Any]]:
    def mount(destination: str, kind: str, source: str, *options: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"destination": destination, "type": kind, "source": source}
        if options:
            entry["options"] = list(options)
        return entry

    return [
        mount("/proc", "proc", "proc"),
        mount("/dev", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"),
        mount("/dev/pts", "devpts", "devpts", "nosuid", "noexec", "newinstance",
              "ptmxmode=0666", "mode=0620", "gid=5"),
        mount("/dev/shm", "tmpfs", "shm", "nosuid", "noexec", "nodev", "mode=1777",
              "size=65536k"),
        mount("/dev/mqueue", "mqueue", "mqueue", "nosuid", "noexec", "nodev"),
        mount("/sys", "sysfs", "sysfs", "nosuid", "noexec", "nodev", "ro"),
        mount("/sys/fs/cgroup", "cgroup", "cgroup", "nosuid", "noexec", "nodev", "relatime",
              "ro"),
    ]


def _host_is_cgroup2_only() -> bool:
    """runc's IsCgroup2UnifiedMode: /sys/fs/cgroup is the cgroup2 root itself."""
    return Path("/sys/fs/cgroup/cgroup.controllers").exists()


def default_spec(rootless: bool = False) -> dict[str, Any]:
    """The default config.json content, as `runc spec [--rootless]` writes it.

    runc adds a cgroup namespace only when the host runs cgroup v2 alone,
    and so does kata-py, although the guest always does: tools that add one
    to `spec`'s output themselves (conformance suites do, on v1 hosts) must
    not get a config listing it twice, which runc and kata-py refuse. The
    translation adds one for the guest anyway (translate.py).
    """
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": True,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "TERM=xterm"],
            "cwd": "/",
            "capabilities": {key: list(_DEFAULT_CAPABILITIES)
                             for key in ("bounding", "effective", "permitted", "ambient")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "runc",
        "mounts": _mounts(),
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": kind} for kind in
                           ("pid", "network", "ipc", "uts", "mount", "cgroup")
                           if kind != "cgroup" or _host_is_cgroup2_only()],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                            "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                            "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                              "/proc/sysrq-trigger"],
        },
    }
    if rootless:
        _make_rootless(spec)
    return spec


def _make_rootless(spec: dict[str, Any]) -> None:
    """runc's ToRootless: a user namespace mapping the caller to root, no netns."""
    linux = spec["linux"]
    linux["namespaces"] = [ns for ns in linux["namespaces"]
                           if ns["type"] not in ("network", "user")] + [{"type": "user"}]
    linux["uidMappings"] = [{"containerID": 0, "hostID": os.geteuid(), "size": 1}]
    linux["gidMappings"] = [{"containerID": 0, "hostID": os.getegid(), "size": 1}]
    mounts = []
    for mount in spec["mounts"]:
        if mount["destination"] == "/sys":
            mounts.append({"destination": "/sys", "type": "none", "source": "/sys",
                           "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]})
            continue
        if "options" in mount:
            mount["options"] = [o for o in mount["options"]
                                if not o.startswith(("gid=", "uid="))]
        mounts.append(mount)
    spec["mounts"] = mounts
    del linux["resources"]
