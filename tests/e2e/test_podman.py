"""podman 4.3 + conmon driving kata-py: each container is a micro-VM (TCG
here), podman sees an ordinary runc-like runtime. What podman/conmon call:
`create --bundle B --pid-file P [--console-socket S] ID`, `start ID`,
`exec --pid-file P --process F --detach [--tty --console-socket S] ID`,
`kill ID SIG`, `pause ID`, `resume ID`, `delete --force ID` (global
`--log-format=json --log F` on create and exec).

This file: a container's life as a podman user lives it — run, stdio,
terminals, exit codes, detached containers and the verbs on them. The
container's configuration (options of `podman run`) is in
test_podman_options.py, bad input in test_podman_errors.py.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest

from .conftest import IMAGE, Podman

pytestmark = pytest.mark.vm

GUEST_MANIFEST = Path("/var/cache/kata-py/guest/manifest.json")
NONE = ("--network", "none")
TTY_WAIT_S = 90.0
COUNTER_WAIT_S = 20.0          # a busybox loop under TCG: a few iterations per second


def _inspect(podman: Podman, name: str, template: str) -> str:
    return podman.ok("inspect", name, "--format", template).strip()


def _wait_for_log(podman: Podman, name: str, text: str, timeout_s: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        logs = podman.ok("logs", name)
        if text in logs or time.monotonic() > deadline:
            return logs
        time.sleep(0.5)


def _on_terminal(podman: Podman, args: list[str], keys: bytes,
                 size: tuple[int, int] = (30, 100)) -> tuple[int, bytes]:
    """Run `podman ARGS` on a pty of `size` (rows, columns), type `keys` at the
    shell's first prompt; its exit status and all it wrote to the terminal."""
    pid, master = pty.fork()
    if pid == 0:                                     # the child: podman on a terminal
        try:
            os.execvpe("podman", ["podman", *args], podman.env)
        finally:
            os._exit(127)                            # never back into pytest
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))
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
                os.write(master, keys)
                sent = True
    finally:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        os.close(master)
    return os.waitstatus_to_exitcode(status), out


def _read_counter(path: Path) -> int:
    """The number a container's loop keeps writing (0 while it is rewritten)."""
    text = path.read_text().strip() if path.exists() else ""
    return int(text) if text.isdigit() else 0


def _wait_for_counter(path: Path, above: int) -> int:
    deadline = time.monotonic() + COUNTER_WAIT_S
    while (value := _read_counter(path)) <= above and time.monotonic() < deadline:
        time.sleep(0.2)
    return value


def _megabytes(figure: str) -> float:
    """podman's "207.6MB / 25.28GB" → 207.6 (the part before the limit)."""
    found = re.fullmatch(r"([\d.]+)([kMGT]?B)", figure.split(" / ")[0])
    assert found is not None, figure
    scale = {"B": 1e-6, "kB": 1e-3, "MB": 1.0, "GB": 1e3, "TB": 1e6}[found[2]]
    return float(found[1]) * scale


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


