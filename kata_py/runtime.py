"""Container lifecycle verbs (runc semantics) over the state store, the
monitor and the sandbox. The CLI calls one function per verb.

Layout under --root: containers/<id>/ (state.json, monitor.log) and vm/<id>/
(the sandbox). One sandbox VM per container; its id is the container id.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kata_py import host_cgroup, records
from kata_py.errors import ConfigError, CorruptStateError, KataError, NotFoundError, StateError
from kata_py.hypervisor.process import ProcessRef
from kata_py.lifecycle import LIVE, check
from kata_py.records import CONTAINERS_DIR, EXEC_PREFIX, MONITOR_FILE, START_SOCKET
from kata_py.state import ContainerState, now_rfc3339, store

log = logging.getLogger(__name__)

CREATE_TIMEOUT_S = 300.0
DETAILS_WAIT_S = 2.0        # for the log lines after a monitor's error line
MONITOR_TEARDOWN_WAIT_S = 10.0   # a stopped container's monitor stopping its VM
MONITOR_EXIT_WAIT_S = 10.0


def _config(root: Path, config_path: str | None):  # type: ignore[no-untyped-def]
    from kata_py.config import load_config

    cfg = load_config(config_path)
    return dataclasses.replace(cfg, state_dir=str(root))


def create(root: Path, cid: str, bundle: Path, pid_file: Path | None,
           config_path: str | None, debug: bool = False,
           console_socket: Path | None = None, no_pivot: bool = False) -> int:
    """Create the container; returns the monitor's pid once the container waits for start."""
    from kata_py.sizing import vm_size
    from kata_py.spec import load_spec
    from kata_py.translate import to_launch_config

    cfg = _config(root, config_path)        # a bad runtime config: nothing is created
    bundle = bundle.resolve()
    spec = load_spec(bundle)                # bad config.json: nothing is created
    to_launch_config(spec, cid)             # refuses what the guest cannot honour
    vm_size(spec, cfg.hypervisor)           # … or a VM this host cannot give
    if spec.process.terminal and console_socket is None:
        raise KataError("process.terminal is set but no --console-socket was given",
                        "pass --console-socket or set process.terminal to false in config.json")
    if console_socket is not None and not spec.process.terminal:
        raise KataError("--console-socket was given but process.terminal is false",
                        "set process.terminal to true in config.json or drop the flag")
    try:
        # runc's default: a cgroup named after the container below its own (the root here)
        cgroup_path = host_cgroup.relative_path(
            (spec.linux.cgroups_path if spec.linux else "") or f"/{cid}")
    except ValueError as exc:
        raise ConfigError(f"config.json: linux.{exc}", "fix linux.cgroupsPath") from exc
    st = store(root)
    me = ProcessRef.of(os.getpid(), "create")     # until the holder exists (monitor.Monitor.setup)
    st.create(ContainerState(id=cid, bundle=str(bundle), rootfs=str(spec.root.path),
                             status="creating", created=now_rfc3339(), pid=me.pid,
                             pid_start_time=me.start_time,
                             annotations=dict(spec.annotations), sandbox_id=cid,
                             host_cgroup=cgroup_path))
    extra = ["--debug"] if debug else []
    if no_pivot:
        extra.append("--no-pivot")  # the launcher moves the root instead of pivot_root
    if console_socket is not None:
        extra += ["--console-socket", str(console_socket.resolve())]
    monitor, line, details = _spawn_monitor(root, cid, config_path, *extra,
                                            parsed=(cfg, spec))
    if not line.startswith("ok"):
        if monitor.poll() is None:
            monitor.kill()
        status = monitor.wait()
        _keep_in_log(cid, details, debug)
        destroy(root, cid, config_path)
        if line.startswith("error "):
            raise KataError(line[len("error "):])
        raise KataError(f"container {cid}: the monitor died while creating it (exit status "
                        f"{status})", "rerun with --debug; this is a kata-py bug")
    if pid_file is not None:
        _write_pid_file(pid_file, monitor.pid)
    # The monitor outlives us; the caller's subreaper (conmon) inherits it.
    return monitor.pid


def _keep_in_log(cid: str, details: str, debug: bool) -> None:
    """A failed create's monitor log (its teardown removed the file) into a text
    --log, as warnings before the error line; never on stderr, which gets one
    line (with --debug the monitor has echoed it there). Not into a JSON --log:
    podman 4.3 reads that file as one JSON object when the runtime fails."""
    text_file = any(isinstance(h, logging.FileHandler) and type(h.formatter) is logging.Formatter
                    for h in logging.getLogger().handlers)
    if details and text_file and not debug:
        for line in details.splitlines():
            log.warning("monitor of %s: %s", cid, line)


