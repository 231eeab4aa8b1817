"""The holder (kata_py/holder.py), for real and without a VM: a process
becomes the holder, its child plays the monitor and has it enter a rootfs
made here; the test then looks into the holder's mount namespace through
/proc/HOLDER/root, as podman's cp and top do with setns."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kata_py import holder
from kata_py.errors import ResourceError

REPO = Path(__file__).resolve().parents[2]
Running = tuple["subprocess.Popen[str]", dict[str, Any], Path]  # holder, what the monitor said, tmp

# The process the test starts: it becomes the holder; its child is the
# "monitor", which has it enter ROOTFS, says so on stdout, serves a /proc view
# with one process in it, and then does what stdin tells it.
SCRIPT = r"""
import json, os, signal, sys, time
from pathlib import Path
from kata_py import fuse, holder, procview

args = json.loads(sys.argv[1])
notify_r, notify_w = os.pipe()
link = holder.split(notify_w)            # only the monitor comes back
holder_link = holder.HolderLink(link)
binds = [holder.Bind(*b) for b in args["binds"]]
fd = fuse.open_device()
why = holder_link.enter(Path(args["rootfs"]), args["readonly"], binds, fd, args["own_net"])
view = procview.ProcView(lambda: ([(1, b"1 (sleep) S 0 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0\n",
                                     b"Name:\tsleep\n", b"sleep\x00100\x00", "pid:[1]")],
                                  time.clock_gettime_ns(time.CLOCK_BOOTTIME)))
# the view's thread must not take the SIGTERM meant for the main thread's
# handler (a process signal goes to any thread that does not block it)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
view.serve(fd)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
signal.signal(signal.SIGTERM, lambda s, f: print("got", s, flush=True))
print(json.dumps({"monitor": os.getpid(), "holder": holder_link.pid, "why": why}), flush=True)
for line in sys.stdin:
    if line.startswith("exit"):
        os._exit(int(line.split()[1]))
"""


def _rootfs(tmp_path: Path) -> tuple[Path, Path, Path]:
    rootfs = tmp_path / "rootfs"
    for d in ("etc", "proc", "dev", "data", "ro", "sys"):
        (rootfs / d).mkdir(parents=True)
    (rootfs / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\nkid:x:1000:100::/:/bin/sh\n")
    (rootfs / "link").symlink_to("/etc/../data")        # inside the rootfs, not the host's
    volume, ro_volume = tmp_path / "volume", tmp_path / "ro-volume"
    volume.mkdir()
    ro_volume.mkdir()
    (volume / "from-host").write_text("host file\n")
    return rootfs, volume, ro_volume


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    if not os.path.exists("/dev/fuse") or os.geteuid() != 0:
        pytest.fail("the holder needs root and /dev/fuse (scripts/setup.sh's host has both)")
    rootfs, volume, ro_volume = _rootfs(tmp_path)
    args = {"rootfs": str(rootfs), "readonly": False, "own_net": True,
            "binds": [[str(volume), "/link", False], [str(ro_volume), "/ro", True],
                      [str(volume), "/sys/x", False]]}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(args)], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    info = json.loads(proc.stdout.readline())
    try:
        yield proc, info, tmp_path
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        _gone(int(info["monitor"]))


def _gone(pid: int) -> bool:
    """Whether pid is gone within 5 s."""
    for _ in range(100):
        if not os.path.exists(f"/proc/{pid}"):
            return True
        time.sleep(0.05)
    return False


def _host_mounts(path: Path) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if str(path) in line]


def test_the_holder_s_root_is_the_container_s(running: Running) -> None:
    proc, info, tmp_path = running
    assert info["holder"] == proc.pid and info["why"] == ""
    root = Path(f"/proc/{proc.pid}/root")
    # what podman cp reads and writes: the rootfs and its bind mounts
    assert (root / "etc" / "passwd").read_text().endswith("kid:x:1000:100::/:/bin/sh\n")
    assert (root / "data" / "from-host").read_text() == "host file\n"   # /link -> /data
    (root / "data" / "from-cp").write_text("copied in\n")
    assert (tmp_path / "volume" / "from-cp").read_text() == "copied in\n"
    (root / "new-file").write_text("x")
    assert (tmp_path / "rootfs" / "new-file").read_text() == "x"
    with pytest.raises(OSError) as exc:
        (root / "ro" / "f").write_text("x")
    assert exc.value.errno == errno.EROFS
    assert not (root / "sys" / "x").exists()          # below /sys: the guest's, not shown
    assert os.listdir(root / "dev") == ["pts"]
    # what podman top reads: the guest's processes
    assert sorted(os.listdir(root / "proc")) == ["1", "stat"]
    assert (root / "proc" / "1" / "cmdline").read_bytes() == b"sleep\x00100\x00"
    # nothing of it on the host
    assert not (Path("/") / "new-file").exists()
    assert _host_mounts(tmp_path) == []
    # a network namespace of its own, empty: what buildah configures through
    # the pid after create never lands in the host's
    assert os.readlink(f"/proc/{proc.pid}/ns/net") != os.readlink("/proc/self/ns/net")
    assert os.listdir(tmp_path / "rootfs" / "dev") == []


def test_the_holder_forwards_signals_and_exits_as_the_monitor(running: Running) -> None:
    proc, _, _ = running
    assert proc.stdin is not None and proc.stdout is not None
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.stdout.readline().strip() == f"got {int(signal.SIGTERM)}"
    proc.stdin.write("exit 7\n")
    proc.stdin.flush()
    assert proc.wait(10) == 7


def test_the_monitor_dies_with_its_holder(running: Running) -> None:
    proc, info, _ = running
    proc.kill()
    proc.wait(10)
    assert _gone(int(info["monitor"]))


def test_a_monitor_killed_kills_its_holder_with_the_same_signal(running: Running) -> None:
    proc, info, _ = running
    os.kill(int(info["monitor"]), signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL


def test_destinations_resolve_inside_the_rootfs(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "a").mkdir(parents=True)
    (root / "abs").symlink_to("/a")
    (root / "up").symlink_to("../../../..")
    (root / "loop").symlink_to("loop")
    assert holder.in_root(root, "/abs/b") == root / "a" / "b"
    assert holder.in_root(root, "/up/etc") == root / "etc"
    assert holder.in_root(root, "../../etc/passwd") == root / "etc" / "passwd"
    with pytest.raises(OSError):
        holder.in_root(root, "/loop/x")


def test_a_failed_enter_is_an_error_line() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    link = holder.HolderLink(a.detach())
    b.send(b"error mount on /x: No such file or directory")
    with pytest.raises(ResourceError) as exc:
        link.enter(Path("/r"), False, [], None)
    assert "cannot give the host a view of the container's root /r" in str(exc.value)
    assert json.loads(b.recv(4096))["rootfs"] == "/r"
