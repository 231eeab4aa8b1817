"""The CLI where runc's behaviour and output shapes are the reference: help,
version, unknown options, checkpoint/restore, kill 0, ps, list, events and
state, byte for byte where runc's shape matters (runc 1.1.5: list.go,
state.go, ps.go, kill.go, events.go, types/events.go)."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from kata_py.hypervisor.process import read_start_time
from kata_py.state import ContainerState, StateStore

VERBS = ("check", "checkpoint", "create", "delete", "events", "exec", "features", "kill",
         "list", "pause", "ps", "restore", "resume", "run", "spec", "start", "state", "update")


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kata_py.cli", "--root", str(root), *args],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def _container(root: Path, cid: str = "c1", status: str = "stopped", live: bool = False,
               created: str = "2024-05-01T10:00:00.120000Z",
               annotations: dict[str, str] | None = None) -> None:
    """A stored container; `live`: its pid is this test's process."""
    pid = os.getpid() if live else 0
    StateStore(root / "containers").create(ContainerState(
        id=cid, bundle=f"/bundles/{cid}", rootfs=f"/bundles/{cid}/rootfs",
        status=status, created=created, pid=pid,  # type: ignore[arg-type]
        pid_start_time=(read_start_time(pid) or 0) if pid else 0,
        annotations=annotations or {}, sandbox_id=cid))


# --- help and version ----------------------------------------------------------------

def test_help_is_in_runcs_layout_and_lists_every_verb(tmp_path: Path) -> None:
    out = _cli(tmp_path, "--help")
    assert (out.returncode, out.stderr) == (0, "")
    text = out.stdout
    sections = ["NAME:\n   kata-py - ", "\nUSAGE:\n   kata-py [global options] command "
                "[command options] [arguments...]\n", "\nVERSION:\n   ", "\nCOMMANDS:\n",
                "\nGLOBAL OPTIONS:\n"]
    assert [text.find(s) for s in sections] == sorted(text.find(s) for s in sections)
    assert all(text.find(s) >= 0 for s in sections)
    commands = text.split("\nCOMMANDS:\n")[1].split("\n\n")[0].splitlines()
    assert [line.split()[0].rstrip(",") for line in commands] == [*VERBS, "help"]
    assert all(len(line.split(None, 1)) == 2 for line in commands)     # each described
    assert commands[-1] == "   help, h     Shows a list of commands or help for one command"
    options = text.split("\nGLOBAL OPTIONS:\n")[1].splitlines()
    assert options[-2:] == ["   --help, -h          show help",
                            "   --version, -v       print the version"]
    assert options[0].startswith("   --root value        root directory for storage of "
                                 "container state")


def test_no_verb_prints_the_help_and_succeeds_as_runc(tmp_path: Path) -> None:
    out = _cli(tmp_path)
    assert (out.returncode, out.stdout) == (0, _cli(tmp_path, "-h").stdout)


@pytest.mark.parametrize("verb", [*VERBS, "help"])
def test_every_verb_has_runcs_help(tmp_path: Path, verb: str) -> None:
    out = _cli(tmp_path, verb, "--help")
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout.startswith(f"NAME:\n   kata-py {verb} - ")
    assert f"\n\nUSAGE:\n   kata-py {verb}" in out.stdout
    assert _cli(tmp_path, verb, "-h").stdout == out.stdout
    assert _cli(tmp_path, "help", verb).stdout == out.stdout
    assert _cli(tmp_path, "h", verb).stdout == out.stdout


def test_ps_help_reads_as_runcs(tmp_path: Path) -> None:
    out = _cli(tmp_path, "ps", "--help").stdout
    assert out.startswith("NAME:\n   kata-py ps - List the container's processes as ps(1) "
                          "shows them (its own pids).\n\nUSAGE:\n   kata-py ps [command options] "
                          "<container-id> [ps options]\n\nDESCRIPTION:\n")
    assert out.endswith("\nOPTIONS:\n   --format value, -f value  select one of: table or json "
                        '(default: "table")\n')


