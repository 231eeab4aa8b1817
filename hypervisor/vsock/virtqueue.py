"""Guest memory and the split virtqueue, seen from a vhost-user back-end.

Owns (virtio spec v1.2 section 2.7 "Split Virtqueues"; QEMU
docs/interop/vhost-user.rst "Memory regions description" and "Vring address
description"):

- :class:`GuestMemory`: the regions QEMU sent with SET_MEM_TABLE, each an
  ``mmap`` of a shared memfd at ``mmap_offset``. Descriptor buffers carry
  *guest-physical* addresses; the ring addresses of SET_VRING_ADDR are in
  QEMU's *user-virtual* address space. Both are translated here.
- :class:`VirtQueue`: pops available descriptor chains, gathers/scatters across
  a chain of any shape, publishes used elements and signals the call eventfd.

It does not know what the bytes mean (that is ``packet``/``muxer``) nor where
the vhost-user settings come from (``vhost_user``). No EVENT_IDX, no indirect
descriptors: the back-end never offers them.
"""

from __future__ import annotations

import dataclasses
import logging
import mmap
import os
import struct
import threading

log = logging.getLogger(__name__)

DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
AVAIL_F_NO_INTERRUPT = 1

_DESC = struct.Struct("<QIHH")  # addr, len, flags, next
_U16 = struct.Struct("<H")
_USED_ELEM = struct.Struct("<II")  # id, len

# Taking an uncontended lock executes a locked instruction, which is a full
# memory barrier on x86: it orders our used-idx store before the avail-flags
# load (virtio spec 2.7.7.2 asks the device for that barrier).
_fence_lock = threading.Lock()


def memory_fence() -> None:
    with _fence_lock:
        pass


class GuestMemoryError(Exception):
    """An address outside every region the front-end gave us."""


@dataclasses.dataclass(frozen=True, slots=True)
class RegionSpec:
    """One ``VhostUserMemoryRegion`` as sent in SET_MEM_TABLE."""

    guest_phys_addr: int
    size: int
    user_addr: int
    mmap_offset: int


@dataclasses.dataclass(slots=True)
class _Region:
    spec: RegionSpec
    map: mmap.mmap


class GuestMemory:
    """The guest RAM regions, mapped shared from the front-end's fds."""

    def __init__(self, regions: list[tuple[RegionSpec, int]]) -> None:
        """Map each ``(spec, fd)``; the fds are closed here whatever happens."""
        self._regions: list[_Region] = []
        try:
            for spec, fd in regions:
                m = mmap.mmap(
                    fd,
                    spec.size,
                    flags=mmap.MAP_SHARED,
                    prot=mmap.PROT_READ | mmap.PROT_WRITE,
                    offset=spec.mmap_offset,
                )
                self._regions.append(_Region(spec, m))
        except BaseException:
            self.close()
            raise
        finally:
            for _spec, fd in regions:
                os.close(fd)

    def close(self) -> None:
        for r in self._regions:
            r.map.close()
        self._regions = []

    def _segments(self, addr: int, length: int, physical: bool) -> list[tuple[mmap.mmap, int, int]]:
        out: list[tuple[mmap.mmap, int, int]] = []
        while length > 0:
            for r in self._regions:
                base = r.spec.guest_phys_addr if physical else r.spec.user_addr
                if base <= addr < base + r.spec.size:
                    off = addr - base
                    n = min(length, r.spec.size - off)
                    out.append((r.map, off, n))
                    addr += n
                    length -= n
                    break
            else:
                kind = "guest-physical" if physical else "front-end virtual"
                raise GuestMemoryError(f"{kind} address {addr:#x} is not in any memory region")
        return out

    def ring_map(self, user_addr: int, length: int) -> tuple[mmap.mmap, int]:
        """Map a ring (front-end virtual address); it must lie in one region."""
        segs = self._segments(user_addr, length, physical=False)
        if len(segs) != 1:
            raise GuestMemoryError(f"ring at {user_addr:#x} spans memory regions")
        return segs[0][0], segs[0][1]

    def read(self, gpa: int, length: int) -> bytes:
        return b"".join(m[o : o + n] for m, o, n in self._segments(gpa, length, physical=True))

    def write(self, gpa: int, data: bytes | memoryview) -> None:
        pos = 0
        for m, o, n in self._segments(gpa, len(data), physical=True):
            m[o : o + n] = data[pos : pos + n]
            pos += n


