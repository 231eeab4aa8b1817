"""The runc-compatible CLI against real micro-VMs: busybox bundles built by
the tests, every verb through the monitor and the agent, and nothing left
behind afterwards — no process, mount, sandbox or state directory."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kata_py.config import load_config
from kata_py.console import recv_console, set_winsize
from kata_py.spec_default import default_spec

from .conftest import busybox_rootfs, cli_argv, kp

pytestmark = pytest.mark.vm



@pytest.fixture
def bundle(tmp_path: Path) -> Callable[..., Path]:
    def make(*args: str, **process: Any) -> Path:
        rootfs = tmp_path / "rootfs"
        if not rootfs.exists():
            busybox_rootfs(rootfs)
        spec = default_spec()
        spec["process"].update(terminal=False, args=list(args), **process)
        spec["hostname"] = "kp"
        (tmp_path / "config.json").write_text(json.dumps(spec))
        return tmp_path
    return make


def test_run_propagates_output_and_exit_code_3(root: Path, bundle: Callable[..., Path]
                                               ) -> None:
    b = bundle("sh", "-c", "echo out; echo err >&2; hostname; exit 3")
    r = kp(root, "run", "-b", str(b), "r3")
    assert r.returncode == 3, r.stderr
    assert r.stdout == b"out\nkp\n"
    assert r.stderr == b"err\n"


def test_run_exit_0_and_stdin_reaches_the_process(root: Path, bundle: Callable[..., Path]
                                                  ) -> None:
    b = bundle("cat")
    r = kp(root, "run", "-b", str(b), "r0", stdin=b"piped through the VM\n")
    assert (r.returncode, r.stdout) == (0, b"piped through the VM\n"), r.stderr


def test_sigkill_makes_run_exit_137(root: Path, bundle: Callable[..., Path]) -> None:
    b = bundle("sleep", "600")
    proc = subprocess.Popen(cli_argv(root, "run", "-b", str(b), "r137"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = kp(root, "state", "r137")
        if state.returncode == 0 and json.loads(state.stdout)["status"] == "running":
            break
        time.sleep(0.5)
    assert kp(root, "kill", "r137", "KILL").returncode == 0
    assert proc.wait(timeout=120) == 137


def test_lifecycle_by_hand(root: Path, bundle: Callable[..., Path], tmp_path: Path) -> None:
    b = bundle("sleep", "600")
    pid_file = tmp_path / "pid"
    r = kp(root, "create", "-b", str(b), "--pid-file", str(pid_file), "lc")
    assert r.returncode == 0, r.stderr
    monitor_pid = int(pid_file.read_text())
    state = json.loads(kp(root, "state", "lc").stdout)
    assert (state["status"], state["pid"], state["bundle"]) == ("created", monitor_pid, str(b))
    assert kp(root, "list", "-q").stdout.split() == [b"lc"]
    start_socket = root / "containers" / "lc" / "start.sock"
    assert start_socket.is_socket()              # the monitor starts it (startsock.py)
    assert kp(root, "start", "lc").returncode == 0
    assert json.loads(kp(root, "state", "lc").stdout)["status"] == "running"
    assert not start_socket.exists()
    again = kp(root, "start", "lc")
    assert again.returncode == 1 and b"is running, not created" in again.stderr
    refused = kp(root, "delete", "lc")
    assert refused.returncode == 1 and b"use `kata-py delete --force`" in refused.stderr
    assert kp(root, "kill", "lc", "9").returncode == 0
    deadline = time.monotonic() + 60
    while json.loads(kp(root, "state", "lc").stdout)["status"] != "stopped":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert kp(root, "delete", "lc").returncode == 0
    gone = kp(root, "state", "lc")
    assert gone.returncode == 1
    assert gone.stderr == b"kata-py: container lc does not exist: check the id with " \
                          b"`kata-py list`\n"


def test_start_without_the_monitors_socket_asks_the_agent(
        root: Path, bundle: Callable[..., Path]) -> None:
    """The fallback of `start` when no monitor listens (say, a root too deep for a
    unix socket path): it dials the agent itself."""
    assert kp(root, "create", "-b", str(bundle("sleep", "600")), "ns").returncode == 0
    (root / "containers" / "ns" / "start.sock").unlink()
    assert kp(root, "start", "ns").returncode == 0
    assert json.loads(kp(root, "state", "ns").stdout)["status"] == "running"
    init = kp(root, "exec", "ns", "cat", "/proc/1/cmdline")   # the launcher has exec'd
    assert init.returncode == 0 and init.stdout.split(b"\0")[:2] == [b"sleep", b"600"], init
    assert kp(root, "delete", "--force", "ns").returncode == 0


def test_delete_force_removes_a_running_container(root: Path, bundle: Callable[..., Path],
                                                  tmp_path: Path) -> None:
    """Twice at once, as podman's `run --rm` and conmon's cleanup do: both
    succeed, one after the other, and nothing is left (the root fixture).
    The container's stderr (the monitor's) gets no word of a VM that died: its
    end was asked for."""
    b = bundle("sleep", "600")
    with open(tmp_path / "stdio", "wb") as stdio:
        assert subprocess.run(cli_argv(root, "run", "-d", "-b", str(b), "df"),
                              stdin=subprocess.DEVNULL, stdout=stdio, stderr=stdio,
                              timeout=180).returncode == 0
    deletes = [subprocess.Popen(cli_argv(root, "delete", "--force", "df"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
               for _ in range(2)]
    for proc in deletes:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    assert kp(root, "list", "-q").stdout == b""
    assert (tmp_path / "stdio").read_bytes() == b""


def _one_line_error(r: subprocess.CompletedProcess[bytes], *needles: bytes) -> None:
    assert r.returncode != 0
    assert r.stderr.count(b"\n") == 1 and r.stderr.startswith(b"kata-py: "), r.stderr
    for needle in needles:
        assert needle in r.stderr, r.stderr


class ConsoleSocket:
    """What conmon does with --console-socket: listen and take the pty master."""

    def __init__(self, path: Path) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self._got: list[int] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            self._got.append(recv_console(conn)[0])

    def master(self, timeout_s: float = 10) -> int:
        self._thread.join(timeout_s)
        assert self._got, "no terminal arrived on the console socket"
        return self._got[0]

    def close(self) -> None:
        self.listener.close()


def _read_until(master: int, marker: bytes, timeout_s: float = 60) -> bytes:
    """Read the terminal until marker shows up (or the time is up)."""
    out = b""
    deadline = time.monotonic() + timeout_s
    while marker not in out and time.monotonic() < deadline:
        if select.select([master], [], [], 1)[0]:
            try:
                out += os.read(master, 4096)
            except OSError:
                break
    return out


def test_bad_bundles_fail_with_one_line_and_leave_nothing(root: Path,
                                                          bundle: Callable[..., Path]) -> None:
    b = bundle("true")
    (b / "config.json").write_text("{ not json")
    _one_line_error(kp(root, "create", "-b", str(b), "bad1"), b"config.json is not valid JSON")
    b = bundle("true")
    shutil.rmtree(b / "rootfs")
    _one_line_error(kp(root, "create", "-b", str(b), "bad2"), b"root.path", b"does not exist")
    b = bundle("true")
    spec = json.loads((b / "config.json").read_text())
    spec["linux"]["intelRdt"] = {"closID": "x"}
    (b / "config.json").write_text(json.dumps(spec))
    _one_line_error(kp(root, "create", "-b", str(b), "bad3"), b"linux.intelRdt is not supported")
    _one_line_error(kp(root, "start", "nosuch"), b"container nosuch does not exist")
    _one_line_error(kp(root, "kill", "nosuch"), b"container nosuch does not exist")
    _one_line_error(kp(root, "delete", "nosuch"), b"container nosuch does not exist")
    assert kp(root, "list", "-q").stdout == b""


def test_duplicate_id_is_refused(root: Path, bundle: Callable[..., Path]) -> None:
    b = bundle("sleep", "600")
    assert kp(root, "create", "-b", str(b), "dup").returncode == 0
    _one_line_error(kp(root, "create", "-b", str(b), "dup"), b"container dup already exists")
    assert kp(root, "delete", "--force", "dup").returncode == 0


def test_pause_freezes_resume_thaws_and_ps_lists(root: Path, bundle: Callable[..., Path]
                                                 ) -> None:
    b = bundle("sh", "-c", "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; "
                           "sleep 0.2; done")
    count = b / "rootfs" / "tmp" / "count"   # the host sees the guest's writes
    config = json.loads((b / "config.json").read_text())
    config["root"]["readonly"] = False
    (b / "config.json").write_text(json.dumps(config))
    assert kp(root, "run", "-d", "-b", str(b), "pz").returncode == 0

    def counter() -> int:
        return int(count.read_text().strip() or 0) if count.exists() else 0

    deadline = time.monotonic() + 60
    while counter() < 3:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    ps = kp(root, "ps", "pz")
    assert ps.returncode == 0 and b"while true" in ps.stdout, ps.stderr
    assert kp(root, "pause", "pz").returncode == 0
    assert json.loads(kp(root, "state", "pz").stdout)["status"] == "paused"
    frozen = counter()
    time.sleep(2)
    assert counter() == frozen
    again = kp(root, "pause", "pz")
    assert again.returncode == 1 and b"is paused, not running" in again.stderr
    assert kp(root, "resume", "pz").returncode == 0
    assert json.loads(kp(root, "state", "pz").stdout)["status"] == "running"
    deadline = time.monotonic() + 30
    while counter() <= frozen:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert kp(root, "delete", "--force", "pz").returncode == 0


def test_exec_runs_in_the_container_with_its_own_settings(root: Path,
                                                          bundle: Callable[..., Path]) -> None:
    b = bundle("sleep", "600")
    assert kp(root, "run", "-d", "-b", str(b), "ex").returncode == 0
    r = kp(root, "exec", "ex", "sh", "-c", "echo in $(hostname); cat /proc/1/cmdline; exit 4")
    assert r.returncode == 4, r.stderr
    assert r.stdout.startswith(b"in kp\nsleep\x00600")      # the container's pid namespace
    r = kp(root, "exec", "-e", "FOO=bar", "--cwd", "/tmp", "-u", "1000:1000", "ex",
           "sh", "-c", "echo $FOO $(pwd) $(id -u):$(id -g)")
    assert (r.returncode, r.stdout) == (0, b"bar /tmp 1000:1000\n"), r.stderr
    r = kp(root, "exec", "ex", "cat", stdin=b"exec stdin\n")
    assert r.stdout == b"exec stdin\n"
    assert kp(root, "exec", "-d", "ex", "sleep", "30").returncode == 0
    assert b"sleep 30" in kp(root, "ps", "ex").stdout
    assert kp(root, "kill", "ex", "KILL").returncode == 0
    deadline = time.monotonic() + 60
    while json.loads(kp(root, "state", "ex").stdout)["status"] != "stopped":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    _one_line_error(kp(root, "exec", "ex", "true"), b"container ex is stopped, not running")
    assert kp(root, "delete", "ex").returncode == 0


def test_execs_running_side_by_side_do_not_block_another(root: Path,
                                                         bundle: Callable[..., Path]) -> None:
    """Each live process holds three agent long-polls (stdout, stderr, wait).
    With a container and three foreground execs running, a fourth exec must
    still be served — it used to wait for a worker thread until one of them ended."""
    b = bundle("sleep", "600")
    assert kp(root, "run", "-d", "-b", str(b), "side").returncode == 0
    sleepers = [subprocess.Popen(cli_argv(root, "exec", "side", "sleep", "90"),
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL) for _ in range(3)]
    try:
        deadline = time.monotonic() + 60
        while kp(root, "ps", "side").stdout.count(b"sleep 90") < 3:
            assert time.monotonic() < deadline, "the three execs did not start"
            time.sleep(0.5)
        r = kp(root, "exec", "side", "echo", "served")
        assert (r.returncode, r.stdout) == (0, b"served\n"), r.stderr
        assert [p.poll() for p in sleepers] == [None, None, None]   # served while they run
    finally:
        kp(root, "kill", "side", "KILL")
        for p in sleepers:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _wait_running(root: Path, cid: str) -> None:
    deadline = time.monotonic() + 90
    while True:
        r = kp(root, "state", cid)
        if r.returncode == 0 and json.loads(r.stdout)["status"] == "running":
            return
        assert time.monotonic() < deadline, r.stderr
        time.sleep(0.5)


@pytest.mark.parametrize("template", ["true", "false"])
def test_a_vm_that_cannot_boot_fails_create_and_its_logs_reach_the_log_file(
        root: Path, bundle: Callable[..., Path], tmp_path: Path, template: str) -> None:
    """No init in the guest: the kernel panics and the VM ends (the VM template's
    boot, by default). stderr gets one line; a text --log file gets the monitor's
    log with the VM's log tails, which the teardown removed from the state dir;
    no half-built template is left."""
    config = tmp_path / "kata-py.toml"
    config.write_text('[hypervisor]\nkernel_params = "rdinit=/nonexistent init=/nonexistent"\n'
                      f'[factory]\ntemplate = {template}\n')
    log_file = tmp_path / "kata-py.log"
    r = kp(root, "--log", str(log_file), "--config", str(config), "create", "-b",
           str(bundle("true")), "noboot")
    _one_line_error(r, b"VM stopped before the agent answered")
    logged = log_file.read_text()
    assert "monitor of noboot: " in logged and "console.log ends with:" in logged, logged
    assert "Kernel panic" in logged or "No working init" in logged, logged
    # The last line is still create's own error.
    last_error = [ln for ln in logged.splitlines() if "kata-py: monitor of" not in ln][-1]
    assert "VM stopped before the agent answered" in last_error, logged
    assert not (root / "containers" / "noboot").exists()
    assert not (root / "vm" / "noboot").exists()
    assert b"noboot" not in kp(root, "list", "-q").stdout
    templates = Path(load_config(None).factory.template_dir)
    assert not list(templates.glob(".build-*"))
    if template == "true":    # the failed build's logs are kept, and the error says where
        kept = templates / "failed-build"
        assert f"kept in {kept}" in r.stderr.decode(), r.stderr
        console = (kept / "console.log").read_text(errors="replace")
        assert "Kernel panic" in console or "No working init" in console, console[-2000:]


def test_a_vm_that_dies_under_a_running_container_is_reported_and_cleaned_up(
        root: Path, bundle: Callable[..., Path], tmp_path: Path) -> None:
    b = bundle("sleep", "600")
    with open(tmp_path / "out", "wb") as out, open(tmp_path / "err", "wb") as err:
        run = subprocess.Popen(cli_argv(root, "run", "-b", str(b), "gone"),
                               stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        try:
            _wait_running(root, "gone")
            os.kill(int((root / "vm" / "gone" / "qemu.pid").read_text()), signal.SIGKILL)
            assert run.wait(90) == 255
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
    lines = (tmp_path / "err").read_bytes().decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kata-py: container gone: its VM (QEMU pid "), \
        lines
    assert "exited unexpectedly" in lines[0] and "dmesg" in lines[0]
    assert not (root / "containers" / "gone").exists()     # run deleted it, VM and all
    # Detached: the state says stopped, and delete (without --force) removes everything.
    assert kp(root, "run", "-d", "-b", str(b), "gone2").returncode == 0
    os.kill(int((root / "vm" / "gone2" / "qemu.pid").read_text()), signal.SIGKILL)
    deadline = time.monotonic() + 60
    while json.loads(kp(root, "state", "gone2").stdout)["status"] != "stopped":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert kp(root, "delete", "gone2").returncode == 0
    assert os.listdir(root / "containers") == [] and os.listdir(root / "vm") == []


def test_container_is_built_as_the_spec_says(root: Path, bundle: Callable[..., Path]) -> None:
    caps = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_KILL"]     # CapEff 0x23
    script = ("echo uid=$(id -u) groups=$(id -G | tr ' ' ,); umask; pwd; echo FOO=$FOO; "
              "grep CapEff /proc/self/status; ulimit -n; echo secret=$(cat /etc/secret); "
              "touch /rootfile 2>&1; mkdir /tmp/d 2>&1; true")
    b = bundle("sh", "-c", script, env=["PATH=/bin", "FOO=bar"], cwd="/tmp",
               user={"uid": 0, "gid": 0, "additionalGids": [10, 20], "umask": 0o027},
               capabilities={k: caps for k in ("bounding", "effective", "permitted")},
               rlimits=[{"type": "RLIMIT_NOFILE", "hard": 512, "soft": 512}],
               noNewPrivileges=True)
    (b / "rootfs" / "etc" / "secret").write_text("do not show\n")
    config = json.loads((b / "config.json").read_text())
    config["linux"]["maskedPaths"].append("/etc/secret")
    config["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}
    assert config["root"]["readonly"] is True
    (b / "config.json").write_text(json.dumps(config))
    r = kp(root, "run", "-b", str(b), "spec1")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert lines[0] == "uid=0 groups=0,10,20"
    assert lines[1:4] == ["0027", "/tmp", "FOO=bar"]
    assert lines[4].split() == ["CapEff:", "0000000000000023"]
    assert lines[5:7] == ["512", "secret="]
    assert "Read-only file system" in lines[7]
    assert "Operation not permitted" in lines[8]        # seccomp, not the read-only root


def test_memory_limit_oom_kills_and_sizes_the_vm(root: Path, bundle: Callable[..., Path]
                                                 ) -> None:
    # 96 MiB of shell variable in a 32 MiB cgroup: the OOM killer ends it.
    b = bundle("sh", "-c", "grep MemTotal /proc/meminfo >&2; "
                           "x=$(head -c 100663296 /dev/zero | tr '\\0' a); echo survived")
    config = json.loads((b / "config.json").read_text())
    config["linux"]["resources"] = {"memory": {"limit": 32 << 20}}
    (b / "config.json").write_text(json.dumps(config))
    r = kp(root, "run", "-b", str(b), "oom")
    assert r.returncode == 137, (r.stdout, r.stderr)
    assert b"survived" not in r.stdout
    mem_kib = int(r.stderr.split()[1])
    assert mem_kib < 320 * 1024          # VM = limit + guest overhead, not the 512 MiB default


def test_terminal_through_the_console_socket(root: Path, bundle: Callable[..., Path],
                                             tmp_path: Path) -> None:
    b = bundle("sh")
    config = json.loads((b / "config.json").read_text())
    config["process"]["terminal"] = True
    (b / "config.json").write_text(json.dumps(config))
    sock_path = tmp_path / "console.sock"
    console = ConsoleSocket(sock_path)
    r = kp(root, "create", "--console-socket", str(sock_path), "-b", str(b), "tty1")
    assert r.returncode == 0, r.stderr
    master = console.master()
    set_winsize(master, 40, 100)                # the monitor forwards it to the guest pty
    assert kp(root, "start", "tty1").returncode == 0
    time.sleep(1)

    os.write(master, b"tty; stty size; echo $((6*7))\n")
    out = _read_until(master, b"42\r\n")
    assert b"/dev/pts/0" in out and b"40 100" in out and b"42\r\n" in out, out
    os.write(master, b"exit 5\n")
    deadline = time.monotonic() + 60
    while json.loads(kp(root, "state", "tty1").stdout)["status"] != "stopped":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    os.close(master)
    console.close()
    assert kp(root, "delete", "tty1").returncode == 0


def test_terminal_without_console_socket_is_refused(root: Path,
                                                    bundle: Callable[..., Path]) -> None:
    b = bundle("sh")
    config = json.loads((b / "config.json").read_text())
    config["process"]["terminal"] = True
    (b / "config.json").write_text(json.dumps(config))
    _one_line_error(kp(root, "create", "-b", str(b), "tty2"), b"--console-socket")


def test_events_stats_and_update_reach_the_guest_cgroup(root: Path,
                                                        bundle: Callable[..., Path]) -> None:
    b = bundle("sleep", "600")
    assert kp(root, "run", "-d", "-b", str(b), "ev").returncode == 0
    r = kp(root, "events", "--stats", "ev")
    assert r.returncode == 0, r.stderr
    event = json.loads(r.stdout)
    assert event["type"] == "stats" and event["id"] == "ev"
    assert event["data"]["memory"]["usage"]["usage"] > 0
    assert event["data"]["memory"]["raw"]["anon"] > 0
    assert event["data"]["memory"]["usage"]["limit"] == 2**64 - 1  # "max", as runc prints it
    assert event["data"]["pids"]["current"] >= 1
    # runc (Go's omitempty) leaves out an empty list
    assert {e["op"] for e in event["data"]["blkio"].get("ioServiceBytesRecursive", [])} \
        <= {"Read", "Write"}
    assert kp(root, "update", "--pids-limit", "2", "ev").returncode == 0
    starved = kp(root, "exec", "ev", "sh", "-c", "sleep 1 & sleep 1 & wait; echo ok")
    assert starved.returncode != 0 and b"ok" not in starved.stdout
    assert kp(root, "update", "--resources", "-", "ev",
              stdin=b'{"pids": {"limit": 100}}').returncode == 0
    assert kp(root, "exec", "ev", "sh", "-c", "sleep 1 & sleep 1 & wait; echo ok").stdout \
        == b"ok\n"
    _one_line_error(kp(root, "update", "--memory", "12x", "ev"), b"invalid size")
    assert kp(root, "delete", "--force", "ev").returncode == 0


def test_exec_with_a_terminal_through_the_console_socket(
        root: Path, bundle: Callable[..., Path], tmp_path: Path) -> None:
    b = bundle("sleep", "600")
    assert kp(root, "run", "-d", "-b", str(b), "xt").returncode == 0
    _one_line_error(kp(root, "exec", "-t", "xt", "sh"), b"--detach and --console-socket")
    sock_path = tmp_path / "exec-console.sock"
    console = ConsoleSocket(sock_path)
    r = kp(root, "exec", "-d", "-t", "--console-socket", str(sock_path), "xt", "sh")
    assert r.returncode == 0, r.stderr
    master = console.master()
    os.write(master, b"tty; echo $((6*7))\n")
    out = _read_until(master, b"42\r\n")
    assert b"/dev/pts/" in out and b"42\r\n" in out, out
    os.write(master, b"exit\n")
    os.close(master)
    console.close()
    assert kp(root, "delete", "--force", "xt").returncode == 0


def test_in_container_hooks_run_in_the_guest_in_the_container_namespaces(
        root: Path, bundle: Callable[..., Path]) -> None:
    guest_rootfs = "/run/kata-py/shared/hk/rootfs"     # the rootfs before pivot_root
    ns = "readlink /proc/self/ns/mnt; readlink /proc/self/ns/pid"
    b = bundle("sh", "-c", f"{ns}; cat /tmp/cc.ns")
    config = json.loads((b / "config.json").read_text())
    config["root"]["readonly"] = False
    config["hooks"] = {
        "createContainer": [{"path": "/bin/sh", "args": [
            "sh", "-c", f"cat > {guest_rootfs}/tmp/cc.json; ({ns}) > {guest_rootfs}/tmp/cc.ns"]}],
        "startContainer": [{"path": "/bin/sh", "args": [
            "sh", "-c", "cat > /tmp/sc.json; echo $HOOK_VAR > /tmp/sc.env"],
            "env": ["HOOK_VAR=from-spec"], "timeout": 30}]}
    (b / "config.json").write_text(json.dumps(config))
    r = kp(root, "run", "-b", str(b), "hk")
    assert r.returncode == 0, r.stderr
    container_ns, hook_ns = r.stdout.decode().splitlines()[:2], r.stdout.decode().splitlines()[2:]
    assert hook_ns == container_ns and len(container_ns) == 2     # same mount and pid namespaces
    created = json.loads((b / "rootfs/tmp/cc.json").read_text())
    started = json.loads((b / "rootfs/tmp/sc.json").read_text())
    assert (created["id"], created["status"], created["bundle"]) == ("hk", "creating", str(b))
    assert (started["id"], started["status"]) == ("hk", "created")
    assert (b / "rootfs/tmp/sc.env").read_text() == "from-spec\n"


def test_no_pivot_moves_the_root_instead(root: Path, bundle: Callable[..., Path]) -> None:
    b = bundle("sh", "-c", "cat /marker; hostname")
    (b / "rootfs" / "marker").write_text("the bundle's rootfs\n")
    r = kp(root, "run", "--no-pivot", "-b", str(b), "np")
    assert (r.returncode, r.stdout) == (0, b"the bundle's rootfs\nkp\n"), r.stderr


def test_a_failing_create_container_hook_fails_create_and_leaves_nothing(
        root: Path, bundle: Callable[..., Path]) -> None:
    b = bundle("true")
    config = json.loads((b / "config.json").read_text())
    config["hooks"] = {"createContainer": [{"path": "/bin/sh", "args": [
        "sh", "-c", "echo no GPU here >&2; exit 4"]}]}
    (b / "config.json").write_text(json.dumps(config))
    r = kp(root, "create", "-b", str(b), "hkfail")
    _one_line_error(r, b"createContainer hook /bin/sh failed (exit status 4): no GPU here")
    assert kp(root, "state", "hkfail").returncode != 0


def test_sandbox_host_processes_live_in_the_specs_cgroups_path(
        root: Path, bundle: Callable[..., Path]) -> None:
    from kata_py import statsview
    from kata_py.host_cgroup import hierarchies

    b = bundle("sleep", "600")
    config = json.loads((b / "config.json").read_text())
    config["linux"]["cgroupsPath"] = f"/kata-py-it/{root.name}"
    (b / "config.json").write_text(json.dumps(config))
    r = kp(root, "run", "-d", "-b", str(b), "cg")
    assert r.returncode == 0, r.stderr
    monitor = json.loads(kp(root, "state", "cg").stdout)["pid"]
    # The kernel's word (the directories show the guest-stats view,
    # kata_py/statsview.py): every host process of the sandbox is in the
    # path in every hierarchy.
    path = f"/kata-py-it/{root.name}"
    members = {}
    for proc in Path("/proc").iterdir():
        try:
            lines = (proc / "cgroup").read_text().splitlines()
            if proc.name.isdigit() and all(line.endswith(":" + path) for line in lines):
                members[int(proc.name)] = (proc / "comm").read_text().strip()
        except OSError:
            continue
    assert monitor in members, members
    assert any(n.startswith("qemu-system") for n in members.values()), members
    assert len(members) >= 4, members          # monitor, qemu, virtiofsd, vsock backend
    viewed = {directory for directory, _ in statsview.targets(path)}
    assert viewed
    for mount in hierarchies():
        directory = mount / path.lstrip("/")
        if directory in viewed:
            assert (directory / "kata-py.txt").exists(), directory
        else:
            assert str(monitor) in (directory / "cgroup.procs").read_text().split(), directory
    assert kp(root, "delete", "--force", "cg").returncode == 0
    assert path not in Path("/proc/self/mountinfo").read_text()
    for mount in hierarchies():
        assert not (mount / "kata-py-it" / root.name).exists()
        (mount / "kata-py-it").rmdir()


def _caps(status: bytes) -> dict[str, str]:
    """The Cap* lines of a /proc/<pid>/status."""
    return dict(line.split(":\t") for line in status.decode().splitlines()
                if line.startswith("Cap"))


def _add_applets(bundle_dir: Path, *names: str) -> None:
    """busybox applets beyond conftest's APPLETS, linked into the bundle's rootfs."""
    for name in names:
        link = bundle_dir / "rootfs" / "bin" / name
        if not link.is_symlink():
            link.symlink_to("busybox")


def test_a_bundle_made_by_runc_spec_runs_as_runc_runs_it(root: Path, tmp_path: Path) -> None:
    """`runc spec` lists ambient capabilities and no inheritable ones, which
    the kernel cannot raise: runc 1.1 runs it without a word; so does kata-py."""
    runc = shutil.which("runc")
    assert runc is not None, "scripts/setup.sh installs runc"
    subprocess.run([runc, "spec"], cwd=tmp_path, check=True)
    busybox_rootfs(tmp_path / "rootfs")
    spec = json.loads((tmp_path / "config.json").read_text())
    spec["process"].update(terminal=False, args=["cat", "/proc/self/status"])
    spec["root"]["path"] = str(tmp_path / "rootfs")
    (tmp_path / "config.json").write_text(json.dumps(spec))
    r = kp(root, "run", "-b", str(tmp_path), "rspec")
    assert (r.returncode, r.stderr) == (0, b"")
    assert _caps(r.stdout) == {"CapInh": "0000000000000000", "CapPrm": "0000000020000420",
                               "CapEff": "0000000020000420", "CapBnd": "0000000020000420",
                               "CapAmb": "0000000000000000"}


PASSWD = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:User:/home/user:/bin/sh\n"


def test_home_comes_from_the_containers_passwd_for_the_init_and_for_exec(
        root: Path, bundle: Callable[..., Path]) -> None:
    """runc: HOME, when the env lacks it, is the uid's home in the
    container's /etc/passwd, "/" for a uid it does not list."""
    b = bundle("sh", "-c", 'echo "$HOME"')
    (b / "rootfs" / "etc" / "passwd").write_text(PASSWD)
    r = kp(root, "run", "-b", str(b), "home0")
    assert (r.returncode, r.stdout) == (0, b"/root\n"), r.stderr
    b = bundle("sh", "-c", 'echo "$HOME"', user={"uid": 1000, "gid": 1000})
    r = kp(root, "run", "-b", str(b), "home1000")
    assert (r.returncode, r.stdout) == (0, b"/home/user\n"), r.stderr
    b = bundle("sleep", "600")
    assert kp(root, "run", "-d", "-b", str(b), "homex").returncode == 0
    for flags, home in (((), b"/root\n"), (("-u", "1000:1000"), b"/home/user\n"),
                        (("-u", "2000"), b"/\n"), (("-e", "HOME=/mine"), b"/mine\n")):
        r = kp(root, "exec", *flags, "homex", "sh", "-c", 'echo "$HOME"')
        assert (r.returncode, r.stdout) == (0, home), (flags, r.stderr)
    assert kp(root, "delete", "--force", "homex").returncode == 0


