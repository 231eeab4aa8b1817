"""Containers in a real sandbox: the agent spawns the launcher in the guest,
which builds namespaces in a busybox rootfs shared from the host over
virtio-fs; output, stdin, exit codes and signals travel over vsock."""

from __future__ import annotations

import base64
import signal
import time
from collections.abc import Iterator

import pytest

from kata_py.agent import devices
from kata_py.agent import launch_config as lc
from kata_py.agent_client import AgentClient
from kata_py.config import RuntimeConfig
from kata_py.errors import AgentError
from kata_py.sandbox import Sandbox

from .conftest import busybox_rootfs, leftovers

pytestmark = pytest.mark.vm

GUEST_SHARE = "/run/kata-py/shared"


@pytest.fixture(scope="module")
def sandbox(runtime_config: RuntimeConfig) -> Iterator[Sandbox]:
    sb = Sandbox("containers", runtime_config)
    sb.start()
    yield sb
    sb.stop()
    assert not sb.dir.exists() and leftovers(str(sb.dir)) == []


def _rootfs(sb: Sandbox, cid: str) -> str:
    busybox_rootfs(sb.shared_dir / cid / "rootfs", ("proc", "dev", "tmp", "etc"))
    return f"{GUEST_SHARE}/{cid}/rootfs"


def _create(sb: Sandbox, cid: str, *args: str, cgroup: lc.Cgroup | None = None) -> AgentClient:
    config = lc.LaunchConfig(cgroup=cgroup,
        container_id=cid, rootfs=_rootfs(sb, cid),
        process=lc.Process(args=args, env=("PATH=/bin", "HOME=/"), cwd="/"),
        fds=lc.Fds(sync=3, start=4), hostname="kp-test",
        namespaces=tuple(lc.Namespace(t) for t in ("pid", "mount", "uts", "ipc")),
        mounts=(lc.Mount("/proc", "proc", "proc", ("nosuid", "noexec", "nodev")),))
    assert sb.agent is not None
    pid = sb.agent.create_container(cid, lc.to_json(config).encode())
    assert pid > 1
    return sb.agent


def _drain(agent: AgentClient, cid: str, stream: str, exec_id: str = "") -> bytes:
    out = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        chunk = agent.read_output(cid, stream, timeout_s=10, exec_id=exec_id)
        if chunk == b"":
            return out
        out += chunk or b""
    raise AssertionError(f"{stream} of {cid} did not end: {out!r}")


def test_container_output_exit_code_and_namespaces(sandbox: Sandbox) -> None:
    agent = _create(sandbox, "c-out", "sh", "-c",
                    "echo hi; echo err >&2; hostname; echo pid=$$; ls /; exit 3")
    agent.start_container("c-out")
    stdout = _drain(agent, "c-out", "stdout").decode()
    assert _drain(agent, "c-out", "stderr") == b"err\n"
    assert agent.wait_process("c-out", timeout_s=30) == 3
    lines = stdout.split()
    assert lines[:3] == ["hi", "kp-test", "pid=1"]
    assert "bin" in lines and "proc" in lines and "run" not in lines  # the container's root
    agent.remove_container("c-out")


def test_stdin_reaches_the_process(sandbox: Sandbox) -> None:
    agent = _create(sandbox, "c-in", "cat")
    agent.start_container("c-in")
    assert agent.write_stdin("c-in", b"through vsock\n") == 14
    agent.close_stdin("c-in")
    assert _drain(agent, "c-in", "stdout") == b"through vsock\n"
    assert agent.wait_process("c-in", timeout_s=30) == 0
    agent.remove_container("c-in")


def test_sigkill_gives_137(sandbox: Sandbox) -> None:
    agent = _create(sandbox, "c-kill", "sleep", "600")
    agent.start_container("c-kill")
    assert agent.wait_process("c-kill", timeout_s=1) is None
    agent.signal_process("c-kill", signal.SIGKILL)
    assert agent.wait_process("c-kill", timeout_s=30) == 137
    agent.remove_container("c-kill")


def test_container_removed_before_start_never_runs(sandbox: Sandbox) -> None:
    agent = _create(sandbox, "c-never", "sh", "-c", "echo ran > /tmp/ran")
    agent.remove_container("c-never")
    assert not (sandbox.shared_dir / "c-never" / "rootfs" / "tmp" / "ran").exists()
    with pytest.raises(Exception, match="does not exist"):
        agent.start_container("c-never")


def test_missing_binary_fails_the_create_with_the_reason(sandbox: Sandbox) -> None:
    """As runc: the executable is looked up before create returns."""
    with pytest.raises(AgentError, match='exec: "/bin/nope": stat /bin/nope: no such file'):
        _create(sandbox, "c-nobin", "/bin/nope")
    assert sandbox.agent is not None
    with pytest.raises(Exception, match="does not exist"):
        sandbox.agent.start_container("c-nobin")


