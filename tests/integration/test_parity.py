"""Guest-side behaviour that runc users rely on, in real VMs: limits and
sysctls the spec sets reach the container's own cgroup and namespaces."""

from __future__ import annotations

import json
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