def test_a_missing_cwd_is_created_for_the_init_on_a_read_only_root(
        root: Path, bundle: Callable[..., Path]) -> None:
    """runc makes process.cwd (0755, as the container's root) before the
    root turns read-only; the process then runs as its user. An exec's cwd
    is not made: it fails in runc's words."""
    b = bundle("sh", "-c", "pwd; id -u; stat -c '%a %u' /work/here", cwd="/work/here",
               user={"uid": 1000, "gid": 1000})
    _add_applets(b, "stat")
    r = kp(root, "run", "-b", str(b), "cwd")
    assert (r.returncode, r.stdout) == (0, b"/work/here\n1000\n755 0\n"), r.stderr
    assert (b / "rootfs" / "work" / "here").is_dir()
    b = bundle("sleep", "600")
    assert kp(root, "run", "-d", "-b", str(b), "cwdx").returncode == 0
    _one_line_error(kp(root, "exec", "--cwd", "/nope", "cwdx", "true"),
                    b'chdir to cwd ("/nope") set in config.json: No such file or directory')
    assert kp(root, "delete", "--force", "cwdx").returncode == 0


def test_execs_into_a_terminal_container_created_or_running(
        root: Path, bundle: Callable[..., Path], tmp_path: Path) -> None:
    """Plain execs (no -t) into a container whose init has a terminal: they
    used to inherit its console socket and fail with EBADF. Before start too,
    as runc allows."""
    b = bundle("sh")
    config = json.loads((b / "config.json").read_text())
    config["process"]["terminal"] = True
    (b / "config.json").write_text(json.dumps(config))
    sock_path = tmp_path / "console.sock"
    console = ConsoleSocket(sock_path)
    try:
        r = kp(root, "create", "--console-socket", str(sock_path), "-b", str(b), "xtc")
        assert r.returncode == 0, r.stderr
        master = console.master()
        r = kp(root, "exec", "xtc", "sh", "-c", "echo created; [ -t 0 ] || echo no-tty")
        assert (r.returncode, r.stdout) == (0, b"created\nno-tty\n"), r.stderr
        assert json.loads(kp(root, "state", "xtc").stdout)["status"] == "created"
        assert kp(root, "start", "xtc").returncode == 0
        r = kp(root, "exec", "xtc", "cat", "/proc/1/comm")
        assert (r.returncode, r.stdout) == (0, b"sh\n"), r.stderr
        r = kp(root, "exec", "-e", "FOO=bar", "--cwd", "/tmp", "-u", "1000:1000", "xtc",
               "sh", "-c", "echo $FOO $(pwd) $(id -u):$(id -g)")
        assert (r.returncode, r.stdout) == (0, b"bar /tmp 1000:1000\n"), r.stderr
        pid_file = tmp_path / "exec.pid"
        r = kp(root, "exec", "--pid-file", str(pid_file), "xtc", "true")
        assert r.returncode == 0 and int(pid_file.read_text()) > 0, r.stderr
        os.write(master, b"echo $((6*7))\n")       # the init's terminal still works
        assert b"42\r\n" in _read_until(master, b"42\r\n")
        os.close(master)
    finally:
        console.close()
    assert kp(root, "delete", "--force", "xtc").returncode == 0


