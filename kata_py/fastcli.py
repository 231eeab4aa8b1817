"""The `kata-py` console script's entry: answers `state ID` from disk with
nothing but os and the C half of json (_json), does the usual `start ID`
(the monitor's start socket, kata_py/startsock.py) with little more, and hands
every other command line to the click CLI (kata_py.cli).

Why: engines and scripts poll `state` (podman after a failed verb, CI
labs in loops), and the goal is ≤ 30 ms. Interpreter start plus click, logging, dataclasses and
pathlib cost 70–100 ms; the json package alone costs ~8 ms (it imports re
and enum), typing ~4 ms. This path costs interpreter start and a few reads.
scripts/setup.sh installs a command that starts Python with -S (no site:
~3 ms) and the package's directory on sys.path; main() runs site for the
full CLI.
It must answer exactly what `kata_py.state` answers (a unit test compares
them for every status), in runc's shape (runc_state, go_dumps: the full
CLI's `state` and `list` print with these too); anything it does not
recognise — another verb, an unknown flag, --debug, a missing or corrupt
state — goes to the full CLI, which owns the error messages.

`start` is every `podman run`'s second verb: the full CLI's imports are
≈ 0.06 s of it. Here it is kata_py.runtime.start for a created container
whose monitor listens on its start socket and whose spec has no poststart
hooks: under the container's lock, ask the monitor, then write the state as
StateStore.save does (a unit test compares the bytes). Anything else, and
any failure, including an error from the monitor (the container is then still
created), goes to the full CLI, which starts it or says why not.
"""

from __future__ import annotations

import os
import sys

from kata_py.records import (
    CONTAINERS_DIR,
    LOCK_FILE,
    START_REPLY_TIMEOUT_S,
    START_SOCKET,
    STATE_FILE,
    loads,
    oci_state,
)

DEFAULT_ROOT = "/run/kata-py"   # kata_py.cli.DEFAULT_ROOT
VALUE_FLAGS = ("--root", "--log", "--log-format", "--config")


# Go's encoding/json escapes (runc prints with it): <, >, & and U+2028/U+2029
# as \u…, control characters as \u00XX except \n, \r and \t (go1.19, which
# Debian's runc is built with, writes \b and \f as \u0008 and \u000c too);
# every other character as it is, in UTF-8.
_GO_ESCAPES = {code: f"\\u{code:04x}" for code in (*range(0x20), 0x3c, 0x3e, 0x26, 0x2028,
                                                    0x2029)}
_GO_ESCAPES.update({0x22: '\\"', 0x5c: "\\\\", 0x0a: "\\n", 0x0d: "\\r", 0x09: "\\t"})


def go_dumps(value: object, indent: bool = False, level: int = 0) -> str:
    """What Go's json.Marshal (compact) or json.MarshalIndent(v, "", "  ")
    writes for str/int/bool/None/list/dict; a dict's keys keep their order
    (a Go struct's field order: sort a Go map's keys first)."""
    if isinstance(value, str):
        return '"' + value.translate(_GO_ESCAPES) + '"'
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return int.__repr__(value)
    pad = "\n" + "  " * level if indent else ""
    inner = "\n" + "  " * (level + 1) if indent else ""
    if isinstance(value, dict):
        if not value:
            return "{}"
        colon = ": " if indent else ":"
        return "{" + ",".join(f"{inner}{go_dumps(str(k))}{colon}{go_dumps(v, indent, level + 1)}"
                              for k, v in value.items()) + pad + "}"
    if isinstance(value, list | tuple):
        if not value:
            return "[]"
        return "[" + ",".join(inner + go_dumps(v, indent, level + 1) for v in value) + pad + "]"
    raise TypeError(f"cannot write {type(value).__name__} as JSON here")


def go_time(rfc3339: str) -> str:
    """A stored RFC 3339 time (microseconds, UTC) as Go's time.Time writes
    it in JSON (RFC3339Nano: trailing zeros of the fraction dropped)."""
    head, dot, fraction = rfc3339.partition(".")
    if not dot or not fraction.endswith("Z"):
        return rfc3339
    digits = fraction[:-1].rstrip("0")
    return f"{head}.{digits}Z" if digits else f"{head}Z"


