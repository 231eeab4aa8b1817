"""Access to the virtio-fs share (tag kataShared) from inside the guest.

Owns path resolution below the share's mount point: every path the host
names is relative to the share and may not escape it (no `..`, no absolute
paths, no symlinks pointing outside).
"""

from __future__ import annotations

from pathlib import Path

from kata_py.agent.errors import InvalidArgument

SHARED_DIR = Path("/run/kata-py/shared")
VSOCK_PORT = 1024                         # the agent's port (Kata's agent uses 1024 too)
VSOCK_LISTEN = f"vsock:{VSOCK_PORT}"
READY_LINE = "kata-py-agent: ready"        # the console line the agent writes once it serves
READ_CAP_BYTES = 4 * 1024 * 1024
# gRPC's message limit at both ends (agent/server.py, kata_py/agent_client.py;
# gRPC's default is 4 MiB, which a 4 MiB environment overran). A request's
# one unbounded part is a process's arguments and environment, which execve(2)
# caps at 6 MiB (kata_py/spec.py): they fit as JSON, while the agent's several
# copies of a request (gRPC, protobuf, JSON, the launcher's pickle) stay a
# small part of a small guest's memory (272 MiB with a 16 MiB container).
GRPC_MESSAGE_MAX_BYTES = 16 * 1024 * 1024
CGROUP_ROOT = Path("/sys/fs/cgroup")      # the guest's cgroup2
CGROUP_PARENT = "kata-py"                 # containers' cgroups: CGROUP_PARENT/<id> below it


def resolve(root: Path, relative: str) -> Path:
    """The absolute path of `relative` below `root`; refuses escapes."""
    if not relative or relative.startswith("/"):
        raise InvalidArgument(f"shared path {relative!r} must be relative to the share's root")
    if ".." in Path(relative).parts:
        raise InvalidArgument(f"shared path {relative!r} may not contain '..'")
    real_root = root.resolve()
    path = (real_root / relative).resolve()
    if path != real_root and real_root not in path.parents:
        raise InvalidArgument(f"shared path {relative!r} leads outside the share")
    return path


def read_file(root: Path, relative: str, max_bytes: int) -> tuple[bytes, int]:
    """Up to max_bytes (0: READ_CAP_BYTES) of a shared file, and its full size."""
    cap = min(max_bytes or READ_CAP_BYTES, READ_CAP_BYTES)
    path = resolve(root, relative)
    with path.open("rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        return f.read(cap), size
