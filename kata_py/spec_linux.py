"""The `linux` object of config.json (OCI runtime-spec config-linux.md).

Owns the frozen dataclasses for namespaces, id mappings, devices, cgroup
resources and seccomp, and their parsing with `Node`. It validates what the
spec enumerates (namespace types, device types, seccomp actions, operators,
architectures and flags) and rejects what a VM runtime cannot honour:

- `linux.intelRdt`, `linux.memoryPolicy`, `linux.netDevices`,
  `linux.timeOffsets`, `linux.personality` with a domain other than LINUX;
- `linux.resources.rdma` and `linux.resources.unified` (not modelled);
- the `SCMP_ACT_NOTIFY` seccomp action: there is no host-side listener for a
  process running inside the guest. `listenerPath` is parsed; the spec says
  it is ignored when NOTIFY is not used, and NOTIFY never is.

Host-cgroup-only knobs with no meaning inside the guest (memory.kernelTCP,
memory.useHierarchy, memory.checkBeforeUpdate, cpu.burst, cpu.idle) are
accepted and ignored, logged at debug. It must not touch the host.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from kata_py.spec_reader import (
    INT64_MAX,
    INT64_MIN,
    UINT32_MAX,
    UINT64_MAX,
    Node,
    invalid,
    require_absolute,
    require_choice,
    show,
    unsupported,
)

# Sysctls of the IPC namespace, besides fs.mqueue.* (runc's list).
IPC_SYSCTLS = frozenset({"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem",
                         "kernel.shmall", "kernel.shmmax", "kernel.shmmni",
                         "kernel.shm_rmid_forced"})
# The x86-64 guest's huge page sizes, as cgroup v2 names them (hugetlb.<size>.max).
GUEST_HUGEPAGE_SIZES = ("2MB", "1GB")
NAMESPACE_TYPES = frozenset({"pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time"})
# The smallest memory limit kata-py accepts (0, as in runc, and -1 mean none).
# The container's cgroup first holds the guest's launcher, a fork of the
# agent's Python zygote (≈ 11 MiB of heap; one gc pass and the launch steps
# copy ≈ 4 MiB of it, measured on the host), then the container's process;
# with much less the OOM killer ends the launcher before execve ("the
# container launcher exited (137)"). Docker and podman refuse < 6 MiB.
MEMORY_LIMIT_MIN_BYTES = 16 << 20
MEMORY_LIMIT_HINT = ("kata-py builds each container with a Python launcher inside its memory "
                     "cgroup; give it 16m or more, or -1 for no limit")
DEVICE_TYPES = frozenset({"c", "b", "u", "p"})
DEVICE_RULE_TYPES = frozenset({"a", "c", "b"})
ROOTFS_PROPAGATIONS = frozenset({"shared", "slave", "private", "unbindable",
                                 "rshared", "rslave", "rprivate", "runbindable"})
SECCOMP_ACTIONS = frozenset({
    "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY",
})
SECCOMP_OPERATORS = frozenset({
    "SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
})
SECCOMP_ARCHITECTURES = frozenset({
    "SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64",
    "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32", "SCMP_ARCH_MIPSEL",
    "SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL64N32", "SCMP_ARCH_PPC", "SCMP_ARCH_PPC64",
    "SCMP_ARCH_PPC64LE", "SCMP_ARCH_S390", "SCMP_ARCH_S390X", "SCMP_ARCH_PARISC",
    "SCMP_ARCH_PARISC64", "SCMP_ARCH_RISCV64", "SCMP_ARCH_LOONGARCH64", "SCMP_ARCH_M68K",
    "SCMP_ARCH_SH", "SCMP_ARCH_SHEB",
})
SECCOMP_FLAGS = frozenset({
    "SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
})
NOTIFY_HINT = ("kata-py cannot forward seccomp notifications out of the VM; "
               "use another action in the seccomp profile")


@dataclass(frozen=True)
class Namespace:
    type: str
    path: str = ""                      # join this namespace instead of creating one


@dataclass(frozen=True)
class IdMapping:
    container_id: int
    host_id: int
    size: int


@dataclass(frozen=True)
class Device:
    path: str
    type: str                           # c, b, u or p
    major: int | None = None
    minor: int | None = None
    file_mode: int | None = None
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True)
class DeviceRule:
    """One entry of the devices cgroup allow/deny list."""
    allow: bool
    type: str = "a"
    major: int | None = None            # None: all
    minor: int | None = None
    access: str = "rwm"


@dataclass(frozen=True)
class Memory:
    limit: int | None = None            # bytes; -1 unlimited
    reservation: int | None = None
    swap: int | None = None
    kernel: int | None = None
    swappiness: int | None = None
    disable_oom_killer: bool | None = None


@dataclass(frozen=True)
class Cpu:
    shares: int | None = None
    quota: int | None = None            # microseconds per period; -1 unlimited
    period: int | None = None
    realtime_runtime: int | None = None
    realtime_period: int | None = None
    cpus: str = ""
    mems: str = ""


@dataclass(frozen=True)
class Pids:
    limit: int | None = None


@dataclass(frozen=True)
class WeightDevice:
    major: int
    minor: int
    weight: int | None = None
    leaf_weight: int | None = None


@dataclass(frozen=True)
class ThrottleDevice:
    major: int
    minor: int
    rate: int


@dataclass(frozen=True)
class BlockIo:
    weight: int | None = None
    leaf_weight: int | None = None
    weight_device: tuple[WeightDevice, ...] = ()
    throttle_read_bps_device: tuple[ThrottleDevice, ...] = ()
    throttle_write_bps_device: tuple[ThrottleDevice, ...] = ()
    throttle_read_iops_device: tuple[ThrottleDevice, ...] = ()
    throttle_write_iops_device: tuple[ThrottleDevice, ...] = ()


@dataclass(frozen=True)
class HugepageLimit:
    page_size: str
    limit: int


@dataclass(frozen=True)
class InterfacePriority:
    name: str
    priority: int


@dataclass(frozen=True)
class Network:
    class_id: int | None = None
    priorities: tuple[InterfacePriority, ...] = ()


@dataclass(frozen=True)
class Resources:
    memory: Memory | None = None
    cpu: Cpu | None = None
    pids: Pids | None = None
    block_io: BlockIo | None = None
    hugepage_limits: tuple[HugepageLimit, ...] = ()
    network: Network | None = None
    devices: tuple[DeviceRule, ...] = ()


@dataclass(frozen=True)
class SeccompArg:
    index: int
    value: int
    op: str
    value_two: int = 0


@dataclass(frozen=True)
class Syscall:
    names: tuple[str, ...]
    action: str
    errno_ret: int | None = None
    args: tuple[SeccompArg, ...] = ()


@dataclass(frozen=True)
class Seccomp:
    default_action: str
    default_errno_ret: int | None = None
    architectures: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    listener_path: str = ""
    syscalls: tuple[Syscall, ...] = ()


def _empty_map() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Linux:
    namespaces: tuple[Namespace, ...] = ()
    uid_mappings: tuple[IdMapping, ...] = ()
    gid_mappings: tuple[IdMapping, ...] = ()
    devices: tuple[Device, ...] = ()
    cgroups_path: str = ""
    resources: Resources | None = None
    sysctl: Mapping[str, str] = field(default_factory=_empty_map)
    seccomp: Seccomp | None = None
    rootfs_propagation: str = ""
    masked_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()
    mount_label: str = ""


def parse_linux(node: Node) -> Linux:
    for key in ("intelRdt", "memoryPolicy", "netDevices", "timeOffsets"):
        node.reject(key)
    _check_personality(node.child("personality"))
    propagation = node.string("rootfsPropagation")
    if propagation:
        require_choice(node.at("rootfsPropagation"), propagation, ROOTFS_PROPAGATIONS,
                       "mount propagation")
    resources = node.child("resources")
    seccomp = node.child("seccomp")
    linux = Linux(
        namespaces=_namespaces(node),
        uid_mappings=tuple(_id_mapping(n) for n in node.children("uidMappings")),
        gid_mappings=tuple(_id_mapping(n) for n in node.children("gidMappings")),
        devices=tuple(_device(n) for n in node.children("devices")),
        cgroups_path=node.string("cgroupsPath"),
        resources=_resources(resources) if resources else None,
        sysctl=node.string_map("sysctl"),
        seccomp=_seccomp(seccomp) if seccomp else None,
        rootfs_propagation=propagation,
        masked_paths=_absolute_paths(node, "maskedPaths"),
        readonly_paths=_absolute_paths(node, "readonlyPaths"),
        mount_label=node.string("mountLabel"),
    )
    _check_sysctls(node.at("sysctl"), linux)
    node.finish()
    return linux


def _check_sysctls(path: str, linux: Linux) -> None:
    """runc's rule (libcontainer/configs/validate): a sysctl is set only in a
    namespace the container owns, never the host's — here, the VM's, which
    other containers of a pod share. net.* with a network namespace given by
    path is the VM's copy of the engine's namespace, the container's own."""
    owned = {ns.type for ns in linux.namespaces}
    own_net = any(ns.type == "network" for ns in linux.namespaces)
    for key in linux.sysctl:
        where = f"{path}[{show(key)}]"
        if key in IPC_SYSCTLS or key.startswith("fs.mqueue."):
            if "ipc" not in owned:
                raise invalid(where, "sets an IPC sysctl but the container has no IPC "
                              "namespace of its own", "add an ipc namespace or drop it")
        elif key.startswith("net."):
            if not own_net:
                raise invalid(where, "sets a network sysctl but the container has no network "
                              "namespace of its own", "add a network namespace or drop it")
        elif key == "kernel.domainname" and "uts" in owned:
            continue
        elif key == "kernel.hostname" and "uts" in owned:
            raise invalid(where, "conflicts with the hostname field", "set hostname instead")
        else:
            raise invalid(where, "is not in a kernel namespace of the container's own",
                          "drop it: it would change the whole VM's kernel")