def _read_notify(fd: int, timeout_s: float) -> tuple[str, str]:
    """The monitor's status line, and after an error the log lines that follow
    it (the monitor exits right after them: EOF comes at once, and a stray
    holder of the pipe costs at most DETAILS_WAIT_S)."""
    deadline = time.monotonic() + timeout_s
    data = b""
    try:
        while time.monotonic() < deadline:
            if b"\n" in data:
                if not data.startswith(b"error"):
                    break
                deadline = min(deadline, time.monotonic() + DETAILS_WAIT_S)
            if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    line, _, details = data.decode(errors="replace").partition("\n")
    return line.strip(), details


def _container(root: Path, state: ContainerState, config_path: str | None):  # type: ignore[no-untyped-def]
    """The lifecycle core's handle on a created container, over its
    sandbox's agent; refused at once if the sandbox is gone or dying."""
    from kata_py.container import Container
    from kata_py.sandbox import Sandbox

    cid = state.id
    sb = Sandbox.load(cid, _config(root, config_path))
    if sb.agent is None:
        raise StateError(f"container {cid} has no running sandbox",
                         f"delete it with `kata-py delete --force {cid}`")
    if sb.dead_process() is not None:     # fail now, not after the agent's dial timeout
        raise StateError(f"container {cid}: {sb.gone_reason()}",
                         f"its monitor is stopping it; then `kata-py delete {cid}`")
    return Container.attach(cid, Path(state.bundle), sb)


def start(root: Path, cid: str, config_path: str | None) -> None:
    from kata_py.startsock import request_start

    st = store(root)
    with st.lock(cid):
        state = st.load(cid)
        check(cid, state.status, "start")
        # The monitor starts it over its own connection to the agent, and
        # records it; without one listening (its socket path too long, say),
        # ask the agent here.
        state = dataclasses.replace(state, status="running")
        if not request_start(root / CONTAINERS_DIR / cid / START_SOCKET):
            _container(root, state, config_path).start()
            st.save(state)
    if _has_hooks(Path(state.bundle), "poststart"):
        from kata_py.hooks import run_hooks
        from kata_py.spec import load_spec

        run_hooks("poststart", load_spec(Path(state.bundle)).hooks.poststart, state.oci())


def _has_hooks(bundle: Path, name: str) -> bool:
    """Whether config.json has hooks `name`, without parsing the whole spec."""
    import json

    try:
        hooks = json.loads((bundle / "config.json").read_bytes()).get("hooks") or {}
    except (OSError, ValueError, AttributeError):
        return True     # let the full parse report it
    if not isinstance(hooks, dict):
        return True     # the full parse reports it
    return bool(hooks.get(name))


def kill(root: Path, cid: str, signum: int, all_processes: bool,
         config_path: str | None) -> None:
    """Signal the container's process (all of them with all_processes).
    Signal 0 signals nothing: the agent checks that the process exists (as
    kill(2), as runc's `kill ID 0`), and a container still being created
    counts as there."""
    state = store(root).load(cid)
    if state.status == "creating" and signum == 0:
        return
    check(cid, state.status, "kill")
    from kata_py.container import KillRequest

    _container(root, state, config_path).kill(KillRequest(signum, all=all_processes))