def test_a_foreground_exec_t_uses_the_callers_terminal_raw_and_restores_it(
        root: Path, bundle: Callable[..., Path]) -> None:
    """As runc: no --console-socket, the caller's terminal (stdin) in raw
    mode relays a pty in the guest that starts at the terminal's size."""
    import termios

    b = bundle("sleep", "600")
    _add_applets(b, "tty", "stty")
    assert kp(root, "run", "-d", "-b", str(b), "fgt").returncode == 0
    master, slave = os.openpty()
    try:
        set_winsize(master, 33, 99)
        before = termios.tcgetattr(slave)
        proc = subprocess.Popen(cli_argv(root, "exec", "-t", "fgt", "sh", "-c",
                                         "tty; stty size; read line; echo got $line"),
                                stdin=slave, stdout=slave, stderr=slave)
        out = _read_until(master, b"33 99")
        assert b"/dev/pts/" in out and b"33 99" in out, out
        os.write(master, b"typed\r")
        out += _read_until(master, b"got typed")
        assert proc.wait(timeout=60) == 0
        assert b"got typed" in out, out
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)
    _one_line_error(kp(root, "exec", "-t", "fgt", "sh"), b"needs a terminal on stdin")
    assert kp(root, "delete", "--force", "fgt").returncode == 0