def test_minus_v_is_version(tmp_path: Path) -> None:
    out = _cli(tmp_path, "-v")
    assert (out.returncode, out.stdout) == (0, _cli(tmp_path, "--version").stdout)
    assert out.stdout.splitlines()[0] == "kata-py version 0.1.0"
    assert out.stdout.splitlines()[2] == "spec: 1.2.0"


# --- an unknown option is an error, never the container's id -------------------------

@pytest.mark.parametrize("argv,option", [
    (["state", "--bogus", "c1"], "--bogus"), (["state", "c1", "--bogus"], "--bogus"),
    (["delete", "-x", "c1"], "-x"), (["kill", "--zzz", "c1"], "--zzz"),
    (["exec", "--zzz", "c1", "true"], "--zzz"), (["ps", "--zzz", "c1"], "--zzz"),
    (["start", "--zzz", "c1"], "--zzz"), (["--zzz", "list"], "--zzz")])
def test_an_unknown_option_fails_in_one_line_naming_it(tmp_path: Path, argv: list[str],
                                                       option: str) -> None:
    _container(tmp_path, "c1")
    out = _cli(tmp_path, *argv)
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == f"kata-py: No such option '{option}'.\n"
    assert (tmp_path / "containers" / "c1" / "state.json").exists()


# --- checkpoint and restore ----------------------------------------------------------

@pytest.mark.parametrize("argv,message", [
    (["checkpoint", "--image-path", "/tmp/img", "--leave-running", "--tcp-established", "c1"],
     "kata-py: checkpoint is not supported: a container's processes live in its VM's memory, "
     "which kata-py cannot save (there is no CRIU in the guest); stop it and run it again "
     "instead\n"),
    (["checkpoint"], "kata-py: checkpoint is not supported: a container's processes live in "
     "its VM's memory, which kata-py cannot save (there is no CRIU in the guest); stop it "
     "and run it again instead\n"),
    (["restore", "-d", "--image-path", "/tmp/img", "--bundle", "/b", "c1"],
     "kata-py: restore is not supported: kata-py cannot checkpoint a container, so there is "
     "nothing to restore; create and start it again instead\n")])
def test_checkpoint_and_restore_say_they_are_not_supported(tmp_path: Path, argv: list[str],
                                                           message: str) -> None:
    out = _cli(tmp_path, *argv)
    assert (out.returncode, out.stdout, out.stderr) == (1, "", message)


# --- kill 0 ------------------------------------------------------------------------------

def test_kill_0_of_a_stopped_container_fails_as_runcs_does(tmp_path: Path) -> None:
    _container(tmp_path, "c1")
    out = _cli(tmp_path, "kill", "c1", "0")
    assert (out.returncode, out.stderr) == (1, "kata-py: container c1 is stopped: only a "
                                               "created or running container can be signalled\n")


def test_kill_0_of_a_container_being_created_succeeds_and_signals_nothing(tmp_path: Path
                                                                          ) -> None:
    _container(tmp_path, "c1", status="creating", live=True)     # the create is this process
    out = _cli(tmp_path, "kill", "c1", "0")
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")
    out = _cli(tmp_path, "kill", "c1", "KILL")
    assert (out.returncode, out.stderr) == (1, "kata-py: container c1 is not created yet: wait "
                                               "for its `kata-py create` to finish\n")


# --- state and list ------------------------------------------------------------------

def test_state_never_shows_creating(tmp_path: Path) -> None:
    _container(tmp_path, "c1", status="creating", live=True)
    shown = json.loads(_cli(tmp_path, "state", "c1").stdout)
    assert (shown["status"], shown["pid"]) == ("created", os.getpid())   # the create's, so far
    listed = json.loads(_cli(tmp_path, "list", "-f", "json").stdout)[0]
    assert (listed["status"], listed["pid"]) == ("created", os.getpid())


