"""The monitor: the host side of one container, child of its holder (the
pid-file process conmon waits on, holder.py).

`kata-py create` starts it with create's own stdio and waits for one line
on the notify fd. The monitor owns the sandbox: it boots the VM, shares the
rootfs and bind-mount sources, has the agent build the container, has the
holder enter the container's stand-in mount namespace (serving its /proc,
procview.py), runs the createRuntime/prestart hooks, says `ok`, and then:

- relays its stdin to the container and the container's stdout/stderr to
  its own, separately;
- forwards the signals it receives to the container;
- exits with the container's exit status (128+N when killed by signal N),
  which its holder passes on.

On any failure before `ok` it tears everything down, writes `error <line>`
and exits 1. It logs to <root>/containers/<id>/monitor.log, never to stdio
(stdio belongs to the container).
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import logging
import os
import select
import signal
import sys
import termios
import threading
import time
import tty as tty_mod
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from kata_py import fuse, host_cgroup, records
from kata_py.config import RuntimeConfig, load_config
from kata_py.console import get_winsize, open_pty, send_console, set_winsize
from kata_py.container import Container, CreateRequest
from kata_py.errors import KataError
from kata_py.holder import Bind, HolderLink
from kata_py.hooks import run_hooks
from kata_py.hypervisor.process import ProcessRef, log_tail, raise_abort
from kata_py.private import restrict_umask
from kata_py.procview import ProcView
from kata_py.records import CONTAINERS_DIR, MONITOR_FILE, START_SOCKET
from kata_py.sandbox import Sandbox
from kata_py.spec import Spec, load_spec
from kata_py.startsock import StartListener
from kata_py.state import ContainerState, StateStore
from kata_py.stdio import AGENT_GONE_EXIT, Relay
from kata_py.translate import is_bind

if TYPE_CHECKING:
    from kata_py.agent_client import AgentClient
    from kata_py.statsview import StatsView

log = logging.getLogger("kata_py.monitor")

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT)
ABORTING_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
FAILED_LOG_LINES = 80       # of monitor.log (with the sandbox's log tails) after a failed create


def _notify(fd: int, line: str, details: str = "") -> None:
    """One status line (`ok PID` or `error LINE`); after an error, the tail of
    our log, whose file the teardown removes: create keeps it in its --log."""
    try:
        os.write(fd, (line.replace("\n", " ") + "\n" + details).encode())
        os.close(fd)
    except OSError:
        pass


def follow_window_size(agent: AgentClient, cid: str, exec_id: str, tty: int) -> None:
    """Keep the guest pty at the host terminal's size from now on.

    One thread sends every resize, reading the size only once it is about to
    send it; SIGWINCH just wakes it. Resizes sent from the signal handler
    itself could overtake one another (the handler runs inside whatever RPC
    the main thread is waiting on, and the agent serves RPCs on many
    threads), leaving the guest at a stale size such as the 0x0 of a host
    terminal not sized yet. A 0x0 size is never sent: it would undo the
    pty's process.consoleSize."""
    wake = threading.Event()

    def follow() -> None:
        while True:
            wake.wait()
            wake.clear()
            try:
                rows, cols = get_winsize(tty)
            except OSError:
                return      # the terminal is closed: the process is gone
            if not rows or not cols:
                continue
            try:
                agent.resize_tty(cid, rows, cols, exec_id=exec_id)
            except KataError as exc:
                log.info("could not resize the terminal: %s", exc)

    threading.Thread(target=follow, name="resize", daemon=True).start()
    signal.signal(signal.SIGWINCH, lambda signum, frame: wake.set())
    wake.set()


def relay(agent: AgentClient, cid: str, exec_id: str = "", tty: int | None = None,
          tty_output: int | None = None) -> int:
    """Connect our stdio (or the host terminal `tty`, its output to
    `tty_output` if given: exec -t writes to stdout, as runc) to a process in
    the guest, forward our signals to it, and return its exit status once
    its output is drained."""
    out, err, inp = (tty, tty, tty) if tty is not None else (1, 2, 0)
    if tty is not None and tty_output is not None:
        out = err = tty_output
    process = Relay(agent, cid, exec_id, stdin=inp, stdout=out, stderr=err,
                    release=tty is None)
    process.start()
    if tty is not None:
        follow_window_size(agent, cid, exec_id, tty)

    def forward(signum: int, frame: FrameType | None) -> None:
        try:
            agent.signal_process(cid, signum, exec_id=exec_id)
        except KataError as exc:
            log.info("could not forward signal %d: %s", signum, exc)

    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, forward)
    return process.wait()


