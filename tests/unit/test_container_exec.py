"""Exec through the agent's ContainerManager (agent/containers.py), run for
real as root on the host like test_zygote.py: a child process plays the
agent, creates a busybox container whose init has a terminal (its pty
master comes back over the console socket) and execs processes into it,
before and after it is started, the way ExecProcess does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from kata_py.agent import launch_config
from tests.unit.test_launcher import make_config, rootfs  # noqa: F401 - rootfs is a fixture

AGENT = r"""
import ctypes, json, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)   # PR_SET_CHILD_SUBREAPER: we play PID 1
from kata_py.agent.containers import ContainerManager
from kata_py.agent.errors import AgentError
from kata_py.agent.reaper import Reaper

manager = ContainerManager(Reaper().install())
container, *execs = (open(path, "rb").read() for path in sys.argv[1:])

def output(exec_id):
    stream, data = manager.get("c", exec_id).stdout, b""
    while chunk := stream.read(1 << 16, 10):
        data += chunk
    return data.decode()

def run(exec_id, config):
    try:
        manager.exec("c", exec_id, config)
    except AgentError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    code = manager.wait("c", 30, exec_id)
    result = {"code": code, "stdout": output(exec_id)}
    manager.remove("c", exec_id)
    return result

manager.create("c", container)
result = {"tty": manager.get("c").tty is not None, "created": run("e1", execs[0])}
manager.start("c")
result["running"] = [run(f"e{i}", config) for i, config in enumerate(execs[1:], 2)]
manager.remove("c")
print(json.dumps(result))
"""


def _exec_config(**process: object) -> str:
    """What the host sends in ExecProcess (kata_py.runtime.exec_process)."""
    base = make_config(Path("/"), ("true",))
    config = launch_config.LaunchConfig(
        container_id="c", rootfs="/", process=launch_config.Process(**process),  # type: ignore[arg-type]
        fds=base.fds)
    return launch_config.to_json(config)


def test_plain_execs_into_a_terminal_container_created_or_running_get_their_own_stdio(
        rootfs: Path, tmp_path: Path) -> None:  # noqa: F811 - the imported fixture
    """The init's console socket is its own: an exec without a terminal used
    to inherit its number and fail with EBADF. An exec into a created (not
    started) container works, as in runc."""
    (rootfs / "etc/passwd").write_text("user:x:1000:1000::/home/user:/bin/sh\n")
    container = make_config(rootfs, ("sleep", "30"), terminal=True)
    paths = [tmp_path / "container.json"]
    paths[0].write_text(launch_config.to_json(container))
    execs = [
        _exec_config(args=("sh", "-c", "echo $HOME; cat /proc/1/comm; [ -t 0 ] || echo no-tty"),
                     env=("PATH=/bin",)),
        _exec_config(args=("sh", "-c", "pwd; echo $FOO; id -u; echo $HOME"), cwd="/tmp",
                     env=("PATH=/bin", "FOO=bar"), uid=1000, gid=1000),
        _exec_config(args=("tty",), env=("PATH=/bin",), terminal=True),
    ]
    for i, text in enumerate(execs):
        paths.append(tmp_path / f"exec{i}.json")
        paths[-1].write_text(text)
    out = subprocess.run([sys.executable, "-c", AGENT, *map(str, paths)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["tty"]
    created = result["created"]
    assert created["code"] == 0, created
    home, init, tty = created["stdout"].split()
    # the container's pid 1 is still the launcher, waiting for start
    assert (home, init.startswith("python"), tty) == ("/", True, "no-tty"), created
    plain, terminal = result["running"]
    assert plain == {"code": 0, "stdout": "/tmp\nbar\n1000\n/home/user\n"}
    assert terminal["code"] == 0 and terminal["stdout"].startswith("/dev/pts/"), terminal
