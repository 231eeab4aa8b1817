"""A small read-only FUSE server: the protocol under the monitor's views of
guest state on the host (statsview.py at the host cgroup, procview.py as
the container's /proc for podman top).

Each mount is a `Tree` (lookup, list, read, readlink over integer node ids;
the root is ROOT_ID); one `Server` thread serves every mount of a monitor.
File contents are taken once at open (FOPEN_DIRECT_IO, st_size 0, as in
procfs and cgroupfs) and read from that copy.

The protocol subset (linux/fuse.h, protocol 7.31): INIT, LOOKUP, FORGET,
BATCH_FORGET, GETATTR, READLINK, OPEN, READ, RELEASE, FLUSH, OPENDIR,
READDIR, RELEASEDIR, STATFS, ACCESS, INTERRUPT and DESTROY; anything else
gets ENOSYS (the mounts are read-only, so the kernel sends no writes).
Written here rather than taken from a library: ≈ 150 lines, and the monitor
gains no dependency.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import stat
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kata_py import host_mounts

log = logging.getLogger(__name__)

FUSE_MAJOR, FUSE_MINOR = 7, 31
ROOT_ID = 1
READ_BUFFER = 64 * 1024 + 4096   # >= FUSE_MIN_READ_BUFFER (8 KiB); we accept no writes
FOPEN_DIRECT_IO = 1              # contents change per open; st_size is 0

IN_HEADER = struct.Struct("<IIQQIIIHH")
OUT_HEADER = struct.Struct("<IiQ")
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
ENTRY_OUT = struct.Struct("<QQQQII")
ATTR_OUT = struct.Struct("<QII")
OPEN_OUT = struct.Struct("<QII")
READ_IN = struct.Struct("<QQI")
INIT_IN = struct.Struct("<IIII")
INIT_OUT = struct.Struct("<IIIIHHIIHHI7I")
KSTATFS = struct.Struct("<QQQQQIIII6I")
DIRENT = struct.Struct("<QQII")

LOOKUP, FORGET, GETATTR, READLINK, OPEN, READ, STATFS, RELEASE = 1, 2, 3, 5, 14, 15, 17, 18
FLUSH, INIT, OPENDIR, READDIR, RELEASEDIR, ACCESS = 25, 26, 27, 28, 29, 34
INTERRUPT, DESTROY, BATCH_FORGET = 36, 38, 42
NO_REPLY = (FORGET, BATCH_FORGET, INTERRUPT)

MODES = {stat.S_IFDIR: stat.S_IFDIR | 0o555, stat.S_IFREG: stat.S_IFREG | 0o444,
         stat.S_IFLNK: stat.S_IFLNK | 0o777}
MOUNT_FLAGS = host_mounts.MS_RDONLY | host_mounts.MS_NOSUID | host_mounts.MS_NODEV \
    | host_mounts.MS_NOEXEC


class Tree(Protocol):
    """One mount's contents. `kind` is stat.S_IFDIR/S_IFREG/S_IFLNK, or None
    for a node that is gone. Any method may raise: the reader gets an
    OSError's errno, or EIO."""

    entry_valid_s: int      # how long the kernel may cache names and attributes

    def kind(self, node: int) -> int | None: ...
    def lookup(self, parent: int, name: str) -> int | None: ...
    def children(self, node: int) -> list[tuple[int, str, int]]: ...
    def read(self, node: int) -> bytes: ...
    def readlink(self, node: int) -> bytes: ...


@dataclass
class _Mount:
    tree: Tree
    fd: int
    name: str
    handles: dict[int, object] = field(default_factory=dict)   # open files and directories
    next_fh: int = 1


