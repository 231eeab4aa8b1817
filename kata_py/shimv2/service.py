"""containerd's Task service (`containerd.task.v2.Task`) over the lifecycle
core: each task is a core Container in its own sandbox VM, each exec a
process in it; the Task API's messages are converted here, once, to the
core's requests and back.

What containerd relies on (runtime/v2/README.md, the runc shim's behaviour):
Create mounts the snapshot onto <bundle>/rootfs and answers with the task's
pid; Start, Kill, Exec, Pause, Resume, Update, Stats, Pids, ResizePty and
CloseIO act on a task or exec; Wait blocks until the process exits; State
reports status, exit status and time and the stdio paths; Delete removes an
exited (or never started) process; Shutdown ends the shim once no task is
left. Events go out in containerd's order: create, start, exec-added,
exec-started, oom, exit, delete, paused, resumed (events.py). Statuses are
checked with lifecycle.py's table. The pid a task reports is its VM's QEMU
on the host, as Kata's shim does: guest pids mean nothing on the host, and
a host tool must not act on an unrelated process that happens to have one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.empty_pb2 import Empty
from google.protobuf.timestamp_pb2 import Timestamp

from kata_py import lifecycle
from kata_py.container import (
    Container,
    CreateRequest,
    ExecRequest,
    KillRequest,
    resources_update,
)
from kata_py.errors import ConfigError, ExistsError, KataError, NotFoundError, StateError
from kata_py.protocols import containerd_events_pb2 as events_pb
from kata_py.protocols import containerd_metrics_v2_pb2 as metrics_pb
from kata_py.protocols import containerd_task_pb2 as task_pb
from kata_py.protocols import containerd_task_types_pb2 as types_pb
from kata_py.shimv2 import rootfs, ttrpc
from kata_py.shimv2.events import Publisher, to_any
from kata_py.stdio import Relay

log = logging.getLogger(__name__)

SERVICE = "containerd.task.v2.Task"
SPEC_TYPE = "types.containerd.io/opencontainers/runtime-spec/1/"
OOM_POLL_S = 1.0        # how often a running task's guest cgroup is asked for OOM kills
STATUS = {"created": types_pb.CREATED, "running": types_pb.RUNNING,
          "paused": types_pb.PAUSED, "stopped": types_pb.STOPPED}


@dataclass
class Proc:
    """A task's init (exec_id "") or one of its execs, as containerd sees it."""

    exec_id: str
    stdin: str
    stdout: str
    stderr: str
    terminal: bool
    status: lifecycle.Status = "created"
    exit_status: int = 0
    exited_at: Timestamp | None = None
    exited: threading.Event = field(default_factory=threading.Event)
    request: ExecRequest | None = None      # an exec's, until it is started


@dataclass
class Task:
    container: Container
    bundle: str
    init: Proc
    execs: dict[str, Proc] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    oom_kills: int = 0          # the guest cgroup's memory.events oom_kill, last read

    def proc(self, exec_id: str) -> Proc:
        if not exec_id:
            return self.init
        try:
            return self.execs[exec_id]
        except KeyError:
            raise NotFoundError(f"exec {exec_id} of task {self.container.id} does not exist",
                                "check the exec id") from None


def _errors(handler: Callable[[Any, ttrpc.CallContext], Any]
            ) -> Callable[[Any, ttrpc.CallContext], Any]:
    """kata-py's errors as the status codes containerd maps (errdefs)."""
    def wrapped(request: Any, ctx: ttrpc.CallContext) -> Any:
        try:
            return handler(request, ctx)
        except NotFoundError as exc:
            raise ttrpc.TtrpcError(ttrpc.NOT_FOUND, str(exc)) from exc
        except ExistsError as exc:
            raise ttrpc.TtrpcError(ttrpc.ALREADY_EXISTS, str(exc)) from exc
        except StateError as exc:
            raise ttrpc.TtrpcError(ttrpc.FAILED_PRECONDITION, str(exc)) from exc
        except ConfigError as exc:
            raise ttrpc.TtrpcError(ttrpc.INVALID_ARGUMENT, str(exc)) from exc
        except KataError as exc:
            raise ttrpc.TtrpcError(ttrpc.UNKNOWN, str(exc)) from exc
    return wrapped


