"""How big a sandbox VM is: vCPUs and memory from the container's spec.

The container's cgroup limits size the VM, so a container limited to 1.5
CPUs and 1 GiB gets 2 vCPUs and 1 GiB plus the guest's own overhead.
Without limits the runtime config's `[hypervisor]` defaults apply. Two
annotations override both (`io.kata-py.vm.vcpus`, `io.kata-py.vm.memory_mib`).
vCPUs are capped at the host's CPU count: more vCPUs than host CPUs only
adds contention, worst of all under TCG.

It computes sizes only; it starts nothing.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass

from kata_py.config import HypervisorConfig
from kata_py.errors import ConfigError
from kata_py.spec import Spec
from kata_py.spec_reader import show

log = logging.getLogger(__name__)

MIB = 1024 * 1024
# Memory the guest needs besides the container's own limit: the guest kernel
# with its page tables and slab (~60 MiB), the Python gRPC agent (grpc,
# protobuf and asyncio imported: ~80 MiB RSS), page cache for the agent's
# files and the shared rootfs, and headroom so that the container's cgroup —
# not the guest kernel's OOM killer — is what stops a container at its limit.
# An estimate from the 512 MiB default guest, which reports ~470 MiB total.
GUEST_OVERHEAD_MIB = 256
# The runtime config refuses less; a guest with less does not boot the agent.
MIN_MEMORY_MIB = 128

ANNOTATION_VCPUS = "io.kata-py.vm.vcpus"
ANNOTATION_MEMORY_MIB = "io.kata-py.vm.memory_mib"


@dataclass(frozen=True)
class VmSize:
    vcpus: int
    memory_mib: int


def vm_size(spec: Spec, defaults: HypervisorConfig) -> VmSize:
    """The VM size for `spec`: annotations, else cgroup limits, else `defaults`;
    never fewer vCPUs than linux.resources.cpu.cpus names (a cpuset of 0-1
    with a quota of half a CPU needs CPU 1 in the guest)."""
    vcpus = _annotation(spec, ANNOTATION_VCPUS, 1)
    if vcpus is None:
        vcpus = _vcpus_from_limits(spec) or defaults.vcpus
    host_cpus = os.cpu_count() or 1
    if vcpus > host_cpus:
        log.debug("capping %d vCPUs at the host's %d CPUs", vcpus, host_cpus)
    vcpus = max(1, min(vcpus, host_cpus), _cpuset_needs(spec, host_cpus))

    memory_mib = _annotation(spec, ANNOTATION_MEMORY_MIB, MIN_MEMORY_MIB)
    if memory_mib is None:
        memory_mib = _memory_from_limit(spec) or defaults.memory_mib
    return VmSize(vcpus, memory_mib)


def _vcpus_from_limits(spec: Spec) -> int | None:
    resources = spec.linux.resources
    cpu = resources.cpu if resources else None
    if cpu is None or not cpu.quota or not cpu.period or cpu.quota <= 0 or cpu.period <= 0:
        return None
    return math.ceil(cpu.quota / cpu.period)


def _cpuset_needs(spec: Spec, host_cpus: int) -> int:
    """vCPUs that linux.resources.cpu.cpus needs (0: none named); a CPU the
    host lacks cannot be a vCPU of ours either (runc: the cgroup refuses it)."""
    resources = spec.linux.resources
    cpus = resources.cpu.cpus if resources and resources.cpu else ""
    if not cpus:
        return 0
    highest = -1
    for part in cpus.split(","):
        first, _, last = part.strip().partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            raise ConfigError(f"config.json: linux.resources.cpu.cpus {show(cpus)} is not a "
                              "CPU list", "use a list such as 0-1,3")
        highest = max(highest, int(last or first))
    if highest >= host_cpus:
        raise ConfigError(f"config.json: linux.resources.cpu.cpus {show(cpus)} names CPU "
                          f"{highest}, and this host has {host_cpus} CPUs (0-{host_cpus - 1})",
                          "name CPUs this host has; the VM gets one vCPU per host CPU at most")
    return highest + 1


def _memory_from_limit(spec: Spec) -> int | None:
    resources = spec.linux.resources
    memory = resources.memory if resources else None
    if memory is None or memory.limit is None or memory.limit <= 0:
        return None
    return math.ceil(memory.limit / MIB) + GUEST_OVERHEAD_MIB


def _annotation(spec: Spec, name: str, minimum: int) -> int | None:
    raw = spec.annotations.get(name)
    if raw is None:
        return None
    if not re.fullmatch(r"[0-9]+", raw) or int(raw) < minimum:
        raise ConfigError(f"config.json: annotation {name} must be an integer of at least "
                          f"{minimum}, not {show(raw)}", f"fix or remove the {name} annotation")
    return int(raw)
