"""The sandbox's host processes in the spec's cgroupsPath (kata_py.host_cgroup)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kata_py import host_cgroup

MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 31 0:40 /nested /mnt/elsewhere rw,relatime - cgroup cgroup rw,pids
"""


@pytest.mark.parametrize("given, expected", [
    ("", ""), ("/libpod_parent/libpod-abc", "/libpod_parent/libpod-abc"),
    ("kata/c1", "/kata/c1"), ("//a//b/", "/a/b"),
    ("machine.slice:libpod:abc", "/machine.slice/libpod-abc.scope"),
    ("machine-libpod_pod_x.slice:libpod:c",
     "/machine.slice/machine-libpod_pod_x.slice/libpod-c.scope"),
    (":crun:c", "/system.slice/crun-c.scope")])
def test_paths_resolve_as_runc_reads_them(given: str, expected: str) -> None:
    assert host_cgroup.relative_path(given) == expected


@pytest.mark.parametrize("bad", ["/a/../../etc", "a:b", "a:b:c:d"])
def test_bad_paths_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="cgroupsPath"):
        host_cgroup.relative_path(bad)


def test_hierarchies_are_the_cgroup_mounts_we_see_from_their_root() -> None:
    assert host_cgroup.hierarchies(MOUNTINFO) == [
        Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup/memory"),
        Path("/sys/fs/cgroup/unified")]


def test_join_moves_a_process_into_every_hierarchy_and_remove_cleans_up() -> None:
    path = f"/kata-py-test/{os.getpid()}"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        host_cgroup.join(path, child.pid)
        placed = [m for m in host_cgroup.hierarchies()
                  if str(child.pid) in (m / path.lstrip("/") / "cgroup.procs").read_text()]
        assert placed and len(placed) == len(host_cgroup.hierarchies())
        own = Path(f"/proc/{child.pid}/cgroup").read_text()
        assert own.count(path) == len(placed)
    finally:
        child.kill()
        child.wait()
    host_cgroup.remove(path)
    for mount in host_cgroup.hierarchies():
        assert not (mount / path.lstrip("/")).exists()
        (mount / "kata-py-test").rmdir()
