"""kata-py under a real containerd 1.6 (Debian's), through its shim v2
`containerd-shim-kata-py-v2`: a private containerd per test module
(tests/e2e/ctrd.py), driven with `ctr` as its users do. After each test no
shim, QEMU, virtiofsd or vsock backend process, mount or state is left."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kata_py.hypervisor.process import ProcessRef

from .ctrd import IMAGE, NAMESPACE, RUNTIME, Containerd, remove, start_containerd

pytestmark = pytest.mark.vm

STATE = Path("/run/kata-py/containerd/kp")


@pytest.fixture(scope="module")
def ctrd_session() -> Iterator[Containerd]:
    if subprocess.run(["sh", "-c", "command -v containerd ctr"], capture_output=True
                      ).returncode != 0:
        pytest.fail("containerd is missing: run scripts/setup.sh", pytrace=False)
    base = Path(tempfile.mkdtemp(prefix="kpctd-", dir="/tmp"))
    ctrd = start_containerd(base)
    yield ctrd
    ctrd.stop()
    remove(base)


def _ours() -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines()
            if "kata_py.shimv2" in line or "/kp/vm/" in line]


def _what_was_left(ctrd: Containerd) -> str:
    """For a leftover: the logs of the shims that did not finish, and containerd's tail."""
    logs = [f"--- {log.name}:\n{log.read_text(errors='replace')[-6000:]}"
            for log in sorted((STATE / "shims").glob("*.log"))]
    tail = (ctrd.base / "containerd.log").read_text(errors="replace").splitlines()[-40:]
    return "\n".join(["--- left running:", *_ours(), *logs, "--- containerd.log (tail):",
                      *tail])


@pytest.fixture
def ctrd(ctrd_session: Containerd) -> Iterator[Containerd]:
    yield ctrd_session
    for task in ctrd_session.ok("tasks", "ls", "-q").split():
        ctrd_session.ctr("tasks", "kill", "-s", "KILL", task)
        ctrd_session.ctr("tasks", "delete", "-f", task)
    for container in ctrd_session.ok("containers", "ls", "-q").split():
        ctrd_session.ctr("containers", "delete", container)
    deadline = time.monotonic() + 15
    while _ours() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _ours() == [], _what_was_left(ctrd_session)
    assert not list((STATE / "vm").glob("*")) and not list((STATE / "shims").glob("*"))
    assert str(ctrd_session.base) not in Path("/proc/self/mountinfo").read_text()


def run(ctrd: Containerd, *args: str, input: bytes | None = None
        ) -> subprocess.CompletedProcess[str]:
    return ctrd.ctr("run", "--rm", "--runtime", RUNTIME, *args, input=input)


def test_the_runtime_config_path_is_honoured(ctrd: Containerd, tmp_path: Path) -> None:
    """ctr's --runtime-config-path is containerd's ConfigPath option."""
    config = tmp_path / "one-vcpu.toml"
    config.write_text("[hypervisor]\nvcpus = 1\n")
    res = run(ctrd, "--runtime-config-path", str(config), IMAGE, "cfg", "sh", "-c",
              "grep -c ^processor /proc/cpuinfo")
    assert (res.returncode, res.stdout) == (0, "1\n"), res.stderr     # the default is 2
    res = run(ctrd, "--runtime-config-path", str(tmp_path / "missing.toml"), IMAGE, "cfg2",
              "true")
    assert res.returncode != 0
    assert f"runtime config {tmp_path}/missing.toml does not exist" in res.stderr, res.stderr
    ctrd.ctr("containers", "delete", "cfg2")


@pytest.mark.parametrize("code", [0, 3])
def test_ctr_run_prints_the_guests_output_and_exits_with_the_containers_code(
        ctrd: Containerd, code: int) -> None:
    r = run(ctrd, IMAGE, f"exit{code}", "sh", "-c", f"echo out; echo err >&2; uname -r; "
            f"exit {code}")
    assert r.returncode == code, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "out" and lines[1].endswith("-cloud-amd64"), r.stdout   # the guest's
    assert "err" in r.stderr


def test_stdin_is_piped_to_the_container(ctrd: Containerd) -> None:
    r = run(ctrd, IMAGE, "stdin", "sh", "-c", "tr a-z A-Z", input=b"hello\n")
    assert (r.returncode, r.stdout) == (0, "HELLO\n"), r.stderr


def test_detached_task_exec_ps_pause_metrics_kill_and_delete(ctrd: Containerd) -> None:
    ctrd.ok("run", "-d", "--runtime", RUNTIME, IMAGE, "bg", "sleep", "600")
    r = ctrd.ctr("tasks", "exec", "--exec-id", "e1", "bg", "sh", "-c", "echo in; exit 5")
    assert (r.returncode, r.stdout) == (5, "in\n"), r.stderr
    assert len(ctrd.ok("tasks", "ps", "bg").splitlines()) >= 2       # header and sleep
    ctrd.ok("tasks", "pause", "bg")
    assert "PAUSED" in ctrd.ok("tasks", "ls")
    ctrd.ok("tasks", "resume", "bg")
    metrics = ctrd.ok("tasks", "metrics", "bg")
    assert "memory.usage_in_bytes" in metrics or "memory" in metrics.lower(), metrics
    ctrd.ok("tasks", "kill", "-s", "KILL", "bg")
    deadline = time.monotonic() + 30
    while "STOPPED" not in ctrd.ok("tasks", "ls"):
        assert time.monotonic() < deadline
        time.sleep(0.3)
    ctrd.ok("tasks", "delete", "bg")
    ctrd.ok("containers", "delete", "bg")


def test_a_missing_command_fails_with_the_reason(ctrd: Containerd) -> None:
    r = run(ctrd, IMAGE, "nocmd", "/no/such/binary")
    assert r.returncode != 0
    assert "/no/such/binary" in r.stderr, r.stderr


