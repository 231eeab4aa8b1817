"""`kata-py spec` and `kata-py features` through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kata_py.spec import parse_spec
from kata_py.spec_linux import SECCOMP_ACTIONS


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kata_py.cli", *args], capture_output=True,
                          text=True, timeout=60)


def test_spec_writes_a_config_json_kata_py_accepts(tmp_path: Path) -> None:
    (tmp_path / "rootfs").mkdir()
    out = _cli("spec", "--bundle", str(tmp_path))
    assert out.returncode == 0, out.stderr
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["process"]["args"] == ["sh"]
    parse_spec(config, tmp_path)


@pytest.mark.parametrize("entry", ["kata_py.cli", "kata_py.fastcli"])
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0, 0o666)])
def test_spec_writes_with_the_callers_umask_not_kata_pys(tmp_path: Path, entry: str, umask: int,
                                                        mode: int) -> None:
    """kata-py's own files are 0600 whatever the umask (private.py); the
    config.json that `spec` writes is the caller's, 0666 & ~umask as runc's."""
    code = f"import os, sys; os.umask({umask}); from {entry} import main; sys.exit(main())"
    out = subprocess.run([sys.executable, "-c", code, "spec", "-b", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "config.json").stat().st_mode & 0o777 == mode


def test_spec_writes_what_runc_spec_writes_on_this_host(tmp_path: Path) -> None:
    """Tools take `spec`'s output and edit it (conformance suites add a cgroup
    namespace on v1 hosts): it must be runc's, bar the spec version."""
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir()
    theirs.mkdir()
    assert _cli("spec", "-b", str(ours)).returncode == 0
    subprocess.run(["runc", "spec", "-b", str(theirs)], check=True, timeout=30)
    mine, runc = (json.loads((d / "config.json").read_text()) for d in (ours, theirs))
    mine.pop("ociVersion")
    runc.pop("ociVersion")
    assert mine == runc


def test_spec_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    out = _cli("spec", "-b", str(tmp_path))
    assert out.returncode == 1
    assert out.stderr == f"kata-py: {tmp_path / 'config.json'} already exists: remove it first\n"


def test_features_lists_what_the_parser_accepts() -> None:
    out = _cli("features")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["ociVersionMin"] == "1.0.0"
    assert "createRuntime" in doc["hooks"]
    assert doc["linux"]["cgroup"]["v2"] is True
    actions = set(doc["linux"]["seccomp"]["actions"])
    assert "SCMP_ACT_NOTIFY" not in actions and actions <= SECCOMP_ACTIONS
    assert "io.kata-py.vm.vcpus" in doc["annotations"]


def test_preserve_fds_is_refused_with_the_reason_and_nothing_is_created(tmp_path: Path
                                                                        ) -> None:
    (tmp_path / "rootfs").mkdir()
    assert _cli("spec", "-b", str(tmp_path)).returncode == 0
    root = tmp_path / "root"
    for argv in (["create", "-b", str(tmp_path), "--preserve-fds", "2", "c1"],
                 ["exec", "--preserve-fds", "1", "c1", "true"]):
        out = _cli("--root", str(root), *argv)
        assert out.returncode != 0
        assert out.stderr.count("\n") == 1, out.stderr
        assert out.stderr.startswith("kata-py: --preserve-fds ")
        assert "cannot be passed into the container's VM" in out.stderr
    assert not (root / "containers" / "c1").exists()
