"""The agent's deferred imports (agent/deferred.py), each in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", "from kata_py.agent import deferred\n" + code],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_a_sync_grpc_server_runs_without_importing_asyncio_or_grpc_aio() -> None:
    out = _run("deferred.defer()\n"
               "import sys\n"
               "from concurrent import futures\n"
               "import grpc\n"
               "from kata_py.agent.server import AgentServer\n"
               "s = grpc.server(futures.ThreadPoolExecutor(max_workers=1))\n"
               "print(deferred.is_deferred('asyncio'), deferred.is_deferred('grpc.aio'),\n"
               "      sorted(m for m in sys.modules if m.startswith(('asyncio.', 'grpc.aio.'))))")
    assert out == "True True []"


@pytest.mark.parametrize("use", [
    "import asyncio\nprint(asyncio.run(asyncio.sleep(0, 'ran')))",
    "import asyncio.events\nprint(asyncio.events.AbstractEventLoop.__name__ and 'ran')",
    "from asyncio import sleep\nprint(sleep.__name__ == 'sleep' and 'ran')",
    "import grpc\nprint(grpc.aio.server.__name__ == 'server' and 'ran')",
    "import grpc.aio\nimport sys\nprint(grpc.aio.insecure_channel is sys.modules['grpc.aio']"
    ".insecure_channel and 'ran')"])
def test_a_deferred_module_works_when_it_is_used(use: str) -> None:
    assert _run("deferred.defer()\nimport grpc\n" + use) == "ran"
