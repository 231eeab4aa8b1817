"""Process identity by pid + start time, the stop ladder, and starts that an
abort (the monitor's signal handler) interrupts."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kata_py.hypervisor import qemu
from kata_py.hypervisor.process import ProcessRef, log_tail, raise_abort, spawn_daemon


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


def test_a_daemon_dies_with_the_process_that_started_it_even_by_sigkill(tmp_path: Path) -> None:
    """A VM must never outlive the monitor that `state` and `delete` know it by."""
    owner = subprocess.Popen(
        [sys.executable, "-c", "import os, sys, time\n"
         "from pathlib import Path\n"
         "from kata_py.hypervisor.process import spawn_daemon\n"
         f"_, ref = spawn_daemon(['sleep', '600'], Path({str(tmp_path / 'log')!r}), 'sleep')\n"
         "print(ref.pid, ref.start_time, flush=True)\n"
         "time.sleep(600)\n"], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    pid, start = map(int, owner.stdout.readline().split())
    daemon = ProcessRef(pid, start, "sleep")
    assert daemon.alive()
    owner.kill()
    owner.wait()
    assert daemon.wait(5.0), "the daemon outlived its owner"


class Aborted(Exception):
    pass


def test_an_abort_during_a_spawn_is_raised_once_the_owner_has_the_daemon(
        tmp_path: Path) -> None:
    owned: list[ProcessRef] = []

    def on_start(ref: ProcessRef) -> None:
        raise_abort(Aborted())        # as if the signal came between fork and hand-over
        owned.append(ref)

    with pytest.raises(Aborted):
        spawn_daemon(["sleep", "600"], tmp_path / "log", "sleep", on_start=on_start)
    assert len(owned) == 1 and owned[0].alive()
    owned[0].stop()
    with pytest.raises(Aborted):      # outside a spawn: at once
        raise_abort(Aborted())


def test_a_qemu_launch_aborted_before_its_main_loop_stops_qemu(tmp_path: Path) -> None:
    """The abort of a create that lands while QEMU starts must not leave the
    VM running in the sandbox's cgroup (seen: a 30 s teardown, busy cgroups)."""
    fake = tmp_path / "qemu"
    fake.write_text("#!/bin/sh\nexec sleep 600\n")      # never answers QMP
    fake.chmod(0o700)
    cfg = qemu.VmConfig(
        name="kata-py-t", binary=str(fake), machine="microvm", accelerator="tcg", vcpus=1,
        memory_mib=64, kernel=Path("/k"), initrd=None, rootfs=None, kernel_params="",
        console_log=tmp_path / "console.log", qmp_socket=tmp_path / "qmp.sock",
        pidfile=tmp_path / "qemu.pid", vsock=None)
    started: list[ProcessRef] = []

    def abort(signum: int, frame: object) -> None:
        raise_abort(Aborted())

    old = signal.signal(signal.SIGALRM, abort)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(Aborted):
            qemu.launch(cfg, tmp_path / "qemu.log", started.append)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert len(started) == 1
    assert not started[0].alive(), "QEMU outlived its aborted launch"
