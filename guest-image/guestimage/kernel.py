"""The guest kernel: the uncompressed ELF ``vmlinux`` out of Debian's bzImage.

QEMU boots an ELF kernel through its PVH entry point, skipping the bzImage
real-mode setup and self-decompression (≈0.2 s under TCG, see README.md).
The bzImage setup header (x86 boot protocol >= 2.08, Documentation/x86/boot.rst)
gives the compressed payload's offset and length; the payload is decompressed
with the codec its magic names. Debian's cloud kernel uses LZ4 (``lz4`` tool).
"""

from __future__ import annotations

import gzip
import lzma
import struct

from guestimage import BuildError, elf
from guestimage.tools import run

MAGICS = {
    b"\x02\x21\x4c\x18": "lz4",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\xfd7zXZ\x00": "xz",
    b"\x1f\x8b": "gzip",
}


def payload(bzimage: bytes) -> bytes:
    """The compressed kernel inside a bzImage (header fields payload_offset/length)."""
    if bzimage[0x202:0x206] != b"HdrS" or struct.unpack_from("<H", bzimage, 0x206)[0] < 0x208:
        raise BuildError("the kernel image is not a bzImage with boot protocol >= 2.08")
    setup_sects = bzimage[0x1F1] or 4
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + offset
    return bzimage[start : start + length]


def decompress(data: bytes) -> bytes:
    codec = next((c for m, c in MAGICS.items() if data.startswith(m)), None)
    if codec == "gzip":
        return gzip.decompress(data)
    if codec == "xz":
        return lzma.decompress(data)
    if codec in ("lz4", "zstd"):
        # The kernel appends the 4-byte uncompressed size; the tools stop before it.
        return run(
            [codec, "-dc"],
            f"{codec} -d (kernel payload)",
            f"apt-get install {codec}",
            stdin=data[:-4],
        )
    raise BuildError(f"unknown kernel compression (magic {data[:6].hex()})")


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF vmlinux (with its PVH note) inside ``bzimage``."""
    vmlinux = decompress(payload(bzimage))
    if not elf.is_elf(vmlinux) or not elf.has_pvh_entry(vmlinux):
        raise BuildError(
            "the decompressed kernel is not an ELF with a PVH entry note",
            "build with --kernel-format bzimage",
        )
    return vmlinux
