"""The containerd shim v2 without a VM: argv parsing, socket names, the
guest cgroup as containerd's Metrics, and the Task service over ttrpc with
a fake core Container (its agent records the calls)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from kata_py.guest_cgroup import GuestCgroup
from kata_py.protocols import containerd_task_pb2 as task_pb
from kata_py.protocols import containerd_task_types_pb2 as types_pb
from kata_py.shimv2 import main, ttrpc
from kata_py.shimv2.service import SERVICE, TaskService, metrics


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
    def __init__(self, cid: str) -> None:
        self.id = cid
        self.agent = FakeAgent()
        self.sandbox = type("S", (), {"vm": type("V", (), {"pid": 4242})()})()
        self.spec = None
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
                          stopped.append, empty.set)
    server = ttrpc.Server()
    service.register(server)
    server.start(ttrpc.bind_unix(tmp_path / "s.sock"))
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
    assert len(stopped) == 1 and empty.is_set()


def test_an_oom_kill_in_the_guest_is_published_before_the_exit(tmp_path: Path) -> None:
    events = Events()
    fake = FakeContainer("o")
    fake.kill_is_oom = True
    service = TaskService(events, "ns", lambda req, opts: fake,  # type: ignore[arg-type,return-value]
                          lambda c: None, lambda: None)
    service.Create(task_pb.CreateTaskRequest(id="o", bundle=str(tmp_path)), None)  # type: ignore[arg-type]
    service.Start(task_pb.StartRequest(id="o"), None)  # type: ignore[arg-type]
    service.Kill(task_pb.KillRequest(id="o", signal=9), None)  # type: ignore[arg-type]
    service.Wait(task_pb.WaitRequest(id="o"), None)  # type: ignore[arg-type]
    assert events.topics == ["/tasks/create", "/tasks/start", "/tasks/oom", "/tasks/exit"]
