"""The shim's serving daemon, forked by `containerd-shim-kata-py-v2 start`
(main.py): the Task service (service.py) over ttrpc (ttrpc.py) on the socket
start bound, events to TTRPC_ADDRESS (events.py), each sandbox on a thread
of its own (Owners), and the VM of the task start was run for booted while
containerd goes on to Create (Prestart). Its record and log are
shims/<group>.json and .log under the namespace's state directory.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from kata_py import records
from kata_py.shimv2.main import OPTIONS_TYPE, Args, group_of, socket_path, state_root

if TYPE_CHECKING:
    from google.protobuf.any_pb2 import Any as AnyMessage

    from kata_py.config import RuntimeConfig
    from kata_py.sandbox import Sandbox

log = logging.getLogger("kata_py.shimv2")


class Owners:
    """QEMU and its daemons die with the *thread* that started them
    (PR_SET_PDEATHSIG, hypervisor/process.py), and ttrpc serves each call
    on a thread that ends with it: so a sandbox is created, and stopped, on
    a thread of its own that lives as long as the sandbox."""

    def __init__(self) -> None:
        self._threads: dict[str, concurrent.futures.ThreadPoolExecutor] = {}
        self._lock = threading.Lock()

    def submit(self, sandbox_id: str, fn, *args):  # type: ignore[no-untyped-def]
        with self._lock:
            owner = self._threads.get(sandbox_id)
            if owner is None:
                owner = self._threads[sandbox_id] = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix=f"sandbox-{sandbox_id}")
        return owner.submit(fn, *args)

    def run(self, sandbox_id: str, fn, *args):  # type: ignore[no-untyped-def]
        return self.submit(sandbox_id, fn, *args).result()

    def release(self, sandbox_id: str) -> None:
        with self._lock:
            owner = self._threads.pop(sandbox_id, None)
        if owner is not None:
            owner.shutdown(wait=False)


class Prestart:
    """The VM of the task `start` was run for, booted while containerd goes
    on to Create: containerd writes the bundle's config.json before it runs
    `start`, so the VM's size, network namespace and runtime options are
    known a few hundred ms before Create arrives (Kata's shim waits for
    Create to start its sandbox: ours does not). A spec the host
    refuses boots nothing (Create reports it). Create takes the VM if its
    own options give the same runtime config; else, or if the boot failed,
    Create boots as it would have. An unclaimed VM is stopped at exit."""

    def __init__(self, owners: Owners, task_id: str, bundle: Path, cfg: RuntimeConfig,
                 new_sandbox: Callable[..., Sandbox] | None = None) -> None:
        self.owners, self.task_id, self.cfg = owners, task_id, cfg
        self.new_sandbox = new_sandbox      # Container.boot's (tests pass a fake)
        self._lock = threading.Lock()
        self._future: concurrent.futures.Future[Sandbox] | None = owners.submit(
            task_id, self._boot, bundle)

    def _boot(self, bundle: Path) -> Sandbox:
        from kata_py.container import Container
        from kata_py.sandbox import Sandbox
        from kata_py.spec import load_spec
        from kata_py.translate import to_launch_config

        spec = load_spec(bundle)
        to_launch_config(spec, self.task_id, str(bundle))   # refused before a VM boots
        return Container.boot(self.cfg, self.task_id, spec, self.new_sandbox or Sandbox)

    def take(self, task_id: str, cfg: RuntimeConfig) -> Sandbox | None:
        """The booted VM for task_id's Create, or None: boot one."""
        with self._lock:
            future, self._future = (self._future, None) if task_id == self.task_id \
                else (None, self._future)
        if future is None:
            return None
        try:
            sandbox = future.result()
        except Exception as exc:  # noqa: BLE001 - Create boots again and reports its own error
            log.info("the VM booted ahead for %s did not start (%s): Create boots it", task_id,
                     exc)
            return None
        if cfg != self.cfg:
            log.info("Create's runtime options differ from start's: booting %s again", task_id)
            self.owners.run(task_id, sandbox.stop)
            return None
        return sandbox

    def discard(self) -> None:
        sandbox = self.take(self.task_id, self.cfg)
        if sandbox is not None:
            self.owners.run(self.task_id, sandbox.stop)


def runtime_config(options: AnyMessage | None, root: Path) -> RuntimeConfig:
    """The runtime config that containerd's options (ConfigPath) name, with
    this shim's state directory."""
    from kata_py.config import load_config
    from kata_py.protocols import containerd_runtimeoptions_pb2 as options_pb

    config_path = None
    if options is not None and options.type_url.rsplit("/", 1)[-1] == OPTIONS_TYPE:
        parsed = options_pb.Options()
        parsed.ParseFromString(options.value)
        config_path = parsed.config_path or None
    return dataclasses.replace(load_config(config_path), state_dir=str(root))


def serve(args: Args, listener: socket.socket, start_options: bytes = b"") -> int:
    from google.protobuf.any_pb2 import Any as AnyMessage

    from kata_py.container import Container, CreateRequest
    from kata_py.hypervisor.process import ProcessRef
    from kata_py.private import private_dir, restrict_umask

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
    owners = Owners()
    prestart: Prestart | None = None
    if group == args.id:        # a pod's app containers join the pod's VM (not yet)
        try:
            prestart = Prestart(owners, args.id, bundle, runtime_config(
                AnyMessage.FromString(start_options) if start_options else None, root))
        except Exception:  # noqa: BLE001 - Create loads the options again and says what is wrong
            log.info("no VM booted ahead for %s", args.id, exc_info=True)
    # containerd's connection waits in the listener's backlog meanwhile
    from kata_py.shimv2 import ttrpc
    from kata_py.shimv2.events import Publisher
    from kata_py.shimv2.service import TaskService

    server = ttrpc.Server()
    publisher = Publisher(os.environ.get("TTRPC_ADDRESS", ""), args.namespace)

    def create(request: CreateRequest, options: AnyMessage | None = None) -> Container:
        cfg = runtime_config(options, root)
        booted = prestart.take(request.id, cfg) if prestart is not None else None
        return owners.run(request.id, Container.create, cfg, request,  # type: ignore[no-any-return]
                          None, booted, booted is not None)

    def stop(container: Container, guest_flushed: bool) -> None:
        owners.run(container.id, container.stop, guest_flushed)
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
        if prestart is not None:
            prestart.discard()
        publisher.close()
        record.unlink(missing_ok=True)
        socket_path(args, group).unlink(missing_ok=True)
        log.info("shim for %s exits", group)
    return 0
