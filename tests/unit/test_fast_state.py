"""The console script's `state` fast path answers exactly what the full CLI
answers (kata_py.state), and leaves everything else to the full CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kata_py import fastcli, records
from kata_py.errors import KataError
from kata_py.hypervisor.process import read_start_time
from kata_py.records import START_SOCKET
from kata_py.startsock import StartListener
from kata_py.state import ContainerState, StateStore, now_rfc3339


def _dead_pid() -> tuple[int, int]:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    start = read_start_time(proc.pid) or 1
    proc.wait()
    return proc.pid, start


@pytest.mark.parametrize("status", ["creating", "created", "running", "paused", "stopped"])
@pytest.mark.parametrize("process", ["live", "dead", "none"])
@pytest.mark.parametrize("annotations", [{}, {"org.example/a": "b"}])
def test_fast_state_equals_the_full_state(tmp_path: Path, status: str, process: str,
                                          annotations: dict[str, str]) -> None:
    pid, start = {"live": (os.getpid(), read_start_time(os.getpid()) or 0),
                  "dead": _dead_pid(), "none": (0, 0)}[process]
    store = StateStore(tmp_path / "containers")
    store.create(ContainerState(id="c1", bundle="/b", rootfs="/b/rootfs", status=status,  # type: ignore[arg-type]
                                created=now_rfc3339(), pid=pid, pid_start_time=start,
                                annotations=annotations, owner=""))
    out = fastcli.fast_state(["--root", str(tmp_path), "state", "c1"])
    assert out is not None
    oci = store.load("c1").oci()
    shown = json.loads(out)
    creating = oci["status"] == "creating"      # runc's users see "created", with its pid
    assert shown == {**oci, "status": "created" if creating else oci["status"],
                     "pid": pid if creating else oci["pid"],
                     "created": fastcli.go_time(oci["created"])}
    assert list(shown) == (["ociVersion", "id", "pid", "status", "bundle", "rootfs", "created"]
                           + ["annotations"] * bool(annotations) + ["owner"])   # runc's order
    full = subprocess.run([sys.executable, "-m", "kata_py.cli", "--root", str(tmp_path),
                           "state", "c1"], capture_output=True, text=True)
    assert (full.returncode, full.stdout) == (0, out)      # the full CLI prints these bytes


def test_state_prints_runcs_bytes(tmp_path: Path) -> None:
    """json.MarshalIndent(cs, "", "  ") written with no newline (runc state.go);
    Go's escapes; the created time as Go's RFC3339Nano; a Go map's sorted keys."""
    store = StateStore(tmp_path / "containers")
    store.create(ContainerState(id="c1", bundle="/b<&>\u00e9", rootfs="/r", status="stopped",
                                created="2024-05-01T10:00:00.120000Z",
                                annotations={"z": "1", "a": "\u2028"}))
    assert fastcli.fast_state(["--root", str(tmp_path), "state", "c1"]) == (
        '{\n  "ociVersion": "1.2.0",\n  "id": "c1",\n  "pid": 0,\n  "status": "stopped",\n'
        '  "bundle": "/b\\u003c\\u0026\\u003e\u00e9",\n  "rootfs": "/r",\n'
        '  "created": "2024-05-01T10:00:00.12Z",\n  "annotations": {\n    "a": "\\u2028",\n'
        '    "z": "1"\n  },\n  "owner": ""\n}')


@pytest.mark.parametrize("argv", [
    ["state"], ["state", "c1", "extra"], ["list"], ["--debug", "state", "c1"],
    ["--root"], ["state", "--help"], ["--root", "R", "state", "nonexistent"],
    ["--root", "R", "state", "../c1"], ["--unknown", "state", "c1"],
    ["state", "--bogus"], ["state", "-"]])
def test_anything_else_goes_to_the_full_cli(tmp_path: Path, argv: list[str]) -> None:
    (tmp_path / "containers" / "c1").mkdir(parents=True)
    argv = [str(tmp_path) if a == "R" else a for a in argv]
    assert fastcli.fast_state(argv) is None