def test_detached_container_logs_exec_signals_stop_rm(podman: Podman) -> None:
    script = ('echo started; trap "echo got USR1" USR1; trap "echo got TERM; exit 7" TERM; '
              'while :; do sleep 0.2; done')
    cid = podman.ok("run", "-d", "--name", "det", *NONE, IMAGE, "sh", "-c", script).strip()
    assert len(cid) == 64
    assert "started" in _wait_for_log(podman, "det", "started")
    assert _inspect(podman, "det", "{{.State.Status}} {{.OCIRuntime}}") == "running kata-py"

    res = podman("exec", "-e", "FOO=bar", "det", "sh", "-c", "echo exec sees $FOO; exit 5")
    assert (res.returncode, res.stdout) == (5, "exec sees bar\n"), res.stderr
    res = podman("exec", "-i", "det", "cat", stdin=b"into exec\n")
    assert (res.returncode, res.stdout) == (0, "into exec\n"), res.stderr
    res = podman("exec", "det", "/nonexistent")
    assert res.returncode == 127, res                # podman's "command not found", as runc
    assert res.stderr.endswith('exec: "/nonexistent": stat /nonexistent: no such file or '
                               "directory: OCI runtime attempted to invoke a command that was "
                               "not found\n"), res.stderr
    status, out = _on_terminal(podman, ["exec", "-it", "det", "sh"],
                               b"tty; stty size; exit 6\r", size=(25, 90))
    assert status == 6, out
    assert re.search(rb"/dev/pts/\d+\r\n25 90\r\n", out), out

    podman.ok("kill", "--signal", "USR1", "det")     # reaches the trap, the shell lives on
    assert "got USR1" in _wait_for_log(podman, "det", "got USR1")
    assert _inspect(podman, "det", "{{.State.Status}}") == "running"

    podman.ok("stop", "--time", "30", "det")         # TERM: the trap exits 7
    assert _inspect(podman, "det", "{{.State.Status}} {{.State.ExitCode}}") == "exited 7"
    assert podman.ok("logs", "det") == "started\ngot USR1\ngot TERM\n"
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
    # podman 4.3 sets no process.consoleSize: the size comes from its resize,
    # which it sends to conmon concurrently with `start`. The monitor passes a
    # size that is there before the start (Monitor._start); one that lands just
    # after reaches the guest ~20-40 ms later, so the shell is given a moment.
    status, out = _on_terminal(podman, ["run", "--rm", "-it", *NONE, IMAGE, "sh"],
                               b"sleep 1; tty; stty size; exit 4\r")
    assert status == 4, out
    assert b"/dev/pts/0\r\n30 100\r\n" in out


def test_logs_follow_wait_and_restart_with_a_volume(podman: Podman, tmp_path: Path) -> None:
    """A container that prints and exits on its own: `logs -f` ends with it,
    `wait` prints its status, `restart` runs it again; the host directory
    is shared both ways through virtio-fs."""
    (tmp_path / "from-host").write_text("written on the host\n")
    script = ('cat /data/from-host; echo run >> /data/runs; '
              'for i in 1 2 3; do echo line $i; sleep 0.5; done; exit 3')
    podman.ok("run", "-d", "--name", "job", *NONE, "-v", f"{tmp_path}:/data", IMAGE,
              "sh", "-c", script)
    expected = "written on the host\nline 1\nline 2\nline 3\n"
    assert podman.ok("logs", "--follow", "job", timeout=60) == expected
    assert podman.ok("wait", "job", timeout=60) == "3\n"
    assert _inspect(podman, "job", "{{.State.Status}} {{.State.ExitCode}}") == "exited 3"
    assert (tmp_path / "runs").read_text() == "run\n"    # the container's write, on the host

    podman.ok("restart", "job")
    assert podman.ok("wait", "job", timeout=60) == "3\n"
    assert (tmp_path / "runs").read_text() == "run\nrun\n"
    assert podman.ok("logs", "job") == expected * 2


