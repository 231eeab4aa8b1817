"""The launch description: what the agent tells the launcher to build.

Owns the contract between the agent (which fills it from its protobuf
request) and `kata_py.agent.launcher` (which builds the container from it):
frozen dataclasses that mirror the parts of the OCI runtime-spec
(config-linux.md, config.md) the guest needs, and their JSON form. Decoding
is strict: unknown fields and wrong types raise `LaunchConfigError` naming the
JSON path (`process.user.uid`), so a mismatched agent/launcher pair fails
loudly instead of building a container that differs from the spec.

It must not touch the system: no syscalls, no files — pure data.

File descriptors (see `Fds`): the launcher inherits stdio as 0/1/2, writes
JSON lines to `sync` (`{"pid": N}` from the outer process when the container
process is forked, `{"warning": "..."}` for what it ignored as runc would,
`{"created": N}` when setup is done, `{"error": "..."}` on failure; EOF
without error after `created` means execve succeeded — the sync fd is
close-on-exec) and blocks on `start` until one byte arrives (runc's exec
fifo); EOF on `start` without a byte means "deleted before start": exit 0
without exec'ing. With `process.terminal` and `fds.console_socket`, the pty is
opened inside the container's devpts and its master sent over that unix socket
(SCM_RIGHTS, like runc's --console-socket) before "created".
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

NAMESPACE_TYPES = ("pid", "mount", "uts", "ipc", "network", "cgroup", "user")


class LaunchConfigError(ValueError):
    """The launch description does not match this schema."""


@dataclass(frozen=True)
class Namespace:
    """OCI linux.namespaces[]: create `type` (path "") or join the one at `path`."""

    type: str
    path: str = ""


@dataclass(frozen=True)
class IdMapping:
    """OCI linux.uidMappings[] / gidMappings[]: `size` ids from `container_id`
    in the container's user namespace are the guest's from `host_id`."""

    container_id: int
    host_id: int
    size: int


@dataclass(frozen=True)
class Mount:
    """OCI mounts[]: options as in mount(8) (`ro`, `nosuid`, `rbind`, `mode=755`...)."""

    destination: str
    type: str = ""
    source: str = ""
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Device:
    """OCI linux.devices[]: a node created with mknod inside the container's /dev."""

    path: str
    type: str  # "c", "b", "u" (= c) or "p"
    major: int = 0
    minor: int = 0
    file_mode: int = 0o666
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Capabilities:
    """OCI process.capabilities: the five sets, as CAP_* names."""

    bounding: tuple[str, ...] = ()
    effective: tuple[str, ...] = ()
    inheritable: tuple[str, ...] = ()
    permitted: tuple[str, ...] = ()
    ambient: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rlimit:
    """OCI process.rlimits[]: type is RLIMIT_NOFILE etc."""

    type: str
    soft: int
    hard: int


@dataclass(frozen=True)
class Process:
    """OCI process: what is exec'd and with which credentials."""

    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()
    umask: int | None = None
    capabilities: Capabilities | None = None  # None: keep the launcher's (all)
    rlimits: tuple[Rlimit, ...] = ()
    no_new_privileges: bool = False
    oom_score_adj: int | None = None
    terminal: bool = False  # stdin is a pty slave: setsid + TIOCSCTTY on it
    console_rows: int = 0   # process.consoleSize: the pty's size from its creation
    console_cols: int = 0


@dataclass(frozen=True)
class Resources:
    """OCI linux.resources, the subset mapped onto cgroup v2 files (see cgroups.py)."""

    memory_limit: int | None = None  # bytes; -1 = max
    memory_reservation: int | None = None  # → memory.low
    memory_swap: int | None = None  # OCI: memory + swap; -1 = max
    cpu_shares: int | None = None  # → cpu.weight
    cpu_quota: int | None = None  # µs per period; -1 = max
    cpu_period: int | None = None  # µs
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    pids_limit: int | None = None  # <= 0 = max
    unified: dict[str, str] = field(default_factory=dict)  # OCI linux.resources.unified


