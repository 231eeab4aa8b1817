"""The caller's stdio as runc leaves it: runc passes the caller's files
through to the container, so a caller reading them sees EOF as soon as the
container's process has closed its copies, even while it runs on."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kata_py.spec_default import default_spec

from .conftest import busybox_rootfs, cli_argv, kp

pytestmark = pytest.mark.vm


@pytest.fixture
def bundle(tmp_path: Path) -> Callable[..., Path]:
    def make(*args: str, **process: Any) -> Path:
        busybox_rootfs(tmp_path / "rootfs")
        spec = default_spec()
        spec["process"].update(terminal=False, args=list(args), **process)
        (tmp_path / "config.json").write_text(json.dumps(spec))
        return tmp_path
    return make


def test_run_detached_gives_the_caller_eof_once_the_container_closes_its_stdio(
        root: Path, bundle: Callable[..., Path]) -> None:
    """`out=$(kata-py run -d …)` returns while the container sleeps on."""
    b = bundle("sh", "-c", "echo hello; echo there >&2; exec >&- 2>&-; exec sleep 600")
    run = subprocess.Popen(cli_argv(root, "run", "-d", "-b", str(b), "eof"),
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    try:
        out, err = run.communicate(timeout=120)     # EOF on both pipes
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert (run.returncode, out, err) == (0, b"hello\n", b"there\n")
    assert json.loads(kp(root, "state", "eof").stdout)["status"] == "running"
    assert kp(root, "delete", "--force", "eof").returncode == 0


def test_a_container_that_keeps_its_stdout_keeps_the_callers_pipe_open(
        root: Path, bundle: Callable[..., Path]) -> None:
    """The other half of the same rule: no EOF while the process holds it
    (then the caller waits, as with runc), and its later output arrives."""
    b = bundle("sh", "-c", "exec 2>&-; echo one; read line; echo two")
    run = subprocess.Popen(cli_argv(root, "run", "-d", "-b", str(b), "open"),
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    assert run.stdout is not None and run.stdin is not None
    try:
        assert run.stdout.readline() == b"one\n"
        assert run.wait(120) == 0                    # run -d has returned …
        run.stdin.write(b"go\n")                     # … the monitor relays stdin on
        run.stdin.close()
        assert run.stdout.read() == b"two\n"         # EOF once the process exits
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert kp(root, "delete", "--force", "open").returncode == 0