class Server:
    """Serves mounts (each a /dev/fuse fd and a Tree) on one daemon thread."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._mounts: list[_Mount] = []
        self._sel = selectors.DefaultSelector()
        self._thread: threading.Thread | None = None

    def add(self, fd: int, tree: Tree, name: str) -> None:
        """Serve the FUSE connection fd (mounted, or about to be) with tree."""
        m = _Mount(tree, fd, name)
        self._mounts.append(m)
        self._sel.register(fd, selectors.EVENT_READ, m)

    def start(self) -> None:
        if self._mounts and self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop serving (every mount must be unmounted first) and close the fds."""
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for m in self._mounts:
            os.close(m.fd)
        self._mounts = []
        self._sel.close()

    # ---- serving --------------------------------------------------------------

    def _serve(self) -> None:
        live = len(self._mounts)
        while live:
            for key, _ in self._sel.select():
                m: _Mount = key.data
                try:
                    request = os.read(m.fd, READ_BUFFER)
                except OSError as exc:
                    if exc.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                        continue              # ENOENT: the request was interrupted
                    self._sel.unregister(m.fd)   # ENODEV: unmounted
                    live -= 1
                    continue
                try:
                    self._handle(m, request)
                except Exception as exc:  # noqa: BLE001 - one bad request must not end the view
                    # a request left unanswered would hang its reader for good
                    _, opcode, unique = IN_HEADER.unpack_from(request)[:3]
                    if isinstance(exc, OSError) and exc.errno:
                        log.debug("%s %s: %s", self.name, m.name, exc)
                    else:
                        log.exception("%s %s: request failed", self.name, m.name)
                    if opcode not in NO_REPLY:
                        self._reply(m, unique, error=getattr(exc, "errno", 0) or errno.EIO)

    def _reply(self, m: _Mount, unique: int, payload: bytes = b"", error: int = 0) -> None:
        try:
            os.write(m.fd, OUT_HEADER.pack(OUT_HEADER.size + len(payload), -error, unique)
                     + payload)
        except OSError as exc:          # ENOENT: interrupted meanwhile
            log.debug("%s %s: reply to %d: %s", self.name, m.name, unique, exc)

    @staticmethod
    def _attr(node: int, kind: int) -> bytes:
        now = int(time.time())
        nlink = 2 if kind == stat.S_IFDIR else 1
        return ATTR.pack(node, 0, 0, now, now, now, 0, 0, 0, MODES[kind], nlink, 0, 0, 0,
                         4096, 0)

    def _handle(self, m: _Mount, request: bytes) -> None:
        _, opcode, unique, node, _, _, _, _, _ = IN_HEADER.unpack_from(request)
        body = request[IN_HEADER.size:]
        tree = m.tree
        if opcode in NO_REPLY:
            return
        if opcode == INIT:
            major, _minor, readahead, _flags = INIT_IN.unpack_from(body)
            if major != FUSE_MAJOR:
                self._reply(m, unique, error=errno.EPROTO)
                return
            self._reply(m, unique, INIT_OUT.pack(FUSE_MAJOR, FUSE_MINOR, readahead, 0,
                                                 16, 12, 4096, 1, 0, 0, 0, *[0] * 7))
        elif opcode == LOOKUP:
            name = body.split(b"\0", 1)[0].decode(errors="replace")
            child = tree.lookup(node, name)
            kind = tree.kind(child) if child is not None else None
            if child is None or kind is None:
                self._reply(m, unique, error=errno.ENOENT)
                return
            valid = tree.entry_valid_s
            self._reply(m, unique, ENTRY_OUT.pack(child, 0, valid, valid, 0, 0)
                        + self._attr(child, kind))
        elif opcode == GETATTR:
            kind = tree.kind(node)
            if kind is None:
                self._reply(m, unique, error=errno.ENOENT)
                return
            self._reply(m, unique, ATTR_OUT.pack(tree.entry_valid_s, 0, 0)
                        + self._attr(node, kind))
        elif opcode == READLINK:
            if tree.kind(node) != stat.S_IFLNK:
                self._reply(m, unique, error=errno.EINVAL)
                return
            self._reply(m, unique, tree.readlink(node))
        elif opcode in (OPEN, OPENDIR):
            kind = tree.kind(node)
            wanted = stat.S_IFREG if opcode == OPEN else stat.S_IFDIR
            if kind != wanted:
                self._reply(m, unique, error=errno.ENOENT if kind is None else
                            errno.EISDIR if kind == stat.S_IFDIR else errno.ENOTDIR)
                return
            try:
                held: object = tree.read(node) if opcode == OPEN else tree.children(node)
            except OSError:
                raise                     # its errno goes back (ENOENT: a process gone)
            except Exception as exc:  # noqa: BLE001 - the agent is gone or slow
                log.info("%s %s: nothing from the guest: %s", self.name, m.name, exc)
                self._reply(m, unique, error=errno.EIO)
                return
            fh, m.next_fh = m.next_fh, m.next_fh + 1
            m.handles[fh] = held
            self._reply(m, unique, OPEN_OUT.pack(fh, FOPEN_DIRECT_IO if opcode == OPEN else 0,
                                                 0))
        elif opcode in (READ, READDIR):
            fh, offset, size = READ_IN.unpack_from(body)
            held = m.handles.get(fh)
            if isinstance(held, bytes) and opcode == READ:
                self._reply(m, unique, held[offset:offset + size])
            elif isinstance(held, list) and opcode == READDIR:
                self._reply(m, unique, _dirents(node, held, offset, size))
            else:
                self._reply(m, unique, error=errno.EBADF)
        elif opcode in (RELEASE, RELEASEDIR):
            m.handles.pop(READ_IN.unpack_from(body)[0], None)
            self._reply(m, unique)
        elif opcode in (FLUSH, ACCESS, DESTROY):
            self._reply(m, unique)
        elif opcode == STATFS:
            self._reply(m, unique, KSTATFS.pack(0, 0, 0, 0, 0, 4096, 255, 4096, 0, *[0] * 6))
        else:
            self._reply(m, unique, error=errno.ENOSYS)


def _dirents(node: int, listing: list[tuple[int, str, int]], offset: int, size: int) -> bytes:
    entries = [(node, ".", stat.S_IFDIR), (ROOT_ID, "..", stat.S_IFDIR), *listing]
    out = b""
    for index in range(offset, len(entries)):
        child, name, kind = entries[index]
        raw = name.encode()
        entry = DIRENT.pack(child, index + 1, len(raw), kind >> 12) + raw
        entry += b"\0" * (-len(entry) % 8)
        if len(out) + len(entry) > size:
            break
        out += entry
    return out


def open_device() -> int:
    """A new FUSE connection (/dev/fuse); OSError without the fuse module."""
    return os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)


def mount(fd: int, point: Path, subtype: str) -> None:
    host_mounts.mount("kata-py", point, "fuse", MOUNT_FLAGS,
                      f"fd={fd},rootmode=40555,user_id=0,group_id=0,allow_other,"
                      f"default_permissions,subtype={subtype}")