def _runtime_state(podman: Podman, name: str) -> tuple[str, int]:
    """`kata-py state` as podman would call it (its runtime wrapper, full id)."""
    cid = _inspect(podman, name, "{{.Id}}")
    out = subprocess.run([str(podman.runtime), "state", cid], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    state = json.loads(out)
    assert state["id"] == cid
    return state["status"], state["pid"]


def test_pause_freezes_the_container_and_stop_kills_one_that_ignores_term(
        podman: Podman, tmp_path: Path) -> None:
    counter = tmp_path / "n"
    script = 'trap "" TERM; i=0; while :; do i=$((i+1)); echo $i > /data/n; sleep 0.1; done'
    podman.ok("run", "-d", "--name", "count", *NONE, "-v", f"{tmp_path}:/data", IMAGE,
              "sh", "-c", script)
    assert _wait_for_counter(counter, 2) > 2
    status, pid = _inspect(podman, "count", "{{.State.Status}} {{.State.Pid}}").split()
    assert status == "running" and int(pid) > 0
    assert _runtime_state(podman, "count") == ("running", int(pid))   # podman 4.3 may ask

    podman.ok("pause", "count")
    assert _inspect(podman, "count", "{{.State.Status}}") == "paused"
    assert _runtime_state(podman, "count") == ("paused", int(pid))
    frozen = _read_counter(counter)
    time.sleep(2.0)
    assert _read_counter(counter) == frozen
    res = podman("exec", "count", "true")           # podman's own rule while paused
    assert res.returncode != 0 and "state improper" in res.stderr, res

    podman.ok("unpause", "count")
    assert _inspect(podman, "count", "{{.State.Status}}") == "running"
    assert _runtime_state(podman, "count") == ("running", int(pid))
    assert _wait_for_counter(counter, frozen) > frozen

    started = time.monotonic()
    res = podman("stop", "--time", "2", "count")
    assert res.returncode == 0, res.stderr
    assert "resorting to SIGKILL" in res.stderr
    assert time.monotonic() - started >= 2.0
    assert _inspect(podman, "count", "{{.State.Status}} {{.State.ExitCode}}") == "exited 137"


def test_two_containers_at_once_top_stats_and_sigkill(podman: Podman) -> None:
    sleeps = {"one": "sleep 1001", "two": "sleep 1002"}
    for name, command in sleeps.items():
        podman.ok("run", "-d", "--name", name, "--memory", "256m", *NONE, IMAGE,
                  *command.split())
    for name, command in sleeps.items():
        other = sleeps["two" if name == "one" else "one"]
        cmdline = podman.ok("exec", name, "cat", "/proc/1/cmdline")
        assert cmdline.split("\0") == [*command.split(), ""]

        # `podman top` has psgo read /proc in the mount namespace of State.Pid:
        # kata-py's holder, whose /proc shows the guest's processes as the
        # container sees them (kata_py/holder.py, procview.py).
        top = podman.ok("top", name).splitlines()
        assert top[0].split() == ["USER", "PID", "PPID", "%CPU", "ELAPSED", "TTY", "TIME",
                                  "COMMAND"], top
        assert len(top) == 2, top
        user, pid, ppid, _, elapsed, tty, _, *args = top[1].split()
        assert (user, pid, ppid, tty, " ".join(args)) == ("root", "1", "0", "?", command), top
        assert "h" not in elapsed and "m" not in elapsed, top   # seconds, not the host's uptime
        # Descriptors psgo does not know (ps(1) options) make podman exec ps in
        # the container: those are the container's processes, seen in the guest.
        top = podman.ok("top", name, "-ef")
        assert re.search(rf"^ +1 root +{command}$", top, re.M), top
        assert other not in top, top

    # `podman stats` reads the host cgroup of State.Pid (kata-py's monitor), where
    # kata-py shows the guest cgroup's figures (kata_py/statsview.py), not the
    # VM's host processes: a sleep is 1 pid and a few MB in the guest, where
    # QEMU alone is > 100 MB and the sandbox dozens of host threads.
    guest = {name: podman.ok("exec", name, "cat", "/sys/fs/cgroup/memory.current")
             for name in sleeps}
    stats = {s["name"]: s for s in json.loads(
        podman.ok("stats", "--no-stream", "--format", "json"))}
    print("podman stats:", json.dumps(stats, indent=1), "guest memory.current:", guest)
    assert set(stats) == {"one", "two"}, stats
    for name, figures in stats.items():
        cid, cgroup = _inspect(podman, name, "{{.Id}} {{.State.CgroupPath}}").split()
        assert cgroup.endswith(f"/libpod-{cid}"), (name, cgroup)   # not conmon's cgroup
        # the sleep, and the exec'd cat until the guest has reaped it
        assert 1 <= int(figures["pids"]) <= 3, figures
        used = _megabytes(figures["mem_usage"])
        assert 0 < used < 2 * int(guest[name]) / 1e6 + 8, (figures, guest[name])
        assert figures["mem_usage"].endswith(" / 268.4MB"), figures   # --memory 256m
    fill = "head -c 40000000 /dev/zero > /tmp/fill && cat /sys/fs/cgroup/memory.current"
    filled = int(podman.ok("exec", "one", "sh", "-c", fill)) / 1e6
    time.sleep(0.6)                                 # past the view's cache
    used = _megabytes(json.loads(podman.ok("stats", "--no-stream", "--format", "json",
                                           "one"))[0]["mem_usage"])
    assert filled > 40 and 0.8 * filled < used < 1.2 * filled + 4, (filled, used)
    views = [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
             if " fuse.kata-py-stats " in line]
    assert len(views) >= 2 * len(stats), views      # one per hierarchy, per container

    podman.ok("kill", "--signal", "KILL", "one")
    assert podman.ok("wait", "one", timeout=60) == "137\n"
    os.kill(int(_inspect(podman, "two", "{{.State.Pid}}")), signal.SIGKILL)   # kill -9 on the host
    assert podman.ok("wait", "two", timeout=60) == "137\n"
    for name in sleeps:
        assert _inspect(podman, name, "{{.State.Status}} {{.State.ExitCode}}") == "exited 137"
    podman.ok("rm", *sleeps)
    assert podman.ok("ps", "--all", "--quiet") == ""
    assert podman.leftovers() == []
    # the views are gone (two's monitor was killed: delete detached its views)
    assert " fuse.kata-py-stats " not in Path("/proc/self/mountinfo").read_text()


def test_cp_and_top_see_the_container_not_the_host(podman: Podman, tmp_path: Path) -> None:
    """podman cp and top join the mount namespace of State.Pid; kata-py's
    holder makes that the container's rootfs and volumes, and its /proc the
    guest's processes. (When the monitor was State.Pid, cp wrote the host's /.)"""
    volume = tmp_path / "vol"
    volume.mkdir()
    podman.ok("run", "-d", "--name", "cp", *NONE, "-v", f"{volume}:/data", IMAGE,
              "sleep", "1003")
    probe = tmp_path / "probe"
    probe.write_text("from the host\n")
    name = f"kata-py-cp-probe-{os.getpid()}"
    try:
        podman.ok("cp", str(probe), f"cp:/{name}")
        assert not Path("/", name).exists()
    finally:
        Path("/", name).unlink(missing_ok=True)
    assert podman.ok("exec", "cp", "cat", f"/{name}") == "from the host\n"
    podman.ok("cp", str(probe), "cp:/data/in-volume")
    assert (volume / "in-volume").read_text() == "from the host\n"
    assert podman.ok("exec", "cp", "cat", "/data/in-volume") == "from the host\n"
    podman.ok("exec", "cp", "sh", "-c", "hostname > /made-inside")
    podman.ok("cp", "cp:/made-inside", str(tmp_path / "out"))
    assert (tmp_path / "out").read_text() == podman.ok("exec", "cp", "hostname")
    assert (tmp_path / "out").read_text() != Path("/etc/hostname").read_text()

    podman.ok("exec", "-d", "cp", "sleep", "1004")
    rows = [line.split() for line in podman.ok("top", "cp").splitlines()[1:]]
    commands = {" ".join(row[7:]): row for row in rows}
    assert set(commands) == {"sleep 1003", "sleep 1004"}, rows
    assert commands["sleep 1003"][1:3] == ["1", "0"], rows
    assert commands["sleep 1004"][0] == "root" and commands["sleep 1004"][2] == "0", rows
    pids = podman.ok("top", "cp", "pid", "args")    # psgo descriptors, not ps's
    assert re.search(r"^1 +sleep 1003 *$", pids, re.M), pids
    assert "conmon" not in pids and "qemu" not in pids, pids


def test_a_debian_image_runs_its_own_userland(podman: Podman, debian_image: str,
                                              tmp_path: Path) -> None:
    """A real distribution rootfs (glibc, bash, dpkg's database: thousands of
    files through virtio-fs) built from the Debian mirror, not busybox."""
    script = ('. /etc/os-release; echo "$VERSION_CODENAME"; getent passwd root | cut -d: -f7; '
              "dpkg-query -W -f='${Status}\\n' coreutils; "
              'echo "written by $(bash --version | head -1 | cut -d" " -f1-4)" > /data/out')
    out = podman.ok("run", "--rm", *NONE, "-v", f"{tmp_path}:/data", debian_image,
                    "bash", "-c", script)
    assert out.splitlines() == ["bookworm", "/bin/bash", "install ok installed"]
    assert (tmp_path / "out").read_text().startswith("written by GNU bash, version 5.2")
