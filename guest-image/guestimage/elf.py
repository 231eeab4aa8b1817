"""Minimal ELF64 little-endian reader: the two facts the image build needs.

- ``modinfo(data)``: the ``key=value`` strings of a kernel module's
  ``.modinfo`` section (``depends=``, ``name=``) — what depmod reads, so the
  build does not need kmod on the host.
- ``needed(data)``: the ``DT_NEEDED`` sonames of a shared object or
  executable, used to keep only the libraries the guest really loads.

Reference: System V ABI, "Sections" and "Dynamic Section" (gABI 4.1).
Files that are not ELF64 LE yield empty results rather than errors.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
SHT_DYNAMIC = 6
DT_NULL = 0
DT_NEEDED = 1


@dataclass(frozen=True)
class Section:
    name: str
    type: int
    offset: int
    size: int
    link: int


def is_elf(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC


def sections(data: bytes) -> list[Section]:
    """Section headers of an ELF64 LE file (empty for anything else)."""
    if len(data) < 64 or not is_elf(data) or data[4] != ELFCLASS64 or data[5] != ELFDATA2LSB:
        return []
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    if shoff == 0 or shnum == 0 or shoff + shnum * shentsize > len(data):
        return []
    raw = []
    for i in range(shnum):
        name, typ, _flags, _addr, off, size, link = struct.unpack_from(
            "<IIQQQQI", data, shoff + i * shentsize
        )
        raw.append((name, typ, off, size, link))
    strtab_off = raw[shstrndx][2] if shstrndx < len(raw) else 0
    result = []
    for name, typ, off, size, link in raw:
        end = data.find(b"\0", strtab_off + name)
        result.append(Section(data[strtab_off + name : end].decode(), typ, off, size, link))
    return result


def modinfo(data: bytes) -> dict[str, str]:
    """The ``.modinfo`` strings of a kernel module (first value wins per key)."""
    info: dict[str, str] = {}
    for sec in sections(data):
        if sec.name == ".modinfo":
            for entry in data[sec.offset : sec.offset + sec.size].split(b"\0"):
                key, sep, value = entry.decode(errors="replace").partition("=")
                if sep:
                    info.setdefault(key, value)
    return info


def needed(data: bytes) -> list[str]:
    """The ``DT_NEEDED`` sonames of a dynamically linked ELF file."""
    secs = sections(data)
    result: list[str] = []
    for sec in secs:
        if sec.type != SHT_DYNAMIC or sec.link >= len(secs):
            continue
        strtab = secs[sec.link]
        for pos in range(sec.offset, sec.offset + sec.size, 16):
            tag, val = struct.unpack_from("<qQ", data, pos)
            if tag == DT_NULL:
                break
            if tag == DT_NEEDED:
                start = strtab.offset + val
                result.append(data[start : data.find(b"\0", start)].decode())
    return result


PT_NOTE = 4
XEN_ELFNOTE_PHYS32_ENTRY = 18


def notes(data: bytes) -> list[tuple[str, int]]:
    """``(owner, type)`` of every note in the PT_NOTE segments."""
    if len(data) < 64 or not is_elf(data) or data[4] != ELFCLASS64:
        return []
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    result = []
    for i in range(phnum):
        ptype, _flags, off, _vaddr, _paddr, filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize
        )
        pos, end = off, off + filesz
        while ptype == PT_NOTE and pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
            name = data[pos + 12 : pos + 12 + namesz].rstrip(b"\0").decode(errors="replace")
            result.append((name, ntype))
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return result


def has_pvh_entry(data: bytes) -> bool:
    """True when an ELF kernel carries the Xen PVH entry note QEMU boots from."""
    return ("Xen", XEN_ELFNOTE_PHYS32_ENTRY) in notes(data)
