"""An OCI bundle's config.json, parsed once into frozen, typed objects.

`load_spec(bundle)` reads `<bundle>/config.json`; `parse_spec(data, bundle)`
does the same from decoded JSON. Everything past this module sees `Spec` and
its dataclasses (tuples and read-only mappings), never a raw dict. The
`linux` object lives in spec_linux.py, typed JSON access in spec_reader.py,
`kata-py spec`'s template in spec_default.py.

Follows the OCI runtime-spec (config.md, config-linux.md), versions 1.0.x to
1.2.x. Unknown properties are ignored and logged at debug ("Runtimes MAY log
unknown properties but MUST otherwise ignore them"); invalid values, and
valid ones kata-py cannot honour in a VM, are `ConfigError`s naming the JSON
path ("Runtimes MUST generate an error when invalid or unsupported values are
encountered"). Rejected as unsupported here: the `solaris`, `windows`, `vm`,
`zos` and `freebsd` platform objects, `process.scheduler`,
`process.ioPriority`, `process.execCPUAffinity`, and per-mount
`uidMappings`/`gidMappings` (idmapped mounts); see spec_linux.py for `linux`.
Refused because the guest would fail on them after the VM booted: the id
4294967295 ((uid_t)-1), and process (or hook) args and env that execve(2)
would refuse with E2BIG. Dropped, as runc and crun ignore them:
capability names that are not capabilities (with a warning naming the JSON
path), and ambient capabilities that are not also inheritable and
permitted (logged only, as runc 1.1 says nothing).

It reads files only; it must not create, mount or change anything.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from kata_py.errors import ConfigError
from kata_py.spec_default import default_spec
from kata_py.spec_linux import (
    BlockIo,
    Cpu,
    Device,
    DeviceRule,
    HugepageLimit,
    IdMapping,
    Linux,
    Memory,
    Namespace,
    Network,
    Pids,
    Resources,
    Seccomp,
    SeccompArg,
    Syscall,
    parse_linux,
)
from kata_py.spec_reader import (
    FILE,
    UINT32_MAX,
    UINT64_MAX,
    Node,
    invalid,
    require_absolute,
    require_choice,
    show,
)

__all__ = [
    "BlockIo", "Capabilities", "ConsoleSize", "Cpu", "Device", "DeviceRule", "Hook", "Hooks",
    "HugepageLimit", "IdMapping", "Linux", "Memory", "Mount", "Namespace", "Network", "Pids",
    "Process", "Resources", "Rlimit", "Root", "Seccomp", "SeccompArg", "Spec", "Syscall", "User",
    "check_execve_space", "default_spec", "load_spec", "parse_spec",
]

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = re.compile(r"1\.[0-2]\.\d+([-+].*)?")
CAPABILITIES = frozenset("CAP_" + name for name in (
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP "
    "LINUX_IMMUTABLE NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER "
    "SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE "
    "SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP "
    "MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF "
    "CHECKPOINT_RESTORE").split())
RLIMITS = frozenset("RLIMIT_" + name for name in (
    "AS CORE CPU DATA FSIZE LOCKS MEMLOCK MSGQUEUE NICE NOFILE NPROC RSS RTPRIO RTTIME "
    "SIGPENDING STACK").split())
HOOK_KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart",
              "poststop")
PLATFORMS_UNSUPPORTED = ("solaris", "windows", "vm", "zos", "freebsd")
# (uid_t)-1 is no id: setresuid(2) and setresgid(2) read it as "leave it
# unchanged" (uid 4294967295 would leave the process root), and no user
# namespace maps it.
ID_MAX = UINT32_MAX - 1
ID_HINT = ("use an id from 0 to 4294967294; 4294967295 is (uid_t)-1, which setresuid(2) "
           "takes as \"leave the id unchanged\"")
# execve(2)'s limits (Linux fs/exec.c): the guest's execve would fail with
# E2BIG only after the VM booted, and without naming the field. Counted as the
# kernel counts (bytes with the NUL, plus a pointer each) but without the file
# name, so whatever is refused here the kernel would refuse too.
MAX_ARG_STRLEN = 32 * 4096          # one argument or environment string, NUL included
ARG_MAX = 32 * 4096                 # the space for all of them: never below this,
ARG_SPACE_MAX_BYTES = 6 << 20       # never above 3/4 of _STK_LIM (Linux >= 4.13),
GUEST_STACK_RLIMIT_BYTES = 8 << 20  # else RLIMIT_STACK / 4; the guest's default RLIMIT_STACK


@dataclass(frozen=True)
class ConsoleSize:
    height: int
    width: int


@dataclass(frozen=True)
class User:
    uid: int = 0
    gid: int = 0
    umask: int | None = None
    additional_gids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Capabilities:
    bounding: tuple[str, ...] = ()
    effective: tuple[str, ...] = ()
    inheritable: tuple[str, ...] = ()
    permitted: tuple[str, ...] = ()
    ambient: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rlimit:
    type: str
    hard: int
    soft: int


@dataclass(frozen=True)
class Process:
    args: tuple[str, ...]
    cwd: str
    terminal: bool = False
    console_size: ConsoleSize | None = None
    user: User = User()
    env: tuple[str, ...] = ()
    capabilities: Capabilities | None = None
    rlimits: tuple[Rlimit, ...] = ()
    no_new_privileges: bool = False
    oom_score_adj: int | None = None
    apparmor_profile: str = ""
    selinux_label: str = ""


@dataclass(frozen=True)
class Root:
    path: Path                          # absolute, resolved against the bundle
    readonly: bool = False


@dataclass(frozen=True)
class Mount:
    destination: str
    type: str = ""
    source: str = ""
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Hook:
    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    timeout: int | None = None          # seconds


@dataclass(frozen=True)
class Hooks:
    prestart: tuple[Hook, ...] = ()     # deprecated by the spec, still honoured by runc
    create_runtime: tuple[Hook, ...] = ()
    create_container: tuple[Hook, ...] = ()
    start_container: tuple[Hook, ...] = ()
    poststart: tuple[Hook, ...] = ()
    poststop: tuple[Hook, ...] = ()


def _no_annotations() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Spec:
    oci_version: str
    process: Process
    root: Root
    hostname: str = ""
    domainname: str = ""
    mounts: tuple[Mount, ...] = ()
    hooks: Hooks = Hooks()
    annotations: Mapping[str, str] = field(default_factory=_no_annotations)
    linux: Linux = Linux()


def load_spec(bundle: Path) -> Spec:
    """Read and validate `<bundle>/config.json`."""
    path = bundle / FILE
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise ConfigError(f"{FILE} not found in bundle {bundle}",
                          "pass the bundle directory that holds config.json "
                          "(kata-py spec writes a default one)") from exc
    except OSError as exc:
        raise ConfigError(f"{FILE} in bundle {bundle} cannot be read ({exc.strerror})",
                          "check its permissions") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{FILE} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                          f"{exc.msg})", "fix the syntax") from exc
    return parse_spec(data, bundle)


def parse_process(data: object, spec: Spec, bundle: Path) -> Process:
    """An OCI `process` object on its own (runc exec --process, containerd's
    Exec), checked as config.json's would be."""
    raw = {"ociVersion": spec.oci_version, "root": {"path": str(spec.root.path)},
           "process": data}
    return parse_spec(raw, bundle).process


