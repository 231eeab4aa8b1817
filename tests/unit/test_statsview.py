"""The guest-stats view (kata_py/statsview.py): the files' formats as
podman's cgroup readers parse them, where views go, and a real FUSE mount
served by StatsView (root and /dev/fuse, as kata-py itself needs)."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from kata_py import guest_cgroup, statsview
from kata_py.guest_cgroup import GuestCgroup

GUEST = GuestCgroup({"memory.current": "52000000\n", "memory.max": "268435456\n",
                     "pids.current": "3\n", "hugetlb.2MB.max": "max\n"})

HYBRID = """\
35 25 0:30 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
36 25 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
37 25 0:32 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
38 25 0:33 / /sys/fs/cgroup/blkio rw,nosuid - cgroup cgroup rw,blkio
39 25 0:34 / /sys/fs/cgroup/devices rw,nosuid - cgroup cgroup rw,devices
40 25 0:35 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,name=systemd
41 25 0:36 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
42 25 0:37 /sub /mnt/elsewhere rw - cgroup cgroup rw,memory
"""


def test_a_view_holds_its_kinds_files_and_a_note() -> None:
    files = statsview.files(("cpu", "cpuacct"), GUEST)
    assert {"cpu.shares", "cpu.cfs_quota_us", "cpuacct.usage", statsview.NOTE} <= set(files)
    assert not any(name.startswith("memory.") for name in files)


def test_views_go_over_the_cgroup_in_every_hierarchy_podman_reads() -> None:
    got = statsview.targets("/libpod_parent/libpod-abc", HYBRID)
    assert got == [
        (Path("/sys/fs/cgroup/memory/libpod_parent/libpod-abc"), ("memory",)),
        (Path("/sys/fs/cgroup/cpu,cpuacct/libpod_parent/libpod-abc"), ("cpu", "cpuacct")),
        (Path("/sys/fs/cgroup/pids/libpod_parent/libpod-abc"), ("pids",)),
        (Path("/sys/fs/cgroup/blkio/libpod_parent/libpod-abc"), ("blkio",)),
        (Path("/sys/fs/cgroup/unified/libpod_parent/libpod-abc"), ("v2",)),
    ]


@pytest.fixture
def fuse() -> None:
    if not os.path.exists("/dev/fuse") or os.geteuid() != 0:
        pytest.fail("the stats view needs /dev/fuse and root (scripts/setup.sh's host has both)")


def _mounted(point: Path) -> bool:
    return any(line.split()[4] == str(point)
               for line in Path("/proc/self/mountinfo").read_text().splitlines())


def test_a_mounted_view_serves_the_guest_figures_read_only(tmp_path: Path, fuse: None) -> None:
    v1, v2 = tmp_path / "memory", tmp_path / "unified"
    v1.mkdir()
    v2.mkdir()
    (v1 / "tasks").write_text("hidden by the view\n")
    fetches = []

    def fetch() -> GuestCgroup:
        fetches.append(1)
        return GUEST
    huge = tmp_path / "hugetlb"
    huge.mkdir()
    view = statsview.StatsView(fetch, [(v1, ("memory",)), (v2, ("v2",)), (huge, ("hugetlb",))])
    assert view.start() == [v1, v2, huge]
    try:
        assert sorted(os.listdir(v1)) == sorted(statsview.files(("memory",), GUEST))
        assert (v1 / "memory.usage_in_bytes").read_text() == "52000000\n"
        assert (v2 / "pids.current").read_text() == "3\n"
        assert len(fetches) == 1                  # one RPC for one sample's files
        # names that come from the guest: its hugepage sizes, its v2 files
        assert (huge / "hugetlb.2MB.limit_in_bytes").read_text() == \
            f"{guest_cgroup.V1_NO_LIMIT}\n"
        assert sorted(os.listdir(v2)) == sorted([*GUEST.files, statsview.NOTE])
        # a reader in another process (podman is one) sees the same
        out = subprocess.run(["cat", str(v2 / "memory.current")], capture_output=True,
                             text=True, check=True).stdout
        assert out == "52000000\n"
        with pytest.raises(FileNotFoundError):
            (v1 / "tasks").read_text()
        with pytest.raises(OSError) as exc:
            (v1 / "memory.stat").write_text("1")
        assert exc.value.errno == errno.EROFS
    finally:
        view.close()
    assert not _mounted(v1) and not _mounted(v2)
    assert (v1 / "tasks").read_text() == "hidden by the view\n"


def test_a_view_whose_guest_does_not_answer_gives_eio(tmp_path: Path, fuse: None) -> None:
    def fetch() -> GuestCgroup:
        raise OSError("agent gone")
    view = statsview.StatsView(fetch, [(tmp_path, ("pids",))])
    view.start()
    try:
        with pytest.raises(OSError) as exc:
            (tmp_path / "pids.current").read_text()
        assert exc.value.errno == errno.EIO
    finally:
        view.close()
    assert not _mounted(tmp_path)


def test_a_view_that_cannot_mount_is_skipped(tmp_path: Path, fuse: None) -> None:
    view = statsview.StatsView(GuestCgroup, [(tmp_path / "missing", ("pids",))])
    assert view.start() == []
    view.close()
