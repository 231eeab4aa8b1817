"""Host bind mounts that expose container files to the guest."""

from __future__ import annotations

import errno
import os
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
