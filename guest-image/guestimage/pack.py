"""Packing the guest tree: a cpio (newc) initramfs and a read-only filesystem image.

The cpio is written here rather than by cpio(1) so the archive is fully
determined by the tree: sorted paths, uid/gid 0, one fixed mtime, inode
numbers in order, and a ``/dev/console`` node (the kernel opens it for PID 1
before /dev is mounted) without needing mknod. Format: "New ASCII" in
cpio(5) and the kernel's Documentation/driver-api/early-userspace/buffer-format.rst.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path
from typing import BinaryIO

from guestimage.tools import run

CONSOLE = ("dev/console", stat.S_IFCHR | 0o600, 5, 1)
EXT4_UUID = "6b617461-7079-4775-8573-742d726f6f74"  # fixed: reproducible images


def _entry(
    out: BinaryIO,
    ino: int,
    name: str,
    mode: int,
    data: bytes,
    mtime: int,
    rdev: tuple[int, int] = (0, 0),
) -> None:
    nlink = 2 if stat.S_ISDIR(mode) else 1
    fields = (ino, mode, 0, 0, nlink, mtime, len(data), 0, 0, *rdev, len(name) + 1, 0)
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    out.write(header + name.encode() + b"\0")
    out.write(b"\0" * (-(len(header) + len(name) + 1) % 4))
    out.write(data)
    out.write(b"\0" * (-len(data) % 4))


def write_cpio(root: Path, dest: Path, mtime: int) -> None:
    """Write ``root`` as an uncompressed newc initramfs at ``dest``."""
    paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
    with dest.open("wb") as out:
        ino = 1
        for rel in paths:
            st = os.lstat(root / rel)
            if stat.S_ISLNK(st.st_mode):
                data = os.readlink(root / rel).encode()
            elif stat.S_ISREG(st.st_mode):
                data = (root / rel).read_bytes()
            else:
                data = b""
            _entry(out, ino, rel, st.st_mode, data, mtime)
            ino += 1
        if CONSOLE[0] not in paths:
            _entry(out, ino, CONSOLE[0], CONSOLE[1], b"", mtime, CONSOLE[2:])
        _entry(out, 0, "TRAILER!!!", 0, b"", 0)


def make_ext4(root: Path, dest: Path, mtime: int) -> None:
    """A journal-less ext4 image of ``root``, sized to fit, for a read-only virtio-blk.

    mke2fs copies each inode's atime/ctime from the build tree (ctime cannot be
    set there), so debugfs then sets them to ``mtime``, and the superblock's last
    write time (which debugfs stamps with the clock) is patched: the image is
    byte-for-byte reproducible.
    """
    paths = sorted(root.rglob("*"))
    blocks = sum((p.lstat().st_size + 4095) // 4096 for p in paths if not p.is_symlink())
    inodes = len(paths) + 256
    size = (blocks * 4096 * 21 // 20 + inodes * 256) // 2**20 * 2**20 + 8 * 2**20
    args: list[str | Path] = ["-q", "-F", "-d", root, "-L", "kata-py-root", "-U", EXT4_UUID]
    args += ["-E", f"hash_seed={EXT4_UUID},root_owner=0:0,lazy_itable_init=0", "-m", "0"]
    args += ["-O", "^has_journal,^metadata_csum", "-b", "4096", "-I", "256", "-N", str(inodes)]
    fake_time = {"E2FSPROGS_FAKE_TIME": str(mtime)}  # superblock times
    dest.unlink(missing_ok=True)
    with dest.open("wb") as sparse:
        sparse.truncate(size)
    run(["mkfs.ext4", *args, dest], "mkfs.ext4 -d", "apt-get install e2fsprogs", env=fake_time)
    names = ["/", *("/" + p.relative_to(root).as_posix() for p in paths)]
    cmds = "".join(f'sif "{n}" {f} @{mtime}\n' for n in names for f in ("atime", "ctime"))
    script = dest.with_suffix(".debugfs")
    script.write_text(cmds)
    try:
        run(["debugfs", "-w", "-f", script, dest], "debugfs", "apt-get install e2fsprogs")
    finally:
        script.unlink()
    with dest.open("r+b") as image:  # superblock at 1024, s_wtime at 0x30 (no checksum)
        image.seek(1024 + 0x30)
        image.write(struct.pack("<I", mtime))


def make_erofs(root: Path, dest: Path, mtime: int) -> None:
    """An uncompressed erofs image of ``root`` (the kernel has erofs as a module)."""
    dest.unlink(missing_ok=True)
    run(
        ["mkfs.erofs", "--quiet", f"-T{mtime}", f"-U{EXT4_UUID}", "--all-root", "-x-1", dest, root],
        "mkfs.erofs",
        "apt-get install erofs-utils",
    )


ROOTFS_MAKERS = {"ext4": make_ext4, "erofs": make_erofs}