def test_list_with_no_containers_is_runcs_header_and_null(tmp_path: Path) -> None:
    (tmp_path / "containers").mkdir()
    assert _cli(tmp_path, "list").stdout == (
        "ID          PID         STATUS      BUNDLE      CREATED     OWNER\n")
    assert _cli(tmp_path, "list", "--format", "json").stdout == "null\n"
    assert _cli(tmp_path, "list", "-q").stdout == ""


def test_list_prints_runcs_json_and_columns(tmp_path: Path) -> None:
    _container(tmp_path, "c1", annotations={"b": "2", "a": "<1>"})
    _container(tmp_path, "long-name-2", created="2024-05-01T10:00:00.000000Z")
    owner = pwd.getpwuid(os.getuid()).pw_name
    out = _cli(tmp_path, "list", "--format", "json")
    assert out.stdout == (
        '[{"ociVersion":"1.2.0","id":"c1","pid":0,"status":"stopped","bundle":"/bundles/c1",'
        '"rootfs":"/bundles/c1/rootfs","created":"2024-05-01T10:00:00.12Z",'
        '"annotations":{"a":"\\u003c1\\u003e","b":"2"},"owner":"' + owner + '"},'
        '{"ociVersion":"1.2.0","id":"long-name-2","pid":0,"status":"stopped",'
        '"bundle":"/bundles/long-name-2","rootfs":"/bundles/long-name-2/rootfs",'
        '"created":"2024-05-01T10:00:00Z","owner":"' + owner + '"}]\n')
    # Go's tabwriter(12, 1, 3): a column is its widest cell + 3, at least 12
    widths = (len("long-name-2") + 3, 12, 12, len("/bundles/long-name-2") + 3,
              len("2024-05-01T10:00:00.12Z") + 3)
    rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"),
            ("c1", "0", "stopped", "/bundles/c1", "2024-05-01T10:00:00.12Z", owner),
            ("long-name-2", "0", "stopped", "/bundles/long-name-2", "2024-05-01T10:00:00Z",
             owner)]
    assert _cli(tmp_path, "list").stdout == "".join(
        "".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + row[-1] + "\n"
        for row in rows)
    assert _cli(tmp_path, "list", "-q").stdout == "c1\nlong-name-2\n"


# --- ps ------------------------------------------------------------------------------

def _pid_width() -> int:
    return max(3, len(Path("/proc/sys/kernel/pid_max").read_text().strip()))


def test_ps_of_a_stopped_container_is_the_header_alone(tmp_path: Path) -> None:
    _container(tmp_path, "c1")
    w = _pid_width()
    out = _cli(tmp_path, "ps", "c1")
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout == ("UID" + " " * (w + 3) + "PID " + "PPID".rjust(w)
                          + "  C STIME TTY          TIME CMD\n")
    out = _cli(tmp_path, "ps", "c1", "--", "-o", "pid,comm")
    assert out.stdout == f"{'PID':>{w}} COMMAND\n"
    out = _cli(tmp_path, "ps", "--format", "json", "c1")
    assert (out.returncode, out.stdout) == (0, "null\n")


def test_ps_refuses_an_option_it_cannot_render_before_anything_else(tmp_path: Path) -> None:
    out = _cli(tmp_path, "ps", "nothere", "--", "-L")
    assert out.returncode == 1
    assert out.stderr == ("kata-py: ps option -L is not supported: kata-py renders ps's "
                          "columns itself from the guest's /proc and takes -e, -A, -f, a, x, h, "
                          "-o/--format and --no-headers (`kata-py ps --help` lists the format "
                          "keywords)\n")


def test_ps_of_a_missing_container_fails_as_state_does(tmp_path: Path) -> None:
    out = _cli(tmp_path, "ps", "nothere")
    assert (out.returncode, out.stderr) == (1, "kata-py: container nothere does not exist: "
                                               "check the id with `kata-py list`\n")
