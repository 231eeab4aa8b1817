"""virtiofsd launcher: shares a sandbox's host directory into the guest.

Uses Debian's /usr/lib/qemu/virtiofsd (QEMU 7.2's C daemon) or a
`virtiofsd` on PATH (the Rust one). kata-py binds and listens on the
vhost-user socket itself and hands the fd over with `--fd`, so QEMU can
connect the moment this returns — no polling for the socket to appear.
virtiofsd exits by itself when QEMU disconnects; the sandbox still stops it
explicitly in case QEMU never connected.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

from kata_py.errors import NotFoundError
from kata_py.hypervisor.process import ProcessRef, spawn_daemon

DEBIAN_VIRTIOFSD = Path("/usr/lib/qemu/virtiofsd")


def find_virtiofsd(configured: str = "") -> str:
    """Path of the virtiofsd binary, or NotFoundError naming the fix."""
    candidates = [configured] if configured else [str(DEBIAN_VIRTIOFSD), "virtiofsd"]
    for cand in candidates:
        found = shutil.which(cand) if "/" not in cand else (cand if os.access(cand, os.X_OK)
                                                            else None)
        if found:
            return found
    raise NotFoundError("virtiofsd not found",
                        "install qemu-system-x86 (Debian ships /usr/lib/qemu/virtiofsd) "
                        "or set [virtiofsd] path")


def listen_unix(path: Path) -> socket.socket:
    """A listening unix socket at path (replacing a stale file)."""
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(1)
    return sock


def start(binary: str, shared_dir: Path, socket_path: Path, log_path: Path,
          on_start: Callable[[ProcessRef], None], cache: str = "auto") -> None:
    """Start virtiofsd serving shared_dir on socket_path, handing it to
    `on_start`; returns when QEMU may connect."""
    sock = listen_unix(socket_path)
    try:
        fd = sock.fileno()
        if Path(binary).name == "virtiofsd" and "/qemu/" in binary:  # QEMU's C daemon
            argv = [binary, f"--fd={fd}", "-f", "-o", f"source={shared_dir}",
                    "-o", f"cache={cache}", "-o", "sandbox=chroot"]
        else:  # the Rust virtiofsd
            argv = [binary, f"--fd={fd}", "--shared-dir", str(shared_dir),
                    f"--cache={cache}", "--sandbox=chroot"]
        spawn_daemon(argv, log_path, "virtiofsd", pass_fds=(fd,), on_start=on_start)
    finally:
        sock.close()
