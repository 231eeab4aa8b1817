"""`kata-py features`: what this runtime supports, in the shape of the OCI
runtime-spec features document (features.md) that `runc features` prints,
plus kata-py's own annotations under "annotations".

Built from the parser's own tables so it cannot drift from what
config.json parsing accepts.
"""

from __future__ import annotations

from typing import Any

from kata_py import __version__
from kata_py.agent.seccomp import FILTER_FLAGS
from kata_py.records import OCI_VERSION
from kata_py.sizing import ANNOTATION_MEMORY_MIB, ANNOTATION_VCPUS
from kata_py.spec import CAPABILITIES, HOOK_KINDS
from kata_py.spec_linux import (
    NAMESPACE_TYPES,
    SECCOMP_ACTIONS,
    SECCOMP_ARCHITECTURES,
    SECCOMP_FLAGS,
    SECCOMP_OPERATORS,
)

# Options the guest's mount(2) path understands (runc's list, minus idmap).
MOUNT_OPTIONS = (
    "async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec",
    "iversion", "lazytime", "loud", "mand", "noatime", "nodev", "nodiratime", "noexec",
    "noiversion", "nolazytime", "nomand", "norelatime", "nostrictatime", "nosuid",
    "nosymfollow", "private", "rbind", "relatime", "remount", "ro", "rprivate", "rshared",
    "rslave", "runbindable", "rw", "shared", "silent", "slave", "strictatime", "suid",
    "symfollow", "sync", "tmpcopyup", "unbindable",
)


def features() -> dict[str, Any]:
    supported_actions = sorted(a for a in SECCOMP_ACTIONS if a != "SCMP_ACT_NOTIFY")
    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": list(HOOK_KINDS),
        "mountOptions": list(MOUNT_OPTIONS),
        "linux": {
            "namespaces": sorted(NAMESPACE_TYPES - {"time"}),
            "capabilities": sorted(CAPABILITIES),
            "cgroup": {"v1": False, "v2": True, "systemd": False, "systemdUser": False,
                       "rdma": False},
            "seccomp": {"enabled": True, "actions": supported_actions,
                        "operators": sorted(SECCOMP_OPERATORS),
                        "archs": sorted(SECCOMP_ARCHITECTURES),
                        "knownFlags": sorted(SECCOMP_FLAGS),
                        "supportedFlags": sorted(FILTER_FLAGS)},
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
            "intelRdt": {"enabled": False},
        },
        "annotations": {
            "io.kata-py.version": __version__,
            "io.kata-py.isolation": "vm",
            ANNOTATION_VCPUS: "vCPUs of the sandbox VM (overrides linux.resources.cpu)",
            ANNOTATION_MEMORY_MIB: "memory of the sandbox VM in MiB (overrides "
                                   "linux.resources.memory)",
        },
    }