def _check_personality(node: Node | None) -> None:
    if node is None:
        return
    domain = node.string("domain", required=True)
    if domain != "LINUX":
        raise unsupported(f"{node.at('domain')} {domain}",
                          "only the LINUX execution domain is supported; remove "
                          "linux.personality or set its domain to LINUX")
    node.strings("flags")
    node.finish()


def _absolute_paths(node: Node, key: str) -> tuple[str, ...]:
    paths = node.strings(key)
    for i, path in enumerate(paths):
        require_absolute(f"{node.at(key)}[{i}]", path)
    return paths


def _namespaces(node: Node) -> tuple[Namespace, ...]:
    seen: set[str] = set()
    out: list[Namespace] = []
    for item in node.children("namespaces"):
        kind = item.string("type", required=True)
        require_choice(item.at("type"), kind, NAMESPACE_TYPES, "namespace type")
        if kind in seen:
            raise invalid(item.at("type"), f"{show(kind)} is listed twice",
                          "list each namespace type once")
        seen.add(kind)
        path = item.string("path")
        if path:
            require_absolute(item.at("path"), path)
        item.finish()
        out.append(Namespace(kind, path))
    return tuple(out)


def _id_mapping(node: Node) -> IdMapping:
    mapping = IdMapping(
        container_id=node.required_integer("containerID", minimum=0, maximum=UINT32_MAX),
        host_id=node.required_integer("hostID", minimum=0, maximum=UINT32_MAX),
        size=node.required_integer("size", minimum=1, maximum=UINT32_MAX),
    )
    node.finish()
    return mapping