def open_terminal(console_socket: Path, size: tuple[int, int] | None = None) -> int:
    """A host pty whose master goes to the console socket (runc's protocol);
    we keep the slave, raw (the guest's pty does the line discipline), as our
    controlling terminal so that resizes reach us as SIGWINCH."""
    os.setsid()
    pty = open_pty()
    tty_mod.setraw(pty.slave)
    fcntl.ioctl(pty.slave, termios.TIOCSCTTY, 0)
    if size is not None:
        set_winsize(pty.master, *size)
    send_console(console_socket, pty.master, pty.name)
    os.close(pty.master)
    return pty.slave


class Monitor:
    def __init__(self, root: Path, cid: str, config_path: str | None,
                 console_socket: Path | None = None, no_pivot: bool = False,
                 holder: HolderLink | None = None,
                 parsed: tuple[RuntimeConfig, Spec] | None = None) -> None:
        self.cid = cid
        self.console_socket = console_socket
        self.no_pivot = no_pivot
        self.tty: int | None = None
        self.spec: Spec | None = parsed[1] if parsed is not None else None
        cfg = parsed[0] if parsed is not None else load_config(config_path)
        self.cfg = dataclasses.replace(cfg, state_dir=str(root))
        self.store = StateStore(root / CONTAINERS_DIR)
        self.sandbox: Sandbox | None = None     # sized from the spec in setup()
        self.container: Container | None = None
        self.starter: StartListener | None = None
        self.view: StatsView | None = None
        self.procs: ProcView | None = None
        self.holder = holder

    def setup(self) -> ContainerState:
        state = self.store.load(self.cid)
        me = ProcessRef.of(os.getpid(), "vm monitor")
        if self.holder is not None:     # delete finds us here; the pid file has the holder
            records.write(self.store.root / self.cid / MONITOR_FILE, me.to_json())
            # From now on the holder is the container's process for `state`
            # and `delete` (it was create's own pid): this monitor, and with it
            # the VM, dies with the holder.
            holder = ProcessRef.of(self.holder.pid, "holder")
            state = dataclasses.replace(state, pid=holder.pid, pid_start_time=holder.start_time)
            self.store.save(state)
        host_cgroup.join(state.host_cgroup)   # QEMU and the daemons inherit it
        spec = self.spec if self.spec is not None else load_spec(Path(state.bundle))
        container = Container.create(self.cfg, CreateRequest(
            self.cid, Path(state.bundle), no_pivot=self.no_pivot), spec)
        self.container = container
        self.sandbox = container.sandbox
        if self.holder is None:
            state = dataclasses.replace(state, pid=me.pid, pid_start_time=me.start_time)
        state = dataclasses.replace(state, status="created")
        if self.holder is not None:
            self._enter_holder(spec, state)
        if spec.process.terminal:
            self.tty = self._open_terminal(spec)
        oci = state.oci()
        run_hooks("prestart", spec.hooks.prestart, oci)
        run_hooks("createRuntime", spec.hooks.create_runtime, oci)
        self.starter = StartListener(self.store.root / self.cid / START_SOCKET, self._start)
        self.starter.open()
        if self.holder is not None:   # the pid engines read the cgroup of (podman stats)
            host_cgroup.join(state.host_cgroup, self.holder.pid)
        self._show_guest_stats(state.host_cgroup)
        self.store.save(state)
        return state

    def _start(self) -> None:
        """Start the container; a terminal the engine has sized by now (podman
        attaches and resizes before it starts) gets that size first, as
        runc's pty would: the process must not start on a 0x0 terminal that
        is resized a moment later."""
        assert self.sandbox is not None and self.sandbox.agent is not None
        if self.tty is not None:
            try:
                rows, cols = get_winsize(self.tty)
            except OSError:
                rows = cols = 0
            if rows and cols:
                self.sandbox.agent.resize_tty(self.cid, rows, cols)
        self.sandbox.agent.start_container(self.cid)
        # The state says so before `start` hears back: a start killed half
        # way leaves a true "running" (a retry is refused, as runc's is, and
        # exec works). No lock: the start that asked us holds it.
        self.store.save(dataclasses.replace(self.store.load(self.cid), status="running"))

    def _enter_holder(self, spec: Spec, state: ContainerState) -> None:
        """The holder's mount namespace becomes the container's stand-in
        (holder.py), with the guest's processes as its /proc (procview.py)."""
        container = self.container
        assert self.holder is not None and container is not None
        started = time.monotonic()
        fuse_fd: int | None = None
        if self.cfg.proc_view:
            try:
                fuse_fd = fuse.open_device()
            except OSError as exc:
                log.warning("no /proc view for podman top: /dev/fuse: %s", exc)
        rootfs = Path(state.bundle, spec.root.path)
        binds = [Bind(m.source, m.destination, "ro" in m.options) for m in spec.mounts
                 if is_bind(m)]
        try:
            own_net = spec.linux is not None and any(
                ns.type == "network" and not ns.path for ns in spec.linux.namespaces)
            why = self.holder.enter(rootfs, spec.root.readonly, binds, fuse_fd, own_net)
        except KataError:
            if fuse_fd is not None:
                os.close(fuse_fd)
            raise
        if fuse_fd is not None and not why:
            self.procs = ProcView(container.processes)
            self.procs.serve(fuse_fd)
        elif fuse_fd is not None:
            log.warning("no /proc view for podman top: %s", why)
            os.close(fuse_fd)
        log.info("holder %d entered the container's root (%.3fs)", self.holder.pid,
                 time.monotonic() - started)

    def _show_guest_stats(self, host_cgroup_path: str) -> None:
        """Mount the guest-stats view over the host cgroup (statsview.py)."""
        if not (self.cfg.stats_view and host_cgroup_path):
            return
        started = time.monotonic()
        from kata_py import statsview
        assert self.container is not None
        self.view = statsview.StatsView(self.container.stats,
                                        statsview.targets(host_cgroup_path))
        shown = self.view.start()
        log.info("guest stats shown at %s (%.3fs)",
                 ", ".join(map(str, shown)) or "no host cgroup", time.monotonic() - started)

    def _open_terminal(self, spec: Spec) -> int:
        if self.console_socket is None:
            raise KataError("process.terminal is set but no --console-socket was given",
                            "pass --console-socket or set process.terminal to false")
        size = spec.process.console_size
        return open_terminal(self.console_socket,
                             (size.height, size.width) if size is not None else None)

    def serve(self) -> int:
        assert self.sandbox is not None and self.sandbox.agent is not None
        code = relay(self.sandbox.agent, self.cid, tty=self.tty)
        if code == AGENT_GONE_EXIT:
            # The container's stderr is the only channel left to whoever runs
            # it (run's caller, conmon's log): say what happened there.
            why = self.sandbox.gone_reason()
            log.error("container %s: %s", self.cid, why)
            self.sandbox.log_tails("lost its agent")
            line = (f"kata-py: container {self.cid}: {why}; exit status {code}: check the "
                    "host's kernel log (dmesg) for what ended it\n")
            try:
                os.write(self.tty if self.tty is not None else 2, line.encode())
            except OSError:
                pass
        else:
            log.info("container %s exited with %d", self.cid, code)
        if self.starter is not None:
            self.starter.close()
        if self.view is not None:
            self.view.close()       # before the VM goes: the host cgroup shows again
        with self.store.lock(self.cid):
            state = self.store.load(self.cid)
            self.store.save(dataclasses.replace(state, status="stopped", exit_code=code))
        # A stopped container holds nothing (runc: its namespaces and cgroup
        # are gone), so neither does its VM: stopped here, over this monitor's
        # agent connection, `delete` (or run's) only removes the state, and
        # imports no gRPC (≈ 0.2 → 0.07 s). The exit status waits for it.
        started = time.monotonic()
        assert self.container is not None
        self.container.stop(guest_flushed=self.container.flushed_by_exit(code))
        log.info("sandbox %s stopped in %.3fs", self.cid, time.monotonic() - started)
        return code


