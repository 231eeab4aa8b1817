"""Fixtures that boot real sandboxes (QEMU + virtiofsd + vsock backend + the
guest image), under KVM where it works and TCG otherwise — never skipped.

`sandboxes` hands out Sandbox objects, stops whatever a test left running,
prints the console/QEMU/backend logs of a failed test, and asserts that no
process, socket, mount or state directory of the test's sandboxes survived.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from kata_py.config import RuntimeConfig, load_config
from kata_py.sandbox import Sandbox

LOGS = ("console.log", "qemu.log", "vsock-backend.log", "virtiofsd.log")
APPLETS = ("sh", "echo", "cat", "sleep", "hostname", "id", "ls", "true", "env", "pwd",
           "wget", "ping", "ip", "time", "md5sum")
CLI_TIMEOUT_S = 240.0


def busybox_rootfs(rootfs: Path, dirs: Iterable[str] = ("proc", "dev", "sys", "tmp", "etc")
                   ) -> Path:
    """A root filesystem of the host's static busybox and its applet links."""
    (rootfs / "bin").mkdir(parents=True)
    for d in dirs:
        (rootfs / d).mkdir()
    shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
    for applet in APPLETS:
        os.symlink("busybox", rootfs / "bin" / applet)
    return rootfs


def cli_argv(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "kata_py.cli", "--root", str(root), *args]


def kp(root: Path, *args: str, stdin: bytes = b"", timeout: float = CLI_TIMEOUT_S
       ) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI. Output goes to files, not pipes: after `create` the monitor
    keeps the caller's stdio (as a runc container would), so a pipe would
    not see EOF until the container exits."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.run(cli_argv(root, *args), input=stdin, stdout=out, stderr=err,
                              timeout=timeout, check=False)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())


@pytest.fixture(scope="session")
def runtime_config() -> Iterator[RuntimeConfig]:
    # Short path: the sandbox's unix sockets live below it (108-byte limit).
    # One per session, so the accelerator probe (a real KVM boot-test) runs once.
    state = Path(tempfile.mkdtemp(prefix="kp-", dir="/tmp"))
    cfg = replace(load_config(None), state_dir=str(state))
    yield cfg
    shutil.rmtree(state, ignore_errors=True)


def leftovers(marker: str) -> list[str]:
    """Processes whose command line mentions marker, and mounts below it."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmd and state != "Z":
            found.append(f"pid {proc.name}: {cmd[:160]}")
    found += [f"mount: {line}" for line in Path("/proc/mounts").read_text().splitlines()
              if marker in line]
    return found


@pytest.fixture
def sandboxes(request: pytest.FixtureRequest,
              runtime_config: RuntimeConfig) -> Iterator[Callable[..., Sandbox]]:
    made: list[Sandbox] = []
    counter = iter(range(1000))

    def make(cfg: RuntimeConfig | None = None, **kw: object) -> Sandbox:
        sb = Sandbox(f"t{next(counter)}-{request.node.name[:24]}", cfg or runtime_config,
                     **kw)  # type: ignore[arg-type]
        made.append(sb)
        return sb

    yield make
    rep = getattr(request.node, "rep_call", None)
    for sb in made:
        if rep is not None and rep.failed:
            for name in LOGS:
                path = sb.dir / name
                if path.exists():
                    print(f"----- {path} (last 40 lines) -----")
                    print("\n".join(path.read_text(errors="replace").splitlines()[-40:]))
        sb.stop()
    for sb in made:
        assert not sb.dir.exists(), f"state directory {sb.dir} survived"
        assert leftovers(str(sb.dir)) == [], f"left behind by {sb.id}"


@pytest.fixture
def root(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A --root for CLI tests. Afterwards: the logs of its sandboxes printed if
    the test failed, every container deleted, and nothing of it left."""
    path = Path(tempfile.mkdtemp(prefix="kpc-", dir="/tmp"))
    yield path
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for log_path in [*path.glob("containers/*/monitor.log"), *path.glob("vm/*/*.log")]:
            print(f"----- {log_path} (last 40 lines) -----")
            print("\n".join(log_path.read_text(errors="replace").splitlines()[-40:]))
    containers = path / "containers"
    for cid in (os.listdir(containers) if containers.exists() else ()):
        subprocess.run(cli_argv(path, "delete", "--force", cid), capture_output=True,
                       timeout=CLI_TIMEOUT_S)
    assert leftovers(str(path)) == []
    for sub in ("vm", "containers"):
        assert not ((path / sub).exists() and any((path / sub).iterdir())), f"{sub} not empty"
    shutil.rmtree(path)