def _device(node: Node) -> Device:
    path = node.string("path", required=True)
    require_absolute(node.at("path"), path)
    kind = node.string("type", required=True)
    require_choice(node.at("type"), kind, DEVICE_TYPES, "device type")
    major = node.integer("major", minimum=0)
    minor = node.integer("minor", minimum=0)
    if kind != "p" and (major is None or minor is None):
        raise invalid(node.path, "needs major and minor numbers for a non-fifo device")
    device = Device(path, kind, major, minor,
                    file_mode=node.integer("fileMode", minimum=0, maximum=0o7777),
                    uid=node.integer("uid", minimum=0, maximum=UINT32_MAX),
                    gid=node.integer("gid", minimum=0, maximum=UINT32_MAX))
    node.finish()
    return device


def _device_rule(node: Node) -> DeviceRule:
    allow = node.raw("allow", bool)
    if allow is None:
        raise invalid(node.at("allow"), "is missing")
    kind = node.string("type", "a")
    require_choice(node.at("type"), kind, DEVICE_RULE_TYPES, "device rule type")
    access = node.string("access", "rwm")
    if not access or set(access) - set("rwm"):
        raise invalid(node.at("access"), f"must be letters from \"rwm\", not {show(access)}")
    rule = DeviceRule(bool(allow), kind, node.integer("major"), node.integer("minor"), access)
    node.finish()
    return rule