def test_guest_cgroup_limits_apply(sandbox: Sandbox) -> None:
    # pids.max 4 (the launcher's supervisor and sh count): the 6 background
    # sleeps cannot all fork, and busybox sh gives up with "can't fork".
    cgroup = lc.Cgroup("kata-py/c-cg", lc.Resources(pids_limit=4, memory_limit=64 << 20))
    agent = _create(sandbox, "c-cg", "sh", "-c",
                    "cat /proc/self/cgroup; for i in 1 2 3 4 5 6; do sleep 5 & done; "
                    "echo survived", cgroup=cgroup)
    agent.start_container("c-cg")
    out = _drain(agent, "c-cg", "stdout").decode().split()
    stderr = _drain(agent, "c-cg", "stderr").decode()
    code = agent.wait_process("c-cg", timeout_s=30)
    agent.remove_container("c-cg")
    assert out == ["0::/kata-py/c-cg"]
    assert code != 0 and "fork" in stderr


def _read_until(agent: AgentClient, cid: str, stream: str, markers: tuple[bytes, ...],
                exec_id: str = "") -> bytes:
    """Output of a still-running process until every marker has been seen."""
    out = b""
    deadline = time.monotonic() + 60
    while not all(m in out for m in markers) and time.monotonic() < deadline:
        chunk = agent.read_output(cid, stream, timeout_s=10, exec_id=exec_id)
        if chunk == b"":
            break
        out += chunk or b""
    return out


def test_device_rules_refuse_the_guest_disk_to_a_container_with_cap_mknod(
        sandbox: Sandbox) -> None:
    """linux.resources.devices deny-all (+ runc's default allow list, compiled
    as translate.py does): mknod still works, but opening the node is refused
    with EPERM — the guest's own virtio-blk disk included — while /dev/null
    and /dev/zero work; a process exec'd into the container is filtered too."""
    cid = "c-dev"
    program = base64.b64encode(devices.compile_filter([devices.Rule(False)], [])).decode()
    script = ("echo x > /dev/null && echo null-ok; "
              "busybox head -c1 /dev/zero > /dev/null && echo zero-ok; "
              "busybox mknod /tmp/kmsg c 1 11 && echo kmsg-mknod-ok; busybox head -c1 /tmp/kmsg; "
              "set -- $(busybox grep -w vda /proc/partitions); "
              'if [ -n "$1" ]; then busybox mknod /tmp/vda b "$1" "$2" && echo vda-mknod-ok; '
              "busybox head -c1 /tmp/vda; else echo no-vda; fi; echo checked; exec sleep 600")
    config = lc.LaunchConfig(
        container_id=cid, rootfs=_rootfs(sandbox, cid),
        process=lc.Process(args=("sh", "-c", script), env=("PATH=/bin", "HOME=/"), cwd="/"),
        fds=lc.Fds(sync=3, start=4),
        namespaces=tuple(lc.Namespace(t) for t in ("pid", "mount", "uts", "ipc", "cgroup")),
        mounts=(lc.Mount("/proc", "proc", "proc", ("nosuid", "noexec", "nodev")),
                lc.Mount("/tmp", "tmpfs", "tmpfs", ("nosuid",))),
        cgroup=lc.Cgroup(f"kata-py/{cid}", device_program=program))
    agent = sandbox.agent
    assert agent is not None
    agent.create_container(cid, lc.to_json(config).encode())
    agent.start_container(cid)
    try:
        out = _read_until(agent, cid, "stdout", (b"checked",)).decode().split()
        denied = [b"head: /tmp/kmsg: Operation not permitted"]
        if "no-vda" not in out:
            denied.append(b"head: /tmp/vda: Operation not permitted")
        err = _read_until(agent, cid, "stderr", tuple(denied))
        assert out[:3] == ["null-ok", "zero-ok", "kmsg-mknod-ok"], (out, err)
        assert "no-vda" in out or "vda-mknod-ok" in out, (out, err)
        assert all(d in err for d in denied), (out, err)

        exec_config = lc.LaunchConfig(
            container_id=cid, rootfs="/", fds=lc.Fds(sync=3, start=4),
            process=lc.Process(args=("sh", "-c", "busybox mknod /tmp/kmsg2 c 1 11 && echo ok; "
                                                 "busybox head -c1 /tmp/kmsg2"),
                               env=("PATH=/bin",), cwd="/"))
        agent.exec_process(cid, "e1", lc.to_json(exec_config).encode())
        exec_out = _drain(agent, cid, "stdout", "e1")
        exec_err = _drain(agent, cid, "stderr", "e1")
        assert agent.wait_process(cid, timeout_s=30, exec_id="e1") != 0
        assert exec_out == b"ok\n", (exec_out, exec_err)
        assert b"head: /tmp/kmsg2: Operation not permitted" in exec_err, exec_err
        agent.remove_container(cid, "e1")
    finally:
        agent.signal_process(cid, signal.SIGKILL)
        agent.wait_process(cid, timeout_s=30)
        agent.remove_container(cid)