def _wait_stopped(root: Path, cid: str) -> None:
    deadline = time.monotonic() + 60
    while json.loads(kp(root, "state", cid).stdout)["status"] != "stopped":
        assert time.monotonic() < deadline
        time.sleep(0.5)


def test_ps_prints_ps_ef_columns_of_the_containers_own_processes(
        root: Path, bundle: Callable[..., Path]) -> None:
    """runc's `ps` (ps -ef's rows of the container's pids): the container's
    pids as it sees them, never kata-py's launcher, before start (header
    alone), while running, with ps options after the id, and once stopped."""
    b = bundle("sleep", "600")
    assert kp(root, "create", "-b", str(b), "psc").returncode == 0
    created = kp(root, "ps", "psc")
    assert created.returncode == 0, created.stderr
    assert created.stdout.split() == b"UID PID PPID C STIME TTY TIME CMD".split()
    assert kp(root, "ps", "--format", "json", "psc").stdout == b"null\n"
    assert kp(root, "start", "psc").returncode == 0
    assert kp(root, "exec", "-d", "psc", "sleep", "30").returncode == 0
    table = kp(root, "ps", "psc")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.decode().splitlines()
    assert header.split() == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    fields = [row.split(None, 7) for row in rows]
    assert ["root", "1", "0"] == fields[0][:3] and fields[0][7] == "sleep 600", rows
    assert any(f[7] == "sleep 30" for f in fields), rows
    assert not any("python" in row or "kata_py" in row for row in rows), rows
    pids = json.loads(kp(root, "ps", "-f", "json", "psc").stdout)
    assert pids == sorted(int(f[1]) for f in fields)
    # -o alone selects the caller's terminal's processes, as procps does (none)
    assert kp(root, "ps", "psc", "--", "-o", "pid,args").stdout.split() == [b"PID", b"COMMAND"]
    custom = kp(root, "ps", "psc", "--", "-e", "-o", "pid,args").stdout.decode().splitlines()
    assert custom[0].split() == ["PID", "COMMAND"] and custom[1].split() == ["1", "sleep", "600"]
    bsd = kp(root, "ps", "psc", "-e", "-x")      # procps: BSD's e and x
    assert bsd.stdout.decode().splitlines()[0].split() == ["PID", "TTY", "STAT", "TIME",
                                                           "COMMAND"]
    assert bsd.stderr == b"kata-py: warning: ps e: the environment of a guest process is " \
                         b"not shown\n"
    _one_line_error(kp(root, "ps", "psc", "--", "-L"), b"ps option -L is not supported")
    assert kp(root, "kill", "psc", "KILL").returncode == 0
    _wait_stopped(root, "psc")
    stopped = kp(root, "ps", "psc")
    assert (stopped.returncode, stopped.stdout.split()) == (0, header.encode().split())
    assert kp(root, "ps", "--format", "json", "psc").stdout == b"null\n"
    assert kp(root, "delete", "psc").returncode == 0


