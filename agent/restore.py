"""The agent's part of a VM restored from a template (kata_py/factory.py).

A clone wakes up with the template's memory: its clock says when the template
was saved, its kernel RNG holds the template's state (every clone would draw
the same "random" bytes), and its virtio-fs share did not exist when the
template booted (vhost-user devices cannot be migrated, so the host hot-plugs
them after the restore). restore() mends all three, in the RestoreSandbox RPC
the host sends before anything else.
"""

from __future__ import annotations

import fcntl
import os
import struct
import time
from pathlib import Path

from kata_py.agent import linux
from kata_py.agent.errors import DeadlineExceeded, InvalidArgument
from kata_py.agent.guest import is_mountpoint

RNDADDENTROPY = 0x40085203   # _IOW('R', 0x03, int[2])
RNDRESEEDCRNG = 0x5207       # _IO('R', 0x07)
MIN_ENTROPY_BYTES = 32
VIRTIOFS_DRIVER = Path("/sys/bus/virtio/drivers/virtiofs")
VIRTIOFS_TAG = "kataShared"
SHARE_WAIT_S = 10.0          # PCI hot-plug to a bound driver: ~0.1 s under TCG
POLL_S = 0.01


def set_clock(realtime_ns: int) -> None:
    time.clock_settime_ns(time.CLOCK_REALTIME, realtime_ns)


def reseed(entropy: bytes, device: str = "/dev/random") -> None:
    """Credit the host's bytes to the input pool, then reseed the CRNG from it
    at once (the kernel would otherwise keep the template's key up to a minute)."""
    if len(entropy) < MIN_ENTROPY_BYTES:
        raise InvalidArgument(f"RestoreSandbox needs at least {MIN_ENTROPY_BYTES} bytes of "
                              f"entropy, got {len(entropy)}")
    fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, RNDADDENTROPY, struct.pack("ii", len(entropy) * 8, len(entropy)) + entropy)
        fcntl.ioctl(fd, RNDRESEEDCRNG)
    finally:
        os.close(fd)


def mount_share(target: Path, driver: Path = VIRTIOFS_DRIVER,
                wait_s: float = SHARE_WAIT_S) -> None:
    """Mount the hot-plugged share on target once the virtiofs driver has bound it."""
    if is_mountpoint(target):
        return
    deadline = time.monotonic() + wait_s
    while not any(driver.glob("virtio*")):
        if time.monotonic() > deadline:
            raise DeadlineExceeded(f"no virtio-fs device appeared within {wait_s:.0f}s "
                                   "after the hot-plug")
        time.sleep(POLL_S)
    target.mkdir(parents=True, exist_ok=True)
    linux.mount(VIRTIOFS_TAG, str(target), "virtiofs")


def restore(realtime_ns: int, entropy: bytes, mount_shared: bool, shared_dir: Path) -> None:
    reseed(entropy)
    set_clock(realtime_ns)
    if mount_shared:
        mount_share(shared_dir)
