"""Container state on disk: atomic writes, locking, truthful status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kata_py.errors import ConfigError, CorruptStateError, ExistsError, NotFoundError, StateError
from kata_py.hypervisor.process import read_start_time
from kata_py.state import ContainerState, StateStore, now_rfc3339


def _state(cid: str = "c1", **over: object) -> ContainerState:
    base: dict[str, object] = dict(id=cid, bundle="/b", rootfs="/b/rootfs", status="created",
                                   created=now_rfc3339())
    base.update(over)
    return ContainerState(**base)  # type: ignore[arg-type]


def test_created_container_with_live_process_reports_created(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    me = os.getpid()
    store.create(_state(pid=me, pid_start_time=read_start_time(me) or 0))
    state = store.load("c1")
    assert state.status == "created"
    oci = state.oci()
    assert oci["pid"] == me and oci["status"] == "created" and oci["ociVersion"]
    assert oci["created"].endswith("Z")


def test_dead_process_makes_status_stopped_not_stale(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    start = read_start_time(proc.pid) or 0
    proc.wait()
    store.create(_state(status="running", pid=proc.pid, pid_start_time=start))
    assert store.load("c1").status == "stopped"
    assert store.load("c1").oci()["pid"] == 0


def test_reused_pid_is_not_the_container(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    me = os.getpid()
    store.create(_state(status="running", pid=me, pid_start_time=(read_start_time(me) or 0) + 7))
    assert store.load("c1").status == "stopped"


def test_duplicate_id_is_refused(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.create(_state())
    with pytest.raises(ExistsError, match="container c1 already exists"):
        store.create(_state())


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "x" * 65, ".."])
def test_invalid_ids_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match="invalid container id"):
        StateStore(tmp_path).load(bad)


def test_unknown_id_says_so(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="container nope does not exist"):
        StateStore(tmp_path).load("nope")


def test_crash_between_write_and_rename_keeps_the_old_state(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.create(_state(bundle="/old"))
    # A crashed writer leaves only its temp file behind.
    (tmp_path / "c1" / ".state.json.999.tmp").write_text('{"id": "c1", "bundle": "/ne')
    assert store.load("c1").bundle == "/old"
    assert [s.id for s in store.list()] == ["c1"]


def test_corrupt_state_names_the_fix(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.create(_state())
    (tmp_path / "c1" / "state.json").write_text("{")
    with pytest.raises(StateError, match="delete --force c1"):
        store.load("c1")


def test_lock_serialises_verbs_on_one_container(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.create(_state())
    order: list[str] = []

    def second() -> None:
        with store.lock("c1"):
            order.append("second")

    with store.lock("c1"):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.2)
        order.append("first")
    t.join(5)
    assert order == ["first", "second"]


def test_remove_deletes_the_directory(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.create(_state())
    with store.lock("c1"):
        pass
    store.remove("c1")
    assert not (tmp_path / "c1").exists()
    assert store.list() == []


def test_state_file_is_plain_json(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.create(_state(annotations={"a": "b"}))
    data = json.loads((tmp_path / "c1" / "state.json").read_text())
    assert data["annotations"] == {"a": "b"} and data["status"] == "created"


@pytest.mark.parametrize("damage", ["drop bundle", "extra key", "pid as text", "a list",
                                    "another id"])
def test_a_record_missing_a_key_or_of_the_wrong_shape_is_corrupt_not_a_crash(
        tmp_path: Path, damage: str) -> None:
    store = StateStore(tmp_path)
    store.create(_state())
    path = tmp_path / "c1" / "state.json"
    raw = json.loads(path.read_text())
    if damage == "drop bundle":
        del raw["bundle"]
    elif damage == "extra key":
        raw["surprise"] = 1
    elif damage == "pid as text":
        raw["pid"] = "12"
    elif damage == "another id":
        raw["id"] = "c2"
    path.write_text(json.dumps([raw] if damage == "a list" else raw))
    with pytest.raises(CorruptStateError) as exc:
        store.load("c1")
    assert str(exc.value).startswith(f"state of container c1 in {path} is corrupt (")
    assert str(exc.value).endswith("remove it with `kata-py delete --force c1`")
    assert "\n" not in str(exc.value)


def test_list_skips_a_corrupt_record_with_a_warning(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    store = StateStore(tmp_path)
    store.create(_state("bad"))
    store.create(_state("good", status="stopped"))
    (tmp_path / "bad" / "state.json").write_text('{"id": "bad"}')
    assert [s.id for s in store.list()] == ["good"]
    assert "state of container bad" in caplog.text and "delete --force bad" in caplog.text


def test_creating_whose_create_died_is_stopped(tmp_path: Path) -> None:
    """A create killed before its holder existed: nothing runs, so `state`
    says stopped and a plain delete may remove it."""
    store = StateStore(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    start = read_start_time(proc.pid) or 0
    proc.wait()
    store.create(_state(status="creating", pid=proc.pid, pid_start_time=start))
    assert store.load("c1").status == "stopped"
    me = os.getpid()
    store.save(_state(status="creating", pid=me, pid_start_time=read_start_time(me) or 0))
    assert store.load("c1").status == "creating"


def test_state_directories_are_tightened_to_0700(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "containers").mkdir(parents=True)
    root.chmod(0o755)
    (root / "containers").chmod(0o777)
    StateStore(root / "containers").create(_state())
    assert [oct(p.stat().st_mode & 0o777) for p in (root, root / "containers",
                                                    root / "containers" / "c1")] == ["0o700"] * 3
    assert oct((root / "containers" / "c1" / "state.json").stat().st_mode & 0o777) == "0o600"