@dataclasses.dataclass(slots=True)
class Chain:
    """One available descriptor chain: its head id and its buffers in order."""

    head: int
    readable: list[tuple[int, int]]  # (guest-physical addr, len) the device reads
    writable: list[tuple[int, int]]  # (guest-physical addr, len) the device writes

    @property
    def readable_len(self) -> int:
        return sum(n for _a, n in self.readable)

    @property
    def writable_len(self) -> int:
        return sum(n for _a, n in self.writable)

    def gather(self, mem: GuestMemory, limit: int) -> bytes:
        """Up to ``limit`` bytes from the driver-to-device buffers, in order."""
        parts: list[bytes] = []
        for addr, n in self.readable:
            if limit <= 0:
                break
            take = min(n, limit)
            parts.append(mem.read(addr, take))
            limit -= take
        return b"".join(parts)

    def scatter(self, mem: GuestMemory, data: bytes) -> int:
        """Write ``data`` across the device-writable buffers; returns bytes written."""
        view = memoryview(data)
        pos = 0
        for addr, n in self.writable:
            if pos >= len(view):
                break
            take = min(n, len(view) - pos)
            mem.write(addr, view[pos : pos + take])
            pos += take
        return pos


# (mmap, offset) of the descriptor table, the available ring and the used ring.
_RingMaps = tuple[tuple[mmap.mmap, int], tuple[mmap.mmap, int], tuple[mmap.mmap, int]]


class VirtQueueError(Exception):
    """The driver handed us a malformed ring or chain."""


class VirtQueue:
    """One split virtqueue as configured by SET_VRING_NUM/ADDR/BASE/KICK/CALL/ENABLE."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.size = 0
        self.desc_addr = 0  # front-end virtual addresses (SET_VRING_ADDR)
        self.avail_addr = 0
        self.used_addr = 0
        self.last_avail_idx = 0
        self.used_idx = 0
        self.kick_fd: int | None = None
        self.call_fd: int | None = None
        self.started = False  # SET_VRING_KICK received, not yet stopped by GET_VRING_BASE
        self.enabled = False
        self._maps: _RingMaps | None = None

    @property
    def ready(self) -> bool:
        return self.started and self.enabled and self.size > 0

    def attach(self, mem: GuestMemory) -> None:
        """Resolve the ring addresses against (new) guest memory."""
        n = self.size
        self._maps = (
            mem.ring_map(self.desc_addr, 16 * n),
            mem.ring_map(self.avail_addr, 6 + 2 * n),
            mem.ring_map(self.used_addr, 6 + 8 * n),
        )

    def detach(self) -> None:
        self._maps = None

    def _rings(self) -> _RingMaps:
        if self._maps is None:
            raise VirtQueueError(f"queue {self.index} has no ring mapping")
        return self._maps

    def pending(self) -> bool:
        if not self.ready or self._maps is None:
            return False
        (am, ao) = self._maps[1]
        return bool(_U16.unpack_from(am, ao + 2)[0] != self.last_avail_idx)

    def pop(self) -> Chain | None:
        """The next available chain, or None when the driver has offered nothing new."""
        if not self.pending():
            return None
        (dm, do), (am, ao), _used = self._rings()
        slot = self.last_avail_idx % self.size
        head = _U16.unpack_from(am, ao + 4 + 2 * slot)[0]
        self.last_avail_idx = (self.last_avail_idx + 1) & 0xFFFF
        chain = Chain(head, [], [])
        idx = head
        for _ in range(self.size):
            if idx >= self.size:
                raise VirtQueueError(f"queue {self.index}: descriptor {idx} out of range")
            addr, length, flags, nxt = _DESC.unpack_from(dm, do + 16 * idx)
            if flags & DESC_F_INDIRECT:
                raise VirtQueueError(f"queue {self.index}: indirect descriptor not negotiated")
            (chain.writable if flags & DESC_F_WRITE else chain.readable).append((addr, length))
            if not flags & DESC_F_NEXT:
                return chain
            idx = nxt
        raise VirtQueueError(f"queue {self.index}: descriptor chain from {head} loops")

    def undo_pop(self) -> None:
        """Give back the chain just popped (nothing was written to it)."""
        self.last_avail_idx = (self.last_avail_idx - 1) & 0xFFFF

    def push(self, head: int, written: int) -> None:
        """Publish one used element: element first, then the index (x86 TSO keeps order)."""
        _desc, _avail, (um, uo) = self._rings()
        slot = self.used_idx % self.size
        _USED_ELEM.pack_into(um, uo + 4 + 8 * slot, head, written)
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        _U16.pack_into(um, uo + 2, self.used_idx)

    def notify(self) -> None:
        """Signal the call eventfd unless the driver asked for no interrupts."""
        if self.call_fd is None or self._maps is None:
            return
        memory_fence()
        (am, ao) = self._maps[1]
        if _U16.unpack_from(am, ao)[0] & AVAIL_F_NO_INTERRUPT:
            return
        try:
            os.eventfd_write(self.call_fd, 1)
        except OSError as e:
            log.warning("queue %d: call eventfd write failed: %s", self.index, e)

    def close_fds(self) -> None:
        for fd in (self.kick_fd, self.call_fd):
            if fd is not None:
                os.close(fd)
        self.kick_fd = None
        self.call_fd = None