def _resources(node: Node) -> Resources:
    node.reject("rdma")
    node.reject("unified", "remove linux.resources.unified; kata-py applies only the "
                "typed cgroup resources inside the VM")
    memory, cpu, pids = node.child("memory"), node.child("cpu"), node.child("pids")
    block_io, network = node.child("blockIO"), node.child("network")
    resources = Resources(
        memory=_memory(memory) if memory else None,
        cpu=_cpu(cpu) if cpu else None,
        pids=_pids(pids) if pids else None,
        block_io=_block_io(block_io) if block_io else None,
        hugepage_limits=tuple(_hugepage_limit(n) for n in node.children("hugepageLimits")),
        network=_network(network) if network else None,
        devices=tuple(_device_rule(n) for n in node.children("devices")),
    )
    node.finish()
    return resources


def _memory(node: Node) -> Memory:
    def bytes_(key: str) -> int | None:
        return node.integer(key, minimum=-1, maximum=INT64_MAX)

    limit = bytes_("limit")
    if limit is not None and memory_limit_problem(limit):
        raise invalid(node.at("limit"), memory_limit_problem(limit), MEMORY_LIMIT_HINT)
    memory = Memory(limit=limit, reservation=bytes_("reservation"),
                    swap=bytes_("swap"), kernel=bytes_("kernel"),
                    swappiness=node.integer("swappiness", minimum=0, maximum=100),
                    disable_oom_killer=node.optional_boolean("disableOOMKiller"))
    node.ignore("kernelTCP", "useHierarchy", "checkBeforeUpdate")
    node.finish()
    return memory


def memory_limit_problem(limit: int) -> str:
    """What is wrong with `limit` (bytes) as a container's memory limit; "" if nothing."""
    if 0 < limit < MEMORY_LIMIT_MIN_BYTES:
        return f"must be at least {MEMORY_LIMIT_MIN_BYTES} (16 MiB), not {limit}"
    return ""


def _cpu(node: Node) -> Cpu:
    cpu = Cpu(shares=node.integer("shares", minimum=0, maximum=UINT64_MAX),
              quota=node.integer("quota", minimum=-1, maximum=INT64_MAX),
              period=node.integer("period", minimum=0, maximum=UINT64_MAX),
              realtime_runtime=node.integer("realtimeRuntime", minimum=INT64_MIN,
                                            maximum=INT64_MAX),
              realtime_period=node.integer("realtimePeriod", minimum=0, maximum=UINT64_MAX),
              cpus=node.string("cpus"), mems=node.string("mems"))
    node.ignore("burst", "idle")
    node.finish()
    return cpu


def _pids(node: Node) -> Pids:
    pids = Pids(limit=node.integer("limit", minimum=-1, maximum=INT64_MAX))
    node.finish()
    return pids


