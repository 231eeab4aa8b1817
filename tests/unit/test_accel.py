"""The accelerator probe's pieces and its decisions (the real KVM boot-test
runs in tests/integration/test_sandbox.py through the sandbox)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from kata_py.hypervisor import accel


def test_probe_init_is_a_static_x86_64_executable(tmp_path: Path) -> None:
    elf = accel.reboot_init_elf()
    assert elf[:4] == b"\x7fELF" and elf[4] == 2 and elf[18] == 0x3E
    if shutil.which("file"):
        (tmp_path / "init").write_bytes(elf)
        out = subprocess.run(["file", str(tmp_path / "init")], capture_output=True, text=True)
        assert "ELF 64-bit LSB executable, x86-64" in out.stdout


@pytest.mark.skipif(not shutil.which("cpio"), reason="needs cpio to read the archive back")
def test_probe_initramfs_is_a_valid_newc_archive(tmp_path: Path) -> None:
    archive = accel.newc_cpio({"init": (0o100755, b"#!x\n"), "etc/motd": (0o100644, b"hi")})
    out = subprocess.run(["cpio", "-t"], input=archive, capture_output=True)
    assert out.stdout.decode().split() == ["init", "etc/motd"]


def test_forced_modes_skip_the_probe(tmp_path: Path) -> None:
    kernel = tmp_path / "k"
    kernel.write_bytes(b"")
    assert accel.choose("tcg", "qemu", kernel).accelerator == "tcg"
    assert accel.choose("kvm", "qemu", kernel).accelerator == "kvm"


def test_auto_uses_the_cached_answer_for_this_boot(tmp_path: Path) -> None:
    kernel = tmp_path / "k"
    kernel.write_bytes(b"x")
    key = accel._cache_key("/bin/false", kernel)
    (tmp_path / accel.CACHE_NAME).write_text(json.dumps(
        {"key": key, "accelerator": "kvm", "reason": "cached", "probe_seconds": 0.3}))
    choice = accel.choose("auto", "/bin/false", kernel, tmp_path)
    assert (choice.accelerator, choice.reason) == ("kvm", "cached")


def test_auto_falls_back_to_tcg_when_qemu_cannot_run_kvm(tmp_path: Path) -> None:
    kernel = tmp_path / "k"
    kernel.write_bytes(b"x")
    choice = accel.choose("auto", "/bin/false", kernel, tmp_path)
    assert choice.accelerator == "tcg" and choice.tested
    assert json.loads((tmp_path / accel.CACHE_NAME).read_text())["accelerator"] == "tcg"


def test_first_probes_at_once_each_write_the_cache_without_tripping(tmp_path: Path) -> None:
    """Two first creates in a fresh --root probe together; each writes its own
    temporary file (a shared one failed the second rename: FileNotFoundError)."""
    from concurrent.futures import ThreadPoolExecutor

    kernel = tmp_path / "k"
    kernel.write_bytes(b"x")
    script = tmp_path / "slow-false"
    script.write_text("#!/bin/sh\nsleep 0.2\nexit 1\n")
    script.chmod(0o755)
    with ThreadPoolExecutor(4) as pool:
        choices = list(pool.map(lambda _: accel.choose("auto", str(script), kernel, tmp_path),
                                range(4)))
    assert {c.accelerator for c in choices} == {"tcg"}
    assert json.loads((tmp_path / accel.CACHE_NAME).read_text())["accelerator"] == "tcg"
    assert not list(tmp_path.glob("*.tmp"))
