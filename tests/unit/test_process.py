"""Process identity by pid + start time, and the stop ladder."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kata_py.hypervisor.process import ProcessRef, log_tail, spawn_daemon, wait_child


def test_a_reused_pid_is_not_our_process() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        ref = ProcessRef.of(proc.pid, "sleeper")
        assert ref.alive()
        impostor = ProcessRef(proc.pid, ref.start_time + 1, "sleeper")
        assert not impostor.alive()
        assert impostor.signal(signal.SIGKILL) is False
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('up', flush=True); time.sleep(60)")
    proc, ref = spawn_daemon([sys.executable, "-c", code], tmp_path / "log", "stubborn")
    deadline = time.monotonic() + 10
    while "up" not in log_tail(tmp_path / "log") and time.monotonic() < deadline:
        time.sleep(0.02)
    ref.stop(term_timeout_s=0.3, kill_timeout_s=5)
    assert not ref.alive()
    assert "ignored SIGTERM" in caplog.text
    assert not Path(f"/proc/{proc.pid}").exists()


def test_state_round_trips_through_json() -> None:
    ref = ProcessRef(1234, 5678, "qemu")
    assert ProcessRef.from_json(ref.to_json()) == ref


def test_wait_child_returns_the_exit_status_as_soon_as_the_child_ends() -> None:
    proc = subprocess.Popen(["sh", "-c", "sleep 0.05; exit 7"])
    start = time.monotonic()
    assert wait_child(proc, 5.0) == 7
    assert time.monotonic() - start < 1.0


def test_wait_child_times_out_and_leaves_the_child_running() -> None:
    proc = subprocess.Popen(["sleep", "5"])
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            wait_child(proc, 0.1)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