@dataclass(frozen=True)
class Cgroup:
    """The container's cgroup: `path` relative to `root` (the cgroup2 mount)."""

    path: str
    resources: Resources = field(default_factory=Resources)
    root: str = "/sys/fs/cgroup"
    # linux.resources.devices plus runc's default allow list, compiled by the
    # host (kata_py.agent.devices): base64 of the struct bpf_insn array the
    # launcher attaches to this cgroup before joining it; "" = attach none
    # (an exec joins the container's cgroup, whose program already applies).
    device_program: str = ""


@dataclass(frozen=True)
class Fds:
    """Descriptor numbers in the launcher (inherited from the agent)."""

    sync: int
    start: int
    stdin: int = 0
    stdout: int = 1
    stderr: int = 2
    # fds 3 .. 3+preserve-1 stay open in the container (runc's --preserve-fds,
    # which adds nothing to the environment; the host cannot pass fds yet)
    preserve: int = 0
    # With process.terminal: a unix socket over which the launcher sends the pty
    # master it opened in the container's devpts (SCM_RIGHTS, like runc's
    # --console-socket); -1: stdin already is the terminal.
    console_socket: int = -1


@dataclass(frozen=True)
class Hook:
    """One OCI hook (config.md "POSIX-platform Hooks") run by the launcher."""

    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    timeout: int | None = None  # seconds


@dataclass(frozen=True)
class Hooks:
    """The hooks that run in the container's namespaces, i.e. in the guest.

    create_container: after the spec's mounts, before pivot_root; the path
    resolves in the VM's own root (the runtime namespace of a VM runtime).
    start_container: after start, before execve, in the container.
    """

    create_container: tuple[Hook, ...] = ()
    start_container: tuple[Hook, ...] = ()


@dataclass(frozen=True)
class LaunchConfig:
    """Everything the launcher needs to build and start one container."""

    container_id: str
    rootfs: str
    process: Process
    fds: Fds
    readonly_rootfs: bool = False
    no_pivot: bool = False
    rootfs_propagation: str = ""  # "" = rslave, like runc
    hostname: str = ""
    domainname: str = ""
    namespaces: tuple[Namespace, ...] = ()
    # for a new user namespace; the container's uid and gid 0 are mapped
    uid_mappings: tuple[IdMapping, ...] = ()
    gid_mappings: tuple[IdMapping, ...] = ()
    mounts: tuple[Mount, ...] = ()
    masked_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()
    devices: tuple[Device, ...] = ()
    default_devices: bool = True  # null, zero, full, random, urandom, tty (runc)
    sysctl: dict[str, str] = field(default_factory=dict)
    # linux.seccomp, compiled by the host (kata_py.agent.seccomp): base64 of
    # the struct sock_filter array and the seccomp(2) flags; "" = no filter.
    seccomp_program: str = ""
    seccomp_flags: int = 0
    cgroup: Cgroup | None = None
    hooks: Hooks = field(default_factory=Hooks)
    # The OCI state the hooks read on stdin (ociVersion, id, bundle,
    # annotations); the launcher adds status and pid.
    state: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for ns in self.namespaces:
            if ns.type not in NAMESPACE_TYPES:
                raise LaunchConfigError(f"namespaces: unknown namespace type {ns.type!r}")
        if not self.process.args:
            raise LaunchConfigError("process.args: must not be empty")


def to_json(config: LaunchConfig) -> str:
    """The JSON text the agent hands the launcher."""
    return json.dumps(dataclasses.asdict(config), sort_keys=True)