def _status(ctrd: Containerd, task: str) -> str:
    for line in ctrd.ok("tasks", "ls").splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == task:
            return fields[-1]
    return ""


def _wait_status(ctrd: Containerd, task: str, status: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while _status(ctrd, task) != status:
        assert time.monotonic() < deadline, (task, status, ctrd.ok("tasks", "ls"))
        time.sleep(0.3)


def _ctr_argv(ctrd: Containerd, *args: str) -> list[str]:
    return ["ctr", "--address", ctrd.address, "--namespace", NAMESPACE, *args]


def test_a_run_killed_with_sigkill_exits_137(ctrd: Containerd) -> None:
    run = subprocess.Popen(_ctr_argv(ctrd, "run", "--rm", "--runtime", RUNTIME, IMAGE, "k",
                                     "sleep", "600"),
                           env=ctrd.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    try:
        _wait_status(ctrd, "k", "RUNNING")
        ctrd.ok("tasks", "kill", "-s", "KILL", "k")
        assert run.wait(60) == 137, run.communicate()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()


def _read_until(master: int, want: bytes, timeout: float = 120) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while want not in out:
        left = deadline - time.monotonic()
        assert left > 0, out
        if select.select([master], [], [], left)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:         # EIO: every slave end closed
                break
            if not chunk:
                break
            out += chunk
    return out


def test_a_terminal_run_and_exec_on_a_pty_the_test_drives(ctrd: Containerd) -> None:
    """`ctr run -t` and `ctr task exec -t` on the caller's terminal: a pty in
    the guest, input typed at the terminal reaches it, the exit code comes back."""
    master, slave = os.openpty()
    try:
        run = subprocess.Popen(_ctr_argv(ctrd, "run", "--rm", "-t", "--runtime", RUNTIME, IMAGE,
                                         "tty", "sh", "-c",
                                         "tty; read line; echo got $line; exit 4"),
                               env=ctrd.env, stdin=slave, stdout=slave, stderr=slave,
                               start_new_session=True)
        out = _read_until(master, b"/dev/pts/")
        os.write(master, b"typed\r")
        out += _read_until(master, b"got typed")
        assert run.wait(60) == 4, out
        assert b"got typed" in out, out
    finally:
        os.close(master)
        os.close(slave)
    ctrd.ok("run", "-d", "--runtime", RUNTIME, IMAGE, "tx", "sleep", "600")
    master, slave = os.openpty()
    try:
        exec_ = subprocess.Popen(_ctr_argv(ctrd, "tasks", "exec", "-t", "--exec-id", "t1", "tx",
                                           "sh", "-c", "tty; exit 6"),
                                 env=ctrd.env, stdin=slave, stdout=slave, stderr=slave,
                                 start_new_session=True)
        out = _read_until(master, b"/dev/pts/")
        assert exec_.wait(60) == 6, out
    finally:
        os.close(master)
        os.close(slave)


def test_two_tasks_at_once_each_in_its_own_vm(ctrd: Containerd) -> None:
    for name in ("one", "two"):
        ctrd.ok("run", "-d", "--runtime", RUNTIME, IMAGE, name, "sh", "-c",
                f"echo {name} > /tmp/me; sleep 600")
    for name, other in (("one", "two"), ("two", "one")):
        r = ctrd.ctr("tasks", "exec", "--exec-id", f"x-{name}", name, "cat", "/tmp/me")
        assert (r.returncode, r.stdout) == (0, f"{name}\n"), r.stderr
        assert _status(ctrd, other) == "RUNNING"
    pids = {line.split()[1] for line in ctrd.ok("tasks", "ls").splitlines()[1:]}
    assert len(pids) == 2          # a task's pid is its own VM's
    for name in ("one", "two"):
        ctrd.ok("tasks", "kill", "-s", "KILL", name)
    for name in ("one", "two"):
        _wait_status(ctrd, name, "STOPPED")
        ctrd.ok("tasks", "delete", name)


def test_a_task_outlives_a_containerd_restart(ctrd: Containerd) -> None:
    """containerd stopped and started again while a task runs: the shim goes
    on, containerd reconnects through the bundle's address file and the task
    is still listed, exec-able and killable."""
    ctrd.ok("run", "-d", "--runtime", RUNTIME, IMAGE, "lasting", "sleep", "600")
    ctrd.restart()
    assert _status(ctrd, "lasting") == "RUNNING"
    r = ctrd.ctr("tasks", "exec", "--exec-id", "after", "lasting", "sh", "-c", "echo still")
    assert (r.returncode, r.stdout) == (0, "still\n"), r.stderr
    ctrd.ok("tasks", "kill", "-s", "KILL", "lasting")
    _wait_status(ctrd, "lasting", "STOPPED")
    ctrd.ok("tasks", "delete", "lasting")


def test_a_sigkilled_shim_is_cleaned_up_by_containerds_delete(ctrd: Containerd) -> None:
    """The shim SIGKILLed: its VM dies with it, containerd sees the task stop
    (shim `delete`), and the fixture finds nothing left behind."""
    ctrd.ok("run", "-d", "--runtime", RUNTIME, IMAGE, "doomed", "sleep", "600")
    record = json.loads((STATE / "shims" / "doomed.json").read_text())
    shim = ProcessRef.from_json(record)
    assert shim.signal(signal.SIGKILL)
    assert shim.wait(10)
    deadline = time.monotonic() + 60
    while _status(ctrd, "doomed") not in ("STOPPED", "UNKNOWN", ""):
        assert time.monotonic() < deadline, ctrd.ok("tasks", "ls")
        time.sleep(0.3)
    ctrd.ctr("tasks", "delete", "doomed")
