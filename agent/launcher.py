"""The container launcher: a single-threaded process that becomes the container.

    python3 -m kata_py.agent.launcher --config-fd N

The agent is a multi-threaded gRPC server and must never fork() without exec,
so it fork+execs this module, which does what runc's `runc init` does
(libcontainer/nsexec + standard_init_linux.go), in runc's order:

 1. read the launch description (launch_config.py) from fd N;
 2. create the cgroup v2 group, write its limits, attach the device program
    (linux.resources.devices, devices.py), join it (cgroups.py);
 3. rlimits, oom_score_adj; setns() into the namespaces given by path; for a
    new user namespace fork a child that unshares it, write its id maps from
    here and let it go on as the namespace's root (runc's nsexec stage 1);
    unshare() the other new ones; with a new (or joined) pid namespace fork:
    the child is the container's PID 1, the parent reports `{"pid": <child>}`,
    waits, and exits with the child's status (re-raising its fatal signal) so
    the agent can track one process;
 4. in the container process: root propagation,
    rootfs bind, spec mounts, /dev, pivot_root (mounts.py); hostname,
    domainname, sysctl, readonly paths, masked paths, readonly root;
 5. a missing cwd is created (init only); HOME from the container's
    /etc/passwd when the env lacks it; credentials: bounding set,
    setgroups/setgid/setuid with PR_SET_KEEPCAPS, capset, ambient set (what
    the kernel refuses to raise is a warning, as in runc); umask; cwd;
    no_new_privs;
 6. seccomp — last: just before execve when no_new_privileges is set (runc),
    else before capabilities are dropped (installing needs CAP_SYS_ADMIN);
 7. `{"created": <pid>}` on the sync fd, block reading the start fd, execve.

A process description whose mount namespace is *joined* (a path) is an exec
into an existing container: steps that build the rootfs are skipped, as runc's
setns_init does.

Sync fd protocol (JSON lines, close-on-exec): `{"pid": N}` (outer pid, only
when a pid namespace forces a fork), `{"warning": "<what was ignored>"}` (any
number, before "created"), `{"created": N}`, `{"error": "<one line naming
what failed>"}`. EOF after "created" with no error = execve succeeded.
A failed exec reports `{"error": "exec \\"foo\\": No such file or directory"}`
and exits 127. EOF on the start fd without a byte exits 0 without exec'ing.
"""

from __future__ import annotations

import binascii
import errno
import fcntl
import importlib
import json
import os
import resource
import signal
import socket
import stat
import struct
import sys
import termios
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NoReturn

from kata_py.agent import cgroups, devices, linux, mounts
from kata_py.agent.launch_config import (
    Hook,
    IdMapping,
    LaunchConfig,
    LaunchConfigError,
    Process,
    from_launcher,
)

EXIT_SETUP_FAILED = 1
EXIT_EXEC_FAILED = 127
_FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
                      signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT)


class LaunchError(Exception):
    """A step failed; the message is the one line the agent receives."""


