"""The one translation from the host's typed spec (kata_py.spec) to what
the guest needs: the launch description (kata_py.agent.launch_config) the
agent hands its launcher, plus the host paths the sandbox must expose to
the guest through the virtio-fs share.

Host paths become guest paths below the share (GUEST_SHARE/<cid>/…): the
rootfs at <cid>/rootfs, each bind-mount source at <cid>/mounts/<n>/<name>.
Kernel filesystems (proc, sysfs, tmpfs, devpts, mqueue, cgroup2) are made by
the guest kernel and pass through unchanged.

Namespaces: a network namespace given by *path* is the host's (made by
netavark/CNI); the VM's network mirrors it, so the container uses the
guest's network and no namespace is joined in the guest. A cgroup
namespace is always created (see _namespaces). A new user namespace gets
the spec's id mappings, checked here. Joining any other namespace by host
path is not supported yet and is refused with the config.json path.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kata_py.agent import launch_config as lc
from kata_py.agent.shared import CGROUP_PARENT, GRPC_MESSAGE_MAX_BYTES, SHARED_DIR
from kata_py.errors import ConfigError
from kata_py.spec import Process, Spec
from kata_py.spec_linux import Linux, Resources, Seccomp

GUEST_SHARE = str(SHARED_DIR)            # where the guest mounts the virtio-fs share
GUEST_CGROUP_PARENT = CGROUP_PARENT     # below the guest's /sys/fs/cgroup (the agent prepares it)
# A launch description's share of the agent's message limit; the request's
# other fields, and the bundle path the monitor adds after create's check, fit
# in the rest.
DESCRIPTION_MAX_BYTES = GRPC_MESSAGE_MAX_BYTES - 64 * 1024
KERNEL_FS_TYPES = frozenset({"proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup",
                             "cgroup2", "devtmpfs", "securityfs", "debugfs"})


@dataclass(frozen=True)
class HostShare:
    """A host path the sandbox bind-mounts into its share before create."""

    source: Path
    target: str        # relative to the sandbox's shared directory
    readonly: bool


def is_bind(mount: Any) -> bool:
    return mount.type == "bind" or "bind" in mount.options or "rbind" in mount.options


def _mounts(spec: Spec, cid: str) -> tuple[tuple[lc.Mount, ...], list[HostShare]]:
    mounts: list[lc.Mount] = []
    shares: list[HostShare] = []
    for index, m in enumerate(spec.mounts):
        if is_bind(m):
            if not m.source.startswith("/"):
                raise ConfigError(f"config.json: mounts[{index}].source {m.source!r} must be "
                                  "an absolute host path for a bind mount",
                                  "use an absolute path")
            # …/<n>/<basename>: the guest's mountinfo shows a root ending in
            # the source's name, as tools matching mounts by root expect.
            name = Path(m.source).name or "root"
            target = f"{cid}/mounts/{index}/{name}"
            shares.append(HostShare(Path(m.source), target, "ro" in m.options))
            mounts.append(lc.Mount(m.destination, "bind", f"{GUEST_SHARE}/{target}",
                                   m.options))
        elif m.type in KERNEL_FS_TYPES or not m.type:
            mounts.append(lc.Mount(m.destination, m.type, m.source, m.options))
        else:
            raise ConfigError(f"config.json: mounts[{index}] of type {m.type!r} is not "
                              "supported by kata-py", "use a bind mount of a host directory")
    return tuple(mounts), shares


def _namespaces(spec: Spec) -> tuple[lc.Namespace, ...]:
    out = []
    for index, ns in enumerate(spec.linux.namespaces if spec.linux else ()):
        where = f"config.json: linux.namespaces[{index}]"
        if ns.path:
            if ns.type == "network":
                continue  # the guest's network mirrors this host namespace
            raise ConfigError(f"{where}: joining the {ns.type} namespace at {ns.path} is not "
                              "supported by kata-py yet", "let kata-py create it")
        out.append(lc.Namespace(ns.type))
    # The guest's cgroup tree (v2) is the VM's own, so a container always gets
    # a private cgroup namespace: /sys/fs/cgroup shows its own limits, as with
    # podman on cgroup v2 hosts — also when the host is v1, where podman asks
    # for the host's cgroup namespace, which does not exist in the VM.
    if not any(ns.type == "cgroup" for ns in out):
        out.append(lc.Namespace("cgroup"))
    return tuple(out)


ID_MAPPINGS_MAX = 340            # lines the kernel takes in one uid_map (since 4.15)
ID_LIMIT = 1 << 32


def _id_mappings(spec: Spec) -> tuple[tuple[lc.IdMapping, ...], tuple[lc.IdMapping, ...]]:
    """linux.uidMappings/gidMappings for a new user namespace, checked as the
    kernel will check them, so that a bad map fails before a VM boots."""
    linux = spec.linux
    if linux is None:
        return (), ()
    wanted = any(ns.type == "user" and not ns.path for ns in linux.namespaces)
    if not wanted:
        if linux.uid_mappings or linux.gid_mappings:
            raise ConfigError("config.json: linux.uidMappings/gidMappings are set but "
                              "linux.namespaces has no new user namespace",
                              'add {"type": "user"} to linux.namespaces or drop the mappings')
        return (), ()
    out = []
    for key, mappings in (("uidMappings", linux.uid_mappings),
                          ("gidMappings", linux.gid_mappings)):
        where = f"config.json: linux.{key}"
        if not mappings:
            raise ConfigError(f"{where}: a new user namespace needs it",
                              'map the container\'s ids, e.g. [{"containerID": 0, '
                              '"hostID": 100000, "size": 65536}]')
        if len(mappings) > ID_MAPPINGS_MAX:
            raise ConfigError(f"{where}: {len(mappings)} entries, the kernel takes at most "
                              f"{ID_MAPPINGS_MAX}", "merge adjacent ranges")
        for side in ("container_id", "host_id"):
            spans = sorted((getattr(m, side), getattr(m, side) + m.size) for m in mappings)
            if spans[-1][1] > ID_LIMIT:
                raise ConfigError(f"{where}: a range ends beyond id {ID_LIMIT - 1}",
                                  "shorten it")
            if any(a[1] > b[0] for a, b in zip(spans, spans[1:], strict=False)):
                side_name = "containerID" if side == "container_id" else "hostID"
                raise ConfigError(f"{where}: two {side_name} ranges overlap",
                                  "make the ranges disjoint")
        user = spec.process.user
        ids = (0, user.uid) if key == "uidMappings" else (0, user.gid, *user.additional_gids)
        for id_ in ids:
            if not any(m.container_id <= id_ < m.container_id + m.size for m in mappings):
                raise ConfigError(f"{where}: container id {id_} is not mapped "
                                  "(the namespace's root and the process's ids must be)",
                                  f"add a range holding {id_}")
        out.append(tuple(lc.IdMapping(m.container_id, m.host_id, m.size) for m in mappings))
    return out[0], out[1]


def _cgroup(cid: str, resources: Resources | None, device_program: str = "") -> lc.Cgroup:
    r = resources or Resources()
    mem, cpu, pids = r.memory, r.cpu, r.pids
    return lc.Cgroup(path=f"{GUEST_CGROUP_PARENT}/{cid}", resources=lc.Resources(
        memory_limit=(mem.limit or None) if mem else None,     # 0: no limit, as in runc
        memory_reservation=mem.reservation if mem else None,
        memory_swap=mem.swap if mem else None,
        cpu_shares=cpu.shares if cpu else None,
        cpu_quota=cpu.quota if cpu else None,
        cpu_period=cpu.period if cpu else None,
        cpuset_cpus=cpu.cpus if cpu else "",
        cpuset_mems=cpu.mems if cpu else "",
        pids_limit=pids.limit if pids else None,
        unified={f"hugetlb.{h.page_size}.max": str(h.limit) for h in r.hugepage_limits}),
        device_program=device_program)


def _seccomp(seccomp: Seccomp | None) -> dict[str, Any] | None:
    """The fields of kata_py.agent.seccomp.SeccompProfile, as JSON-able values."""
    if seccomp is None:
        return None
    return {
        "default_action": seccomp.default_action,
        "default_errno_ret": seccomp.default_errno_ret,
        "architectures": list(seccomp.architectures),
        "flags": list(seccomp.flags),
        "syscalls": [{"names": list(s.names), "action": s.action, "errno_ret": s.errno_ret,
                      "args": [dataclasses.asdict(a) for a in s.args]}
                     for s in seccomp.syscalls],
    }


def _seccomp_program(seccomp: Seccomp | None) -> tuple[str, int]:
    """linux.seccomp compiled here, once per container: (base64 BPF, flags).
    The guest would compile it in every create and exec, tens of times slower
    under TCG; the compiler is the same module either way (x86_64 both)."""
    raw = _seccomp(seccomp)
    if raw is None:
        return "", 0
    from kata_py.agent import seccomp as bpf

    try:
        program, flags = bpf.compile_description(raw)
    except bpf.SeccompError as exc:
        raise ConfigError(str(exc), "fix linux.seccomp in config.json") from exc
    return base64.b64encode(program).decode(), flags


def _device_program(linux: Linux | None) -> str:
    """linux.resources.devices plus runc's default allow list, compiled here
    (base64 eBPF): the guest, Python under TCG, only loads and attaches it.
    No rules still means runc's defaults, i.e. every other device refused."""
    from kata_py.agent import devices

    rules = linux.resources.devices if linux and linux.resources else ()
    try:
        program = devices.compile_filter(
            [devices.Rule(r.allow, r.type, devices.WILDCARD if r.major is None else r.major,
                          devices.WILDCARD if r.minor is None else r.minor, r.access)
             for r in rules],
            [d.path for d in (linux.devices if linux else ())])
    except devices.DeviceRuleError as exc:
        raise ConfigError(str(exc), "fix linux.resources.devices in config.json") from exc
    return base64.b64encode(program).decode()