@pytest.mark.parametrize("argv", [
    ["state", "--bogus", "c1"], ["state", "c1", "--bogus"], ["--bogus", "state", "c1"],
    ["state", "-x", "c1"], ["state", "--", "c1"], ["-v", "state", "c1"], ["-h", "state", "c1"],
    ["--root=R", "--debug", "state", "c1"], ["--systemd-cgroup", "state", "c1"]])
def test_an_unknown_flag_is_never_read_as_the_id(tmp_path: Path, argv: list[str]) -> None:
    """Even with a container there to answer for: the full CLI says what is wrong."""
    StateStore(tmp_path / "containers").create(ContainerState(
        id="c1", bundle="/b", rootfs="/b/rootfs", status="stopped", created=now_rfc3339()))
    argv = ["--root", str(tmp_path)] + [a.replace("=R", f"={tmp_path}") for a in argv]
    assert fastcli.fast_state(argv) is None
    assert fastcli.fast_state(["--root", str(tmp_path), "state", "c1"]) is not None


def test_global_flags_in_both_spellings_are_understood(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "containers")
    store.create(ContainerState(id="c1", bundle="/b", rootfs="/b/rootfs", status="stopped",
                                created=now_rfc3339()))
    for argv in (["--root", str(tmp_path), "--log", "/dev/null", "--log-format", "json",
                  "state", "c1"],
                 [f"--root={tmp_path}", "--log-format=text", "state", "c1"]):
        out = fastcli.fast_state(argv)
        assert out is not None and json.loads(out)["status"] == "stopped"


def test_a_corrupt_state_is_left_to_the_full_cli(tmp_path: Path) -> None:
    (tmp_path / "containers" / "c1").mkdir(parents=True)
    (tmp_path / "containers" / "c1" / "state.json").write_text("{")
    assert fastcli.fast_state(["--root", str(tmp_path), "state", "c1"]) is None


@pytest.mark.parametrize("value", [
    {}, [], "", 0, -7, True, False, None, {"a": []}, {"a": {}}, [1, [2, [3, {}]]],
    {"id": "c1", "annotations": {"k\u00e9y\n": "va\"l\\ue\u2603\U0001F600", "e": ""}},
    {"nested": {"list": [True, None, "x", {"y": [1, 2]}]}, "n": 12345678901234567890}])
def test_the_c_json_helpers_match_the_json_package(value: object) -> None:
    text = json.dumps(value, indent=2, ensure_ascii=False)    # Go: UTF-8 as it is
    assert fastcli.go_dumps(value, indent=True) == text
    assert fastcli.go_dumps(value) == json.dumps(value, ensure_ascii=False,
                                                 separators=(",", ":"))
    assert records.loads(text) == value
    assert records.loads(" \n" + json.dumps(value) + "\n ") == value


def test_strings_are_escaped_as_gos_encoding_json_escapes_them() -> None:
    """Go 1.19 (Debian's runc): HTML characters and U+2028/9 as \\u, control
    characters as \\u00XX but \\n, \\r and \\t; DEL and the rest as they are."""
    text = '<a&b>\u2028\u2029\b\f\x01\x1f\x7f\t\n\r"\\\u00e9\U0001F600'
    assert fastcli.go_dumps(text) == (
        '"\\u003ca\\u0026b\\u003e\\u2028\\u2029\\u0008\\u000c\\u0001\\u001f\x7f'
        '\\t\\n\\r\\"\\\\\u00e9\U0001F600"')


@pytest.mark.parametrize("stored,shown", [
    ("2024-05-01T10:00:00.123456Z", "2024-05-01T10:00:00.123456Z"),
    ("2024-05-01T10:00:00.120000Z", "2024-05-01T10:00:00.12Z"),
    ("2024-05-01T10:00:00.000000Z", "2024-05-01T10:00:00Z"),
    ("2024-05-01T10:00:00Z", "2024-05-01T10:00:00Z")])
def test_times_are_written_as_gos_rfc3339nano(stored: str, shown: str) -> None:
    assert fastcli.go_time(stored) == shown


