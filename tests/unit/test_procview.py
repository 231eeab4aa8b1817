"""The /proc view podman top reads (kata_py/procview.py): start times made
host-relative, and a real FUSE mount read by this process and by `cat`."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kata_py import fuse, host_mounts, procview

# pid 1's command name has a space and a parenthesis, as comm may
STAT_1 = b"1 (my (odd) sh) S 0 1 1 0 -1 4194560 10 0 0 0 3 4 0 0 20 0 1 0 250 4000 100 0\n"
STAT_7 = b"7 (sleep) S 1 1 1 34816 -1 4194304 5 0 0 0 0 0 0 0 20 0 1 0 900 3000 80 0\n"
STATUS = b"Name:\tsleep\nUid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\n"
GUEST_BOOTTIME_NS = 12 * 10**9
Mounted = tuple[Path, list[int], dict[str, Any]]   # mount point, fetches, what the guest has


def entries() -> list[tuple[int, bytes, bytes, bytes, str]]:
    return [(1, STAT_1, STATUS, b"sh\0-c\0sleep 5\0", "pid:[4026532001]"),
            (7, STAT_7, STATUS, b"sleep\x005\0", "pid:[4026532001]")]


def test_start_times_count_from_the_hosts_boot() -> None:
    # the guest booted 12 s ago by its clock; the host 1000 s ago by its own
    found = procview.snapshot(entries(), GUEST_BOOTTIME_NS, 1000 * 10**9)
    fields = found[1].files["stat"].decode().rpartition(")")[2].split()
    assert fields[procview.STARTTIME] == str(250 + 988 * procview.USER_HZ)
    assert found[1].files["stat"].startswith(b"1 (my (odd) sh) S 0 1 ")
    assert found[7].files["cmdline"] == b"sleep\x005\0"
    assert found[7].pid_ns == "pid:[4026532001]"


def test_a_stat_it_cannot_parse_is_passed_through() -> None:
    assert procview.host_stat(b"garbage", 100) == b"garbage"


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[Mounted]:
    if not os.path.exists("/dev/fuse") or os.geteuid() != 0:
        pytest.fail("the /proc view needs /dev/fuse and root (scripts/setup.sh's host has both)")
    fetches: list[int] = []
    state: dict[str, Any] = {"entries": entries()}

    def fetch() -> tuple[list[tuple[int, bytes, bytes, bytes, str]], int]:
        fetches.append(1)
        if state["entries"] is None:
            raise RuntimeError("agent gone")
        return state["entries"], time.clock_gettime_ns(time.CLOCK_BOOTTIME) - 5 * 10**9

    fd = fuse.open_device()
    fuse.mount(fd, tmp_path, "kata-py-proc")
    view = procview.ProcView(fetch)
    view.serve(fd)
    yield tmp_path, fetches, state
    host_mounts.detach(tmp_path)
    view.close()


def test_a_mounted_view_lists_the_guest_processes(mounted: Mounted) -> None:
    proc, fetches, _ = mounted
    assert sorted(os.listdir(proc)) == ["1", "7", "stat"]
    assert sorted(os.listdir(proc / "7")) == ["cmdline", "ns", "stat", "status"]
    assert (proc / "7" / "cmdline").read_bytes() == b"sleep\x005\0"
    assert (proc / "1" / "status").read_bytes() == STATUS
    assert os.readlink(proc / "7" / "ns" / "pid") == "pid:[4026532001]"
    assert b"btime" in (proc / "stat").read_bytes()           # the host's, for psgo's boot time
    # another process (podman is one) reads the same; the start time is the
    # guest's plus the 5 s the guest booted after the host
    out = subprocess.run(["cat", str(proc / "7" / "stat")], capture_output=True, check=True)
    start = int(out.stdout.decode().rpartition(")")[2].split()[procview.STARTTIME])
    assert start == pytest.approx(900 + 5 * procview.USER_HZ, abs=1)
    assert len(fetches) <= 3          # a listing fetches afresh; files reuse it for CACHE_S
    with pytest.raises(OSError) as exc:
        (proc / "7" / "stat").write_bytes(b"x")
    assert exc.value.errno == errno.EROFS
    with pytest.raises(FileNotFoundError):
        (proc / "8" / "stat").read_bytes()


def test_a_process_gone_is_enoent_and_a_guest_gone_eio(mounted: Mounted) -> None:
    proc, _, state = mounted
    assert "7" in os.listdir(proc)
    state["entries"] = entries()[:1]
    time.sleep(procview.CACHE_S + 0.1)
    assert sorted(os.listdir(proc)) == ["1", "stat"]
    with pytest.raises(FileNotFoundError):
        (proc / "7" / "stat").read_bytes()
    state["entries"] = None
    time.sleep(procview.CACHE_S + 0.1)
    with pytest.raises(OSError) as exc:
        os.listdir(proc)
    assert exc.value.errno == errno.EIO
