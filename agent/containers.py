"""Containers inside the guest: spawning the launcher, the create/start
handshake, stdio, signals and exit status.

The agent is multi-threaded (gRPC), so it never forks to do namespace work:
its launcher zygote (agent/zygote.py, forked before any thread) forks a
launcher for it, or, without a zygote, it posix_spawn()s `python3 -m
kata_py.agent.launcher` (fork+exec in one call). Either way the launcher gets
the launch description on a pipe and these fds, as agent/launch_config.py
defines them:

    0/1/2  the container's stdin/stdout/stderr (pipes owned by the agent)
    3      sync: the launcher's JSON lines ({"pid"}, {"created"}, {"error"})
    4      start: one byte lets the container execve (runc's exec fifo)
    5      config: the launch description, read until EOF

The launcher's own exit status is the container's; the reaper
(agent/reaper.py) is the only one who waits for it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import select
import signal
import socket
import struct
import sys
import termios
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kata_py.agent import cgroups, launch_config
from kata_py.agent.errors import AgentError, FailedPrecondition, InvalidArgument, NotFound
from kata_py.agent.reaper import Exit, Reaper
from kata_py.agent.zygote import Zygote, ZygoteError

log = logging.getLogger(__name__)

SYNC_FD, START_FD, CONFIG_FD, CONSOLE_FD = 3, 4, 5, 6
CREATE_TIMEOUT_S = 60.0
KILL_WAIT_S = 5.0
STREAM_BUFFER_MAX = 4 << 20     # a slow reader pauses the container's writes beyond this
READ_CHUNK = 1 << 20            # with 1 MiB pipes: fewer wakeups per MiB of output
PIPE_SIZE = 1 << 20             # F_SETPIPE_SZ for stdout/stderr (the default is 64 KiB)
HIGH_FD = 10                    # parent-side copies live above the child's targets
LAUNCHER_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


NS_PROC_NAMES = {"pid": "pid", "mount": "mnt", "uts": "uts", "ipc": "ipc", "network": "net",
                 "cgroup": "cgroup", "user": "user"}


def process_key(container_id: str, exec_id: str = "") -> str:
    """The manager's key: the container itself, or one of its exec'd processes."""
    return f"{container_id}/{exec_id}" if exec_id else container_id


def _parse(config_json: bytes) -> launch_config.LaunchConfig:
    try:
        config = launch_config.from_json(config_json)
    except launch_config.LaunchConfigError as exc:
        raise InvalidArgument(f"launch description: {exc}") from exc
    return dataclasses.replace(config, fds=dataclasses.replace(
        config.fds, sync=SYNC_FD, start=START_FD, stdin=0, stdout=1, stderr=2))


class Stream:
    """One output stream of a container: a pipe drained by a thread into a
    bounded buffer that ReadStdout/ReadStderr take from."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name
        self.buffer = bytearray()
        self.eof = False
        self.cond = threading.Condition()
        try:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # a terminal, or a pipe-max-size below 1 MiB: the default size works too
        threading.Thread(target=self._drain, name=name, daemon=True).start()

    def _drain(self) -> None:
        while True:
            with self.cond:
                while len(self.buffer) >= STREAM_BUFFER_MAX:
                    self.cond.wait()
            try:
                data = os.read(self.fd, READ_CHUNK)
            except OSError:
                data = b""
            with self.cond:
                if data:
                    self.buffer += data
                else:
                    self.eof = True
                self.cond.notify_all()
            if not data:
                os.close(self.fd)
                return

    def read(self, max_bytes: int, timeout_s: float | None) -> bytes | None:
        """Up to max_bytes; b"" at end of stream, None if nothing came by the timeout."""
        with self.cond:
            if not self.cond.wait_for(lambda: self.buffer or self.eof, timeout_s):
                return None
            data = bytes(self.buffer[:max_bytes])
            del self.buffer[:max_bytes]
            self.cond.notify_all()
            return data


@dataclass(frozen=True)
class ProcFiles:
    """One process's /proc files (ReadProcesses)."""

    pid: int
    stat: bytes
    status: bytes
    cmdline: bytes
    pid_ns: str


@dataclass
class Container:
    id: str
    config: launch_config.LaunchConfig
    pid: int
    launcher: Exit
    stdin: int | None
    stdout: Stream
    stderr: Stream
    sync: int
    tty: int | None
    start: int | None
    cgroup: Path | None = None
    cpu_shares: int = 0           # the OCI value last applied (StatsContainer)
    started: bool = False
    flushed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


