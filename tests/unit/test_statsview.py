"""The guest-stats view (kata_py/statsview.py): the files' formats as
podman's cgroup readers parse them, where views go, and a real FUSE mount
served by StatsView (root and /dev/fuse, as kata-py itself needs)."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from kata_py import statsview

STATS = {"memory_current_bytes": 52_000_000, "memory_max_bytes": 268_435_456,
         "memory_anon_bytes": 2_000_000, "memory_file_bytes": 49_000_000,
         "cpu_usage_usec": 2_500_000, "cpu_user_usec": 2_000_000, "cpu_system_usec": 500_000,
         "pids_current": 3, "io_read_bytes": 4096, "io_write_bytes": 8192, "oom_kills": 0}

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


def test_v1_files_are_what_podmans_v1_readers_parse() -> None:
    files = statsview.files(("memory", "cpuacct", "pids", "blkio"), STATS)
    # single unsigned integers (readFileAsUint64 strips only the newline)
    assert files["memory.usage_in_bytes"] == "52000000\n"
    assert files["memory.limit_in_bytes"] == "268435456\n"
    assert files["cpuacct.usage"] == "2500000000\n"            # ns
    assert files["cpuacct.usage_sys"] == "500000000\n"
    assert files["pids.current"] == "3\n"
    # "MAJ:MIN Op Value" rows; the "Total N" line has two fields and is skipped
    rows = [line.split() for line in
            files["blkio.throttle.io_service_bytes_recursive"].splitlines()]
    assert ["0:0", "Read", "4096"] in rows and ["0:0", "Write", "8192"] in rows
    assert rows[-1] == ["Total", "12288"]
    assert statsview.NOTE in files


def test_v2_files_are_what_podmans_v2_readers_parse() -> None:
    files = statsview.files(("v2",), {**STATS, "memory_max_bytes": None})
    cpu = dict(line.split() for line in files["cpu.stat"].splitlines())
    assert cpu == {"usage_usec": "2500000", "user_usec": "2000000", "system_usec": "500000"}
    memory = dict(line.split() for line in files["memory.stat"].splitlines())
    assert memory["anon"] == "2000000"        # podman 4.3's v2 MemUsage is anon
    assert files["memory.max"] == "max\n"
    assert files["io.stat"].startswith("0:0 rbytes=4096 wbytes=8192 ")


def test_missing_figures_read_as_zero_and_no_limit_as_v1s_maximum() -> None:
    files = statsview.files(("memory", "pids"), {"memory_max_bytes": None})
    assert files["memory.usage_in_bytes"] == "0\n"
    assert files["memory.limit_in_bytes"] == f"{statsview.V1_NO_LIMIT}\n"
    assert files["pids.current"] == "0\n"


def test_views_go_over_the_cgroup_in_every_hierarchy_podman_reads() -> None:
    got = statsview.targets("/libpod_parent/libpod-abc", HYBRID)
    assert got == [
        (Path("/sys/fs/cgroup/memory/libpod_parent/libpod-abc"), ("memory",)),
        (Path("/sys/fs/cgroup/cpu,cpuacct/libpod_parent/libpod-abc"), ("cpuacct",)),
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

    def fetch() -> dict[str, int | None]:
        fetches.append(1)
        return dict(STATS)
    view = statsview.StatsView(fetch, [(v1, ("memory",)), (v2, ("v2",))])
    assert view.start() == [v1, v2]
    try:
        assert sorted(os.listdir(v1)) == ["kata-py.txt", "memory.limit_in_bytes", "memory.stat",
                                         "memory.usage_in_bytes"]
        assert (v1 / "memory.usage_in_bytes").read_text() == "52000000\n"
        assert (v2 / "pids.current").read_text() == "3\n"
        assert len(fetches) == 1                  # one RPC for one sample's files
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
    def fetch() -> dict[str, int | None]:
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
    view = statsview.StatsView(dict, [(tmp_path / "missing", ("pids",))])
    assert view.start() == []
    view.close()
