"""`podman run` options a podman user sets every day, with kata-py as the
runtime: each one has to cross config.json → kata-py → the guest agent →
the container's launcher, and is checked from inside the container.
One container prints several things where that stays readable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import IMAGE, Podman

pytestmark = pytest.mark.vm

NONE = ("--network", "none")
GUEST_OVERHEAD_MIB = 256        # README: VM memory = limit + 256 MiB guest overhead
KERNEL_RESERVED_MAX_MIB = 64    # MemTotal is the VM's RAM less the kernel's own (~42 MiB here)


def test_cgroups_disabled_is_accepted(podman: Podman) -> None:
    # podman passes `--cgroup-manager disabled` to runtimes listed in
    # runtime_supports_nocgroup (configs/containers.conf.d/kata-py.conf).
    res = podman("run", "--rm", "--cgroups=disabled", *NONE, IMAGE, "echo", "ok")
    assert (res.returncode, res.stdout) == (0, "ok\n"), res.stderr


def test_env_workdir_user_hostname_caps_and_network_none(podman: Podman) -> None:
    script = ("echo FOO=$FOO; pwd; id; hostname; grep -E '^Cap(Eff|Bnd)' /proc/self/status; "
              "ls /sys/class/net")
    res = podman("run", "--rm", "--network", "none", "-e", "FOO=bar", "-w", "/tmp",
                 "-u", "65534", "--hostname", "kpbox", "--cap-drop", "ALL",
                 "--cap-add", "CAP_CHOWN", IMAGE, "sh", "-c", script)
    assert (res.returncode, res.stderr) == (0, ""), res
    assert res.stdout.splitlines() == [
        "FOO=bar",
        "/tmp",
        "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)",
        "kpbox",
        "CapEff:\t0000000000000001",      # CAP_CHOWN alone, kept across the uid change
        "CapBnd:\t0000000000000001",
        "lo",                             # --network none: loopback only
    ]


def test_resource_limits_reach_the_guest_cgroup_and_size_the_vm(podman: Podman) -> None:
    # The container sees its own cgroup as the root of /sys/fs/cgroup: kata-py
    # gives it a private cgroup namespace in the guest, also where podman asks
    # for the host's (its default on cgroup v1/hybrid hosts such as this one).
    memory_mib = 200
    script = ("cat /proc/self/cgroup; cd /sys/fs/cgroup; cat memory.max cpu.max pids.max; "
              "grep MemTotal /proc/meminfo; nproc")
    res = podman("run", "--rm", *NONE, "--memory", f"{memory_mib}m",
                 "--cpus", "1.5", "--pids-limit", "50", IMAGE, "sh", "-c", script)
    assert (res.returncode, res.stderr) == (0, ""), res
    cgroup, memory_max, cpu_max, pids_max, meminfo, nproc = res.stdout.splitlines()
    assert cgroup == "0::/"
    assert (memory_max, cpu_max, pids_max) == (str(memory_mib << 20), "150000 100000", "50")
    assert nproc == "2"                                  # ⌈1.5⌉ vCPUs
    mem_total_mib = int(meminfo.split()[1]) // 1024     # "MemTotal:  423840 kB"
    vm_mib = memory_mib + GUEST_OVERHEAD_MIB
    assert vm_mib - KERNEL_RESERVED_MAX_MIB <= mem_total_mib <= vm_mib, meminfo


def test_seccomp_profile_denies_mkdir_and_nothing_else(podman: Podman, tmp_path: Path) -> None:
    profile = tmp_path / "no-mkdir.json"
    profile.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                      "errnoRet": 1}],                                   # EPERM
    }))
    script = ("mkdir /tmp/d; echo mkdir $?; touch /tmp/f && ls /tmp && echo rest works; "
              "grep ^Seccomp: /proc/self/status")
    res = podman("run", "--rm", *NONE, "--security-opt", f"seccomp={profile}", IMAGE,
                 "sh", "-c", script)
    assert res.returncode == 0, res
    assert res.stdout.splitlines() == ["mkdir 1", "f", "rest works", "Seccomp:\t2"]
    assert res.stderr == "mkdir: can't create directory '/tmp/d': Operation not permitted\n"


def test_read_only_root_keeps_tmp_and_a_tmpfs_writable(podman: Podman) -> None:
    # With --read-only podman adds tmpfs on /tmp, /var/tmp and /run, all with
    # runc's `tmpcopyup` option; --tmpfs adds another.
    script = ("touch /new 2>&1; for d in /tmp /scratch; do grep \" $d \" /proc/mounts | "
              "cut -d' ' -f1-3; done; echo t > /tmp/t && echo s > /scratch/s && "
              "cat /tmp/t /scratch/s")
    res = podman("run", "--rm", *NONE, "--read-only", "--tmpfs", "/scratch", IMAGE,
                 "sh", "-c", script)
    assert (res.returncode, res.stderr) == (0, ""), res
    assert res.stdout.splitlines() == [
        "touch: /new: Read-only file system",
        "tmpfs /tmp tmpfs",
        "tmpfs /scratch tmpfs",
        "t",
        "s",
    ]


def test_uidmap_and_gidmap_give_the_container_a_user_namespace(podman: Podman) -> None:
    """podman --uidmap/--gidmap: the container's root is uid 100000 in the
    guest (and in its files), as with runc."""
    res = podman("run", "--rm", *NONE, "--uidmap", "0:100000:65536", "--gidmap",
                 "0:100000:65536", IMAGE, "sh", "-c",
                 "cat /proc/self/uid_map /proc/self/gid_map; id -u; touch /tmp/x && echo ok")
    assert res.returncode == 0, res.stderr
    lines = [line.split() for line in res.stdout.splitlines()]
    assert lines == [["0", "100000", "65536"], ["0", "100000", "65536"], ["0"], ["ok"]]