@contextmanager
def step(what: str) -> Iterator[None]:
    """Name the failing step in the error: `mount proc on /proc: Permission denied`."""
    try:
        yield
    except LaunchError:
        raise
    except (OSError, ValueError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise LaunchError(f"{what}: {detail}") from exc


class Reporter:
    """Writes the sync-fd JSON lines; a vanished agent (EPIPE) is ignored."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, message: dict[str, Any]) -> None:
        data = (json.dumps(message) + "\n").encode()
        try:
            os.write(self.fd, data)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.EBADF):
                raise

    def error(self, message: str) -> None:
        self.send({"error": " ".join(message.splitlines())})

    def warning(self, message: str) -> None:
        """Something ignored, as runc ignores it with a warning; the agent logs it."""
        self.send({"warning": " ".join(message.splitlines())})


# --- 1. the description -------------------------------------------------------

def read_config(fd: int) -> LaunchConfig:
    """Read the description (the agent's pickle, or JSON) from `fd` until EOF,
    then close it."""
    with os.fdopen(fd, "rb") as f:
        config = from_launcher(f.read())
    check_fds(config)
    return config


def check_fds(config: LaunchConfig) -> None:
    """The sync/start fds must not collide with stdio or preserved fds."""
    low = 3 + config.fds.preserve
    for name, fd in (("sync", config.fds.sync), ("start", config.fds.start)):
        if fd < low:
            raise LaunchConfigError(f"fds.{name}: {fd} collides with stdio/preserved fds")


# --- 2. cgroup ----------------------------------------------------------------

def setup_cgroup(config: LaunchConfig) -> None:
    """Create the container's cgroup, write its limits, attach its device
    program, move this process in: every process of the container (and of
    its execs, which join this cgroup) is filtered from then on. A program
    that cannot be attached fails the create, never a silent skip."""
    if config.cgroup is None:
        return
    with step(f"cgroup {config.cgroup.path}"):
        path = cgroups.create(config.cgroup)
        cgroups.apply(path, config.cgroup.resources)
    if config.cgroup.device_program:
        with step(f"linux.resources.devices: attach the device program to {path}"):
            devices.attach(binascii.a2b_base64(config.cgroup.device_program), path)
    with step(f"cgroup {config.cgroup.path}"):
        cgroups.join(path)


# --- 3. namespaces ------------------------------------------------------------

def join_namespaces(config: LaunchConfig) -> None:
    """setns() into every namespace given by path (all opened first, like nsexec)."""
    opened: list[tuple[str, int]] = []
    try:
        for ns in config.namespaces:
            if ns.path:
                with step(f"open {ns.type} namespace {ns.path}"):
                    opened.append((ns.type, os.open(ns.path, os.O_RDONLY | os.O_CLOEXEC)))
        for ns_type, fd in opened:
            with step(f"setns {ns_type}"):
                linux.setns(fd, linux.NAMESPACE_FLAGS[ns_type])
    finally:
        for _, fd in opened:
            os.close(fd)


def unshare_namespaces(config: LaunchConfig) -> None:
    """unshare() the namespaces to create (CLONE_NEWPID affects the next fork),
    inside the new user namespace when there is one, which then owns them."""
    flags = 0
    for ns in config.namespaces:
        if not ns.path and ns.type != "user":
            flags |= linux.NAMESPACE_FLAGS[ns.type]
    if flags:
        with step("unshare namespaces"):
            linux.unshare(flags)


def new_user_namespace(config: LaunchConfig) -> bool:
    return any(ns.type == "user" and not ns.path for ns in config.namespaces)


def id_map(mappings: tuple[IdMapping, ...]) -> bytes:
    """/proc/PID/uid_map's text: one "inside outside count" line per mapping."""
    return "".join(f"{m.container_id} {m.host_id} {m.size}\n" for m in mappings).encode()


def make_mountpoints(config: LaunchConfig) -> None:
    """For a new user namespace, before entering it: the mount points its
    mounts need that the rootfs lacks, made as the guest's root. The
    namespace's root could not always make them: its writes reach the host
    through virtiofsd as its own uid, held to the rootfs's modes (a 0555 /
    has no room for a /run), where runc's container root passes with
    CAP_DAC_OVERRIDE over files its namespace owns. Mount points below
    another of the spec's mounts are made later, inside that mount."""
    rootfs = os.path.realpath(config.rootfs)
    targets = [m.destination.rstrip("/") + "/" for m in config.mounts]
    for m in config.mounts:
        below = [t for t in targets if m.destination.startswith(t)
                 and t != m.destination.rstrip("/") + "/"]
        if below:
            continue
        with step(f"mount point {m.destination}"):
            mounts.create_mountpoint(mounts.secure_join(rootfs, m.destination), m.source,
                                     mounts.is_bind(m))


def enter_user_namespace(config: LaunchConfig) -> int:
    """runc's nsexec stage 1: fork a child that unshares a user namespace; this
    process, still privileged in the parent namespace, writes the child's
    uid_map and gid_map (a process cannot map ids other than its own into its
    own new namespace); the child then becomes the namespace's root and goes
    on to create the other namespaces, which the user namespace owns.
    Returns the child's pid here and 0 in the child."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(ready_r)
        os.close(go_w)
        with step("unshare the user namespace"):
            linux.unshare(linux.CLONE_NEWUSER)
        os.write(ready_w, b"u")
        os.close(ready_w)
        mapped = os.read(go_r, 1)
        os.close(go_r)
        if mapped != b"m":
            os._exit(EXIT_SETUP_FAILED)      # the parent reports why
        with step("become root in the user namespace"):
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
        return 0
    os.close(ready_w)
    os.close(go_r)
    try:
        if os.read(ready_r, 1) != b"u":      # the child reported its error
            _, status = os.waitpid(child, 0)
            os._exit(os.waitstatus_to_exitcode(status) or EXIT_SETUP_FAILED)
        for name, mappings in (("uid_map", config.uid_mappings),
                               ("gid_map", config.gid_mappings)):
            with step(f"linux.{name[:3]}Mappings: write /proc/{child}/{name}"), \
                    open(f"/proc/{child}/{name}", "wb", buffering=0) as f:
                f.write(id_map(mappings))    # the kernel takes the map in one write
        os.write(go_w, b"m")
    finally:
        os.close(ready_r)
        os.close(go_w)
    return child


def needs_fork(config: LaunchConfig) -> bool:
    """A new or joined pid namespace only applies to children."""
    return any(ns.type == "pid" for ns in config.namespaces)


def joins_mount_namespace(config: LaunchConfig) -> bool:
    """An exec into an existing container (runc setns_init): no rootfs to build."""
    return any(ns.type == "mount" and ns.path for ns in config.namespaces)


def supervise(config: LaunchConfig, reporter: Reporter, child: int,
              pid_pipe: int | None) -> int:
    """Parent side of a fork: report the pid when the child is the container
    (`pid_pipe` given), forward signals, mirror the exit."""
    if pid_pipe is not None:
        reporter.send({"pid": child})  # before the child can run on and send "created"
        os.write(pid_pipe, str(child).encode())
        os.close(pid_pipe)
    for fd in {config.fds.sync, config.fds.start}:
        os.close(fd)
    # The container's stdio is the child's alone: a copy held here would keep
    # its readers from EOF after the container closed its own (runc's parent
    # holds none either).
    null = os.open(os.devnull, os.O_RDWR)
    for fd in {0, 1, 2, config.fds.stdin, config.fds.stdout, config.fds.stderr}:
        os.dup2(null, fd)
    os.close(null)
    for signum in _FORWARDED_SIGNALS:
        signal.signal(signum, lambda s, _f: forward_signal(child, s))
    _, status = os.waitpid(child, 0)
    if os.WIFSIGNALED(status):
        die_by_signal(os.WTERMSIG(status))
    return os.waitstatus_to_exitcode(status)


def forward_signal(child: int, signum: int) -> None:
    """Pass a signal sent to the supervisor on to the container process."""
    try:
        os.kill(child, signum)
    except ProcessLookupError:
        pass  # already exited; waitpid will tell


def die_by_signal(signum: int) -> None:
    """Exit the way the container did, so the agent's waitpid sees the signal."""
    for sig in {*_FORWARDED_SIGNALS, signum} - {signal.SIGKILL, signal.SIGSTOP}:
        signal.signal(sig, signal.SIG_DFL)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file of the launcher
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
    os.kill(os.getpid(), signum)


# --- 4. the container's view --------------------------------------------------

def setup_stdio(config: LaunchConfig) -> None:
    """dup2 the described stdio fds onto 0/1/2; with a terminal, make it controlling."""
    for target, fd in enumerate((config.fds.stdin, config.fds.stdout, config.fds.stderr)):
        if fd != target:
            os.dup2(fd, target)
    try:
        os.setsid()
    except PermissionError:
        pass  # already a session leader (no fork happened)
    if config.process.terminal and config.fds.console_socket < 0:
        with step("set controlling terminal"):
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def setup_console(config: LaunchConfig) -> None:
    """runc's console socket: a pty from the container's devpts; master to the agent."""
    if not config.process.terminal or config.fds.console_socket < 0:
        return
    with step("create console"):
        master, slave = os.openpty()  # /dev/ptmx → pts/ptmx: the container's devpts
        process = config.process
        if process.console_rows and process.console_cols:
            # The caller's size from the start (as runc): a resize from the
            # host arrives later, and a process asking before it saw 0x0.
            fcntl.ioctl(slave, termios.TIOCSWINSZ,
                        struct.pack("HHHH", process.console_rows, process.console_cols, 0, 0))
        sock = socket.socket(fileno=config.fds.console_socket)
        try:
            socket.send_fds(sock, [b"console"], [master])
        finally:
            sock.close()
            os.close(master)
        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        os.close(slave)
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def set_rlimits(process: Process) -> None:
    """process.rlimits via setrlimit(2)."""
    for rlimit in process.rlimits:
        with step(f"setrlimit {rlimit.type}"):
            number = getattr(resource, rlimit.type, None)
            if not rlimit.type.startswith("RLIMIT_") or not isinstance(number, int):
                raise ValueError(f"unknown rlimit type {rlimit.type!r}")
            resource.setrlimit(number, (rlimit.soft, rlimit.hard))


def set_oom_score_adj(process: Process) -> None:
    """process.oomScoreAdj → /proc/self/oom_score_adj."""
    if process.oom_score_adj is None:
        return
    with step("write oom_score_adj"), open("/proc/self/oom_score_adj", "w") as f:
        f.write(str(process.oom_score_adj))


def prepare_rootfs(config: LaunchConfig) -> None:
    """runc prepareRootfs: propagation, rootfs bind, mounts, /dev, pivot."""
    rootfs = os.path.realpath(config.rootfs)
    with step("make / " + (config.rootfs_propagation or "rslave")):
        mounts.set_root_propagation(config.rootfs_propagation)
    with step(f"make the mount holding {rootfs} private"):
        mounts.make_parent_mount_private(rootfs)
    with step(f"bind rootfs {rootfs}"):
        mounts.bind_rootfs(rootfs)
    for m in config.mounts:
        with step(f"mount {m.type or 'bind'} {m.source or ''} on {m.destination}"):
            mounts.mount_one(rootfs, m)
    with step("set up /dev"):
        mounts.setup_dev(rootfs, config.devices, config.default_devices)
    run_hooks(config, "createContainer", config.hooks.create_container, "creating")
    if config.no_pivot:
        with step(f"move root to {rootfs}"):
            mounts.move_root(rootfs)
    else:
        with step(f"pivot_root to {rootfs}"):
            mounts.pivot_root(rootfs)
    if config.rootfs_propagation:
        with step(f"make / {config.rootfs_propagation}"):
            mounts.set_root_propagation(config.rootfs_propagation)
    create_cwd(config.process.cwd)


def create_cwd(cwd: str) -> None:
    """A missing process.cwd is made (mode 0755, less the umask) as the
    container's root, inside the new root and before it turns read-only:
    runc's prepareRootfs does MkdirAll(cwd, 0755) for the init process only;
    an exec into a missing cwd fails (change_cwd)."""
    if not os.path.isdir(cwd):
        with step(f"mkdir cwd {cwd}"):
            os.makedirs(cwd, 0o755, exist_ok=True)


def run_hooks(config: LaunchConfig, kind: str, hooks: tuple[Hook, ...], status: str) -> None:
    """OCI hooks in the container's namespaces: state JSON on stdin, in order,
    each killed after its timeout; a failure is the step's error (as runc)."""
    if not hooks:
        return
    from kata_py.agent import hookexec  # only containers with hooks pay for it

    state = json.dumps({**config.state, "status": status, "pid": os.getpid()}).encode()
    for hook in hooks:
        try:
            hookexec.run_hook(kind, hook.path, hook.args, hook.env, hook.timeout, state)
        except hookexec.HookFailed as exc:
            raise LaunchError(exc.message) from exc


def set_names(config: LaunchConfig) -> None:
    """hostname and domainname in the container's UTS namespace."""
    if config.hostname:
        with step("sethostname"):
            linux.sethostname(config.hostname)
    if config.domainname:
        with step("setdomainname"):
            linux.setdomainname(config.domainname)


def write_sysctls(config: LaunchConfig) -> None:
    """linux.sysctl: net.ipv4.ip_forward → /proc/sys/net/ipv4/ip_forward (runc)."""
    for key, value in config.sysctl.items():
        path = "/proc/sys/" + key.replace(".", "/")
        with step(f"sysctl {key}"), open(path, "w") as f:
            f.write(value)


def finish_rootfs(config: LaunchConfig) -> None:
    """After the pivot: readonly paths, masked paths, then root read-only."""
    for path in config.readonly_paths:
        with step(f"readonly path {path}"):
            mounts.readonly_path(path)
    for path in config.masked_paths:
        with step(f"mask path {path}"):
            mounts.mask_path(path)
    if config.readonly_rootfs:
        with step("remount / read-only"):
            mounts.readonly_root()


# --- 5./6. credentials and seccomp ---------------------------------------------

def cwd_step(cwd: str) -> str:
    """runc's words for a failed chdir."""
    return f'chdir to cwd ("{cwd}") set in config.json'


def change_cwd(cwd: str) -> bool:
    """chdir; False when it must be retried as the container user (runc
    retries after setuid on EPERM/EACCES only; any other error fails)."""
    try:
        os.chdir(cwd)
        return True
    except PermissionError:
        return False
    except OSError as exc:
        raise LaunchError(f"{cwd_step(cwd)}: {exc.strerror or exc}") from exc


def capability_mask(names: tuple[str, ...]) -> int:
    """CAP_* names → mask, without the names this launcher or kernel does not
    know (runc ignores those; the host has already warned about the names)."""
    known = tuple(name for name in names if name in linux.CAPABILITY_NUMBERS)
    return linux.capability_mask(known) & linux.kernel_capabilities()


def passwd_home(uid: int, path: str = "/etc/passwd") -> str | None:
    """The home directory of the first entry for `uid` in the container's
    passwd file (name:password:uid:gid:gecos:home:shell), or None: no file,
    or no such uid (runc's user.GetExecUserPath)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    for raw in data.splitlines():
        fields = raw.strip().decode(errors="surrogateescape").split(":")
        if len(fields) >= 6 and fields[2].strip().isdigit() and int(fields[2]) == uid:
            return fields[5]
    return None


def process_env(process: Process) -> dict[str, str]:
    """process.env as execve gets it (the last of duplicate keys wins), with
    HOME from the container's /etc/passwd for the process's uid when it is
    unset or empty, "/" when the uid has no entry — runc's setupUser. Read
    in the container's root, before the user is dropped."""
    env = {key: value for key, _, value in (e.partition("=") for e in process.env)}
    if not env.get("HOME"):
        env["HOME"] = passwd_home(process.uid) or "/"
    return env


def drop_credentials(process: Process, reporter: Reporter) -> None:
    """runc finalizeNamespace: bounding set, user, capabilities, ambient.
    Ambient capabilities the kernel refuses to raise (not both permitted and
    inheritable) are left out with a warning, as runc does."""
    caps = process.capabilities
    if caps is not None:
        with step("drop bounding capabilities"):
            linux.drop_bounding_except(capability_mask(caps.bounding))
    with step(f"set user {process.uid}:{process.gid}"):
        if caps is not None and process.uid != 0:
            linux.set_keepcaps(True)
        os.setgroups(list(process.additional_gids))
        os.setgid(process.gid)
        os.setuid(process.uid)
        if caps is not None and process.uid != 0:
            linux.set_keepcaps(False)
    if caps is not None:
        with step("set capabilities"):
            linux.capset(capability_mask(caps.effective), capability_mask(caps.permitted),
                         capability_mask(caps.inheritable))
        with step("set ambient capabilities"):
            refused = linux.set_ambient(capability_mask(caps.ambient))
        for name in linux.capability_names(refused):
            reporter.warning(f"can't raise ambient capability {name}: Operation not permitted")


def seccomp_module() -> ModuleType | None:
    """kata_py.agent.seccomp when it is installed (it is optional for the launcher)."""
    try:
        return importlib.import_module("kata_py.agent.seccomp")
    except ImportError:
        return None


def preload() -> None:
    """Import what a typical container needs later (the zygote calls this once,
    so its launchers find the modules loaded; agent/zygote.py)."""
    seccomp_module()


@dataclass(frozen=True)
class SeccompFilter:
    """A filter ready to install: its installer is loaded before pivot_root
    (after it, kata_py.agent.seccomp could no longer be imported)."""

    install: Callable[[bytes, int], None]
    program: bytes
    flags: int


def seccomp_filter(config: LaunchConfig) -> SeccompFilter | None:
    """The host's compiled linux.seccomp, with seccomp.py's installer (loaded
    before pivot_root, see SeccompFilter)."""
    if not config.seccomp_program:
        return None
    with step("seccomp"):
        module = seccomp_module()
        if module is None:
            raise LaunchError("seccomp: a filter was given but kata_py.agent.seccomp "
                              "is not available")
        return SeccompFilter(module.install, binascii.a2b_base64(config.seccomp_program),
                             config.seccomp_flags)


def install_seccomp(seccomp: SeccompFilter | None) -> None:
    """seccomp(SECCOMP_SET_MODE_FILTER) on this (only) thread."""
    if seccomp is not None:
        with step("install seccomp filter"):
            seccomp.install(seccomp.program, seccomp.flags)


# --- 7. start and exec --------------------------------------------------------

def lookup_executable(process: Process) -> str:
    """args[0] as runc resolves it before `create` returns: searched in the
    *spec's* PATH when it has no slash, and it must be an executable file.
    LaunchError in Go's exec.LookPath words, which engines match (podman
    exits 127 for "not found"/"no such file", 126 for "permission denied")."""
    name = process.args[0]
    if "/" in name:
        try:
            st = os.stat(name)
        except OSError as exc:
            raise LaunchError(f'exec: "{name}": stat {name}: '
                              f"{(exc.strerror or str(exc)).lower()}") from exc
        if stat.S_ISDIR(st.st_mode) or not os.access(name, os.X_OK):
            raise LaunchError(f'exec: "{name}": permission denied')
        return name
    env_path = next((e[5:] for e in process.env if e.startswith("PATH=")), "")
    for directory in env_path.split(":") if env_path else ():
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise LaunchError(f'exec: "{name}": executable file not found in $PATH')


def wait_for_start(fd: int) -> bool:
    """Block until the agent writes a byte (True) or closes the fd (False)."""
    while True:
        try:
            data = os.read(fd, 1)
        except InterruptedError:
            continue
        os.close(fd)
        return bool(data)


def close_extra_fds(config: LaunchConfig) -> None:
    """Everything but stdio, preserved fds (and the close-on-exec sync fd) is closed."""
    keep = set(range(3 + config.fds.preserve))
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 4096))
    for fd in fds:
        if fd not in keep and fd != config.fds.sync:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass
    for fd in range(3, 3 + config.fds.preserve):
        os.set_inheritable(fd, True)


