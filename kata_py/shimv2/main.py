"""`containerd-shim-kata-py-v2`: the containerd shim v2 binary.

containerd runs it as (runtime/v2, 1.6 and 1.7):

    containerd-shim-kata-py-v2 -namespace NS -address A -publish-binary P -id ID [-debug] start
    containerd-shim-kata-py-v2 -namespace NS -address A -publish-binary P -id ID -bundle B delete

in the task's bundle directory. `start` binds the shim's socket, forks the
serving daemon (no inherited stdio, its own session), writes the `address`
file in the bundle and prints only the address: containerd reads stdout and stderr
together as the address and waits for both to close. Containers that name
the same `io.kubernetes.cri.sandbox-id` share one shim (one address); a
container without it is its own group. `delete` cleans up after a shim
containerd considers dead — the daemon if it served this task alone, the
sandbox's processes, the rootfs mount — and prints a DeleteResponse.

The daemon is daemon.py. Its state lives under
/run/kata-py/containerd/<namespace>/ (vm/<id>/ per sandbox, shims/<group>.*
for the daemon's record and log), private to root like everything kata-py
makes.

containerd waits for `start` before it can Create, and for `delete` (run
after every task's shim disconnects) before `ctr run --rm` returns, so this
module imports only what those two need: no protobuf, logging or
dataclasses (≈ 0.2 s of imports each).
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import time
from pathlib import Path
from typing import NamedTuple

from kata_py import records
from kata_py.errors import KataError

STATE_ROOT = Path("/run/kata-py/containerd")
SOCKET_DIR = Path("/run/kata-py/s")     # short: a unix socket path has 107 bytes
GROUP_ANNOTATION = "io.kubernetes.cri.sandbox-id"
OPTIONS_TYPE = "runtimeoptions.v1.Options"


class Args(NamedTuple):
    namespace: str = ""
    address: str = ""
    publish_binary: str = ""
    id: str = ""
    bundle: str = ""
    debug: bool = False
    action: str = ""            # start | delete | version


def parse_args(argv: list[str]) -> Args:
    """Go flag syntax: -name value, -name=value, --name value; -debug alone."""
    values: dict[str, str | bool] = {}
    names = {"namespace", "address", "publish-binary", "id", "bundle", "socket"}
    i, action = 0, ""
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-"):
            name, eq, value = arg.lstrip("-").partition("=")
            if name == "debug":
                values["debug"] = value.lower() not in ("false", "0") if eq else True
            elif name == "v" or name == "version":
                values["version"] = True
            elif name in names:
                if not eq:
                    i += 1
                    if i == len(argv):
                        raise KataError(f"flag -{name} needs a value", "see containerd's call")
                    value = argv[i]
                values[name] = value
            else:
                raise KataError(f"unknown flag {arg}", "containerd passes -namespace, "
                                "-address, -publish-binary, -id, -bundle, -debug")
        elif not action:
            action = arg
        i += 1
    return Args(namespace=str(values.get("namespace", "")), address=str(values.get("address", "")),
                publish_binary=str(values.get("publish-binary", "")), id=str(values.get("id", "")),
                bundle=str(values.get("bundle", "")), debug=bool(values.get("debug", False)),
                action="version" if values.get("version") else action)


def state_root(namespace: str) -> Path:
    return STATE_ROOT / namespace


def group_of(bundle: Path, task_id: str) -> str:
    """The shim group: the pod's sandbox id, or the task's own id."""
    try:
        spec = records.loads((bundle / "config.json").read_bytes().decode())
        group = (spec.get("annotations") or {}).get(GROUP_ANNOTATION)  # type: ignore[attr-defined]
    except (OSError, ValueError, AttributeError):
        group = None
    return group if isinstance(group, str) and group else task_id


def socket_path(args: Args, group: str) -> Path:
    """One socket per (containerd, namespace, group), as containerd's own
    shims name theirs (a hash of the three), in a directory of ours."""
    digest = hashlib.sha256(f"{args.address}/{args.namespace}/{group}".encode()).hexdigest()
    return SOCKET_DIR / f"{digest[:32]}.sock"


def _can_connect(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.1)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def start(args: Args) -> int:
    from kata_py.private import bind_unix, private_dir

    bundle = Path.cwd()
    options = sys.stdin.buffer.read()   # the runtime options, a serialized Any (or nothing)
    group = group_of(bundle, args.id)
    path = socket_path(args, group)
    address = f"unix://{path}"
    private_dir(SOCKET_DIR)
    if path.exists() and _can_connect(path):       # the group's shim serves this one too
        records.write_bytes(bundle / "address", address.encode())
        sys.stdout.write(address)
        return 0
    path.unlink(missing_ok=True)                    # a dead shim's
    listener = bind_unix(path)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        pid = os.fork()
    except OSError:
        path.unlink(missing_ok=True)
        raise
    if pid == 0:
        _become_daemon(listener, args, options)     # never returns
    listener.close()
    records.write_bytes(bundle / "address", address.encode())
    sys.stdout.write(address)
    return 0


def _become_daemon(listener: socket.socket, args: Args, options: bytes) -> None:
    """In start's forked child: leave containerd's stdio (it reads them to
    EOF as the address) and session behind, keep only the listening socket,
    serve (daemon.py), exit. A fork, not a new interpreter: it starts
    serving sooner (its command line in ps is start's own)."""
    code = 1
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        keep = {0, 1, 2, listener.fileno()}
        for name in os.listdir("/proc/self/fd"):
            if int(name) not in keep:
                try:
                    os.close(int(name))
                except OSError:
                    pass
        from kata_py.shimv2.daemon import serve

        code = serve(args, listener, options)
    except BaseException:  # noqa: BLE001 - a forked child must never return into start
        import logging

        logging.getLogger(__name__).exception("shim daemon failed")
    finally:
        os._exit(code)


def delete(args: Args) -> int:
    """Clean up after a shim containerd lost; print the DeleteResponse.
    containerd runs it after every task, once the daemon has cleaned up and
    gone: then it only looks."""
    bundle = Path(args.bundle) if args.bundle else Path.cwd()
    root = state_root(args.namespace)
    group = group_of(bundle, args.id)
    record = root / "shims" / f"{group}.json"
    if group == args.id and record.exists():     # it served this task alone
        from kata_py.hypervisor.process import ProcessRef

        try:
            daemon = ProcessRef.from_json(records.read(record, f"shim {group}", ""))
            daemon.signal(9)
            daemon.wait(5)
        except (KataError, KeyError, TypeError):
            pass
        record.unlink(missing_ok=True)
        socket_path(args, group).unlink(missing_ok=True)
        if not args.debug:
            (root / "shims" / f"{group}.log").unlink(missing_ok=True)
    if (root / records.SANDBOXES_DIR / args.id).exists():
        _stop_sandbox(args.id, root)
    from kata_py.shimv2 import rootfs

    rootfs.unmount(bundle / "rootfs")        # any kind of mount: a bind is not ismount()
    sys.stdout.buffer.write(delete_response(128 + 9, time.time_ns()))
    return 0


def _stop_sandbox(sandbox_id: str, root: Path) -> None:
    import dataclasses

    from kata_py.config import load_config
    from kata_py.sandbox import Sandbox

    cfg = dataclasses.replace(load_config(None), state_dir=str(root))
    try:
        sandbox = Sandbox.load(sandbox_id, cfg)
    except KataError:
        sandbox = Sandbox(sandbox_id, cfg)
    sandbox.stop()


def delete_response(exit_status: int, exited_at_ns: int) -> bytes:
    """containerd.task.v2.DeleteResponse{exit_status = 2, exited_at = 3
    (a Timestamp: seconds = 1, nanos = 2)}, pid 0 left out as proto3 does,
    encoded here: importing protobuf would cost `delete` ≈ 65 ms of its
    ≈ 100 (test_shimv2 checks it against protobuf's own encoding)."""
    seconds, nanos = divmod(exited_at_ns, 1_000_000_000)
    stamp = b"\x08" + _varint(seconds) + (b"\x10" + _varint(nanos) if nanos else b"")
    return b"\x10" + _varint(exit_status) + b"\x1a" + _varint(len(stamp)) + stamp


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.umask(0o077)
    try:
        if args.action == "start":
            return start(args)
        if args.action == "delete":
            return delete(args)
        if args.action == "version":
            from kata_py import __version__
            sys.stdout.write(f"containerd-shim-kata-py-v2\n  Version: {__version__}\n")
            return 0
        raise KataError(f"unknown action {args.action!r}", "use start or delete")
    except KataError as exc:
        sys.stderr.write(f"containerd-shim-kata-py-v2: {exc}\n")
        return 1