def parse_spec(data: object, bundle: Path) -> Spec:
    """Validate decoded config.json content; relative root.path is taken from `bundle`."""
    node = Node.of(data, "")
    version = node.string("ociVersion", required=True)
    if not SUPPORTED_VERSIONS.fullmatch(version):
        raise ConfigError(f"{FILE}: ociVersion {version} is not supported by kata-py",
                          "kata-py reads OCI runtime-spec versions 1.0.x to 1.2.x")
    for key in PLATFORMS_UNSUPPORTED:
        node.reject(key, f"remove {key}; kata-py runs Linux containers only")
    process, root = node.child("process"), node.child("root")
    if process is None:
        raise invalid("process", "is missing", "add a process object with args and cwd")
    if root is None:
        raise invalid("root", "is missing", "add root.path pointing at the container rootfs")
    hooks, linux = node.child("hooks"), node.child("linux")
    spec = Spec(
        oci_version=version,
        process=_process(process),
        root=_root(root, bundle),
        hostname=node.string("hostname"),
        domainname=node.string("domainname"),
        mounts=tuple(_mount(n) for n in node.children("mounts")),
        hooks=_hooks(hooks) if hooks else Hooks(),
        annotations=node.string_map("annotations"),
        linux=parse_linux(linux) if linux else Linux(),
    )
    node.finish()
    return spec