@pytest.mark.parametrize("text", ["{", "", "[1,]", "{} {}", "nul", '{"a": 1,}'])
def test_the_c_json_reader_refuses_what_json_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        records.loads(text)


def test_the_fast_path_imports_neither_json_nor_re_nor_typing(tmp_path: Path) -> None:
    """The installed command starts Python with -S (scripts/setup.sh); what the
    fast path then imports is what `state` pays for."""
    store = StateStore(tmp_path / "containers")
    store.create(ContainerState(id="c1", bundle="/b", rootfs="/b/rootfs", status="stopped",
                                created=now_rfc3339()))
    repo = Path(fastcli.__file__).resolve().parents[1]
    code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); from kata_py import fastcli; "
            "fastcli.main(); print(sorted({'json', 're', 'typing', 'enum', 'site', 'click'}"
            " & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-S", "-c", code, str(repo), "--root", str(tmp_path),
                          "state", "c1"], capture_output=True, text=True, check=True).stdout
    state_text, _, modules = out.rpartition("}")        # no newline after it, as runc's
    assert json.loads(state_text + "}")["status"] == "stopped"
    assert modules.strip() == "[]"


# --- start --------------------------------------------------------------------

def _created(tmp_path: Path, hooks: dict[str, object] | None = None,
             annotations: dict[str, str] | None = None) -> StateStore:
    bundle = tmp_path / "bundle"
    bundle.mkdir(exist_ok=True)
    (bundle / "config.json").write_text(json.dumps({"ociVersion": "1.2.0",
                                                    **({"hooks": hooks} if hooks else {})}))
    store = StateStore(tmp_path / "containers")
    store.create(ContainerState(id="c1", bundle=str(bundle), rootfs=f"{bundle}/rootfs",
                                status="created", created=now_rfc3339(), pid=os.getpid(),
                                pid_start_time=read_start_time(os.getpid()) or 0,
                                annotations=annotations or {}, host_cgroup="/a/b"))
    return store


def _listen(store: StateStore, reply_error: str = "") -> tuple[StartListener, list[str]]:
    calls: list[str] = []

    def start() -> None:
        calls.append("start")
        if reply_error:
            raise KataError(reply_error)
    listener = StartListener(store.root / "c1" / START_SOCKET, start)
    assert listener.open()
    return listener, calls


def test_fast_start_asks_the_monitor_and_leaves_the_state_to_it(tmp_path: Path) -> None:
    """The monitor records "running" itself (monitor.Monitor._start), so a start killed
    after asking cannot leave a started container "created"."""
    store = _created(tmp_path)
    listener, calls = _listen(store)
    before = (store.root / "c1" / "state.json").read_bytes()
    try:
        assert fastcli.fast_start(["--root", str(tmp_path), "--log", "/dev/null", "start", "c1"])
    finally:
        listener.close()
    assert calls == ["start"]
    assert (store.root / "c1" / "state.json").read_bytes() == before


@pytest.mark.parametrize("case", ["no monitor", "poststart hooks", "running", "monitor error",
                                  "debug", "unknown flag"])
def test_fast_start_leaves_the_rest_to_the_full_cli(tmp_path: Path, case: str) -> None:
    store = _created(tmp_path, hooks={"poststart": [{"path": "/bin/true"}]}
                     if case == "poststart hooks" else None)
    if case == "running":
        store.save(dataclasses.replace(store.load("c1"), status="running"))
    listener, calls = (None, []) if case == "no monitor" else _listen(
        store, "the agent said no" if case == "monitor error" else "")
    argv = ["--debug"] if case == "debug" else []
    tail = ["--bogus", "c1"] if case == "unknown flag" else ["c1"]    # never read as the id
    try:
        assert not fastcli.fast_start([*argv, "--root", str(tmp_path), "start", *tail])
    finally:
        if listener is not None:
            listener.close()
    assert calls == (["start"] if case == "monitor error" else [])
    assert store.load("c1").status == ("running" if case == "running" else "created")
