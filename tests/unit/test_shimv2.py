"""The containerd shim v2 without a VM: argv parsing, socket names, the
guest cgroup as containerd's Metrics, and the Task service over ttrpc with
a fake core Container (its agent records the calls)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kata_py.config import RuntimeConfig
from kata_py.container import Container
from kata_py.guest_cgroup import GuestCgroup
from kata_py.private import bind_unix
from kata_py.protocols import containerd_task_pb2 as task_pb
from kata_py.protocols import containerd_task_types_pb2 as types_pb
from kata_py.shimv2 import daemon, main, ttrpc
from kata_py.shimv2.service import SERVICE, TaskService, metrics
from tests.unit.fakes import BOOT_FAULT, FakeSandbox

REPO = Path(__file__).resolve().parents[2]


def test_containerds_argv_is_parsed_as_go_flags() -> None:
    args = main.parse_args(["-namespace", "k8s.io", "-address", "/run/c.sock",
                            "-publish-binary", "/usr/bin/containerd", "-id", "abc", "-debug",
                            "start"])
    assert (args.namespace, args.address, args.id, args.debug, args.action) == (
        "k8s.io", "/run/c.sock", "abc", True, "start")
    assert main.parse_args(["--id=x", "-bundle", "/b", "delete"]).bundle == "/b"
    with pytest.raises(Exception, match="unknown flag -nope"):
        main.parse_args(["-nope"])


def test_a_pods_containers_share_one_socket(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        '{"annotations": {"io.kubernetes.cri.sandbox-id": "pod1"}}')
    assert main.group_of(tmp_path, "app") == "pod1"
    assert main.group_of(tmp_path / "missing", "app") == "app"
    args = main.parse_args(["-namespace", "k8s.io", "-address", "/run/c.sock", "-id", "x"])
    path = main.socket_path(args, "pod1")
    assert path == main.socket_path(args, "pod1") != main.socket_path(args, "pod2")
    assert len(str(path)) < 107


def test_guest_figures_become_containerds_v2_metrics() -> None:
    m = metrics(GuestCgroup({"memory.current": "4096\n", "memory.max": "max\n",
                             "memory.stat": "anon 1024\nfile 2048\n", "pids.current": "2\n",
                             "pids.max": "64\n", "cpu.stat": "usage_usec 5\nnr_throttled 1\n",
                             "io.stat": "254:0 rbytes=10 wbytes=20 rios=1 wios=2\n"}))
    assert (m.memory.usage, m.memory.usage_limit, m.memory.anon) == (4096, (1 << 64) - 1, 1024)
    assert (m.pids.current, m.pids.limit, m.cpu.usage_usec, m.cpu.nr_throttled) == (2, 64, 5, 1)
    assert (m.io.usage[0].major, m.io.usage[0].wbytes) == (254, 20)


class FakeAgent:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.exit = threading.Event()

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, *args))
            if name == "wait_process":
                return 0 if self.exit.wait(args[1]) else None
            if name == "read_output":
                self.exit.wait()
                return b""
            return None
        return call


class FakeContainer:
    flushed_by_exit = Container.flushed_by_exit      # the core's rule, on the fake's pid ns
    def __init__(self, cid: str) -> None:
        self.id = cid
        self.agent = FakeAgent()
        self.sandbox = type("S", (), {"vm": type("V", (), {"pid": 4242})()})()
        self.spec = None
        self.own_pid_ns = True
        self.oom_kills = 0          # the guest cgroup's memory.events oom_kill
        self.kill_is_oom = False

    def start(self) -> None:
        self.agent.calls.append(("start",))

    def kill(self, request: Any) -> None:
        self.agent.calls.append(("kill", request.signal))
        if self.kill_is_oom:
            self.oom_kills += 1
        self.agent.exit.set()

    def stats(self) -> Any:
        kills = self.oom_kills
        return type("G", (), {"keyed": lambda _self, name: {"oom_kill": kills}})()


class Events:
    def __init__(self) -> None:
        self.topics: list[str] = []

    def publish(self, topic: str, event: Any) -> None:
        self.topics.append(topic)


def test_a_tasks_life_over_ttrpc_in_containerds_order(tmp_path: Path) -> None:
    events, stopped, empty = Events(), [], threading.Event()
    service = TaskService(events, "ns", lambda req, opts: FakeContainer(req.id),  # type: ignore[arg-type,return-value]
                          lambda c, flushed: stopped.append(flushed), empty.set)
    server = ttrpc.Server()
    service.register(server)
    server.start(bind_unix(tmp_path / "s.sock"))
    try:
        with ttrpc.Client(tmp_path / "s.sock") as c:
            def call(method: str, request: Any, reply: Any) -> Any:
                return c.call(SERVICE, method, request, reply, timeout=5)
            created = call("Create", task_pb.CreateTaskRequest(id="t", bundle=str(tmp_path)),
                           task_pb.CreateTaskResponse)
            assert created.pid == 4242                      # the VM's QEMU on the host
            with pytest.raises(ttrpc.TtrpcError) as exc:
                call("Create", task_pb.CreateTaskRequest(id="t", bundle=str(tmp_path)),
                     task_pb.CreateTaskResponse)
            assert exc.value.code == ttrpc.ALREADY_EXISTS
            call("Start", task_pb.StartRequest(id="t"), task_pb.StartResponse)
            state = call("State", task_pb.StateRequest(id="t"), task_pb.StateResponse)
            assert state.status == types_pb.RUNNING
            with pytest.raises(ttrpc.TtrpcError) as exc:
                call("Start", task_pb.StartRequest(id="t"), task_pb.StartResponse)
            assert exc.value.code == ttrpc.FAILED_PRECONDITION
            call("Kill", task_pb.KillRequest(id="t", signal=9), task_pb.DeleteResponse)
            waited = call("Wait", task_pb.WaitRequest(id="t"), task_pb.WaitResponse)
            assert waited.exit_status == 0 and waited.exited_at.seconds > 0
            with pytest.raises(ttrpc.TtrpcError) as exc:    # containerd then just waits
                call("Kill", task_pb.KillRequest(id="t", signal=9), task_pb.DeleteResponse)
            assert exc.value.code == ttrpc.NOT_FOUND
            call("Delete", task_pb.DeleteRequest(id="t"), task_pb.DeleteResponse)
            with pytest.raises(ttrpc.TtrpcError) as exc:
                call("State", task_pb.StateRequest(id="t"), task_pb.StateResponse)
            assert exc.value.code == ttrpc.NOT_FOUND
            with pytest.raises(ttrpc.TtrpcError) as exc:
                call("Checkpoint", task_pb.CheckpointTaskRequest(id="t"), task_pb.StartResponse)
            assert exc.value.code == ttrpc.UNIMPLEMENTED
            call("Shutdown", task_pb.ShutdownRequest(id="t"), task_pb.StartResponse)
    finally:
        server.shutdown()
    assert events.topics == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]
    # its init exited in its own pid namespace: QEMU ends without DestroySandbox
    assert stopped == [True] and empty.is_set()


def test_an_oom_kill_in_the_guest_is_published_before_the_exit(tmp_path: Path) -> None:
    events = Events()
    fake = FakeContainer("o")
    fake.kill_is_oom = True
    service = TaskService(events, "ns", lambda req, opts: fake,  # type: ignore[arg-type,return-value]
                          lambda c, flushed: None, lambda: None)
    service.Create(task_pb.CreateTaskRequest(id="o", bundle=str(tmp_path)), None)  # type: ignore[arg-type]
    service.Start(task_pb.StartRequest(id="o"), None)  # type: ignore[arg-type]
    service.Kill(task_pb.KillRequest(id="o", signal=9), None)  # type: ignore[arg-type]
    service.Wait(task_pb.WaitRequest(id="o"), None)  # type: ignore[arg-type]
    assert events.topics == ["/tasks/create", "/tasks/start", "/tasks/oom", "/tasks/exit"]


def _bundle(tmp_path: Path, args: list[str]) -> Path:
    (tmp_path / "rootfs").mkdir(exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps({
        "ociVersion": "1.2.0", "root": {"path": "rootfs"},
        "process": {"args": args, "cwd": "/"}}))
    return tmp_path


@pytest.fixture
def fake_boots() -> Iterator[None]:
    FakeSandbox.made = []
    yield
    FakeSandbox.boot_fault = None


def test_the_vm_booted_at_start_is_the_one_create_takes(tmp_path: Path, fake_boots: None) -> None:
    cfg = dataclasses.replace(RuntimeConfig(), state_dir=str(tmp_path / "state"))
    ahead = daemon.Prestart(daemon.Owners(), "t", _bundle(tmp_path, ["true"]), cfg, FakeSandbox)
    assert ahead.take("other", cfg) is None          # another task boots its own
    sandbox = ahead.take("t", cfg)
    assert sandbox is FakeSandbox.made[0] and sandbox.events == ["start", "watch"]
    assert ahead.take("t", cfg) is None              # once
    ahead.discard()
    assert sandbox.events == ["start", "watch"]      # taken: Create's to stop


def test_a_vm_booted_ahead_that_create_cannot_use_is_stopped(tmp_path: Path,
                                                             fake_boots: None) -> None:
    cfg = dataclasses.replace(RuntimeConfig(), state_dir=str(tmp_path / "state"))
    bundle = _bundle(tmp_path, ["true"])
    other = dataclasses.replace(cfg, hypervisor=dataclasses.replace(
        cfg.hypervisor, memory_mib=cfg.hypervisor.memory_mib * 2))
    assert daemon.Prestart(daemon.Owners(), "t", bundle, cfg, FakeSandbox).take("t", other) is None
    daemon.Prestart(daemon.Owners(), "u", bundle, cfg, FakeSandbox).discard()   # no Create came
    assert [s.events for s in FakeSandbox.made] == [["start", "watch", "stop"]] * 2


def test_nothing_boots_ahead_for_a_spec_the_host_refuses_or_a_failed_boot(
        tmp_path: Path, fake_boots: None) -> None:
    cfg = dataclasses.replace(RuntimeConfig(), state_dir=str(tmp_path / "state"))
    refused = daemon.Prestart(daemon.Owners(), "t", _bundle(tmp_path, []), cfg, FakeSandbox)
    assert refused.take("t", cfg) is None and FakeSandbox.made == []   # Create says why
    FakeSandbox.boot_fault = BOOT_FAULT
    failed = daemon.Prestart(daemon.Owners(), "t", _bundle(tmp_path, ["true"]), cfg, FakeSandbox)
    assert failed.take("t", cfg) is None             # Create boots again, and reports


def test_delete_answers_with_a_delete_response_protobuf_reads_back() -> None:
    from google.protobuf.timestamp_pb2 import Timestamp

    for ns in (1_796_400_000_123_456_789, 1_796_400_000_000_000_000):
        got = task_pb.DeleteResponse.FromString(main.delete_response(137, ns))
        want = task_pb.DeleteResponse(exit_status=137, exited_at=Timestamp(
            seconds=ns // 10**9, nanos=ns % 10**9))
        assert got == want and main.delete_response(137, ns) == want.SerializeToString()


def test_the_shims_start_and_delete_import_no_protobuf_logging_or_daemon(
        tmp_path: Path) -> None:
    """containerd waits for both (start: until it forks the daemon, which
    imports the rest): `ctr run --rm` pays for every import they make."""
    code = ("import sys, kata_py.shimv2.main as m, kata_py.private\n"
            f"m.main(['-namespace', 'n', '-id', 'x', '-bundle', {str(tmp_path)!r}, 'delete'])\n"
            "heavy = [n for n in ('google.protobuf', 'logging', 'dataclasses', "
            "'kata_py.shimv2.daemon', 'kata_py.sandbox') if n in sys.modules]\n"
            "sys.stderr.write(repr(heavy))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.stderr == b"[]"
    assert task_pb.DeleteResponse.FromString(r.stdout).exit_status == 137