def restore_signals() -> None:
    """Every ignored signal back to its default: an ignored signal survives
    execve, and Python ignores SIGPIPE and SIGXFSZ (subprocess's
    restore_signals does the same). runc's containers start with none ignored."""
    for signum in signal.valid_signals():
        try:
            if signal.getsignal(signum) == signal.SIG_IGN:
                signal.signal(signum, signal.SIG_DFL)
        except (OSError, ValueError):
            pass    # SIGKILL/SIGSTOP, or a real-time signal Python does not track


def exec_process(config: LaunchConfig, reporter: Reporter, seccomp: SeccompFilter | None,
                 path: str, env: dict[str, str]) -> NoReturn:
    """(seccomp,) execve the resolved path; on failure report and exit 127."""
    process = config.process
    restore_signals()   # before seccomp, which may deny rt_sigaction
    if process.no_new_privileges:
        try:
            install_seccomp(seccomp)
        except LaunchError as exc:
            reporter.error(str(exc))
            os._exit(EXIT_SETUP_FAILED)
    try:
        os.execve(path, list(process.args), env)
    except OSError as exc:
        reporter.error(f'exec "{process.args[0]}": {exc.strerror}')
    os._exit(EXIT_EXEC_FAILED)


def outer_pid(pid_pipe: int | None) -> int:
    """This process's pid as the agent sees it (the parent writes it after fork)."""
    if pid_pipe is None:
        return os.getpid()
    with os.fdopen(pid_pipe, "rb") as f:
        return int(f.read())


