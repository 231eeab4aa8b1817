"""Everything kata-py creates on the host is private to root.

Owns the two rules that make it so, whatever the caller's umask:
- every kata-py process (the CLI, the monitor, the vsock backend; QEMU and
  virtiofsd inherit it) runs with umask 077, so its files are 0600, its
  directories 0700 and its unix sockets connectable by root alone (Linux
  checks write permission on the socket inode for connect);
- the directories under --root are 0700 even when an older kata-py, or a
  caller, made them wider: `private_dir` tightens them.

The state directory holds argv, environments and paths, the agent's and
vsock's sockets, and the share through which the guest's files show on the
host: a user who can reach one can read containers' files or talk to their
agent. It must not touch anything it did not create (bundles, --log and
pid files named by the caller keep the caller's choice of directory).
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077
PRIVATE_DIR_MODE = 0o700


def restrict_umask() -> int:
    """Set umask 077 for this process and its children; returns the caller's."""
    return os.umask(PRIVATE_UMASK)


def private_dir(path: Path) -> Path:
    """mkdir -p path, 0700; an existing directory of ours with wider modes is
    tightened (a directory owned by someone else is left alone: not ours)."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    st = path.stat()
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o077:
        path.chmod(PRIVATE_DIR_MODE)
    return path


def bind_unix(path: str | os.PathLike[str], backlog: int = 64) -> socket.socket:
    """A listening unix socket at path, mode 0600 whatever the caller's umask."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        old = os.umask(0o177)    # not wider than 0600 even before the chmod
        try:
            sock.bind(os.fspath(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock
