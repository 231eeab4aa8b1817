"""Crash consistency, with real VMs: kill any host process of a sandbox, or
any verb half way, and `state` must tell the truth within moments (no
`running` over a dead VM, no `stopped` over a live one), and a plain
`delete` must leave no process, mount or directory (the root fixture checks
the last)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kata_py.hypervisor.process import ProcessRef
from kata_py.spec_default import default_spec

from .conftest import busybox_rootfs, cli_argv, kp

pytestmark = pytest.mark.vm

TRUTH_WAIT_S = 30.0     # a generous bound for TCG on a busy 2-core host, not a speed goal


@pytest.fixture
def bundle(tmp_path: Path) -> Callable[..., Path]:
    def make(*args: str, readonly_paths: bool = True) -> Path:
        rootfs = tmp_path / "rootfs"
        if not rootfs.exists():
            busybox_rootfs(rootfs)
        spec = default_spec()
        spec["process"].update(terminal=False, args=list(args))
        if not readonly_paths:
            spec["linux"]["readonlyPaths"] = []
        (tmp_path / "config.json").write_text(json.dumps(spec))
        return tmp_path
    return make


def _status(root: Path, cid: str) -> str | None:
    """The container's status, None once it does not exist."""
    r = kp(root, "state", cid)
    if r.returncode != 0:
        assert b"does not exist" in r.stderr, r.stderr
        return None
    return str(json.loads(r.stdout)["status"])


