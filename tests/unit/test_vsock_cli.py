"""The backend as a process: readiness fd, startup errors, exit on SIGTERM or front-end EOF."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

WAIT_S = 10.0


def start(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    r, w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kata_py.hypervisor.vsock.backend",
         "--socket", str(tmp_path / "vhost.sock"), "--uds", str(tmp_path / "vsock.sock"),
         "--guest-cid", "3", "--ready-fd", str(w), "--log", str(tmp_path / "backend.log"),
         *extra],
        pass_fds=[w], stderr=subprocess.PIPE)
    os.close(w)
    return proc, r


def read_ready(fd: int) -> bytes:
    with os.fdopen(fd, "rb") as f:
        return f.read()  # EOF once the backend closed its end


def test_backend_signals_ready_after_listening_and_exits_zero_on_sigterm(
        tmp_path: Path) -> None:
    proc, ready = start(tmp_path, "--listen", f"1024={tmp_path / 'agent.sock'}")
    assert read_ready(ready) == b"READY\n"
    for name in ("vhost.sock", "vsock.sock", "agent.sock"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(tmp_path / name))  # already listening
        s.close()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(WAIT_S) == 0
    assert sorted(os.listdir(tmp_path)) == ["backend.log"]


def test_backend_exits_zero_when_the_frontend_disconnects(tmp_path: Path) -> None:
    proc, ready = start(tmp_path)
    assert read_ready(ready) == b"READY\n"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(tmp_path / "vhost.sock"))
    s.close()
    assert proc.wait(WAIT_S) == 0
    assert "front-end disconnected" in (tmp_path / "backend.log").read_text()


def test_backend_refuses_a_socket_path_in_use_with_one_line(tmp_path: Path) -> None:
    busy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    busy.bind(str(tmp_path / "vhost.sock"))
    busy.listen()
    with busy:
        proc, ready = start(tmp_path)
        assert read_ready(ready) == b""
        assert proc.wait(WAIT_S) == 1
        assert proc.stderr is not None
        lines = proc.stderr.read().decode().splitlines()
        assert len(lines) == 1 and "vhost.sock" in lines[0] and "in use" in lines[0]
    assert (tmp_path / "vhost.sock").exists()  # not ours: left alone


def test_backend_replaces_a_stale_socket_file(tmp_path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "vsock.sock"))
    stale.close()  # file remains, nobody listens
    proc, ready = start(tmp_path)
    assert read_ready(ready) == b"READY\n"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(WAIT_S) == 0


def test_failed_startup_removes_the_sockets_it_created(tmp_path: Path) -> None:
    proc, ready = start(tmp_path, "--listen", f"1024={tmp_path / 'missing' / 'agent.sock'}")
    assert read_ready(ready) == b""
    assert proc.wait(WAIT_S) == 1
    assert proc.stderr is not None
    assert "missing/agent.sock" in proc.stderr.read().decode()
    assert sorted(os.listdir(tmp_path)) == ["backend.log"]