def build_container(config: LaunchConfig, reporter: Reporter, pid_pipe: int | None,
                    seccomp: SeccompFilter | None) -> NoReturn:
    """Steps 4–7 in the process that becomes the container."""
    process = config.process
    pid = outer_pid(pid_pipe)
    setup_stdio(config)
    if not joins_mount_namespace(config):
        prepare_rootfs(config)
        setup_console(config)
        set_names(config)
        write_sysctls(config)
        finish_rootfs(config)
    else:
        setup_console(config)  # exec -t: a pty from the joined container's devpts
    if process.umask is not None:
        os.umask(process.umask)
    cwd_done = change_cwd(process.cwd)
    env = process_env(process)  # the container's /etc/passwd, read as its root
    close_extra_fds(config)  # while /proc/self/fd is still readable (before setuid)
    if not process.no_new_privileges:
        install_seccomp(seccomp)
    drop_credentials(process, reporter)
    if not cwd_done:
        with step(cwd_step(process.cwd)):
            os.chdir(process.cwd)
    if process.no_new_privileges:
        with step("set no_new_privs"):
            linux.set_no_new_privs()
    try:
        path = lookup_executable(process)
    except LaunchError as exc:
        reporter.error(str(exc))
        os._exit(EXIT_EXEC_FAILED)
    reporter.send({"created": pid})
    if not wait_for_start(config.fds.start):
        os._exit(0)
    try:
        run_hooks(config, "startContainer", config.hooks.start_container, "created")
    except LaunchError as exc:
        reporter.error(str(exc))
        os._exit(EXIT_SETUP_FAILED)
    exec_process(config, reporter, seccomp, path, env)


