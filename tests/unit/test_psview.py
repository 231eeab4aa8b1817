"""`kata-py ps` renders what procps' ps prints: the host's own processes,
rendered from their /proc files, against the rows the host's ps prints for
them (runc's way: ps's output, the container's pids kept), option by option."""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kata_py import psview
from kata_py.psview import Clock, PsError

Entry = tuple[int, bytes, bytes, bytes, str]


def _entry(pid: int) -> Entry:
    d = Path(f"/proc/{pid}")
    return (pid, (d / "stat").read_bytes(), (d / "status").read_bytes(),
            (d / "cmdline").read_bytes(), "")


def _host_clock() -> Clock:
    btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                 if line.startswith("btime "))
    uptime = Path("/proc/uptime").read_text().split()[0]
    return Clock(btime, int(float(uptime) * 100), int(time.time()))


def _long_named_uid() -> int | None:
    """A user whose name is wider than ps's UID column (systemd-network, …)."""
    return next((u.pw_uid for u in pwd.getpwall() if len(u.pw_name) > 8 and u.pw_uid), None)


@pytest.fixture(scope="module")
def sleepers() -> Iterator[list[int]]:
    """Quiet processes (no CPU time, so C and %CPU hold still): arguments
    with blanks and a tab, a nice one, another user's, a zombie, and a
    kernel thread."""
    argvs = [["sleep", "300"], ["sh", "-c", "sleep 301; echo 'a\tb'", "arg with space"],
             ["nice", "-n", "5", "sleep", "302"]]
    uid = _long_named_uid()
    if uid is not None and shutil.which("setpriv"):
        argvs.append(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                      "sleep", "303"])
    procs = [subprocess.Popen(argv) for argv in argvs]
    zombie = os.fork()
    if zombie == 0:
        os._exit(0)
    time.sleep(1.5)      # execs done; a tick of the zombie's is no C now
    kthreadd = [2] if Path("/proc/2/cmdline").read_bytes() == b"" else []
    yield [p.pid for p in procs] + [zombie] + kthreadd
    for p in procs:
        p.kill()
        p.wait()
    os.waitpid(zombie, 0)


def _theirs(options: list[str], pids: list[int], header: bool) -> list[str]:
    """runc ps.go: ps's header line, then its rows whose PID is one of pids."""
    lines = subprocess.run(["ps", *options], capture_output=True, text=True,
                           env={**os.environ, "LC_ALL": "C.UTF-8"}).stdout.splitlines()
    if not header:
        return [line for line in lines if int(line.split()[0]) in pids]
    at = lines[0].split().index("PID")
    return lines[:1] + [line for line in lines[1:] if int(line.split()[at]) in pids]


ALL_KEYWORDS = ("pid,ppid,pgid,sid,tpgid,uid,ruid,gid,rgid,user,ruser,group,rgroup,comm,c,"
                "%cpu,stime,tty,time,times,etime,etimes,stat,s,ni,nlwp,vsz,rss,bsdtime,args")
ALIASES = "pid tgid pgrp session euid egid uname ucomm command pcpu cputime tt state nice vsize"


@pytest.mark.skipif(shutil.which("ps") is None, reason="needs procps' ps to compare with")
@pytest.mark.parametrize("options", [
    [], ["-ef"], ["-e"], ["-A", "-f"], ["ax"], ["x"], ["a"], ["-x"], ["axh"],
    ["-e", "-o", "pid=,comm="], ["-eo", ALL_KEYWORDS], ["-A", "-o", "pid", "-o", "user,cmd"],
    ["-e", "--format", ALIASES], ["-eo", "pid,args,user,tty,stat,comm"],
    ["-e", "--no-headers"]])
