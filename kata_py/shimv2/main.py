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

The daemon serves the Task service (service.py) over ttrpc (ttrpc.py) and
publishes events to TTRPC_ADDRESS (events.py). Its state lives under
/run/kata-py/containerd/<namespace>/ (vm/<id>/ per sandbox, shims/<group>.*
for the daemon's record and log), private to root like everything kata-py
makes.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from kata_py import records
from kata_py.errors import KataError

log = logging.getLogger("kata_py.shimv2")

STATE_ROOT = Path("/run/kata-py/containerd")
SOCKET_DIR = Path("/run/kata-py/s")     # short: a unix socket path has 107 bytes
GROUP_ANNOTATION = "io.kubernetes.cri.sandbox-id"
OPTIONS_TYPE = "runtimeoptions.v1.Options"


@dataclass(frozen=True)
class Args:
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
        spec = json.loads((bundle / "config.json").read_bytes())
        group = (spec.get("annotations") or {}).get(GROUP_ANNOTATION)
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
    from kata_py.private import private_dir
    from kata_py.shimv2 import ttrpc

    bundle = Path.cwd()
    sys.stdin.buffer.read()       # the runtime options: Create brings them again
    group = group_of(bundle, args.id)
    path = socket_path(args, group)
    address = f"unix://{path}"
    private_dir(SOCKET_DIR)
    if path.exists() and _can_connect(path):       # the group's shim serves this one too
        records.write_bytes(bundle / "address", address.encode())
        sys.stdout.write(address)
        return 0
    path.unlink(missing_ok=True)                    # a dead shim's
    listener = ttrpc.bind_unix(path)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        pid = os.fork()
    except OSError:
        path.unlink(missing_ok=True)
        raise
    if pid == 0:
        _become_daemon(listener, args)              # never returns
    listener.close()
    records.write_bytes(bundle / "address", address.encode())
    sys.stdout.write(address)
    return 0


def _become_daemon(listener: socket.socket, args: Args) -> None:
    """In start's forked child: leave containerd's stdio (it reads them to
    EOF as the address) and session behind, keep only the listening socket,
    serve, exit. A fork, not a new interpreter: the daemon keeps what start
    imported and starts serving ≈ 0.15 s sooner (its command line in ps is
    start's own)."""
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
        code = serve(args, listener)
    except BaseException:  # noqa: BLE001 - a forked child must never return into start
        logging.getLogger(__name__).exception("shim daemon failed")
    finally:
        os._exit(code)


def delete(args: Args) -> int:
    """Clean up after a shim containerd lost; print the DeleteResponse."""
    from google.protobuf.timestamp_pb2 import Timestamp

    from kata_py.config import load_config
    from kata_py.hypervisor.process import ProcessRef
    from kata_py.protocols import containerd_task_pb2 as task_pb
    from kata_py.sandbox import Sandbox
    from kata_py.shimv2 import rootfs

    bundle = Path(args.bundle) if args.bundle else Path.cwd()
    root = state_root(args.namespace)
    group = group_of(bundle, args.id)
    record = root / "shims" / f"{group}.json"
    if group == args.id and record.exists():     # it served this task alone
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
    cfg = dataclasses.replace(load_config(None), state_dir=str(root))
    if (root / records.SANDBOXES_DIR / args.id).exists():
        try:
            sandbox = Sandbox.load(args.id, cfg)
        except KataError:
            sandbox = Sandbox(args.id, cfg)
        sandbox.stop()
    rootfs.unmount(bundle / "rootfs")
    stamp = Timestamp()
    stamp.GetCurrentTime()
    sys.stdout.buffer.write(task_pb.DeleteResponse(
        exit_status=128 + 9, exited_at=stamp).SerializeToString())
    return 0


class Owners:
    """QEMU and its daemons die with the *thread* that started them
    (PR_SET_PDEATHSIG, hypervisor/process.py), and ttrpc serves each call
    on a thread that ends with it: so a sandbox is created, and stopped, on
    a thread of its own that lives as long as the sandbox."""

    def __init__(self) -> None:
        self._threads: dict[str, concurrent.futures.ThreadPoolExecutor] = {}
        self._lock = threading.Lock()

    def run(self, sandbox_id: str, fn, *args):  # type: ignore[no-untyped-def]
        with self._lock:
            owner = self._threads.get(sandbox_id)
            if owner is None:
                owner = self._threads[sandbox_id] = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix=f"sandbox-{sandbox_id}")
        return owner.submit(fn, *args).result()

    def release(self, sandbox_id: str) -> None:
        with self._lock:
            owner = self._threads.pop(sandbox_id, None)
        if owner is not None:
            owner.shutdown(wait=False)


def serve(args: Args, listener: socket.socket) -> int:
    from google.protobuf.any_pb2 import Any as AnyMessage

    from kata_py.config import load_config
    from kata_py.container import Container, CreateRequest
    from kata_py.hypervisor.process import ProcessRef
    from kata_py.private import private_dir, restrict_umask
    from kata_py.protocols import containerd_runtimeoptions_pb2 as options_pb
    from kata_py.shimv2 import ttrpc
    from kata_py.shimv2.events import Publisher
    from kata_py.shimv2.service import TaskService

    restrict_umask()
    bundle = Path.cwd()
    root = state_root(args.namespace)
    group = group_of(bundle, args.id)
    shims = root / "shims"
    private_dir(shims)
    logging.basicConfig(filename=shims / f"{group}.log",
                        level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    record = shims / f"{group}.json"
    records.write(record, ProcessRef.of(os.getpid(), f"shim {group}").to_json())
    server = ttrpc.Server()
    publisher = Publisher(os.environ.get("TTRPC_ADDRESS", ""), args.namespace)
    owners = Owners()

    def create(request: CreateRequest, options: AnyMessage | None = None) -> Container:
        config_path = None
        if options is not None and options.type_url.rsplit("/", 1)[-1] == OPTIONS_TYPE:
            parsed = options_pb.Options()
            parsed.ParseFromString(options.value)
            config_path = parsed.config_path or None
        cfg = dataclasses.replace(load_config(config_path), state_dir=str(root))
        return owners.run(request.id, Container.create, cfg, request)  # type: ignore[no-any-return]

    def stop(container: Container) -> None:
        owners.run(container.id, container.stop)
        owners.release(container.id)

    def finish() -> None:
        """No task left: leave nothing behind (containerd's `delete`, which
        follows at once, then finds no daemon to end) and stop serving once
        Shutdown is answered."""
        record.unlink(missing_ok=True)
        if not args.debug:          # -debug keeps the log
            (shims / f"{group}.log").unlink(missing_ok=True)
        threading.Timer(0.2, server.shutdown).start()

    service = TaskService(publisher, args.namespace, create, stop, on_empty=finish)
    service.register(server)
    log.info("shim for %s serving on %s", group, listener.getsockname())
    try:
        server.serve(listener)
    finally:
        publisher.close()
        record.unlink(missing_ok=True)
        socket_path(args, group).unlink(missing_ok=True)
        log.info("shim for %s exits", group)
    return 0


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