def _launcher_start(here: str = __file__) -> tuple[str, ...]:
    """How python3 starts the launcher. Where kata_py is laid out on disk as
    installed (the guest image), without site, runpy and argparse: -S and the
    package's directory on sys.path, like the agent's own start (guest-image/init);
    0.1-0.3 s less per container and exec under TCG. Elsewhere (an editable
    install's import hook needs site): -m."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(here)))
    if (os.path.basename(package) == "kata_py"
            and os.path.isfile(os.path.join(package, "agent", "launcher.py"))):
        home = os.path.dirname(package)      # .../dist-packages, holding kata_py/agent/
        return ("-S", "-c", f"import sys; sys.path.append({home!r}); "
                "from kata_py.agent.launcher import main; sys.exit(main())")
    return ("-m", "kata_py.agent.launcher")


LAUNCHER_START = _launcher_start()


def _pipe() -> tuple[int, int]:
    r, w = os.pipe2(os.O_CLOEXEC)
    return r, w


def _high(fd: int) -> int:
    """A close-on-exec copy of fd at or above HIGH_FD; closes the original."""
    copy = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, HIGH_FD)
    os.close(fd)
    return copy


def _recv_master(sock: socket.socket) -> int:
    """The pty master the launcher made in the container's devpts."""
    sock.settimeout(CREATE_TIMEOUT_S)
    _, fds, _, _ = socket.recv_fds(sock, 64, 1)
    if not fds:
        raise AgentError("the launcher sent no terminal")
    return fds[0]


def _read_sync(fd: int, deadline: float) -> dict[str, object] | None:
    """The next JSON line from the launcher, or None at EOF."""
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AgentError("the container launcher did not answer in time")
        chunk = os.read(fd, 1)
        if not chunk:
            return None if not line else json.loads(line)
        line += chunk
    parsed = json.loads(line)
    if not isinstance(parsed, dict):
        raise AgentError(f"internal error: launcher sent {parsed!r}")
    return parsed