class TaskService:
    """The tasks of one shim. `create_container` builds the core Container
    from a request and containerd's runtime options (Container.create on a
    thread of its own, main.py; a fake in unit tests); `stop_container`
    ends it (Container.stop's guest_flushed); `on_empty` is called at a
    Shutdown that finds no task left."""

    def __init__(self, publisher: Publisher, namespace: str,
                 create_container: Callable[[CreateRequest, AnyMessage | None], Container],
                 stop_container: Callable[[Container, bool], None],
                 on_empty: Callable[[], None]) -> None:
        self.publisher = publisher
        self.namespace = namespace
        self.create_container = create_container
        self.stop_container = stop_container
        self.on_empty = on_empty
        self.tasks: dict[str, Task] = {}
        self.lock = threading.Lock()

    def register(self, server: ttrpc.Server) -> None:
        methods = {name: (getattr(task_pb, request), _errors(getattr(self, name)))
                   for name, request in (
                       ("Create", "CreateTaskRequest"), ("Start", "StartRequest"),
                       ("State", "StateRequest"), ("Kill", "KillRequest"),
                       ("Exec", "ExecProcessRequest"), ("ResizePty", "ResizePtyRequest"),
                       ("CloseIO", "CloseIORequest"), ("Pids", "PidsRequest"),
                       ("Pause", "PauseRequest"), ("Resume", "ResumeRequest"),
                       ("Update", "UpdateTaskRequest"), ("Wait", "WaitRequest"),
                       ("Stats", "StatsRequest"), ("Connect", "ConnectRequest"),
                       ("Delete", "DeleteRequest"), ("Shutdown", "ShutdownRequest"),
                       ("Checkpoint", "CheckpointTaskRequest"))}
        server.register(SERVICE, methods)

    def _task(self, task_id: str) -> Task:
        with self.lock:
            task = self.tasks.get(task_id)
        if task is None:
            raise NotFoundError(f"task {task_id} does not exist", "check the task id")
        return task

    def _pid(self, task: Task) -> int:
        vm = task.container.sandbox.vm
        return vm.pid if vm is not None else 0

    # -- the Task API -----------------------------------------------------------------

    def Create(self, r: task_pb.CreateTaskRequest, ctx: ttrpc.CallContext
               ) -> task_pb.CreateTaskResponse:
        with self.lock:
            if r.id in self.tasks:
                raise ExistsError(f"task {r.id} already exists", "pick another id")
        bundle = Path(r.bundle)
        target = bundle / "rootfs"
        mounted = rootfs.mount_all(list(r.rootfs), target)
        try:
            container = self.create_container(CreateRequest(
                r.id, bundle, rootfs=target if r.rootfs else None),
                r.options if r.HasField("options") else None)
        except BaseException:
            if mounted:
                rootfs.unmount(target)
            raise
        init = Proc("", r.stdin, r.stdout, r.stderr, r.terminal)
        task = Task(container, r.bundle, init)
        with self.lock:
            self.tasks[r.id] = task
        self._relay(task, init)
        pid = self._pid(task)
        self.publisher.publish("/tasks/create", events_pb.TaskCreate(
            container_id=r.id, bundle=r.bundle, rootfs=r.rootfs, pid=pid,
            io=events_pb.TaskIO(stdin=r.stdin, stdout=r.stdout, stderr=r.stderr,
                                terminal=r.terminal)))
        return task_pb.CreateTaskResponse(pid=pid)

    def _relay(self, task: Task, proc: Proc) -> None:
        """Join the process's FIFOs to it and watch for its exit."""
        container = task.container

        def opener(path: str, flags: int) -> Callable[[], int] | None:
            return None if not path else (lambda: os.open(path, flags | os.O_CLOEXEC))
        relay = Relay(container.agent, container.id, proc.exec_id,
                      stdin=opener(proc.stdin, os.O_RDONLY),
                      stdout=opener(proc.stdout, os.O_WRONLY),
                      stderr=None if proc.terminal else opener(proc.stderr, os.O_WRONLY))
        relay.start()

        def watch() -> None:
            code = relay.wait()
            self._exited(task, proc, code)
        threading.Thread(target=watch, name=f"wait-{proc.exec_id or container.id}",
                         daemon=True).start()

    def _exited(self, task: Task, proc: Proc, code: int) -> None:
        if not proc.exec_id:
            self._check_oom(task)       # an OOM kill is reported before the exit it caused
        stamp = Timestamp()
        stamp.GetCurrentTime()
        with task.lock:
            proc.status, proc.exit_status, proc.exited_at = "stopped", code, stamp
        self.publisher.publish("/tasks/exit", events_pb.TaskExit(
            container_id=task.container.id, id=proc.exec_id or task.container.id,
            pid=self._pid(task), exit_status=code, exited_at=stamp))
        proc.exited.set()
        log.info("%s exited with %d", proc.exec_id or task.container.id, code)

    def _check_oom(self, task: Task) -> None:
        """Publish /tasks/oom for each OOM kill in the guest cgroup since the
        last look (the runc shim watches memory.events the same way)."""
        try:
            kills = task.container.stats().keyed("memory.events").get("oom_kill", 0)
        except KataError:
            return                          # the VM is going: its exit says the rest
        with task.lock:
            new, task.oom_kills = kills - task.oom_kills, max(kills, task.oom_kills)
        for _ in range(max(new, 0)):
            self.publisher.publish("/tasks/oom", events_pb.TaskOOM(container_id=task.container.id))

    def _watch_oom(self, task: Task) -> None:
        while not task.init.exited.wait(OOM_POLL_S):
            self._check_oom(task)

    def Start(self, r: task_pb.StartRequest, ctx: ttrpc.CallContext) -> task_pb.StartResponse:
        task = self._task(r.id)
        proc = task.proc(r.exec_id)
        with task.lock:
            lifecycle.check(r.exec_id or r.id, proc.status, "start")
            if r.exec_id:
                assert proc.request is not None
                task.container.exec(proc.request)
                self._relay(task, proc)
            else:
                task.container.start()
                threading.Thread(target=self._watch_oom, args=(task,),
                                 name=f"oom-{r.id}", daemon=True).start()
            proc.status = "running"
            if r.exec_id:
                self.publisher.publish("/tasks/exec-started", events_pb.TaskExecStarted(
                    container_id=r.id, exec_id=r.exec_id, pid=self._pid(task)))
            else:
                self.publisher.publish("/tasks/start", events_pb.TaskStart(
                    container_id=r.id, pid=self._pid(task)))
        return task_pb.StartResponse(pid=self._pid(task))

    def State(self, r: task_pb.StateRequest, ctx: ttrpc.CallContext) -> task_pb.StateResponse:
        task = self._task(r.id)
        proc = task.proc(r.exec_id)
        return task_pb.StateResponse(
            id=r.id, bundle=task.bundle, pid=self._pid(task), status=STATUS[proc.status],
            stdin=proc.stdin, stdout=proc.stdout, stderr=proc.stderr, terminal=proc.terminal,
            exit_status=proc.exit_status, exited_at=proc.exited_at, exec_id=r.exec_id)

    def Kill(self, r: task_pb.KillRequest, ctx: ttrpc.CallContext) -> Empty:
        task = self._task(r.id)
        proc = task.proc(r.exec_id)
        if proc.status == "stopped":
            # the runc shim's answer; containerd's WithProcessKill then just waits
            raise NotFoundError(f"process {r.exec_id or r.id} already finished",
                                "nothing to signal")
        lifecycle.check(r.exec_id or r.id, proc.status, "kill")
        task.container.kill(KillRequest(r.signal, r.all and not r.exec_id, r.exec_id))
        return Empty()

    def Exec(self, r: task_pb.ExecProcessRequest, ctx: ttrpc.CallContext) -> Empty:
        from kata_py.spec import parse_process

        task = self._task(r.id)
        if not r.spec.type_url.startswith(SPEC_TYPE):
            raise ConfigError(f"exec {r.exec_id}: spec of type {r.spec.type_url!r}",
                              "send an OCI Process")
        process = parse_process(json.loads(r.spec.value), task.container.spec,
                                Path(task.bundle))
        process = dataclasses.replace(process, terminal=r.terminal)
        with task.lock:
            lifecycle.check(r.id, task.init.status, "exec")
            if r.exec_id in task.execs:
                raise ExistsError(f"exec {r.exec_id} of task {r.id} already exists",
                                  "pick another exec id")
            task.execs[r.exec_id] = Proc(r.exec_id, r.stdin, r.stdout, r.stderr, r.terminal,
                                         request=ExecRequest(r.exec_id, process))
        self.publisher.publish("/tasks/exec-added", events_pb.TaskExecAdded(
            container_id=r.id, exec_id=r.exec_id))
        return Empty()

    def ResizePty(self, r: task_pb.ResizePtyRequest, ctx: ttrpc.CallContext) -> Empty:
        task = self._task(r.id)
        if task.proc(r.exec_id).status != "stopped":
            task.container.resize(r.height, r.width, r.exec_id)
        return Empty()

    def CloseIO(self, r: task_pb.CloseIORequest, ctx: ttrpc.CallContext) -> Empty:
        task = self._task(r.id)
        if r.stdin and task.proc(r.exec_id).status != "stopped":
            task.container.close_stdin(r.exec_id)
        return Empty()

    def Pids(self, r: task_pb.PidsRequest, ctx: ttrpc.CallContext) -> task_pb.PidsResponse:
        task = self._task(r.id)
        if task.init.status == "stopped":
            return task_pb.PidsResponse()
        found, _ = task.container.processes()
        return task_pb.PidsResponse(processes=[types_pb.ProcessInfo(pid=pid)
                                               for pid, *_ in found])

    def Pause(self, r: task_pb.PauseRequest, ctx: ttrpc.CallContext) -> Empty:
        return self._freeze(r.id, "pause")

    def Resume(self, r: task_pb.ResumeRequest, ctx: ttrpc.CallContext) -> Empty:
        return self._freeze(r.id, "resume")

    def _freeze(self, task_id: str, verb: str) -> Empty:
        task = self._task(task_id)
        with task.lock:
            then = lifecycle.check(task_id, task.init.status, verb)
            (task.container.pause if verb == "pause" else task.container.resume)()
            assert then is not None
            task.init.status = then
        if verb == "pause":
            self.publisher.publish("/tasks/paused", events_pb.TaskPaused(container_id=task_id))
        else:
            self.publisher.publish("/tasks/resumed", events_pb.TaskResumed(container_id=task_id))
        return Empty()

    def Update(self, r: task_pb.UpdateTaskRequest, ctx: ttrpc.CallContext) -> Empty:
        task = self._task(r.id)
        lifecycle.check(r.id, task.init.status, "update")
        if not r.resources.type_url.startswith(SPEC_TYPE):
            raise ConfigError(f"update of {r.id}: resources of type {r.resources.type_url!r}",
                              "send OCI LinuxResources")
        task.container.update(resources_update(json.loads(r.resources.value)))
        return Empty()

    def Wait(self, r: task_pb.WaitRequest, ctx: ttrpc.CallContext) -> task_pb.WaitResponse:
        proc = self._task(r.id).proc(r.exec_id)
        proc.exited.wait()
        return task_pb.WaitResponse(exit_status=proc.exit_status, exited_at=proc.exited_at)

    def Stats(self, r: task_pb.StatsRequest, ctx: ttrpc.CallContext) -> task_pb.StatsResponse:
        task = self._task(r.id)
        lifecycle.check(r.id, task.init.status, "stats")
        return task_pb.StatsResponse(stats=to_any(metrics(task.container.stats())))

    def Connect(self, r: task_pb.ConnectRequest, ctx: ttrpc.CallContext
                ) -> task_pb.ConnectResponse:
        with self.lock:
            task = self.tasks.get(r.id)
        return task_pb.ConnectResponse(shim_pid=os.getpid(),
                                       task_pid=self._pid(task) if task else 0)

    def Delete(self, r: task_pb.DeleteRequest, ctx: ttrpc.CallContext
               ) -> task_pb.DeleteResponse:
        task = self._task(r.id)
        proc = task.proc(r.exec_id)
        if proc.status in ("running", "paused"):
            raise StateError(f"process {r.exec_id or r.id} is {proc.status}",
                             "kill it and wait for it first")
        pid = self._pid(task)
        if r.exec_id:
            with task.lock:
                task.execs.pop(r.exec_id, None)
            return task_pb.DeleteResponse(pid=pid, exit_status=proc.exit_status,
                                          exited_at=proc.exited_at)
        self.stop_container(task.container, proc.exited_at is not None
                            and task.container.flushed_by_exit(proc.exit_status))
        rootfs.unmount(Path(task.bundle) / "rootfs")
        if proc.exited_at is None:          # never started: it ends with its VM
            proc.status = "stopped"
            proc.exited_at = Timestamp()
            proc.exited_at.GetCurrentTime()
            proc.exited.set()
        with self.lock:
            self.tasks.pop(r.id, None)
        self.publisher.publish("/tasks/delete", events_pb.TaskDelete(
            container_id=r.id, pid=pid, exit_status=proc.exit_status,
            exited_at=proc.exited_at, id=r.id))
        return task_pb.DeleteResponse(pid=pid, exit_status=proc.exit_status,
                                      exited_at=proc.exited_at)

    def Shutdown(self, r: task_pb.ShutdownRequest, ctx: ttrpc.CallContext) -> Empty:
        with self.lock:
            empty = not self.tasks
        if empty:
            self.on_empty()
        return Empty()

    def Checkpoint(self, r: task_pb.CheckpointTaskRequest, ctx: ttrpc.CallContext) -> Empty:
        raise ttrpc.TtrpcError(ttrpc.UNIMPLEMENTED, "checkpoint is not supported by kata-py: "
                               "a container's state is its VM's memory")


