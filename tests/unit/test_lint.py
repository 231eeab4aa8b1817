"""Linters as tests: ruff over everything, mypy --strict over the package.

mypy cannot follow setuptools' package-dir mapping (agent/ and hypervisor/
are kata_py.agent and kata_py.hypervisor), so it checks a shadow tree of
symlinks laid out the way the package is installed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_ruff_finds_nothing() -> None:
    out = subprocess.run([str(BIN / "ruff"), "check", "--no-cache", "."], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_strict_finds_nothing(tmp_path: Path) -> None:
    shadow = tmp_path / "kata_py"
    shadow.mkdir()
    for item in (REPO / "kata_py").iterdir():
        if item.suffix == ".py" or (item.is_dir() and item.name != "__pycache__"):
            (shadow / item.name).symlink_to(item)
    (shadow / "agent").symlink_to(REPO / "agent")
    (shadow / "hypervisor").symlink_to(REPO / "hypervisor")
    out = subprocess.run(
        [str(BIN / "mypy"), "--config-file", str(REPO / "pyproject.toml"),
         "--cache-dir", str(tmp_path / ".mypy_cache"), "-p", "kata_py"],
        cwd=tmp_path, capture_output=True, text=True, env={"MYPYPATH": str(tmp_path),
                                                           "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stdout + out.stderr