def _process(node: Node) -> Process:
    for key in ("scheduler", "ioPriority", "execCPUAffinity"):
        node.reject(key)
    args = node.strings("args")
    if not args:
        raise invalid(node.at("args"), "must not be empty",
                      "set process.args to the command to run, e.g. [\"sh\"]")
    cwd = node.string("cwd", required=True)
    require_absolute(node.at("cwd"), cwd)
    console, user, caps = node.child("consoleSize"), node.child("user"), node.child("capabilities")
    env = node.strings("env")
    rlimits = _rlimits(node)
    check_execve_space(args, env, rlimits, node.at)
    process = Process(
        args=args,
        cwd=cwd,
        terminal=node.boolean("terminal"),
        console_size=_console_size(console) if console else None,
        user=_user(user) if user else User(),
        env=env,
        capabilities=_capabilities(caps) if caps else None,
        rlimits=rlimits,
        no_new_privileges=node.boolean("noNewPrivileges"),
        oom_score_adj=node.integer("oomScoreAdj", minimum=-1000, maximum=1000),
        apparmor_profile=node.string("apparmorProfile"),
        selinux_label=node.string("selinuxLabel"),
    )
    node.finish()
    return process


def _string_bytes(text: str) -> int:
    """What execve(2) copies of `text`: its UTF-8 bytes and the NUL."""
    if text.isascii():
        return len(text) + 1
    return len(text.encode(errors="surrogatepass")) + 1


