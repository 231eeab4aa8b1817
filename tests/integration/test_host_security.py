"""The host side of a sandbox, tried as a local user would: nothing under
--root is readable or connectable by anyone but root, whatever umask the
caller had, and what a container plants through the share (a setuid-root
binary, a device node) gives nobody anything on the host."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from kata_py.host_mounts import mounts_below
from kata_py.spec_default import default_spec

from .conftest import CLI_TIMEOUT_S, busybox_rootfs, cli_argv, kp

pytestmark = pytest.mark.vm

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
PLANT = ("cp /bin/realid /suid && chmod 4755 /suid && cp /bin/realid /vol/suid && "
         "chmod 4755 /vol/suid && mknod /null2 c 1 3 && echo planted; exec sleep 600")


def _as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NOBODY, *argv], capture_output=True, text=True, timeout=30,
                          check=False)


def _walk_without_mounts(top: Path, mounts: set[Path]) -> list[Path]:
    """Everything kata-py made below top; the share's bind mounts are the
    bundle's files (their modes are the bundle's), so not below them."""
    found = [top]
    for entry in top.iterdir():
        if entry in mounts:
            continue
        if entry.is_dir() and not entry.is_symlink():
            found += _walk_without_mounts(entry, mounts)
        else:
            found.append(entry)
    return found


def test_state_share_and_sockets_are_roots_alone_under_umask_000(root: Path,
                                                                  tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    rootfs = busybox_rootfs(bundle / "rootfs")
    # The host's id(1), which the container only copies: run from the share
    # by a host user, it says whether its setuid bit took.
    shutil.copy("/usr/bin/id", rootfs / "bin" / "realid")
    volume = tmp_path / "volume"
    volume.mkdir()
    (rootfs / "vol").mkdir()
    spec = default_spec()
    spec["root"]["readonly"] = False
    caps = [*spec["process"]["capabilities"]["bounding"], "CAP_MKNOD"]
    spec["process"].update(terminal=False, args=["sh", "-c", PLANT],
                           capabilities={k: caps for k in ("bounding", "effective",
                                                           "permitted")})
    spec["mounts"].append({"destination": "/vol", "type": "bind", "source": str(volume),
                           "options": ["rbind", "rw"]})
    (bundle / "config.json").write_text(json.dumps(spec))
    bundle.chmod(0o700)
    out, err = tmp_path / "out", tmp_path / "err"
    with out.open("wb") as stdout, err.open("wb") as stderr:   # files: the monitor keeps them
        created = subprocess.run(["sh", "-c", 'umask 000; exec "$@"', "sh",
                                  *cli_argv(root, "create", "-b", str(bundle), "sec")],
                                 stdout=stdout, stderr=stderr, timeout=CLI_TIMEOUT_S,
                                 check=False)
    assert created.returncode == 0, err.read_text()
    assert kp(root, "start", "sec").returncode == 0
    deadline = time.monotonic() + 60
    while b"planted" not in out.read_bytes():
        assert time.monotonic() < deadline, (out.read_bytes(), err.read_bytes())
        time.sleep(0.3)

    # 1. modes: no group or other bit on anything kata-py made, sockets included
    made = _walk_without_mounts(root, set(mounts_below(root)))
    wide = [f"{p} {stat.filemode(p.lstat().st_mode)}" for p in made
            if not p.is_symlink() and stat.S_IMODE(p.lstat().st_mode) & 0o077]
    assert wide == []
    sockets = [p.name for p in made if stat.S_ISSOCK(p.lstat().st_mode)]
    assert {"agent.sock", "qmp.sock", "virtiofs.sock", "vsock.sock"} <= set(sockets)
    assert _as_nobody("cat", str(root / "containers" / "sec" / "state.json")).returncode != 0
    assert _as_nobody("ls", str(root)).returncode != 0

    # 2. even with the directories opened up, the sockets refuse other users
    share = root / "vm" / "sec" / "shared" / "sec"
    volume_share = next((share / "mounts").glob("*/volume"))
    for directory in (root, root / "vm", root / "vm" / "sec", share.parent, share,
                      share / "mounts", volume_share.parent, root / "containers",
                      root / "containers" / "sec"):
        directory.chmod(0o711)
    agent = root / "vm" / "sec" / "agent.sock"
    connect = _as_nobody("/usr/bin/python3", "-c", "import socket; "
                         f"socket.socket(socket.AF_UNIX).connect({str(agent)!r})")
    assert "PermissionError" in connect.stderr, connect

    # 3. what the container planted: setuid not honoured, device not openable
    for planted in (share / "rootfs" / "suid", volume_share / "suid"):
        assert planted.stat().st_mode & stat.S_ISUID      # the guest still sees the bit
        flags = os.statvfs(planted).f_flag
        assert flags & os.ST_NOSUID and flags & os.ST_NODEV, planted
        assert _as_nobody("test", "-r", str(planted)).returncode == 0    # reachable, and yet:
        ran = _as_nobody(str(planted))      # before: "uid=65534(nobody) … euid=0(root)"
        assert "euid=0" not in ran.stdout, ran
        assert ran.returncode != 0 and "Permission denied" in ran.stderr, ran   # noexec
    assert (bundle / "rootfs" / "null2").stat().st_rdev == os.makedev(1, 3)
    with pytest.raises(PermissionError):
        (share / "rootfs" / "null2").open("rb")
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o700      # the bundle is not widened

    assert kp(root, "delete", "--force", "sec").returncode == 0