def test_rows_are_the_ones_procps_ps_prints(sleepers: list[int], options: list[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    fmt = psview.parse_options(options)
    procs = psview.container_processes(_entry(pid) for pid in sleepers)
    before = psview.render(fmt, procs, _host_clock()).splitlines()
    theirs = _theirs(options or ["-ef"], sleepers, fmt.header)
    after = psview.render(fmt, procs, _host_clock()).splitlines()   # a second may tick over
    assert theirs in (before, after)
    if options in ([], ["-ef"]):
        assert len(theirs) == 1 + len(sleepers)


def test_a_name_wider_than_the_user_column_ends_in_a_plus() -> None:
    uid = _long_named_uid()
    if uid is None:
        pytest.skip("no user with a name over 8 characters")
    proc = psview.parse(7, b"7 (sleep) S 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 1 0 0"
                           + b" 0" * 17, f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}\n".encode(),
                        b"sleep\x00", True)
    assert proc is not None
    fmt = psview.parse_options(["-ef"])
    row = psview.render(fmt, [proc], Clock(0, 100, 0)).splitlines()[1]
    assert row.startswith(pwd.getpwuid(uid).pw_name[:7] + "+ ")


def _launcher_like(pid: int, cmdline: bytes) -> Entry:
    stat = f"{pid} (python3) S 0 {pid} {pid} 0 -1 0 0 0 0 0 3 1 0 0 20 0 1 0 50 0 0".encode()
    return (pid, stat + b" 0" * 17, b"Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n", cmdline, "pid:[1]")


def test_kata_pys_launcher_is_never_a_container_process() -> None:
    """A created container's init before it execs (zygote fork: the agent's
    command line, or posix_spawn's `-m`/`-c`), and an exec on its way."""
    entries = [
        _launcher_like(1, b"/usr/bin/python3\x00-S\x00-c\x00\nimport sys\nsys.path.append("
                          b"'/usr/lib/python3/dist-packages')\nfrom kata_py.agent.__main__ "
                          b"import main\n"),
        _launcher_like(2, b"/usr/bin/python3\x00-m\x00kata_py.agent.launcher\x00--config-fd"
                          b"\x005\x00"),
        _launcher_like(3, b"/usr/bin/python3\x00-S\x00-c\x00import sys; sys.path.append("
                          b"'/x'); from kata_py.agent.launcher import main; sys.exit(main())"),
        _launcher_like(4, b"sleep\x00600\x00")]
    assert [p.pid for p in psview.container_processes(entries)] == [4]


def test_no_processes_is_the_header_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    """What runc's `ps` of a stopped container prints; pid columns are as wide
    as pid_max has digits (procps_pid_length)."""
    pid_max = tmp_path / "pid_max"
    monkeypatch.setattr(psview, "PID_MAX_FILE", pid_max)
    pid_max.write_text("32768\n")
    clock = Clock(0, 0, 0)
    assert psview.render(psview.parse_options([]), [], clock) == \
        "UID        PID  PPID  C STIME TTY          TIME CMD\n"
    pid_max.write_text("4194304\n")
    assert psview.render(psview.parse_options(["-e", "-x"]), [], clock) == \
        "    PID TTY      STAT   TIME COMMAND\n"


def test_minus_e_minus_x_is_read_as_bsds_e_and_x_as_procps_reads_it(
        caplog: pytest.LogCaptureFixture) -> None:
    """-x is no UNIX option, so procps reads every option again as BSD's: x
    (our own processes, BSD's columns) and e (the environment, which the
    guest's processes do not show here: a warning says so)."""
    with caplog.at_level(logging.WARNING):
        fmt = psview.parse_options(["-e", "-x"])
    assert [c.header for c in fmt.columns] == ["PID", "TTY", "STAT", "TIME", "COMMAND"]
    assert caplog.messages == ["ps e: the environment of a guest process is not shown"]
    mine = psview.parse(5, _launcher_like(5, b"")[1].replace(b"(python3)", b"(sh)"),
                        f"Uid:\t0\t{os.geteuid()}\t0\t0\n".encode(), b"sh\x00", True)
    assert mine is not None and fmt.select(mine)


@pytest.mark.parametrize("options,message", [
    (["-L"], "ps option -L is not supported"),
    (["-p", "1"], "ps option -p is not supported"),
    (["aux"], "ps option aux is not supported"),
    (["-ef", "-o", "pid"], "ps option -ef is not supported"),   # procps: BSD's e and f (a tree)
    (["-o", "pid,user:3"], "ps format keyword 'user:3' is not supported"),
    (["-o", "pid,,comm"], "ps format list 'pid,,comm' is improper"),
    (["-o"], "ps option -o needs a format list"),
    (["--sort=pid"], "ps option --sort=pid is not supported")])
def test_what_ps_cannot_render_here_is_refused_by_name(options: list[str], message: str
                                                       ) -> None:
    with pytest.raises(PsError) as err:
        psview.parse_options(options)
    assert err.value.message == message
    assert err.value.hint.startswith("kata-py renders ps's columns itself")


@pytest.mark.parametrize("tty_nr,name", [
    (0, "?"), (136 << 8 | 3, "pts/3"), (137 << 8 | 1, "pts/257"), (4 << 8 | 64, "ttyS0"),
    (4 << 8 | 1, "tty1"), (5 << 8 | 1, "console"), (229 << 8, "hvc0"), (1 << 8 | 3, "?")])
def test_terminals_are_named_as_ps_names_them(tty_nr: int, name: str) -> None:
    assert psview.tty_name(tty_nr) == name


def test_commands_are_escaped_as_procps_escapes_them() -> None:
    assert psview.escape(b"a\tb\x7f\xc3\xa9", utf8=True) == "a?b?\u00e9"
    assert psview.escape(b"a\tb\x00\xc3\xa9", utf8=False) == "a.b@??"
    assert psview.escape(b"bad \xff utf-8\t", utf8=True) == "bad ? utf-8."
