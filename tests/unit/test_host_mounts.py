"""Host bind mounts that expose container files to the guest."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from kata_py.host_mounts import bind, mounts_below, unmount_all


def test_directory_and_file_binds_show_through_and_unmount(tmp_path: Path) -> None:
    src = tmp_path / "rootfs"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "x").write_text("x")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    share = tmp_path / "share"
    try:
        bind(src, share / "c1" / "rootfs")
        bind(hosts, share / "c1" / "mounts" / "0-hosts", readonly=True)
        assert (share / "c1" / "rootfs" / "bin" / "x").read_text() == "x"
        assert (share / "c1" / "mounts" / "0-hosts").read_text().startswith("127.0.0.1")
        with pytest.raises(OSError) as exc:
            (share / "c1" / "mounts" / "0-hosts").write_text("no")
        assert exc.value.errno == errno.EROFS
        assert len(mounts_below(share)) == 2
    finally:
        remaining = unmount_all(share)
    assert remaining == []
    assert os.listdir(share / "c1" / "rootfs") == []      # only the empty mount point
    assert (src / "bin" / "x").read_text() == "x"         # the source is untouched


def test_binds_in_the_share_honour_no_setuid_device_or_exec_on_the_host(tmp_path: Path) -> None:
    """What a guest writes through the share (a setuid-root binary, a device
    node) must give no host user anything: nosuid, nodev and noexec on the
    bind and on every mount below its source."""
    src = tmp_path / "rootfs"
    (src / "vol").mkdir(parents=True)
    sub_src = tmp_path / "volume"
    sub_src.mkdir()
    os.mknod(src / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (src / "suid").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "suid", 0o4755)
    share = tmp_path / "share"
    try:
        bind(sub_src, src / "vol")           # a mount below the source (rbind takes it)
        bind(src, share / "c1" / "rootfs")
        for point in (share / "c1" / "rootfs", share / "c1" / "rootfs" / "vol"):
            flags = os.statvfs(point).f_flag
            assert flags & os.ST_NOSUID and flags & os.ST_NODEV and flags & os.ST_NOEXEC, point
            assert not flags & os.ST_RDONLY
        with pytest.raises(PermissionError):
            open(share / "c1" / "rootfs" / "null", "rb")   # noqa: SIM115 - must not open
        assert (src / "null").stat().st_rdev == os.makedev(1, 3)
        # the bit stays, for the guest
        assert os.stat(share / "c1" / "rootfs" / "suid").st_mode & stat.S_ISUID
        with pytest.raises(PermissionError):
            os.execv(share / "c1" / "rootfs" / "suid", ["suid"])
    finally:
        assert unmount_all(share) == []
        assert unmount_all(src / "vol") == []