def check_execve_space(args: tuple[str, ...], env: tuple[str, ...],
                       rlimits: tuple[Rlimit, ...] | None, at: Callable[[str], str],
                       where: str = FILE) -> None:
    """ConfigError when execve(2) would fail with E2BIG: one string over
    MAX_ARG_STRLEN, or, unless `rlimits` is None (a hook on the host, whose
    stack rlimit is not ours to know), all of them with their pointers over
    the space the stack rlimit leaves (fs/exec.c, bprm_stack_limits).
    `at(key)` is the JSON path of process.args/process.env in `where`."""
    total = 0
    for key, strings in (("args", args), ("env", env)):
        for i, text in enumerate(strings):
            size = _string_bytes(text)
            if size > MAX_ARG_STRLEN:
                raise ConfigError(
                    f"{where}: {at(key)}[{i}] is {size - 1} bytes, more than the "
                    f"{MAX_ARG_STRLEN - 1} execve(2) takes in one string",
                    "shorten it; Linux refuses a longer argument or environment string "
                    "(MAX_ARG_STRLEN) with E2BIG")
            total += size + 8                   # the string and its pointer
    if rlimits is None:
        return
    stack = next((r.soft for r in rlimits if r.type == "RLIMIT_STACK"),
                 GUEST_STACK_RLIMIT_BYTES)
    space = max(min(ARG_SPACE_MAX_BYTES, stack // 4), ARG_MAX)
    if total > space:
        raise ConfigError(
            f"{where}: {at('args')} and {at('env')} are {total} bytes together, more than "
            f"the {space} execve(2) takes with RLIMIT_STACK {stack}",
            "shorten them; Linux gives arguments and environment a quarter of "
            "RLIMIT_STACK, at most 6 MiB, and fails execve with E2BIG beyond it")


def _console_size(node: Node) -> ConsoleSize:
    size = ConsoleSize(node.required_integer("height", minimum=0, maximum=UINT32_MAX),
                       node.required_integer("width", minimum=0, maximum=UINT32_MAX))
    node.finish()
    return size


def _user(node: Node) -> User:
    def id_(path: str, value: int) -> int:
        if value > ID_MAX:
            raise invalid(path, f"must be at most {ID_MAX}, not {value}", ID_HINT)
        return value

    uid = id_(node.at("uid"), node.integer("uid", minimum=0) or 0)
    gid = id_(node.at("gid"), node.integer("gid", minimum=0) or 0)
    gids = node.integers("additionalGids", minimum=0)
    user = User(uid=uid, gid=gid, umask=node.integer("umask", minimum=0, maximum=0o777),
                additional_gids=tuple(id_(f"{node.at('additionalGids')}[{i}]", g)
                                      for i, g in enumerate(gids)))
    node.finish()
    return user


def _capabilities(node: Node) -> Capabilities:
    """The five sets without what runc ignores: names that are not
    capabilities (with a warning, as runc and crun give), and ambient
    capabilities the kernel cannot raise because they are not also
    inheritable and permitted (logged only: runc 1.1 says nothing, and
    `runc spec` lists three of them, so every default bundle would warn)."""
    def names(key: str) -> list[tuple[str, str]]:
        known = []
        for i, cap in enumerate(node.strings(key)):
            path = f"{node.at(key)}[{i}]"
            if cap in CAPABILITIES:
                known.append((path, cap))
            else:
                log.warning("%s: %s %s is not a known capability; ignored, as runc does",
                            FILE, path, show(cap))
        return known

    sets = {key: tuple(cap for _, cap in names(key))
            for key in ("bounding", "effective", "inheritable", "permitted")}
    ambient = []
    for path, cap in names("ambient"):
        missing = [key for key in ("inheritable", "permitted") if cap not in sets[key]]
        if missing:
            log.info("%s: %s %s is not in %s, so the kernel cannot raise it; ignored, "
                     "as runc does", FILE, path, show(cap),
                        " and ".join(node.at(key) for key in missing))
        else:
            ambient.append(cap)
    caps = Capabilities(ambient=tuple(ambient), **sets)
    node.finish()
    return caps


def _rlimits(node: Node) -> tuple[Rlimit, ...]:
    seen: set[str] = set()
    out = []
    for item in node.children("rlimits"):
        kind = item.string("type", required=True)
        require_choice(item.at("type"), kind, RLIMITS, "rlimit",
                       "use a name from getrlimit(2), e.g. RLIMIT_NOFILE")
        if kind in seen:
            raise invalid(item.at("type"), f"{kind} is listed twice", "list each rlimit once")
        seen.add(kind)
        hard = item.required_integer("hard", minimum=0, maximum=UINT64_MAX)
        soft = item.required_integer("soft", minimum=0, maximum=UINT64_MAX)
        if soft > hard:
            raise invalid(item.path, f"soft limit {soft} is above the hard limit {hard}")
        item.finish()
        out.append(Rlimit(kind, hard, soft))
    return tuple(out)


def _root(node: Node, bundle: Path) -> Root:
    raw = node.string("path", required=True)
    path = Path(raw) if raw.startswith("/") else bundle / raw
    path = path.resolve()
    if not path.exists():
        raise invalid(node.at("path"), f"{path} does not exist",
                      "unpack the container image there or fix root.path")
    if not path.is_dir():
        raise invalid(node.at("path"), f"{path} is not a directory",
                      "root.path must name the container's root filesystem directory")
    root = Root(path, node.boolean("readonly"))
    node.finish()
    return root


def _mount(node: Node) -> Mount:
    destination = node.string("destination", required=True)
    require_absolute(node.at("destination"), destination)
    hint = "idmapped mounts cannot be shared into the VM; remove the mapping"
    node.reject("uidMappings", hint)
    node.reject("gidMappings", hint)
    mount = Mount(destination, node.string("type"), node.string("source"),
                  node.strings("options"))
    node.finish()
    return mount


def _hooks(node: Node) -> Hooks:
    def hooks(key: str) -> tuple[Hook, ...]:
        out = []
        for item in node.children(key):
            path = item.string("path", required=True)
            require_absolute(item.at("path"), path)
            timeout = item.integer("timeout")
            if timeout is not None and timeout <= 0:
                raise invalid(item.at("timeout"), f"must be greater than zero, not {timeout}")
            args, env = item.strings("args"), item.strings("env")
            check_execve_space(args, env, None, item.at)
            out.append(Hook(path, args, env, timeout))
            item.finish()
        return tuple(out)

    parsed = Hooks(*(hooks(key) for key in HOOK_KINDS))
    node.finish()
    return parsed