def _wait_for(what: str, check: Callable[[], bool], timeout_s: float = TRUTH_WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"still not {what} after {timeout_s:.0f}s"
        time.sleep(0.2)


def _sandbox(root: Path, cid: str) -> dict[str, ProcessRef]:
    """QEMU and the daemons of the container's sandbox, by name (once QEMU runs)."""
    path = root / "vm" / cid / "sandbox.json"
    _wait_for("QEMU recorded", lambda: path.exists() and json.loads(path.read_text())["vm"])
    raw = json.loads(path.read_text())
    refs = [ProcessRef.from_json(raw["vm"]), *map(ProcessRef.from_json, raw["daemons"])]
    return {ref.name: ref for ref in refs}


def _running(root: Path, b: Path, cid: str) -> None:
    assert kp(root, "create", "-b", str(b), cid).returncode == 0
    assert kp(root, "start", cid).returncode == 0
    assert _status(root, cid) == "running"


@pytest.mark.parametrize("victim", ["qemu", "virtiofsd", "vsock-backend", "monitor", "holder"])
def test_a_killed_host_process_stops_the_container_and_a_plain_delete_cleans_up(
        root: Path, bundle: Callable[..., Path], victim: str) -> None:
    b = bundle("sleep", "600")
    _running(root, b, "k")
    sandbox = _sandbox(root, "k")
    if victim == "monitor":
        target = ProcessRef.from_json(json.loads((root / "containers" / "k" / "monitor.json")
                                                 .read_text()))
    elif victim == "holder":
        target = ProcessRef.of(json.loads(kp(root, "state", "k").stdout)["pid"])
    else:
        target = sandbox[victim]
    assert target.signal(signal.SIGKILL)
    _wait_for("stopped", lambda: _status(root, "k") == "stopped")
    # stopped means stopped: nothing of the sandbox runs on
    _wait_for("without its VM", lambda: not any(ref.alive() for ref in sandbox.values()))
    refused = kp(root, "kill", "k", "KILL")
    assert refused.returncode != 0 and b"is stopped" in refused.stderr, refused.stderr
    gone = kp(root, "exec", "k", "true")
    assert gone.returncode != 0 and gone.stderr.count(b"\n") == 1, gone.stderr
    assert kp(root, "delete", "k").returncode == 0
    assert _status(root, "k") is None


def test_exec_into_a_sandbox_whose_daemon_died_fails_at_once_naming_it(
        root: Path, bundle: Callable[..., Path]) -> None:
    """Before its monitor has stopped it: exec looks at the sandbox's processes
    before it dials the agent, and names the one that died."""
    b = bundle("sleep", "600")
    _running(root, b, "x")
    sandbox = _sandbox(root, "x")
    os.kill(sandbox["virtiofsd"].pid, signal.SIGSTOP)   # keeps the monitor from seeing it yet…
    try:
        (root / "vm" / "x" / "sandbox.json").write_text(json.dumps({
            **json.loads((root / "vm" / "x" / "sandbox.json").read_text()),
            "daemons": [{**ref.to_json(), "start_time": ref.start_time + 1}   # …as if dead
                        if ref.name == "virtiofsd" else ref.to_json()
                        for ref in sandbox.values() if ref.name != "qemu"]}))
        r = kp(root, "exec", "x", "true")
    finally:
        os.kill(sandbox["virtiofsd"].pid, signal.SIGCONT)
    assert r.returncode == 1
    assert r.stderr.startswith(b"kata-py: container x: its virtiofsd (pid "), r.stderr
    assert b"exited unexpectedly" in r.stderr and r.stderr.count(b"\n") == 1
    assert kp(root, "delete", "--force", "x").returncode == 0


def test_a_guest_kernel_panic_is_named_as_such(root: Path, bundle: Callable[..., Path],
                                               tmp_path: Path) -> None:
    b = bundle("sh", "-c", "echo c > /proc/sysrq-trigger; sleep 600", readonly_paths=False)
    with open(tmp_path / "err", "wb") as err:
        r = subprocess.run(cli_argv(root, "run", "-b", str(b), "p"), stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=err, timeout=180, check=False)
    assert r.returncode == 255
    line = (tmp_path / "err").read_text()
    assert line.startswith("kata-py: container p: its VM (QEMU pid "), line
    assert "the guest kernel panicked (console: " in line and "Kernel panic" in line, line
    assert _status(root, "p") is None


@pytest.mark.parametrize("point", ["state written", "VM launched", "agent answered"])
def test_a_create_killed_half_way_is_aborted_and_leaves_nothing(
        root: Path, bundle: Callable[..., Path], tmp_path: Path, point: str) -> None:
    b = bundle("sleep", "600")
    marks = {"state written": root / "containers" / "c" / "state.json",
             "VM launched": root / "vm" / "c" / "qemu.pid",
             "agent answered": root / "vm" / "c" / "shared" / "c" / "rootfs"}
    with open(tmp_path / "stdio", "wb") as stdio:
        create = subprocess.Popen(cli_argv(root, "create", "-b", str(b), "c"),
                                  stdin=subprocess.DEVNULL, stdout=stdio, stderr=stdio)
    try:
        _wait_for(point, marks[point].exists, 120)
    finally:
        create.kill()
        create.wait()
    # the monitor aborts the create it was doing for a caller that is gone
    _wait_for("aborted", lambda: _status(root, "c") in (None, "stopped"))
    _wait_for("cleaned up", lambda: not (root / "vm" / "c").exists())
    if _status(root, "c") is not None:
        assert kp(root, "delete", "c").returncode == 0
    assert kp(root, "list", "-q").stdout == b""


def test_a_start_whose_caller_died_after_asking_still_reads_running(
        root: Path, bundle: Callable[..., Path]) -> None:
    """The caller of `start` gone after the request (as a SIGKILLed start is):
    the monitor has recorded the start, a retry is refused as runc's is, and
    exec works."""
    b = bundle("sleep", "600")
    assert kp(root, "create", "-b", str(b), "s").returncode == 0
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(root / "containers" / "s" / "start.sock"))
        sock.sendall(b"start\n")            # and hang up without the answer
    _wait_for("running", lambda: _status(root, "s") == "running")
    again = kp(root, "start", "s")
    assert again.returncode == 1 and b"is running, not created" in again.stderr
    assert kp(root, "exec", "s", "true").returncode == 0
    assert kp(root, "delete", "--force", "s").returncode == 0