class ContainerManager:
    def __init__(self, reaper: Reaper, zygote: Zygote | None = None) -> None:
        self.reaper = reaper
        self.zygote = zygote
        self.containers: dict[str, Container] = {}
        self.lock = threading.Lock()
        launch_config.warm()        # before ready: a template's VMs inherit it

    def get(self, container_id: str, exec_id: str = "") -> Container:
        key = process_key(container_id, exec_id)
        with self.lock:
            c = self.containers.get(key)
        if c is None:
            what = f"exec {exec_id} of container {container_id}" if exec_id else \
                f"container {container_id}"
            raise NotFound(f"{what} does not exist in the sandbox")
        return c

    def create(self, container_id: str, config_json: bytes) -> int:
        return self._spawn(container_id, _parse(config_json)).pid

    def exec(self, container_id: str, exec_id: str, config_json: bytes) -> int:
        """Start a process in the namespaces and cgroup of a created or
        running container (runc execs into a created one too: its init waits
        for start, its namespaces exist). The exec's own process and fds: a
        container created with a terminal gives its console socket to its
        init only."""
        c = self.get(container_id)
        if c.launcher.code is not None:
            raise FailedPrecondition(f"container {container_id} is not running")
        if not exec_id:
            raise InvalidArgument("exec_id must not be empty")
        base = c.config
        parsed = _parse(config_json)
        config = dataclasses.replace(
            base, process=parsed.process, fds=parsed.fds, hostname="", domainname="",
            mounts=(), masked_paths=(),
            readonly_paths=(), devices=(), sysctl={}, default_devices=False,
            hooks=launch_config.Hooks(),
            namespaces=tuple(launch_config.Namespace(ns.type, f"/proc/{c.pid}/ns/"
                                                     f"{NS_PROC_NAMES[ns.type]}")
                             for ns in base.namespaces),
            cgroup=launch_config.Cgroup(base.cgroup.path, root=base.cgroup.root)
            if base.cgroup else None)
        e = self._spawn(process_key(container_id, exec_id), config)
        self.start(container_id, exec_id)
        return e.pid

    def _spawn(self, key: str, config: launch_config.LaunchConfig) -> Container:
        container_id = key
        with self.lock:
            if key in self.containers:
                raise FailedPrecondition(f"{key} already exists")
        terminal = config.process.terminal
        if terminal:  # the launcher sends the container's pty master back over this
            config = dataclasses.replace(config, fds=dataclasses.replace(
                config.fds, console_socket=CONSOLE_FD))
            console_parent, console_child = socket.socketpair(socket.AF_UNIX,
                                                              socket.SOCK_STREAM)
        pipes = {name: _pipe() for name in ("stdin", "stdout", "stderr", "sync", "start",
                                            "config")}
        # Child side: stdin read end, stdout/stderr write ends, sync write end,
        # start read end, config read end; the agent keeps the other ends.
        child = {0: pipes["stdin"][0], 1: pipes["stdout"][1], 2: pipes["stderr"][1],
                 SYNC_FD: pipes["sync"][1], START_FD: pipes["start"][0],
                 CONFIG_FD: pipes["config"][0]}
        if terminal:
            child[CONSOLE_FD] = console_child.detach()
        child = {target: _high(fd) for target, fd in child.items()}
        try:
            pid = self._start_launcher(child)
        finally:
            for fd in child.values():
                os.close(fd)
        launcher = self.reaper.watch(pid)
        with os.fdopen(pipes["config"][1], "wb") as f:
            f.write(launch_config.to_launcher(config))
        sync = pipes["sync"][0]
        tty = None
        try:
            container_pid = self._await_created(sync, launcher, key)
            if terminal:
                tty = _recv_master(console_parent)
        except BaseException:
            os.close(sync)
            for fd in (pipes["stdin"][1], pipes["stdout"][0], pipes["stderr"][0],
                       pipes["start"][1]):
                os.close(fd)
            raise
        finally:
            if terminal:
                console_parent.close()
        if tty is not None:
            # With a terminal, the pty is stdin and (merged) stdout.
            os.close(pipes["stdout"][0])
            pipes["stdout"] = (os.dup(tty), -1)
        c = Container(container_id, config, container_pid, launcher, pipes["stdin"][1],
                      Stream(pipes["stdout"][0], f"{container_id}-stdout"),
                      Stream(pipes["stderr"][0], f"{container_id}-stderr"),
                      sync, tty, pipes["start"][1],
                      cgroups.cgroup_dir(config.cgroup) if config.cgroup else None,
                      (config.cgroup.resources.cpu_shares or 0) if config.cgroup else 0)
        with self.lock:
            self.containers[container_id] = c
        log.info("%s created, pid %d", container_id, container_pid)
        return c

    def _start_launcher(self, fds: dict[int, int]) -> int:
        """The launcher's pid: forked by the zygote when there is one (~1 s less
        per create and exec under TCG), else fork+exec'd by posix_spawn."""
        if self.zygote is not None:
            try:
                return self.zygote.spawn(fds)
            except ZygoteError as exc:
                log.warning("launcher zygote: %s; using posix_spawn", exc)
        argv = [sys.executable, *LAUNCHER_START, "--config-fd", str(CONFIG_FD)]
        return os.posix_spawn(
            sys.executable, argv, LAUNCHER_ENV,
            file_actions=[(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in fds.items()],
            setsid=True)

    @staticmethod
    def _await_created(sync: int, launcher: Exit, key: str) -> int:
        deadline = time.monotonic() + CREATE_TIMEOUT_S
        pid = 0
        while True:
            msg = _read_sync(sync, deadline)
            if msg is None:
                code = launcher.wait(5)
                raise AgentError(f"the container launcher exited ({code}) before the "
                                 "container was created")
            if "error" in msg:
                raise FailedPrecondition(str(msg["error"]))
            if "warning" in msg:
                log.warning("%s: %s", key, msg["warning"])
            if "pid" in msg:
                pid = int(str(msg["pid"]))
            if "created" in msg:
                return pid or int(str(msg["created"]))

    def start(self, container_id: str, exec_id: str = "") -> None:
        c = self.get(container_id, exec_id)
        with c.lock:
            if c.started or c.start is None:
                raise FailedPrecondition(f"container {container_id} was already started")
            os.write(c.start, b"\0")
            os.close(c.start)
            c.start = None
            c.started = True
            msg = _read_sync(c.sync, time.monotonic() + CREATE_TIMEOUT_S)
            os.close(c.sync)
        if msg is not None and "error" in msg:
            raise FailedPrecondition(str(msg["error"]))

    def wait(self, container_id: str, timeout_s: float | None,
             exec_id: str = "") -> int | None:
        c = self.get(container_id, exec_id)
        code = c.launcher.wait(timeout_s)
        if code is not None and not exec_id:
            with c.lock:
                if not c.flushed:
                    # Before the host hears of the exit: what the container
                    # wrote through shared mmaps of the share reaches the host
                    # now, so its monitor may end the VM without DestroySandbox
                    # (≈ 0.05 s less per run under TCG; kata_py/monitor.py).
                    os.sync()
                    c.flushed = True
        return code

    def signal(self, container_id: str, signum: int, all_processes: bool,
               exec_id: str = "") -> None:
        c = self.get(container_id, exec_id)
        if c.launcher.code is not None:
            raise FailedPrecondition(f"container {container_id} is not running")
        if all_processes and c.cgroup is not None and not exec_id:
            # runc kill --all: every process in the container's cgroup
            for line in (c.cgroup / "cgroup.procs").read_text().split():
                try:
                    os.kill(int(line), signum)
                except ProcessLookupError:
                    pass
            return
        os.kill(c.pid, signum)

    def write_stdin(self, container_id: str, data: bytes, exec_id: str = "") -> int:
        c = self.get(container_id, exec_id)
        if c.tty is not None:
            return os.write(c.tty, data)
        if c.stdin is None:
            raise FailedPrecondition(f"stdin of container {container_id} is closed")
        try:
            return os.write(c.stdin, data)
        except BrokenPipeError as exc:
            raise FailedPrecondition(f"container {container_id} no longer reads stdin") from exc

    def resize_tty(self, container_id: str, rows: int, cols: int, exec_id: str = "") -> None:
        c = self.get(container_id, exec_id)
        if c.tty is None:
            raise FailedPrecondition(f"{process_key(container_id, exec_id)} has no terminal")
        fcntl.ioctl(c.tty, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def close_stdin(self, container_id: str, exec_id: str = "") -> None:
        c = self.get(container_id, exec_id)
        with c.lock:
            if c.stdin is not None:
                os.close(c.stdin)
                c.stdin = None

    def _cgroup(self, container_id: str) -> Path:
        c = self.get(container_id)
        if c.cgroup is None:
            raise FailedPrecondition(f"container {container_id} has no cgroup")
        if c.launcher.code is not None:
            raise FailedPrecondition(f"container {container_id} is not running")
        return c.cgroup

    def update(self, container_id: str, resources_json: bytes) -> None:
        try:
            resources = launch_config.resources_from_json(resources_json)
        except launch_config.LaunchConfigError as exc:
            raise InvalidArgument(str(exc)) from exc
        cgroups.apply(self._cgroup(container_id), resources)
        if resources.cpu_shares:
            self.get(container_id).cpu_shares = resources.cpu_shares

    def stats(self, container_id: str) -> tuple[dict[str, str], int]:
        """The cgroup's interface files and the OCI cpu.shares last applied."""
        files = cgroups.interface_files(self._cgroup(container_id))
        return files, self.get(container_id).cpu_shares

    def pause(self, container_id: str) -> None:
        cgroups.freeze(self._cgroup(container_id))

    def resume(self, container_id: str) -> None:
        cgroups.thaw(self._cgroup(container_id))

    def read_processes(self, container_id: str) -> list[ProcFiles]:
        """The /proc files of the container's processes, as the container's
        own /proc shows them (its pids, its parent pid 0 for init), which is
        what a process in the container's mount namespace reads under runc.
        Without a pid namespace or a /proc of its own: the guest's /proc
        files of the processes in its cgroup."""
        c = self.get(container_id)
        own = Path(f"/proc/{c.pid}/root/proc")
        try:
            separate = os.readlink(f"/proc/{c.pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
        except OSError as exc:
            raise FailedPrecondition(f"container {container_id} has no process: {exc}") from exc
        if separate and (own / "1" / "stat").exists():
            base, pids = own, [n for n in os.listdir(own) if n.isdigit()]
        else:
            base = Path("/proc")
            pids = (self._cgroup(container_id) / "cgroup.procs").read_text().split()
        found = []
        for pid in pids:
            try:
                found.append(ProcFiles(int(pid), (base / pid / "stat").read_bytes(),
                                       (base / pid / "status").read_bytes(),
                                       (base / pid / "cmdline").read_bytes(),
                                       os.readlink(base / pid / "ns" / "pid")))
            except OSError:
                continue    # exited meanwhile
        return found

    def remove(self, container_id: str, exec_id: str = "") -> None:
        c = self.get(container_id, exec_id)
        if not exec_id:
            for key in [k for k in self.containers if k.startswith(container_id + "/")]:
                self.remove(container_id, key.split("/", 1)[1])
        if c.cgroup is not None and c.launcher.code is None and not exec_id:
            try:
                cgroups.thaw(c.cgroup)   # a frozen container must die too
            except OSError:
                pass
        if c.launcher.code is None:
            try:
                os.kill(c.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if c.start is not None:      # never started: EOF makes the launcher exit
                os.close(c.start)
                c.start = None
            if c.launcher.wait(KILL_WAIT_S) is None:
                raise AgentError(f"container {container_id} did not die after SIGKILL")
        self.close_stdin(container_id, exec_id)
        with c.lock:
            if not c.started:
                os.close(c.sync)
                c.started = True
        if c.cgroup is not None and not exec_id:
            try:
                cgroups.remove(c.cgroup)
            except OSError as exc:
                log.warning("cgroup of %s not removed: %s", container_id, exc)
        with self.lock:
            self.containers.pop(process_key(container_id, exec_id), None)
