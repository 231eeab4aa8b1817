"""The start socket: a created container's monitor starts it on request.

`kata-py start` sends one line, "start", on <root>/containers/<id>/start.sock
and reads "ok" or "error <message>". The monitor already holds a connection to
the agent, so start needs neither gRPC nor a connection of its own (≈ 0.1 s
of every start, and of podman's). The socket goes away once the container
has started; a start that finds none asks the agent itself (runtime.start).
Kept apart from kata_py/monitor.py so that `start` imports only this.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from kata_py.errors import KataError
from kata_py.records import START_REPLY_TIMEOUT_S

log = logging.getLogger(__name__)



class StartListener:
    """Serves the start socket in a thread until the container has started."""

    def __init__(self, path: Path, start: Callable[[], None]) -> None:
        self.path = path
        self.start = start
        self.sock: socket.socket | None = None

    def open(self) -> bool:
        if len(os.fsencode(self.path)) > 107:   # sun_path: start asks the agent instead
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            old = os.umask(0o077)
            try:
                sock.bind(str(self.path))
            finally:
                os.umask(old)
            sock.listen(4)
        except OSError as exc:
            log.warning("no start socket at %s (%s); start will ask the agent", self.path, exc)
            sock.close()
            return False
        self.sock = sock
        threading.Thread(target=self._serve, name="start", daemon=True).start()
        return True

    def _serve(self) -> None:
        sock = self.sock        # close() may clear the attribute at any time
        while sock is not None:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                try:
                    request = conn.recv(64)
                    if request.strip() != b"start":
                        conn.sendall(b"error unknown request to the monitor\n")
                        continue
                    try:
                        self.start()
                    except KataError as exc:
                        conn.sendall(f"error {exc}\n".encode())
                        continue
                    conn.sendall(b"ok\n")
                except OSError as exc:
                    log.warning("start socket: %s", exc)
                    continue
            self.close()
            return

    def close(self) -> None:
        """Idempotent; the serving thread and the monitor may both call it."""
        sock, self.sock = self.sock, None
        if sock is not None:
            try:
                self.path.unlink()
            except OSError:
                pass
            sock.close()


def request_start(path: Path) -> bool:
    """Ask the monitor listening on path to start its container. False: there is
    no such monitor (the caller asks the agent); raises KataError with its error."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    with sock:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return False
        except OSError as exc:
            if len(os.fsencode(path)) > 107:
                return False
            raise KataError(f"cannot reach the monitor on {path}: {exc}", "") from exc
        sock.settimeout(START_REPLY_TIMEOUT_S)
        sock.sendall(b"start\n")
        reply = b""
        try:
            while not reply.endswith(b"\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        except OSError as exc:
            raise KataError(f"the monitor did not answer start ({exc})",
                            "check the container's monitor.log") from exc
    line = reply.decode(errors="replace").strip()
    if line == "ok":
        return True
    if line.startswith("error "):
        raise KataError(line[len("error "):])
    raise KataError("the monitor ended without starting the container",
                    "check `kata-py state` and the container's monitor.log")