def exec_process(root: Path, cid: str, process_json: dict[str, Any] | None,
                 args: list[str], env: list[str], cwd: str | None, user: str | None,
                 detach: bool, pid_file: Path | None, config_path: str | None,
                 tty: bool = False, console_socket: Path | None = None) -> int:
    """Run a process in a created or running container (as runc); returns
    its exit status (0 with detach)."""
    import secrets

    from kata_py.container import ExecRequest
    from kata_py.spec import ID_HINT, ID_MAX, check_execve_space, load_spec, parse_process

    state = store(root).load(cid)
    check(cid, state.status, "exec")
    bundle = Path(state.bundle)
    spec = load_spec(bundle)
    if process_json is not None:
        process = parse_process(process_json, spec, bundle)
    else:
        if not args:
            raise StateError("exec needs a command", "give the command after the id, "
                             "or --process FILE")
        process = dataclasses.replace(spec.process, args=tuple(args), terminal=tty)
    if env:
        keys = {e.split("=", 1)[0] for e in env}
        process = dataclasses.replace(process, env=tuple(
            e for e in process.env if e.split("=", 1)[0] not in keys) + tuple(env))
    if cwd:
        process = dataclasses.replace(process, cwd=cwd)
    if user:
        uid, _, gid = user.partition(":")
        if not uid.isdigit() or (gid and not gid.isdigit()):
            raise StateError(f"invalid --user {user!r}", "use uid[:gid] in numbers")
        if max(int(uid), int(gid or 0)) > ID_MAX:
            raise ConfigError(f"exec --user {user}: an id must be at most {ID_MAX}", ID_HINT)
        process = dataclasses.replace(process, user=dataclasses.replace(
            process.user, uid=int(uid), gid=int(gid) if gid else process.user.gid))
    check_execve_space(process.args, process.env, process.rlimits,
                       lambda key: f"process.{key}", "exec")
    if process.terminal:
        process = _exec_terminal(process, detach, console_socket)
    exec_id = secrets.token_hex(6)
    container = _container(root, state, config_path)
    container.exec(ExecRequest(exec_id, process))
    agent = container.agent
    if detach:
        monitor_pid = _spawn_exec_monitor(root, cid, exec_id, config_path, console_socket)
        # destroy() ends it with the container (see there)
        ref = ProcessRef.of(monitor_pid, f"exec monitor {exec_id}")
        records.write(root / CONTAINERS_DIR / cid / f"{EXEC_PREFIX}{exec_id}.json",
                      ref.to_json())
        if pid_file is not None:
            _write_pid_file(pid_file, monitor_pid)
        return 0
    if pid_file is not None:
        _write_pid_file(pid_file, os.getpid())
    from kata_py.monitor import relay

    try:
        if process.terminal:    # the guest pty on the caller's terminal, raw, as runc
            from kata_py.console import raw_mode

            with raw_mode(0):
                code = relay(agent, cid, exec_id, tty=0, tty_output=1)
        else:
            code = relay(agent, cid, exec_id)
    finally:
        try:
            agent.remove_container(cid, exec_id)
        except KataError as exc:
            log.info("exec %s of %s: %s", exec_id, cid, exc)
    return code


def _exec_terminal(process: Any, detach: bool, console_socket: Path | None) -> Any:
    """An exec'd process with a terminal, checked as runc checks it: with
    --detach its pty goes to --console-socket; in the foreground the caller's
    terminal (stdin) relays it, and gives it its size from the start."""
    from kata_py.console import get_winsize
    from kata_py.spec import ConsoleSize

    if detach:
        if console_socket is None:
            raise KataError("exec -t --detach needs --console-socket",
                            "pass --console-socket (as conmon does), or exec in the "
                            "foreground from a terminal")
        return process
    if console_socket is not None:
        raise KataError("exec --console-socket needs --detach",
                        "pass --detach too, or drop --console-socket to use this terminal")
    if not os.isatty(0):
        raise KataError("exec -t in the foreground needs a terminal on stdin",
                        "run it from a terminal, pass --detach and --console-socket, "
                        "or drop -t")
    if process.console_size is None:
        rows, cols = get_winsize(0)
        if rows and cols:
            process = dataclasses.replace(process, console_size=ConsoleSize(rows, cols))
    return process


def _spawn_exec_monitor(root: Path, cid: str, exec_id: str, config_path: str | None,
                     console_socket: Path | None = None) -> int:
    extra = ["--exec-id", exec_id]
    if console_socket is not None:
        extra += ["--console-socket", str(console_socket.resolve())]
    monitor, line, _ = _spawn_monitor(root, cid, config_path, *extra)
    if not line.startswith("ok"):
        raise KataError(f"exec in container {cid}: {line or 'the exec monitor died'}")
    monitor.returncode = 0  # it outlives us: Popen.__del__ must not reap or warn
    return monitor.pid


class ForkedMonitor:
    """A monitor forked from this process, with the part of Popen's API create uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)

    def wait(self) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def _spawn_monitor(root: Path, cid: str, config_path: str | None, *extra: str,
                   parsed: tuple[Any, Any] | None = None
                   ) -> tuple[ForkedMonitor | subprocess.Popen[bytes], str, str]:
    """Start a monitor with our stdio; (it, its status line, the log lines after an error).

    parsed: (runtime config, spec) as create loaded them: the monitor is then
    this process, forked, and uses them as they are (one parse, one truth).
    A fresh `python -m kata_py.monitor` spent ≈ 60 ms of every create
    starting the interpreter and importing what create has imported already.
    Only where no thread has started (create: gRPC's threads would not
    survive a fork); the child keeps only stdio and the notify pipe."""
    read_fd, write_fd = os.pipe()
    argv = ["--root", str(root), "--id", cid, "--notify-fd", str(write_fd), *extra]
    if config_path:
        argv += ["--config", config_path]
    monitor: ForkedMonitor | subprocess.Popen[bytes]
    try:
        if parsed is not None:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            creator = os.getpid()
            pid = os.fork()
            if pid == 0:
                os.close(read_fd)
                _become_monitor(argv, write_fd, creator, parsed)
            monitor = ForkedMonitor(pid)
        else:
            # -P: never the current directory first on sys.path (a checkout's
            # kata_py/ would shadow the installed package).
            monitor = subprocess.Popen([sys.executable, "-P", "-m", "kata_py.monitor", *argv],
                                    pass_fds=(write_fd,), close_fds=True)
    finally:
        os.close(write_fd)
    return (monitor, *_read_notify(read_fd, CREATE_TIMEOUT_S))


def _become_monitor(argv: list[str], notify_fd: int, creator: int,
                    parsed: tuple[Any, Any]) -> None:
    """In the forked child: drop what the CLI had open, become the
    container's holder (holder.py: the pid in the pid file) and run the
    monitor in the holder's child, which aborts the create should `creator`
    (this create) die first; exit."""
    code = 1
    try:
        root_logger = logging.getLogger()
        for handler in root_logger.handlers[:]:
            root_logger.removeHandler(handler)
            handler.close()
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2 and fd != notify_fd:
                try:
                    os.close(fd)
                except OSError:
                    pass
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        creator_fd = os.pidfd_open(creator)
        if os.getppid() != creator:        # create died before the pidfd was opened
            return
        from kata_py import holder, monitor
        link = holder.split(notify_fd)     # this process becomes the holder; its child goes on
        code = monitor.main([*argv, "--holder-fd", str(link), "--creator-fd", str(creator_fd)],
                            parsed)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - a child must never return into the CLI
        import traceback
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _write_pid_file(pid_file: Path, pid: int) -> None:
    records.write_bytes(pid_file, str(pid).encode())


def update(root: Path, cid: str, changes: dict[str, Any], config_path: str | None) -> None:
    """Change the container's cgroup limits in the guest (the VM keeps its size)."""
    from kata_py.spec_linux import MEMORY_LIMIT_HINT, memory_limit_problem

    limit = changes.get("memory_limit")
    if limit == 0:                      # runc: a memory limit of 0 leaves it as it is
        changes = {k: v for k, v in changes.items() if k != "memory_limit"}
    elif isinstance(limit, int) and memory_limit_problem(limit):
        raise ConfigError(f"memory limit {memory_limit_problem(limit)}", MEMORY_LIMIT_HINT)
    state = store(root).load(cid)
    check(cid, state.status, "update")
    if not changes:
        raise KataError("nothing to update", "give --resources or a resource flag")
    _container(root, state, config_path).update(changes)


def stats(root: Path, cid: str, config_path: str | None) -> dict[str, Any]:
    """runc's `events --stats` data (types.Stats), from the guest cgroup."""
    from kata_py.guest_cgroup import runc_stats

    state = store(root).load(cid)
    check(cid, state.status, "stats")
    return runc_stats(_container(root, state, config_path).stats())


def pause(root: Path, cid: str, config_path: str | None) -> None:
    _set_frozen(root, cid, config_path, frozen=True)


def resume(root: Path, cid: str, config_path: str | None) -> None:
    _set_frozen(root, cid, config_path, frozen=False)


def _set_frozen(root: Path, cid: str, config_path: str | None, frozen: bool) -> None:
    st = store(root)
    with st.lock(cid):
        state = st.load(cid)
        then = check(cid, state.status, "pause" if frozen else "resume")
        assert then is not None
        container = _container(root, state, config_path)
        (container.pause if frozen else container.resume)()
        st.save(dataclasses.replace(state, status=then))


def processes(root: Path, cid: str, config_path: str | None
              ) -> tuple[list[tuple[int, bytes, bytes, bytes, str]], int]:
    """The container's processes as its own /proc shows them and the
    guest's CLOCK_BOOTTIME (AgentClient.read_processes; psview.py renders
    them); none for a container that is not live: runc's `ps` of a stopped
    container prints the header alone."""
    state = store(root).load(cid)
    if state.status not in LIVE:
        return [], 0
    return _container(root, state, config_path).processes()  # type: ignore[no-any-return]