@pytest.mark.parametrize("delay_s", [0.0, 0.3, 1.0])
def test_a_sigkilled_start_leaves_a_true_state_either_way(
        root: Path, bundle: Callable[..., Path], delay_s: float) -> None:
    b = bundle("sleep", "600")
    assert kp(root, "create", "-b", str(b), "s2").returncode == 0
    start = subprocess.Popen(cli_argv(root, "start", "s2"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    time.sleep(delay_s)
    start.kill()
    start.wait()
    time.sleep(0.5)
    status = _status(root, "s2")
    if status == "created":
        assert kp(root, "start", "s2").returncode == 0
    _wait_for("running", lambda: _status(root, "s2") == "running")
    assert kp(root, "exec", "s2", "true").returncode == 0
    assert kp(root, "delete", "--force", "s2").returncode == 0


def test_delete_force_of_a_container_still_creating_leaves_no_vm(
        root: Path, bundle: Callable[..., Path], tmp_path: Path) -> None:
    b = bundle("sleep", "600")
    with open(tmp_path / "stdio", "wb") as stdio:
        create = subprocess.Popen(cli_argv(root, "create", "-b", str(b), "dc"),
                                  stdin=subprocess.DEVNULL, stdout=stdio, stderr=stdio)
        try:
            _wait_for("VM launched", (root / "vm" / "dc" / "qemu.pid").exists, 120)
            sandbox = _sandbox(root, "dc")
            assert kp(root, "delete", "--force", "dc").returncode == 0
            assert create.wait(120) != 0
        finally:
            if create.poll() is None:
                create.kill()
                create.wait()
    assert not any(ref.alive() for ref in sandbox.values())
    assert _status(root, "dc") is None


@pytest.mark.parametrize("point", ["holder gone", "VM gone"])
def test_a_delete_killed_half_way_is_finished_by_the_next(
        root: Path, bundle: Callable[..., Path], point: str) -> None:
    b = bundle("sleep", "600")
    _running(root, b, "d")
    holder = ProcessRef.of(json.loads(kp(root, "state", "d").stdout)["pid"])
    qemu = _sandbox(root, "d")["qemu"]
    victim = holder if point == "holder gone" else qemu
    delete = subprocess.Popen(cli_argv(root, "delete", "--force", "d"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(point, lambda: not victim.alive() or delete.poll() is not None)
    finally:
        delete.kill()
        delete.wait()
    assert _status(root, "d") in (None, "stopped")
    if _status(root, "d") is not None:
        assert kp(root, "delete", "d").returncode == 0
    assert not qemu.alive()


def test_a_corrupt_record_is_one_line_skipped_by_list_and_removed_by_delete_force(
        root: Path, bundle: Callable[..., Path]) -> None:
    b = bundle("sleep", "600")
    _running(root, b, "bad")
    _running(root, b, "good")
    sandbox = _sandbox(root, "bad")
    state_file = root / "containers" / "bad" / "state.json"
    raw = json.loads(state_file.read_text())
    del raw["bundle"]
    state_file.write_text(json.dumps(raw))
    r = kp(root, "state", "bad")
    assert r.returncode == 1 and r.stderr.count(b"\n") == 1, r.stderr
    assert b"is corrupt" in r.stderr and b"kata-py delete --force bad" in r.stderr
    listed = kp(root, "list", "-q")
    assert listed.returncode == 0 and listed.stdout == b"good\n"
    assert b"state of container bad" in listed.stderr
    assert kp(root, "delete", "bad").returncode == 1
    assert kp(root, "delete", "--force", "bad").returncode == 0
    assert not any(ref.alive() for ref in sandbox.values())
    assert _status(root, "bad") is None and _status(root, "good") == "running"
    # its host cgroup (runc's default /<id>) and the guest-stats view on it go too
    assert "/bad " not in Path("/proc/self/mountinfo").read_text()
    assert not list(Path("/sys/fs/cgroup").glob("*/bad"))
    assert kp(root, "delete", "--force", "good").returncode == 0