def test_kill_0_checks_the_container_without_signalling_it(
        root: Path, bundle: Callable[..., Path]) -> None:
    """runc's `kill ID 0`: success while the process exists, nothing
    delivered (a shell that exits on any signal goes on); an error once it
    has stopped."""
    b = bundle("sh", "-c", "trap 'exit 9' HUP INT QUIT USR1 USR2 TERM; "
                           "while true; do sleep 1; done")
    assert kp(root, "run", "-d", "-b", str(b), "k0").returncode == 0
    for argv in (["k0", "0"], ["--all", "k0", "0"]):
        r = kp(root, "kill", *argv)
        assert (r.returncode, r.stdout, r.stderr) == (0, b"", b""), argv
    time.sleep(3)
    assert json.loads(kp(root, "state", "k0").stdout)["status"] == "running"
    assert kp(root, "kill", "k0", "KILL").returncode == 0
    _wait_stopped(root, "k0")
    r = kp(root, "kill", "k0", "0")
    assert (r.returncode, r.stderr) == (1, b"kata-py: container k0 is stopped: only a created "
                                           b"or running container can be signalled\n")
    assert kp(root, "delete", "k0").returncode == 0


def test_state_list_and_events_print_runcs_shapes(root: Path, bundle: Callable[..., Path]
                                                  ) -> None:
    """state: json.MarshalIndent, no newline after it; list --format json and
    events: one compact line (Go's json.Encoder); runc's field orders."""
    b = bundle("sleep", "600")
    assert kp(root, "run", "-d", "-b", str(b), "shape").returncode == 0
    _wait_running(root, "shape")
    state = kp(root, "state", "shape").stdout
    assert state.startswith(b'{\n  "ociVersion": ') and state.endswith(b'\n}')
    assert list(json.loads(state)) == ["ociVersion", "id", "pid", "status", "bundle", "rootfs",
                                       "created", "owner"]
    listed = kp(root, "list", "--format", "json").stdout
    assert listed.count(b"\n") == 1 and b": " not in listed
    item, = json.loads(listed)
    assert list(item) == ["ociVersion", "id", "pid", "status", "bundle", "rootfs", "created",
                          "owner"]
    assert (item["id"], item["status"], item["owner"]) == ("shape", "running", "root")
    assert kp(root, "list").stdout.split(b"\n")[0].split() == [
        b"ID", b"PID", b"STATUS", b"BUNDLE", b"CREATED", b"OWNER"]
    events = kp(root, "events", "--stats", "shape").stdout
    assert events.count(b"\n") == 1 and b": " not in events
    event = json.loads(events)
    assert list(event) == ["type", "id", "data"]
    assert list(event["data"]) == ["cpu", "cpuset", "memory", "pids", "blkio", "hugetlb",
                                   "intel_rdt", "network_interfaces"]
    assert event["data"]["memory"]["usage"]["limit"] == 2 ** 64 - 1   # no limit: cgroup "max"
    assert kp(root, "delete", "--force", "shape").returncode == 0