def runc_state(oci: dict[str, object], owner: str | None = None) -> dict[str, object]:
    """An OCI state object (ContainerState.oci()) in the shape runc's `state`
    and `list --format json` print (runc list.go, containerState): its field
    order, annotations only when there are some (sorted: a Go map), the
    created time as Go writes it. "creating" is kata-py's own word for a
    create still under way, which is "created" to runc's users (runc shows
    a container only once its init exists, as "created"), with the pid
    recorded (the create's, then the holder's) as created's."""
    creating = oci["status"] == "creating"
    out: dict[str, object] = {
        "ociVersion": oci["ociVersion"], "id": oci["id"], "pid": oci["pid"],
        "status": "created" if creating else oci["status"], "bundle": oci["bundle"],
        "rootfs": oci["rootfs"], "created": go_time(str(oci["created"]))}
    annotations = oci.get("annotations")
    if annotations:
        out["annotations"] = dict(sorted(annotations.items()))  # type: ignore[attr-defined]
    out["owner"] = oci.get("owner", "") if owner is None else owner
    return out


def _state_request(argv: list[str], verb: str = "state") -> tuple[str, str] | None:
    """(root, id) when argv is `[global flags] VERB ID`, else None."""
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
    if len(rest) != 2 or rest[0] != verb or rest[1].startswith("-"):
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
        with open(os.path.join(root, CONTAINERS_DIR, cid, STATE_FILE), "rb") as f:
            raw = loads(f.read().decode())
        if not isinstance(raw, dict):
            return None
        return go_dumps(runc_state(oci_state(raw)), indent=True)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None


def _read_json(path: str) -> object:
    with open(path, "rb") as f:
        return loads(f.read().decode())


def _has_poststart(bundle: str) -> bool:
    """kata_py.runtime._has_hooks(bundle, "poststart"); True when unsure."""
    try:
        spec = _read_json(os.path.join(bundle, "config.json"))
    except (OSError, ValueError):
        return True
    if not isinstance(spec, dict):
        return True
    hooks = spec.get("hooks") or {}
    return not isinstance(hooks, dict) or bool(hooks.get("poststart"))


def _ask_monitor(path: str) -> bool:
    """kata_py.startsock.request_start; False for anything but "ok"."""
    import _socket
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
        sock.settimeout(START_REPLY_TIMEOUT_S)
        sock.sendall(b"start\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    except OSError:
        return False
    finally:
        sock.close()
    return reply.strip() == b"ok"


def fast_start(argv: list[str]) -> bool:
    """True when `start ID` was done here; False: the full CLI must do it."""
    request = _state_request(argv, "start")
    if request is None:
        return False
    import fcntl  # here, not above: `state` imports nothing it does not use
    root, cid = request
    directory = os.path.join(root, CONTAINERS_DIR, cid)
    socket_path = os.path.join(directory, START_SOCKET)
    if len(os.fsencode(socket_path)) > 107 or not os.path.exists(socket_path):
        return False
    try:
        lock = os.open(os.path.join(directory, LOCK_FILE),
                       os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return False
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        raw = _read_json(os.path.join(directory, STATE_FILE))
        if (not isinstance(raw, dict) or raw.get("status") != "created"
                or not isinstance(raw.get("bundle"), str) or _has_poststart(raw["bundle"])
                or not _ask_monitor(socket_path)):
            return False
        return True         # the monitor has recorded it (monitor.Monitor._start)
    except (OSError, ValueError):
        return False
    finally:
        os.close(lock)


CALLER_UMASK: int | None = None   # for the full CLI's `spec`, which writes the caller's file


def main() -> None:
    global CALLER_UMASK
    CALLER_UMASK = os.umask(0o077)  # kata_py/private.py: everything we create is root's alone
    out = fast_state(sys.argv[1:])
    if out is not None:
        sys.stdout.write(out)       # no newline after it, as runc's `state`
        return
    if fast_start(sys.argv[1:]):
        return
    if sys.flags.no_site:   # started by setup.sh's command: the full CLI gets site
        import site
        site.main()
    from kata_py.cli import main as full

    full()

