"""podman 4.3 + conmon driving kata-py: each container is a micro-VM (TCG
here), podman sees an ordinary runc-like runtime. What podman/conmon call:
`create --bundle B --pid-file P [--console-socket S] ID`, `start ID`,
`exec --pid-file P --process F --detach [--tty --console-socket S] ID`,
`kill ID SIG`, `delete --force ID` (global `--log-format=json --log F`
on create and exec)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import termios
import time
from pathlib import Path

import pytest

from .conftest import IMAGE, Podman

pytestmark = pytest.mark.vm

GUEST_MANIFEST = Path("/var/cache/kata-py/guest/manifest.json")
NONE = ("--network", "none")
TTY_WAIT_S = 90.0


def _inspect(podman: Podman, name: str, template: str) -> str:
    return podman.ok("inspect", name, "--format", template).strip()


def _wait_for_log(podman: Podman, name: str, text: str, timeout_s: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        logs = podman.ok("logs", name)
        if text in logs or time.monotonic() > deadline:
            return logs
        time.sleep(0.5)


def test_run_rm_relays_stdout_and_stderr_from_a_guest_kernel(podman: Podman) -> None:
    guest_kernel = json.loads(GUEST_MANIFEST.read_text())["kernel_release"]
    res = podman("run", "--rm", *NONE, IMAGE, "sh", "-c",
                 "echo hello from kata-py; echo to stderr >&2; uname -r")
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"hello from kata-py\n{guest_kernel}\n"
    assert guest_kernel != os.uname().release       # the container ran in the VM
    assert res.stderr == "to stderr\n"
    assert podman.ok("ps", "--all", "--quiet") == ""


def test_exit_status_reaches_podman_run_and_inspect(podman: Podman) -> None:
    res = podman("run", "--name", "exit3", *NONE, IMAGE, "sh", "-c", "exit 3")
    assert (res.returncode, res.stderr) == (3, "")
    assert _inspect(podman, "exit3", "{{.State.Status}} {{.State.ExitCode}}") == "exited 3"
    podman.ok("rm", "exit3")


def test_run_i_feeds_stdin_to_the_container_and_closes_it(podman: Podman) -> None:
    data = b"".join(b"line %05d of the piped input\n" % i for i in range(3000))  # 87 KiB
    res = podman("run", "--rm", "-i", *NONE, IMAGE, "sh", "-c", "cat; echo end of input",
                 stdin=data)
    assert res.returncode == 0, res.stderr
    assert res.stdout.encode() == data + b"end of input\n"


def test_detached_container_logs_exec_stop_rm(podman: Podman) -> None:
    script = 'echo started; trap "echo got TERM; exit 7" TERM; while :; do sleep 0.2; done'
    cid = podman.ok("run", "-d", "--name", "det", *NONE, IMAGE, "sh", "-c", script).strip()
    assert len(cid) == 64
    assert "started" in _wait_for_log(podman, "det", "started")
    assert _inspect(podman, "det", "{{.State.Status}} {{.OCIRuntime}}") == "running kata-py"

    res = podman("exec", "-e", "FOO=bar", "det", "sh", "-c", "echo exec sees $FOO; exit 5")
    assert (res.returncode, res.stdout) == (5, "exec sees bar\n"), res.stderr
    res = podman("exec", "-i", "det", "cat", stdin=b"into exec\n")
    assert (res.returncode, res.stdout) == (0, "into exec\n"), res.stderr
    res = podman("exec", "det", "/nonexistent")
    assert res.returncode == 127                     # podman's "command not found"
    assert "No such file or directory" in res.stderr

    podman.ok("stop", "--time", "30", "det")
    assert _inspect(podman, "det", "{{.State.Status}} {{.State.ExitCode}}") == "exited 7"
    assert podman.ok("logs", "det") == "started\ngot TERM\n"
    podman.ok("rm", "det")
    assert podman.ok("ps", "--all", "--quiet") == ""


def test_rm_force_kills_a_running_container_and_its_vm(podman: Podman) -> None:
    podman.ok("run", "-d", "--name", "busy", *NONE, IMAGE, "sleep", "1000")
    assert _inspect(podman, "busy", "{{.State.Status}}") == "running"
    assert (podman.kata_root / "vm").exists() and any((podman.kata_root / "vm").iterdir())
    podman.ok("rm", "--force", "--time", "0", "busy")
    assert podman.ok("ps", "--all", "--quiet") == ""
    assert podman.leftovers() == []


def test_run_it_gives_the_container_a_terminal_of_the_callers_size(podman: Podman) -> None:
    pid, master = pty.fork()
    if pid == 0:                                     # the child: podman on a terminal
        try:
            os.execvpe("podman", ["podman", "run", "--rm", "-it", *NONE, IMAGE, "sh"],
                       podman.env)
        finally:
            os._exit(127)                            # never back into pytest
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    out, sent = b"", False
    deadline = time.monotonic() + TTY_WAIT_S
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    chunk = os.read(master, 4096)
                except OSError:                      # EIO: podman closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            if not sent and b"# " in out:            # the shell's prompt
                os.write(master, b"tty; stty size; exit 4\r")
                sent = True
    finally:
        if time.monotonic() > deadline:
            os.kill(pid, 9)
        _, status = os.waitpid(pid, 0)
        os.close(master)
    assert os.waitstatus_to_exitcode(status) == 4, out
    assert b"/dev/pts/0\r\n30 100\r\n" in out


def test_cgroups_disabled_is_accepted(podman: Podman) -> None:
    # podman passes `--cgroup-manager disabled` to runtimes listed in
    # runtime_supports_nocgroup (configs/containers.conf.d/kata-py.conf).
    res = podman("run", "--rm", "--cgroups=disabled", *NONE, IMAGE, "echo", "ok")
    assert (res.returncode, res.stdout) == (0, "ok\n"), res.stderr


def test_a_refused_config_fails_create_with_kata_pys_reason(podman: Podman) -> None:
    res = podman("run", "--rm", *NONE, "--uidmap", "0:100000:65536", "--gidmap",
                 "0:100000:65536", IMAGE, "true")
    assert res.returncode == 126
    # podman took the reason from kata-py's --log (JSON), once, not "kata-py: kata-py:"
    assert ("Error: OCI runtime error: kata-py: config.json: linux.namespaces[" in res.stderr
            and "user namespaces are not supported by kata-py" in res.stderr), res.stderr
    assert podman.ok("ps", "--all", "--quiet") == ""
