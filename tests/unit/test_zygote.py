"""The launcher zygote (agent/zygote.py) with the agent's ContainerManager,
run for real as root on the host: a child process plays the agent (a child
subreaper stands in for PID 1), forks its zygote before any thread, and
creates, starts and waits for busybox containers through it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from kata_py.agent import launch_config
from tests.unit.test_launcher import make_config, rootfs  # noqa: F401 - rootfs is a fixture

AGENT = r"""
import ctypes, json, os, signal, sys, time
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)   # PR_SET_CHILD_SUBREAPER: we play PID 1
from kata_py.agent.containers import CONFIG_FD, LAUNCHER_ENV, ContainerManager
from kata_py.agent.zygote import Zygote
zygote = Zygote.fork(LAUNCHER_ENV, CONFIG_FD)     # before the reaper's thread
from kata_py.agent.reaper import Reaper
manager = ContainerManager(Reaper().install(), zygote)
config = open(sys.argv[1], "rb").read()

def run(cid):
    pid = manager.create(cid, config)
    manager.start(cid)
    code = manager.wait(cid, 30)
    c = manager.get(cid)
    return {"pid": pid, "launcher": c.launcher.pid, "code": code,
            "stdout": (c.stdout.read(1 << 16, 5) or b"").decode()}

result = {"zygote": run("a"), "zygote-pid": zygote.pid}
os.kill(zygote.pid, signal.SIGKILL)
time.sleep(0.2)
result["fallback"] = run("b")
result["broken"] = zygote.broken
print(json.dumps(result))
"""


def test_launchers_forked_by_the_zygote_run_containers_and_fall_back_when_it_dies(
        rootfs: Path, tmp_path: Path) -> None:  # noqa: F811 - the imported fixture
    config = make_config(rootfs, ("sh", "-c", "echo hi from $$; ls /proc/self/fd; exit 7"))
    (tmp_path / "config.json").write_text(launch_config.to_json(config))
    out = subprocess.run([sys.executable, "-c", AGENT, str(tmp_path / "config.json")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    for via in ("zygote", "fallback"):
        run = result[via]
        # The exit status reached the agent's reaper: the launcher was re-parented to it.
        assert run["code"] == 7, (via, run)
        lines = run["stdout"].split()
        assert lines[:3] == ["hi", "from", "1"], (via, run)
        # Only stdio is open in the container (the zygote's socket is not).
        assert sorted(lines[3:]) == ["0", "1", "2", "3"], (via, run)  # 3: ls's own dir fd
    assert result["zygote"]["launcher"] != result["zygote-pid"]
    assert "zygote" in (result["broken"] or "")


def test_nothing_the_agent_imports_before_forking_the_zygote_imports_grpc() -> None:
    """fork() after gRPC is imported is unsafe; agent/__main__.py forks the
    zygote after these imports and before it imports the server."""
    code = ("import sys; import kata_py.agent.__main__, kata_py.agent.containers, "
            "kata_py.agent.zygote; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('grpc', 'google')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