def delete(root: Path, cid: str, force: bool, config_path: str | None) -> None:
    """--force also succeeds when the container does not exist (as runc and
    crun do: podman deletes after a failed create), removing any leftovers."""
    st = store(root)
    try:
        # Under the lock throughout: podman's `run --rm` and conmon's cleanup
        # both delete, at the same moment; the second waits, then finds nothing.
        with st.lock(cid):
            if not force:
                check(cid, st.load(cid).status, "delete")
            destroy(root, cid, config_path, run_poststop=True)
    except (NotFoundError, CorruptStateError):
        # --force: a container that does not exist, or whose record is
        # corrupt (destroy finds its monitors and sandbox without it), goes too.
        if not force:
            raise
        destroy(root, cid, config_path)


def destroy(root: Path, cid: str, config_path: str | None, run_poststop: bool = False) -> None:
    """Remove everything of container cid that exists: sandbox, monitor, state."""
    st = store(root)
    cfg = _config(root, config_path)
    try:
        state: ContainerState | None = st.load(cid)
    except KataError:
        state = None
    # The monitors first (their status: killed): one still alive would see its
    # VM vanish and report that as an unexpected death on the container's
    # stderr, and one still creating could go on starting what stop() ended.
    for monitor in _monitors(root, cid, state):
        # A stopped container's monitor may still be stopping its sandbox (monitor.py
        # serve()): let it finish rather than kill it half way.
        if (state is not None and state.status == "stopped" and monitor.name == "monitor"
                and monitor.wait(MONITOR_TEARDOWN_WAIT_S)):
            continue
        if monitor.signal(signal.SIGKILL) and not monitor.wait(MONITOR_EXIT_WAIT_S):
            log.error("%s (pid %d) survived SIGKILL", monitor.name, monitor.pid)
    sandbox_dir = Path(cfg.state_dir) / "vm" / cid
    if sandbox_dir.exists():
        from kata_py.sandbox import Sandbox

        try:
            sb = Sandbox.load(cid, cfg)
        except KataError:
            sb = Sandbox(cid, cfg)
        sb.stop()
    if run_poststop and state is not None and _has_hooks(Path(state.bundle), "poststop"):
        try:
            from kata_py.hooks import run_hooks
            from kata_py.spec import load_spec

            hooks = load_spec(Path(state.bundle)).hooks.poststop
            run_hooks("poststop", hooks, dataclasses.replace(state, status="stopped").oci())
        except KataError as exc:
            log.warning("poststop hooks of %s: %s", cid, exc)
    host_cgroup.remove(state.host_cgroup if state is not None
                       else st.salvage_host_cgroup(cid))
    if (root / "containers" / cid).exists():
        st.remove(cid)


def _monitors(root: Path, cid: str, state: ContainerState | None) -> list[ProcessRef]:
    """The container's monitor and its exec monitors (exec -d), as recorded."""
    found = []
    if state is not None and state.pid:
        # the holder (holder.py); killing it kills the monitor too
        found.append(ProcessRef(state.pid, state.pid_start_time, "monitor"))
    directory = root / "containers" / cid
    paths = [directory / MONITOR_FILE, *sorted(directory.glob(f"{EXEC_PREFIX}*.json"))]
    for path in paths if directory.exists() else ():
        try:
            found.append(ProcessRef.from_json(records.read(path, f"container {cid}", "")))
        except (KataError, KeyError, TypeError):
            continue                # gone meanwhile, or half-written by a crash
    # Not ourselves: a create (or its monitor) tearing down its own failed
    # create; nor the holder of such a monitor, which exits with it.
    return [ref for ref in found if ref.pid not in (os.getpid(), os.getppid())]


def run(root: Path, cid: str, bundle: Path, pid_file: Path | None, detach: bool,
        keep: bool, config_path: str | None, debug: bool = False,
        console_socket: Path | None = None, no_pivot: bool = False) -> int:
    """create + start (+ wait + delete); returns the container's exit status."""
    monitor_pid = create(root, cid, bundle, pid_file, config_path, debug, console_socket,
                      no_pivot)
    try:
        start(root, cid, config_path)
    except BaseException:
        destroy(root, cid, config_path)
        raise
    if detach:
        return 0
    def to_monitor(signum: int, frame: object) -> None:
        os.kill(monitor_pid, signum)  # the monitor forwards it to the container

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, to_monitor)
    _, status = os.waitpid(monitor_pid, 0)
    code = os.waitstatus_to_exitcode(status)
    code = 128 - code if code < 0 else code
    if not keep:
        destroy(root, cid, config_path, run_poststop=True)
    return code
