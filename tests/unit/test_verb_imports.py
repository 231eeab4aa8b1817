"""What a CLI verb on a running sandbox (start, kill, exec, delete) imports
before it talks to the agent: engines call these once per container step, so
their start-up is latency a podman user sees. Heavy modules that only
`create`, the VM's stop or networking need stay out (≈ 265 ms → ≈ 140 ms)."""

from __future__ import annotations

import json
import subprocess
import sys

# Imported for real only where used: asyncio/qemu.qmp by QMP (stop), grpc.aio
# never, the OCI spec and launch descriptions by create/exec/hooks, pyroute2
# by networking.
HEAVY = ("asyncio", "grpc.aio", "qemu.qmp", "pyroute2", "kata_py.spec",
         "google.protobuf.internal.python_message", "google.protobuf.text_format",
         "kata_py.agent.launch_config", "kata_py.translate")


def _run_probe(probe: str) -> str:
    """Run `probe` in a fresh interpreter (outside the checkout) and return its stdout."""
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, cwd="/").stdout


def test_a_verb_on_a_running_sandbox_imports_none_of_the_heavy_modules() -> None:
    probe = (
        "import json, sys\n"
        "from kata_py import cli, runtime, sandbox, agent_client, container\n"
        "from kata_py.agent import deferred\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps([m for m in heavy if m in sys.modules"
        " and not deferred.is_deferred(m)]))\n"
    )
    assert json.loads(_run_probe(probe)) == []


def test_the_deferred_modules_still_work_when_used() -> None:
    probe = (
        "from kata_py import agent_client\n"
        "import asyncio\n"
        "async def f():\n"
        "    await asyncio.sleep(0)\n"
        "    return 42\n"
        "print(asyncio.run(f()))\n"
        "from qemu.qmp import QMPClient\n"
        "import grpc.aio\n"
        "print(QMPClient.__name__, grpc.aio.insecure_channel.__name__)\n"
    )
    assert _run_probe(probe).split() == ["42", "QMPClient", "insecure_channel"]


def test_start_asks_the_monitor_without_importing_grpc() -> None:
    """`start` goes through the monitor's start socket (kata_py/startsock.py); gRPC
    is imported only when no monitor listens."""
    probe = (
        "import json, sys\n"
        "from kata_py import cli, runtime, startsock\n"
        "print(json.dumps([m for m in ('grpc', 'kata_py.sandbox', 'kata_py.monitor')"
        " if m in sys.modules]))\n"
    )
    assert json.loads(_run_probe(probe)) == []
