"""The `kata-py` console script's entry: answers `state ID` from disk with
nothing but os and the C half of json (_json), and hands every other command
line to the click CLI (kata_py.cli).

Why: engines and scripts poll `state` (podman after a failed verb, CI
labs in loops), and the goal is ≤ 30 ms. Interpreter start plus click, logging, dataclasses and
pathlib cost 70–100 ms; the json package alone costs ~8 ms (it imports re
and enum), typing ~4 ms. This path costs interpreter start and a few reads.
scripts/setup.sh installs a command that starts Python with -S (no site:
~3 ms) and the package's directory on sys.path; main() runs site for the
full CLI.
It must answer exactly what `kata_py.state` answers (a unit test compares
them for every status); anything it does not recognise — another verb, an
unknown flag, --debug, a missing or corrupt state — goes to the full CLI,
which owns the error messages.
"""

from __future__ import annotations

import _json
import os
import sys

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


class _Decoding:
    """What _json.make_scanner reads from json.JSONDecoder: strict, no hooks."""
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> float:
        return float(name.lower().replace("infinity", "inf"))


def loads(text: str) -> object:
    """json.loads for one JSON document; ValueError when it is not one."""
    try:
        scan = _json.make_scanner(_Decoding())  # type: ignore[arg-type]  # duck-typed context
        value, end = scan(text, len(text) - len(text.lstrip()))
    except StopIteration as exc:
        raise ValueError(f"not JSON at {exc.value}") from None
    if text[end:].strip():
        raise ValueError(f"extra data at {end}")
    return value


def dumps(value: object, level: int = 0) -> str:
    """json.dumps(value, indent=2) for str/int/bool/None/list/dict (unit-tested)."""
    if isinstance(value, str):
        return str(_json.encode_basestring_ascii(value))
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return int.__repr__(value)
    pad, inner = "\n" + "  " * level, "\n" + "  " * (level + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{" + ",".join(f"{inner}{dumps(str(k))}: {dumps(v, level + 1)}"
                              for k, v in value.items()) + pad + "}"
    if isinstance(value, list | tuple):
        if not value:
            return "[]"
        return "[" + ",".join(inner + dumps(v, level + 1) for v in value) + pad + "]"
    raise TypeError(f"cannot write {type(value).__name__} as JSON here")


def oci_state(raw: dict[str, object]) -> dict[str, object]:
    """The OCI state object of a stored state.json (kata_py.state.ContainerState.oci)."""
    status = raw["status"]
    pid = raw["pid"]
    if status in LIVE and not (pid and _alive(pid, raw["pid_start_time"])):  # type: ignore[arg-type]
        status = "stopped"
    out: dict[str, object] = {"ociVersion": OCI_VERSION, "id": raw["id"], "status": status,
                           "bundle": raw["bundle"], "pid": pid if status in LIVE else 0,
                           "rootfs": raw["rootfs"], "created": raw["created"],
                           "owner": raw.get("owner", "")}
    if raw.get("annotations"):
        out["annotations"] = dict(raw["annotations"])  # type: ignore[call-overload]
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
            raw = loads(f.read().decode())
        if not isinstance(raw, dict):
            return None
        return dumps(oci_state(raw))
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def main() -> None:
    out = fast_state(sys.argv[1:])
    if out is not None:
        sys.stdout.write(out + "\n")
        return
    if sys.flags.no_site:   # started by setup.sh's command: the full CLI gets site
        import site
        site.main()
    from kata_py.cli import main as full

    full()

