"""The `kata-py` console script's entry: answers `state ID` from disk with
nothing but os and json, and hands every other command line to the click
CLI (kata_py.cli).

Why: engines and scripts poll `state` (podman after a failed verb, CI
labs in loops), and the goal is ≤ 30 ms. Interpreter start plus click, logging, dataclasses and
pathlib cost 70–100 ms; this path costs interpreter start and a few reads.
It must answer exactly what `kata_py.state` answers (a unit test compares
them for every status); anything it does not recognise — another verb, an
unknown flag, --debug, a missing or corrupt state — goes to the full CLI,
which owns the error messages.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

# Keep in step with kata_py.state (tests/unit/test_fast_state.py checks).
OCI_VERSION = "1.2.0"
LIVE = ("created", "running", "paused")
DEFAULT_ROOT = "/run/kata-py"   # kata_py.cli.DEFAULT_ROOT
VALUE_FLAGS = ("--root", "--log", "--log-format", "--config")


def _alive(pid: int, start_time: int) -> bool:
    """kata_py.hypervisor.process.ProcessRef.alive without the reaping."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return False
    return int(fields[19]) == start_time and fields[0] not in (b"Z", b"X")


def oci_state(raw: dict[str, Any]) -> dict[str, Any]:
    """The OCI state object of a stored state.json (kata_py.state.ContainerState.oci)."""
    status = raw["status"]
    if status in LIVE and not (raw.get("pid") and _alive(raw["pid"], raw["pid_start_time"])):
        status = "stopped"
    out: dict[str, Any] = {"ociVersion": OCI_VERSION, "id": raw["id"], "status": status,
                           "bundle": raw["bundle"], "pid": raw["pid"] if status in LIVE else 0,
                           "rootfs": raw["rootfs"], "created": raw["created"],
                           "owner": raw.get("owner", "")}
    if raw.get("annotations"):
        out["annotations"] = dict(raw["annotations"])
    return out


def _state_request(argv: list[str]) -> tuple[str, str] | None:
    """(root, id) when argv is `[global flags] state ID`, else None."""
    root = DEFAULT_ROOT
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        flag, eq, value = argv[i].partition("=")
        if flag not in VALUE_FLAGS:
            return None
        if not eq:
            i += 1
            if i == len(argv):
                return None
            value = argv[i]
        if flag == "--root":
            root = value
        i += 1
    rest = argv[i:]
    if len(rest) != 2 or rest[0] != "state" or rest[1].startswith("-"):
        return None
    cid = rest[1]
    if not cid or "/" in cid or cid in (".", ".."):
        return None
    return root, cid


def fast_state(argv: list[str]) -> str | None:
    """The JSON `state` prints, or None when the full CLI must answer."""
    request = _state_request(argv)
    if request is None:
        return None
    root, cid = request
    try:
        with open(os.path.join(root, "containers", cid, "state.json"), "rb") as f:
            raw = json.loads(f.read())
        return json.dumps(oci_state(raw), indent=2)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def main() -> None:
    out = fast_state(sys.argv[1:])
    if out is not None:
        sys.stdout.write(out + "\n")
        return
    from kata_py.cli import main as full

    full()

