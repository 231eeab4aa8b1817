"""Guest-side behaviour that runc users rely on, in real VMs: limits and
sysctls the spec sets reach the container's own cgroup and namespaces."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from kata_py.spec_default import default_spec

from .conftest import busybox_rootfs, kp

pytestmark = pytest.mark.vm


def test_hugepage_limits_and_namespaced_sysctls_reach_the_container(root: Path,
                                                                    tmp_path: Path) -> None:
    busybox_rootfs(tmp_path / "rootfs")
    spec = default_spec()
    spec["process"].update(terminal=False, args=[
        "sh", "-c", "cat /sys/fs/cgroup/hugetlb.2MB.max /proc/sys/kernel/shmmni "
                    "/proc/sys/kernel/domainname"])
    spec["linux"]["resources"] = {"hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}]}
    spec["linux"]["sysctl"] = {"kernel.shmmni": "1234", "kernel.domainname": "kp.example"}
    (tmp_path / "config.json").write_text(json.dumps(spec))
    r = kp(root, "run", "-b", str(tmp_path), "huge")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [b"4194304", b"1234", b"kp.example"]


def test_a_bind_mount_shows_its_sources_name_as_its_root_in_mountinfo(root: Path,
                                                                     tmp_path: Path) -> None:
    """Tools that match mounts by their root (mountinfo's 4th field) find the
    source's name there, as under runc (where it is the source's path)."""
    busybox_rootfs(tmp_path / "rootfs")
    (tmp_path / "rootfs" / "data").mkdir()
    source = tmp_path / "srcname"
    source.mkdir()
    spec = default_spec()
    spec["process"].update(terminal=False, args=["cat", "/proc/self/mountinfo"])
    spec["mounts"].append({"destination": "/data", "type": "bind", "source": str(source),
                           "options": ["rbind", "ro"]})
    (tmp_path / "config.json").write_text(json.dumps(spec))
    r = kp(root, "run", "-b", str(tmp_path), "mi")
    assert r.returncode == 0, r.stderr
    (line,) = [ln.split() for ln in r.stdout.decode().splitlines() if ln.split()[4] == "/data"]
    assert line[3].endswith("/srcname"), line


def _host_files(cid: str) -> dict[str, Path]:
    """Where a tool finds each kind of file of the container's host cgroup."""
    from kata_py import statsview
    return {kind: directory for directory, kinds in statsview.targets(f"/{cid}")
            for kind in kinds}


def test_the_host_cgroup_shows_the_guest_cgroups_limits_and_usage(root: Path,
                                                                 tmp_path: Path) -> None:
    """Tools read a container's limits and usage at its host cgroup, runc's
    default `/<id>` without a cgroupsPath; kata-py serves the guest cgroup's
    figures there in each controller's own format, and follows `update`."""
    busybox_rootfs(tmp_path / "rootfs")
    spec = default_spec()
    assert "cgroupsPath" not in spec["linux"]
    spec["process"].update(terminal=False, args=["sleep", "600"])
    spec["linux"]["resources"] = {
        "memory": {"limit": 268435456, "swap": 335544320},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"},
        "pids": {"limit": 64},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}]}
    (tmp_path / "config.json").write_text(json.dumps(spec))
    r = kp(root, "run", "-d", "-b", str(tmp_path), "hcg")
    assert r.returncode == 0, r.stderr
    where = _host_files("hcg")
    assert {"memory", "cpu", "cpuset", "pids", "hugetlb", "v2"} <= set(where), where

    def read(kind: str, name: str) -> str:
        return (where[kind] / name).read_text().strip()
    assert read("memory", "memory.limit_in_bytes") == "268435456"
    assert read("memory", "memory.memsw.limit_in_bytes") == "335544320"
    assert 0 < int(read("memory", "memory.usage_in_bytes")) \
        <= int(read("memory", "memory.max_usage_in_bytes"))
    assert (read("cpu", "cpu.cfs_quota_us"), read("cpu", "cpu.cfs_period_us"),
            read("cpu", "cpu.shares")) == ("50000", "100000", "512")
    assert read("cpuset", "cpuset.cpus") == "0"
    assert read("pids", "pids.max") == "64" and int(read("pids", "pids.current")) >= 1
    assert read("hugetlb", "hugetlb.2MB.limit_in_bytes") == "4194304"
    assert (read("v2", "memory.max"), read("v2", "cpu.max")) == ("268435456", "50000 100000")

    r = kp(root, "update", "--pids-limit", "32", "--cpu-share", "1024", "hcg")
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 5           # the view reuses a sample for 0.5 s
    while read("pids", "pids.max") != "32" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (read("pids", "pids.max"), read("cpu", "cpu.shares")) == ("32", "1024")

    assert kp(root, "delete", "--force", "hcg").returncode == 0
    assert not any(d.exists() for d in where.values()), where