def _block_io(node: Node) -> BlockIo:
    def weight(n: Node, key: str) -> int | None:
        return n.integer(key, minimum=0, maximum=1000)

    def weight_device(n: Node) -> WeightDevice:
        out = WeightDevice(n.required_integer("major"), n.required_integer("minor"),
                           weight(n, "weight"), weight(n, "leafWeight"))
        n.finish()
        return out

    def throttle(key: str) -> tuple[ThrottleDevice, ...]:
        out = []
        for n in node.children(key):
            out.append(ThrottleDevice(n.required_integer("major"), n.required_integer("minor"),
                                      n.required_integer("rate", minimum=0,
                                                         maximum=UINT64_MAX)))
            n.finish()
        return tuple(out)

    block_io = BlockIo(
        weight=weight(node, "weight"), leaf_weight=weight(node, "leafWeight"),
        weight_device=tuple(weight_device(n) for n in node.children("weightDevice")),
        throttle_read_bps_device=throttle("throttleReadBpsDevice"),
        throttle_write_bps_device=throttle("throttleWriteBpsDevice"),
        throttle_read_iops_device=throttle("throttleReadIOPSDevice"),
        throttle_write_iops_device=throttle("throttleWriteIOPSDevice"),
    )
    node.finish()
    return block_io


def _hugepage_limit(node: Node) -> HugepageLimit:
    limit = HugepageLimit(node.string("pageSize", required=True),
                          node.required_integer("limit", minimum=0, maximum=UINT64_MAX))
    if limit.page_size not in GUEST_HUGEPAGE_SIZES:
        raise invalid(node.at("pageSize"), f"{show(limit.page_size)}: the guest kernel has no "
                      "huge pages of that size",
                      f"use one of {', '.join(GUEST_HUGEPAGE_SIZES)}")
    node.finish()
    return limit


def _network(node: Node) -> Network:
    priorities = []
    for n in node.children("priorities"):
        priorities.append(InterfacePriority(
            n.string("name", required=True),
            n.required_integer("priority", minimum=0, maximum=UINT32_MAX)))
        n.finish()
    network = Network(node.integer("classID", minimum=0, maximum=UINT32_MAX), tuple(priorities))
    node.finish()
    return network


def _seccomp_action(node: Node, key: str) -> str:
    action = node.string(key, required=True)
    require_choice(node.at(key), action, SECCOMP_ACTIONS, "seccomp action")
    if action == "SCMP_ACT_NOTIFY":
        raise unsupported(f"{node.at(key)} SCMP_ACT_NOTIFY", NOTIFY_HINT)
    return action


def _seccomp(node: Node) -> Seccomp:
    default_action = _seccomp_action(node, "defaultAction")
    architectures = node.strings("architectures")
    for i, arch in enumerate(architectures):
        require_choice(f"{node.at('architectures')}[{i}]", arch, SECCOMP_ARCHITECTURES,
                       "seccomp architecture", "use SCMP_ARCH_* names from seccomp_arch_add(3)")
    flags = node.strings("flags")
    for i, flag in enumerate(flags):
        require_choice(f"{node.at('flags')}[{i}]", flag, SECCOMP_FLAGS, "seccomp flag")
    node.ignore("listenerMetadata")
    seccomp = Seccomp(
        default_action=default_action,
        default_errno_ret=node.integer("defaultErrnoRet", minimum=0, maximum=UINT32_MAX),
        architectures=architectures,
        flags=flags,
        listener_path=node.string("listenerPath"),
        syscalls=tuple(_syscall(n) for n in node.children("syscalls")),
    )
    node.finish()
    return seccomp


def _syscall(node: Node) -> Syscall:
    names = node.strings("names")
    if not names:
        raise invalid(node.at("names"), "must not be empty")
    action = _seccomp_action(node, "action")
    errno_ret = node.integer("errnoRet", minimum=0, maximum=UINT32_MAX)
    args = []
    for n in node.children("args"):
        op = n.string("op", required=True)
        require_choice(n.at("op"), op, SECCOMP_OPERATORS, "seccomp operator")
        args.append(SeccompArg(index=n.required_integer("index", minimum=0, maximum=5),
                               value=n.required_integer("value", minimum=0,
                                                        maximum=UINT64_MAX),
                               op=op,
                               value_two=n.integer("valueTwo", minimum=0,
                                                   maximum=UINT64_MAX) or 0))
        n.finish()
    syscall = Syscall(names, action, errno_ret, tuple(args))
    node.finish()
    return syscall