def launch_process(p: Process) -> lc.Process:
    """The guest's view of an OCI process (also what `exec` runs)."""
    caps = p.capabilities
    return lc.Process(
        args=p.args, env=p.env, cwd=p.cwd, uid=p.user.uid, gid=p.user.gid,
        additional_gids=p.user.additional_gids, umask=p.user.umask,
        capabilities=lc.Capabilities(caps.bounding, caps.effective, caps.inheritable,
                                     caps.permitted, caps.ambient) if caps else None,
        rlimits=tuple(lc.Rlimit(r.type, r.soft, r.hard) for r in p.rlimits),
        no_new_privileges=p.no_new_privileges, oom_score_adj=p.oom_score_adj,
        terminal=p.terminal,
        console_rows=p.console_size.height if p.console_size else 0,
        console_cols=p.console_size.width if p.console_size else 0)


def _hooks(spec: Spec) -> lc.Hooks:
    def convert(hooks: tuple[Any, ...]) -> tuple[lc.Hook, ...]:
        return tuple(lc.Hook(h.path, tuple(h.args), tuple(h.env), h.timeout) for h in hooks)
    return lc.Hooks(create_container=convert(spec.hooks.create_container),
                    start_container=convert(spec.hooks.start_container))


def to_launch_config(spec: Spec, container_id: str, bundle: str = ""
                     ) -> tuple[lc.LaunchConfig, list[HostShare]]:
    """The launch description for container_id, and what to share for it."""
    mounts, shares = _mounts(spec, container_id)
    linux = spec.linux
    program, flags = _seccomp_program(linux.seccomp if linux else None)
    rootfs = HostShare(spec.root.path, f"{container_id}/rootfs", readonly=False)
    uid_mappings, gid_mappings = _id_mappings(spec)
    config = lc.LaunchConfig(
        container_id=container_id, rootfs=f"{GUEST_SHARE}/{rootfs.target}",
        process=launch_process(spec.process), fds=lc.Fds(sync=3, start=4),  # agent sets fds
        readonly_rootfs=spec.root.readonly, hostname=spec.hostname,
        domainname=spec.domainname, namespaces=_namespaces(spec), mounts=mounts,
        uid_mappings=uid_mappings, gid_mappings=gid_mappings,
        rootfs_propagation=linux.rootfs_propagation if linux else "",
        masked_paths=linux.masked_paths if linux else (),
        readonly_paths=linux.readonly_paths if linux else (),
        devices=tuple(lc.Device(d.path, d.type, d.major or 0, d.minor or 0,
                                d.file_mode if d.file_mode is not None else 0o666,
                                d.uid or 0, d.gid or 0)
                      for d in (linux.devices if linux else ())),
        sysctl=dict(linux.sysctl) if linux else {},
        seccomp_program=program, seccomp_flags=flags,
        cgroup=_cgroup(container_id, linux.resources if linux else None,
                       _device_program(linux)),
        hooks=_hooks(spec),
        state={"ociVersion": spec.oci_version, "id": container_id, "bundle": bundle,
               "annotations": dict(spec.annotations)})
    check_size(config, "config.json")
    return config, [rootfs, *shares]


def check_size(config: lc.LaunchConfig, where: str) -> None:
    """ConfigError when `config` as sent (lc.to_json, in CreateContainer or
    ExecProcess) is more than the agent takes; names its largest part."""
    size = len(lc.to_json(config))      # ASCII: json.dumps escapes the rest
    if size <= DESCRIPTION_MAX_BYTES:
        return
    raw = dataclasses.asdict(config)
    parts = {"process.env": raw["process"]["env"], "process.args": raw["process"]["args"],
             "annotations": raw["state"].get("annotations"), "mounts": raw["mounts"],
             "hooks": raw["hooks"], "linux.sysctl": raw["sysctl"],
             "linux.maskedPaths": raw["masked_paths"],
             "linux.readonlyPaths": raw["readonly_paths"], "linux.devices": raw["devices"]}
    path, part = max(((p, len(json.dumps(v))) for p, v in parts.items()), key=lambda x: x[1])
    raise ConfigError(f"{where}: the launch description is {size} bytes, more than the "
                      f"{DESCRIPTION_MAX_BYTES} the agent accepts ({path}: {part} bytes of it)",
                      f"shrink {path}")