def test_a_user_namespace_maps_the_container_its_execs_and_its_files(root: Path,
                                                                    tmp_path: Path) -> None:
    """linux.uidMappings/gidMappings: root in the container is guest uid
    100000, for the init process and for an exec (which joins the
    namespace); a file it makes in a volume belongs to 100000 on the host."""
    busybox_rootfs(tmp_path / "rootfs")
    (tmp_path / "rootfs" / "vol").mkdir()
    volume = tmp_path / "volume"
    volume.mkdir()
    volume.chmod(0o777)
    spec = default_spec()
    spec["process"].update(terminal=False, args=["sleep", "600"])
    spec["linux"]["namespaces"].append({"type": "user"})
    spec["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    spec["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 65536}]
    spec["mounts"].append({"destination": "/vol", "type": "bind", "source": str(volume),
                           "options": ["rbind", "rw"]})
    (tmp_path / "config.json").write_text(json.dumps(spec))
    r = kp(root, "run", "-d", "-b", str(tmp_path), "userns")
    assert r.returncode == 0, r.stderr
    r = kp(root, "exec", "userns", "sh", "-c",
           "cat /proc/self/uid_map /proc/self/gid_map; id -u; touch /vol/made; cat /proc/1/cmdline")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert [line.split() for line in lines[:3]] == [["0", "100000", "65536"],
                                                    ["0", "200000", "65536"], ["0"]]
    assert lines[3].startswith("sleep")         # the exec is in the container's pid namespace
    made = (volume / "made").stat()
    assert (made.st_uid, made.st_gid) == (100000, 200000)


@pytest.mark.parametrize("kind", ["named", "process"])
def test_exec_into_a_container_whose_network_namespace_is_a_path(root: Path, tmp_path: Path,
                                                                kind: str) -> None:
    """A network namespace given by path — a named one (`ip netns`, what
    engines pass) or a process's (/proc/PID/ns/net, what conformance tools
    make with unshare) — is mirrored by the VM's network, not joined in the
    guest; exec works as for any container."""
    name = f"kp-it-{os.getpid()}"
    holder = None
    if kind == "named":
        subprocess.run(["ip", "netns", "add", name], check=True)
        path = f"/run/netns/{name}"
    else:
        holder = subprocess.Popen(["unshare", "--net", "sleep", "120"])
        path = f"/proc/{holder.pid}/ns/net"
        deadline = time.monotonic() + 10
        while os.readlink(path) == os.readlink("/proc/self/ns/net"):
            assert time.monotonic() < deadline, "unshare did not make a namespace"
            time.sleep(0.05)
    try:
        busybox_rootfs(tmp_path / "rootfs")
        spec = default_spec()
        spec["process"].update(terminal=False, args=["sleep", "600"])
        spec["linux"]["namespaces"] = [
            ns if ns["type"] != "network" else {"type": "network", "path": path}
            for ns in spec["linux"]["namespaces"]]
        (tmp_path / "config.json").write_text(json.dumps(spec))
        r = kp(root, "run", "-d", "-b", str(tmp_path), "nsexec")
        assert r.returncode == 0, r.stderr
        r = kp(root, "exec", "nsexec", "cat", "/proc/1/cmdline")
        assert (r.returncode, r.stdout[:5]) == (0, b"sleep"), r.stderr
        assert kp(root, "delete", "--force", "nsexec").returncode == 0
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        else:
            subprocess.run(["ip", "netns", "del", name], check=False)