def from_json(text: str | bytes) -> LaunchConfig:
    """Parse and validate a launch description; errors name the JSON path."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise LaunchConfigError(f"launch description is not JSON: {exc}") from exc
    return _decode(LaunchConfig, raw, "")


def to_launcher(config: LaunchConfig) -> bytes:
    """What the agent writes to the launcher's config fd: the description it
    has already decoded and checked, pickled. Agent and launcher are the same
    guest image, and under TCG to_json plus the launcher's from_json cost
    ≈ 0.1 s of every create and exec (pickle: a tenth of that)."""
    return pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL)


def from_launcher(data: bytes) -> LaunchConfig:
    """The launcher's side: the agent's pickle, or JSON (a launcher started by
    hand, or tests)."""
    if data[:1] != b"\x80":                 # every pickle protocol >= 2 starts so
        return from_json(data)
    try:
        config = pickle.loads(data)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad description
        raise LaunchConfigError(f"launch description: bad pickle ({exc})") from exc
    if not isinstance(config, LaunchConfig):
        raise LaunchConfigError(f"launch description: a pickled {type(config).__name__}, "
                                "not a LaunchConfig")
    return config


T = TypeVar("T")


def resources_from_json(text: str | bytes) -> Resources:
    """A Resources object alone (UpdateContainer), decoded as strictly."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise LaunchConfigError(f"resources: not JSON ({exc})") from exc
    return _decode(Resources, raw, "resources")


_FIELDS: dict[Any, tuple[dict[str, Any], frozenset[str]]] = {}


def _fields(cls: Any) -> tuple[dict[str, Any], frozenset[str]]:
    """A dataclass's resolved field types and names, once per class:
    get_type_hints evaluates every annotation and was 2/3 of from_json."""
    known = _FIELDS.get(cls)
    if known is None:
        known = _FIELDS[cls] = (typing.get_type_hints(cls),
                                frozenset(f.name for f in dataclasses.fields(cls)))
    return known


def warm() -> None:
    """Resolve the field types of every description class now. The agent
    calls this before it reports ready, so every VM restored from a
    template starts with them: in the first from_json of a VM they cost
    ≈ 0.1 s of its CreateContainer under TCG."""
    todo: list[Any] = [LaunchConfig, Resources]
    while todo:
        cls = todo.pop()
        if cls in _FIELDS:
            continue
        hints, _ = _fields(cls)
        for hint in hints.values():
            nested = _nested(hint)
            if nested is not None:
                todo.append(nested)


def _nested(hint: Any) -> Any:
    """The dataclass a field's type holds (directly, optional, or as the
    items of a tuple or dict), or None."""
    if dataclasses.is_dataclass(hint):
        return hint
    for arg in typing.get_args(hint):
        found = _nested(arg)
        if found is not None:
            return found
    return None


def _decode(cls: type[T], raw: Any, path: str) -> T:
    if not isinstance(raw, dict):
        raise LaunchConfigError(f"{path or '<root>'}: expected an object")
    hints, names = _fields(cls)
    unknown = sorted(set(raw) - names)
    if unknown:
        raise LaunchConfigError(f"{_join(path, unknown[0])}: unknown field")
    values = {k: _value(hints[k], v, _join(path, k)) for k, v in raw.items()}
    try:
        return cls(**values)
    except TypeError as exc:
        raise LaunchConfigError(f"{path or '<root>'}: {exc}") from exc


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _value(hint: Any, raw: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if raw is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _value(inner[0], raw, path)
    if dataclasses.is_dataclass(hint):
        return _decode(hint, raw, path)  # type: ignore[arg-type]
    if origin is tuple:
        if not isinstance(raw, list):
            raise LaunchConfigError(f"{path}: expected a list")
        return tuple(_value(args[0], item, f"{path}[{i}]") for i, item in enumerate(raw))
    if origin is dict:
        if not isinstance(raw, dict):
            raise LaunchConfigError(f"{path}: expected an object")
        if args[1] is Any:
            return dict(raw)
        return {str(k): _value(args[1], v, f"{path}.{k}") for k, v in raw.items()}
    if hint is Any:
        return raw
    if hint is bool:
        if not isinstance(raw, bool):
            raise LaunchConfigError(f"{path}: expected true or false")
        return raw
    if hint is int:
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise LaunchConfigError(f"{path}: expected an integer")
        return raw
    if hint is str:
        if not isinstance(raw, str):
            raise LaunchConfigError(f"{path}: expected a string")
        return raw
    raise LaunchConfigError(f"internal error: {path}: unsupported type {hint!r}")