def metrics(cg: Any) -> metrics_pb.Metrics:
    """The guest cgroup's figures as containerd's cgroup v2 Metrics (the
    guest is cgroup v2 whatever the host is)."""
    cpu = cg.keyed("cpu.stat")
    stat = cg.keyed("memory.stat")
    events = cg.keyed("memory.events")
    limit = cg.number("memory.max")
    swap_limit = cg.number("memory.swap.max")
    u64 = (1 << 64) - 1
    memory_fields = {f.name for f in metrics_pb.MemoryStat.DESCRIPTOR.fields}
    out = metrics_pb.Metrics(
        pids=metrics_pb.PidsStat(current=cg.number("pids.current") or 0,
                                 limit=cg.number("pids.max") or 0),
        cpu=metrics_pb.CPUStat(**{k: cpu.get(k, 0) for k in (
            "usage_usec", "user_usec", "system_usec", "nr_periods", "nr_throttled",
            "throttled_usec")}),
        memory=metrics_pb.MemoryStat(
            **{k: v for k, v in stat.items() if k in memory_fields},
            usage=cg.number("memory.current") or 0,
            usage_limit=u64 if limit is None else limit,
            swap_usage=cg.number("memory.swap.current") or 0,
            swap_limit=u64 if swap_limit is None else swap_limit),
        memory_events=metrics_pb.MemoryEvents(**{k: events.get(k, 0) for k in (
            "low", "high", "max", "oom", "oom_kill")}),
        io=metrics_pb.IOStat(usage=[
            metrics_pb.IOEntry(major=int(dev.split(":")[0]), minor=int(dev.split(":")[1]),
                               **{k: int(v.get(k, 0)) for k in ("rbytes", "wbytes", "rios",
                                                                 "wios")})
            for dev, v in cg.devices("io.stat")]),
        hugetlb=[metrics_pb.HugeTlbStat(current=cg.number(f"hugetlb.{size}.current") or 0,
                                        max=cg.number(f"hugetlb.{size}.max") or 0,
                                        pagesize=size)
                 for size in cg.hugepage_sizes()])
    return out