def run(config: LaunchConfig, reporter: Reporter) -> int:
    """Steps 2–3 here; the container process never returns."""
    os.set_inheritable(config.fds.sync, False)
    os.set_inheritable(config.fds.start, False)
    if config.fds.console_socket >= 0:
        os.set_inheritable(config.fds.console_socket, False)
    seccomp = seccomp_filter(config)
    # Before any user namespace: raising a hard limit or lowering
    # oom_score_adj takes privilege in the guest's own namespace.
    set_rlimits(config.process)
    set_oom_score_adj(config.process)
    setup_cgroup(config)
    join_namespaces(config)
    if new_user_namespace(config):
        make_mountpoints(config)
        child = enter_user_namespace(config)
        if child:                 # the child reports the container's pid
            return supervise(config, reporter, child, None)
    unshare_namespaces(config)
    if not needs_fork(config):
        build_container(config, reporter, None, seccomp)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(write_end)
        try:
            build_container(config, reporter, read_end, seccomp)
        except LaunchError as exc:
            reporter.error(str(exc))
        except BaseException as exc:  # noqa: BLE001 - must never return into the parent's code
            reporter.error(f"internal error: {type(exc).__name__}: {exc}")
        os._exit(EXIT_SETUP_FAILED)
    os.close(read_end)
    return supervise(config, reporter, child, write_end)


def main(argv: list[str] | None = None) -> int:
    """`--config-fd N`, parsed by hand: argparse costs ~0.1 s to import under TCG."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "--config-fd" or not args[1].isdigit():
        print("usage: python3 -m kata_py.agent.launcher --config-fd N", file=sys.stderr)
        return 2
    try:
        config = read_config(int(args[1]))
    except (OSError, LaunchConfigError) as exc:
        print(f"kata-py launcher: launch description: {exc}", file=sys.stderr)
        return 2
    reporter = Reporter(config.fds.sync)
    try:
        return run(config, reporter)
    except LaunchError as exc:
        reporter.error(str(exc))
    except Exception as exc:
        reporter.error(f"internal error: {type(exc).__name__}: {exc}")
    return EXIT_SETUP_FAILED


if __name__ == "__main__":
    sys.exit(main())
