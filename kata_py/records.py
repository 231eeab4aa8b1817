"""Every record kata-py keeps on disk, by name, written one way and read one way.

Under `--root` (default /run/kata-py):

    containers/<id>/state.json      the container (state.py)
    containers/<id>/.lock           flock held by each verb on the container
    containers/<id>/monitor.json       its monitor, once the holder has the pid (holder.py)
    containers/<id>/exec-<x>.json   the monitor of a detached exec
    containers/<id>/start.sock      the monitor's start socket (startsock.py)
    vm/<id>/sandbox.json            the sandbox: VM, daemons, vsock, network (sandbox.py)

`write` is atomic: a private temp file (0600) in the same directory, fsync,
rename; a crash leaves the old record or the new one, never half of one,
and stray temp files (dot-names) are never read. `read` returns the JSON
object or raises NotFoundError / CorruptStateError naming the record and
what to do. `state` answers with `oci_state`, here for both the full CLI
(state.py) and fastcli's ≤ 30 ms path, so this module imports only os and
the C half of json at module level (the json package costs ~8 ms, typing ~4).
"""

from __future__ import annotations

import _json
import os

STATE_FILE = "state.json"
LOCK_FILE = ".lock"
MONITOR_FILE = "monitor.json"
EXEC_PREFIX = "exec-"
START_SOCKET = "start.sock"
START_REPLY_TIMEOUT_S = 60.0     # how long `start` waits for the monitor's answer there
SANDBOX_FILE = "sandbox.json"
CONTAINERS_DIR = "containers"
SANDBOXES_DIR = "vm"
OCI_VERSION = "1.2.0"
LIVE = ("creating", "created", "running", "paused")   # statuses with a process behind them


def write(path: str | os.PathLike[str], value: object) -> None:
    """Write `value` as JSON to `path` atomically, mode 0600."""
    import json

    write_bytes(path, json.dumps(value, indent=1).encode())


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` atomically, mode 0600."""
    directory, name = os.path.split(os.fspath(path))
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read(path: str | os.PathLike[str], what: str, fix: str) -> dict[str, object]:
    """The JSON object in `path`. `what` names the record's owner in errors
    ("container c1", "sandbox c1"); `fix` is what to do if it is corrupt."""
    from kata_py.errors import CorruptStateError, NotFoundError

    try:
        with open(path, "rb") as f:
            value = loads(f.read().decode())
    except FileNotFoundError as exc:
        raise NotFoundError(f"{what} does not exist", "check the id with `kata-py list`"
                            ) from exc
    except (ValueError, OSError) as exc:
        raise CorruptStateError(f"state of {what} in {path} is corrupt ({exc})", fix) from exc
    if not isinstance(value, dict):
        raise CorruptStateError(f"state of {what} in {path} is corrupt (not an object)", fix)
    return value


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


def alive(pid: int, start_time: int) -> bool:
    """kata_py.hypervisor.process.ProcessRef.alive without the reaping."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return False
    return int(fields[19]) == start_time and fields[0] not in (b"Z", b"X")


def oci_state(raw: dict[str, object]) -> dict[str, object]:
    """The OCI state object (runtime.md "State") of a stored state.json: a
    container whose recorded process is gone is "stopped", never stale;
    while "creating", that process is the create, then the holder."""
    status, pid = raw["status"], raw["pid"]
    if status in LIVE and not (isinstance(pid, int) and pid
                               and alive(pid, raw["pid_start_time"])):  # type: ignore[arg-type]
        status = "stopped"
    out: dict[str, object] = {"ociVersion": OCI_VERSION, "id": raw["id"], "status": status,
                              "bundle": raw["bundle"], "pid": pid if status in LIVE else 0,
                              "rootfs": raw["rootfs"], "created": raw["created"],
                              "owner": raw.get("owner", "")}
    if raw.get("annotations"):
        out["annotations"] = dict(raw["annotations"])  # type: ignore[call-overload]
    return out
