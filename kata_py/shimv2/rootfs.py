"""The task's rootfs as containerd hands it over: a list of mounts (the
snapshotter's, typically one overlay) to mount in order onto
<bundle>/rootfs, and unmounted again at Delete. containerd sends type,
source and options; the options are mount(8)'s, parsed by the same code
that mounts the spec's mounts in the guest. `unmount` is on the path of
containerd's `shim delete`: it imports nothing more than it needs."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from kata_py.agent import linux
from kata_py.errors import ConfigError, ResourceError


def mount_all(mounts: list[Any], target: Path) -> bool:
    """Mount containerd's `mounts` (containerd.types.Mount) onto target in
    order; True when anything was mounted. A failure unmounts what was done."""
    from kata_py.agent.mounts import parse_options

    if not mounts:
        return False
    target.mkdir(mode=0o711, exist_ok=True)
    done = 0
    try:
        for m in mounts:
            flags, propagation, data = parse_options(list(m.options))
            fstype = "bind" if m.type == "bind" else m.type
            if not fstype:
                raise ConfigError(f"rootfs mount of {m.source!r} has no type",
                                  "check containerd's snapshotter")
            if fstype == "bind":
                flags |= linux.MS_BIND
            try:
                linux.mount(m.source, str(target), None if fstype == "bind" else fstype,
                            flags, data or None)
            except OSError as exc:
                raise ResourceError(f"mount the task's rootfs ({fstype} {m.source}) on "
                                    f"{target}: {exc.strerror}",
                                    "check the snapshotter's mounts in containerd's log"
                                    ) from exc
            done += 1
            for flag in propagation:
                linux.mount(None, str(target), None, flag)
    except BaseException:
        for _ in range(done):
            unmount(target)
        raise
    return True


def unmount(target: Path) -> None:
    """Unmount everything on target (lazily: a VM that just ended may still
    hold it for a moment); never raises."""
    while True:
        try:
            linux.umount2(str(target), linux.MNT_DETACH)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOENT):
                import logging

                logging.getLogger(__name__).warning("unmount %s: %s", target, exc)
            return
        if not os.path.ismount(target):
            return