def main(argv: list[str] | None = None,
         parsed: tuple[RuntimeConfig, Spec] | None = None) -> int:
    """parsed: the runtime config and spec create loaded (runtime._spawn_monitor
    forks); without them (python -m kata_py.monitor) both are loaded here."""
    parser = argparse.ArgumentParser(prog="kata-py monitor")
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--id", required=True)
    parser.add_argument("--notify-fd", required=True, type=int)
    parser.add_argument("--config", default=None)
    parser.add_argument("--console-socket", default=None, type=Path)
    parser.add_argument("--no-pivot", action="store_true", help="runc's create --no-pivot")
    parser.add_argument("--exec-id", default="",
                        help="relay an already started exec'd process (exec -d)")
    parser.add_argument("--holder-fd", default=None, type=int,
                        help="the link to the pid-file process (holder.py)")
    parser.add_argument("--creator-fd", default=None, type=int,
                        help="a pidfd of `kata-py create`: abort if it dies first")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    restrict_umask()    # also when started as python -m kata_py.monitor
    log_path = args.root / CONTAINERS_DIR / args.id / "monitor.log"
    logging.basicConfig(filename=log_path, level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    if args.exec_id:
        return _serve_exec(args.root, args.id, args.exec_id, args.config, args.notify_fd,
                           args.console_socket)
    # With --debug, create's stderr also gets the setup's log (a failed start
    # removes monitor.log and the sandbox's logs with it), until the container exists.
    echo = logging.StreamHandler(sys.stderr) if args.debug else None
    if echo is not None:
        echo.setFormatter(logging.Formatter("kata-py monitor: %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(echo)
    created = threading.Event()
    _abort_on_signals()
    if args.creator_fd is not None:
        _watch_creator(args.creator_fd, created)
    try:
        link = HolderLink(args.holder_fd) if args.holder_fd is not None else None
        monitor = Monitor(args.root, args.id, args.config, args.console_socket, args.no_pivot, link,
                          parsed)
        monitor.setup()
    except KataError as exc:
        log.error("create failed: %s", exc)
        return _fail_create(args, log_path, str(exc))
    except BaseException as exc:  # noqa: BLE001 - the one line create prints
        log.exception("create failed")
        return _fail_create(args, log_path, f"internal error: {type(exc).__name__}: {exc}")
    if echo is not None:
        logging.getLogger().removeHandler(echo)   # stderr is the container's from here on
    created.set()
    for sig in ABORTING_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)        # serve() forwards them to the container
    _notify(args.notify_fd, f"ok {os.getppid() if link is not None else os.getpid()}")
    return monitor.serve()


class CreateAborted(KataError):
    """A signal, or the death of `kata-py create`, ended the create half way."""


def _abort_on_signals() -> None:
    """Until the container is created, SIGTERM/SIGINT/SIGHUP (sent to us, or
    forwarded by the holder) abort the create: the exception unwinds through
    the sandbox's start, and main tears down what was built. Once only: a
    second signal must not interrupt that teardown."""
    def abort(signum: int, frame: FrameType | None) -> None:
        for sig in ABORTING_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise_abort(CreateAborted(
            f"create aborted by signal {signal.Signals(signum).name}",
            "nothing of the container was kept"))
    for sig in ABORTING_SIGNALS:
        signal.signal(sig, abort)


def _watch_creator(pidfd: int, created: threading.Event) -> None:
    """runc's create dies with its caller; ours has handed the work to this
    monitor, so abort it ourselves if `kata-py create` dies before we answer."""
    def watch() -> None:
        select.select([pidfd], [], [])
        os.close(pidfd)
        if not created.is_set():
            log.error("kata-py create (the caller) died before the container was created")
            os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, name="creator", daemon=True).start()


def _serve_exec(root: Path, cid: str, exec_id: str, config_path: str | None,
                notify_fd: int, console_socket: Path | None) -> int:
    """exec -d: relay the exec'd process (through a terminal with
    --console-socket) for as long as it lives."""
    cfg = load_config(config_path)
    sandbox = Sandbox.load(cid, dataclasses.replace(cfg, state_dir=str(root)))
    assert sandbox.agent is not None
    try:
        tty = open_terminal(console_socket) if console_socket is not None else None
    except KataError as exc:
        _notify(notify_fd, f"error {exc}")
        return 1
    _notify(notify_fd, f"ok {os.getpid()}")
    code = relay(sandbox.agent, cid, exec_id, tty=tty)
    try:
        sandbox.agent.remove_container(cid, exec_id)
    except KataError:
        pass
    return code


def _fail_create(args: argparse.Namespace, log_path: Path, message: str) -> int:
    """Tear down what create built, then tell create why, with our log's tail
    (the teardown removes the file)."""
    details = log_tail(log_path, FAILED_LOG_LINES)
    _teardown_failed_create(args.root, args.id, args.config)
    _notify(args.notify_fd, f"error {message}", details)
    return 1


def _teardown_failed_create(root: Path, cid: str, config_path: str | None) -> None:
    from kata_py import runtime

    try:
        runtime.destroy(root, cid, config_path)
    except KataError as exc:
        log.error("cleanup after the failed create: %s", exc)


if __name__ == "__main__":
    sys.exit(main())
