"""Real sandboxes: the guest image booted by QEMU (TCG here), the agent
reached over vsock through the vhost-user backend, the share via virtio-fs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from kata_py.config import RuntimeConfig
from kata_py.errors import AgentError, HypervisorError, ImageError
from kata_py.hypervisor.qemu import Qmp
from kata_py.image import load_image
from kata_py.sandbox import Sandbox

from .conftest import leftovers

pytestmark = pytest.mark.vm


def _with_hypervisor(cfg: RuntimeConfig, **changes: object) -> RuntimeConfig:
    return replace(cfg, hypervisor=replace(cfg.hypervisor, **changes))  # type: ignore[arg-type]


def test_agent_answers_health_and_guest_details_from_the_guest_kernel(
        sandboxes: Callable[..., Sandbox], runtime_config: RuntimeConfig) -> None:
    sb = sandboxes()
    times = sb.start()
    assert sb.agent is not None and sb.agent.check(timeout_s=5)
    details = sb.agent.guest_details()
    image = load_image(Path(runtime_config.hypervisor.image_dir))
    assert details.kernel_release == image.kernel_release
    assert details.kernel_release != os.uname().release
    assert details.online_cpus == runtime_config.hypervisor.vcpus
    assert 256 << 20 < details.mem_total_bytes <= runtime_config.hypervisor.memory_mib << 20
    assert details.shared_dir_mounted
    assert sb.agent.version()["grpc"] == __import__("grpc").__version__
    assert times.accelerator in ("kvm", "tcg")


def test_file_written_on_the_host_is_read_back_through_the_agent(
        sandboxes: Callable[..., Sandbox]) -> None:
    sb = sandboxes()
    sb.start()
    payload = os.urandom(3000) + b"kata-py shared file\n"
    (sb.shared_dir / "dir").mkdir()
    (sb.shared_dir / "dir" / "data.bin").write_bytes(payload)
    assert sb.agent is not None
    assert sb.agent.read_shared_file("dir/data.bin") == payload


def test_five_sandboxes_in_sequence_leave_nothing_behind(
        sandboxes: Callable[..., Sandbox], runtime_config: RuntimeConfig) -> None:
    for _ in range(5):
        sb = sandboxes()
        sb.start()
        assert sb.agent is not None and sb.agent.check(timeout_s=5)
        sb.stop()
        assert not sb.dir.exists()
        assert leftovers(str(sb.dir)) == []
    assert list((Path(runtime_config.state_dir) / "vm").iterdir()) == []


def test_three_sandboxes_in_parallel_leave_nothing_behind(
        sandboxes: Callable[..., Sandbox], runtime_config: RuntimeConfig) -> None:
    boxes = [sandboxes() for _ in range(3)]
    # One pool throughout: a sandbox's VM dies with the thread that started it.
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda sb: sb.start(), boxes))
        for sb in boxes:
            assert sb.agent is not None
            (sb.shared_dir / "id").write_text(sb.id)
        assert [sb.agent.read_shared_file("id").decode() for sb in boxes if sb.agent] == \
            [sb.id for sb in boxes]
        list(pool.map(lambda sb: sb.stop(), boxes))
    assert list((Path(runtime_config.state_dir) / "vm").iterdir()) == []
    for sb in boxes:
        assert leftovers(str(sb.dir)) == []


def _image_copy(tmp_path: Path, cfg: RuntimeConfig) -> Path:
    src = Path(cfg.hypervisor.image_dir)
    dst = tmp_path / "image"
    dst.mkdir()
    for item in src.iterdir():
        if item.is_file():
            (dst / item.name).symlink_to(item)
    return dst


def _assert_nothing_left(sb: Sandbox) -> None:
    assert not sb.dir.exists()
    assert leftovers(str(sb.dir)) == []
    # nor of a VM template that failed to build: no QEMU, no half-built files
    templates = Path(sb.cfg.factory.template_dir)
    assert leftovers(f"{templates}/.build-") == []
    assert not list(templates.glob(".build-*"))


def test_missing_guest_image_fails_before_creating_anything(
        sandboxes: Callable[..., Sandbox], runtime_config: RuntimeConfig,
        tmp_path: Path) -> None:
    sb = sandboxes(_with_hypervisor(runtime_config, image_dir=str(tmp_path / "nowhere")))
    with pytest.raises(ImageError, match="no guest image in .*build it with"):
        sb.start()
    _assert_nothing_left(sb)


def test_bad_kernel_fails_with_qemus_reason_and_leaves_nothing(
        sandboxes: Callable[..., Sandbox], runtime_config: RuntimeConfig,
        tmp_path: Path) -> None:
    image_dir = _image_copy(tmp_path, runtime_config)
    manifest = json.loads((image_dir / "manifest.json").read_text())
    (image_dir / manifest["kernel"]).unlink()
    (image_dir / manifest["kernel"]).write_bytes(b"this is not a kernel\n" * 100)
    cfg = _with_hypervisor(runtime_config, image_dir=str(image_dir), accelerator="tcg")
    sb = sandboxes(cfg)
    with pytest.raises(HypervisorError, match="QEMU for kata-py-.* failed to start: .*kernel"):
        sb.start()
    _assert_nothing_left(sb)


@pytest.mark.parametrize("template", [False, True])
def test_qemu_that_dies_during_boot_is_reported_with_the_console_reason(
        sandboxes: Callable[..., Sandbox], runtime_config: RuntimeConfig, template: bool
        ) -> None:
    # No init to run: the guest kernel panics, panic=-1 reboots, QEMU exits
    # (the sandbox's VM, or its template's while that is built).
    cfg = _with_hypervisor(runtime_config, kernel_params="rdinit=/nonexistent init=/nonexistent")
    cfg = replace(cfg, factory=replace(cfg.factory, template=template))
    sb = sandboxes(cfg)
    with pytest.raises((AgentError, HypervisorError),
                       match="VM stopped before the agent answered.*console: .*"):
        sb.start()
    _assert_nothing_left(sb)


@pytest.mark.parametrize("template", [False, True])
def test_agent_that_never_answers_times_out_and_leaves_nothing(
        sandboxes: Callable[..., Sandbox], runtime_config: RuntimeConfig, template: bool
        ) -> None:
    # The guest boots, but its init just sleeps: nobody listens on port 1024
    # (and a template VM never says it is ready).
    cfg = _with_hypervisor(runtime_config, kernel_params="rdinit=/bin/busybox -- sleep 600")
    cfg = replace(cfg, agent=replace(cfg.agent, boot_timeout_s=8.0),
                  factory=replace(cfg.factory, template=template))
    sb = sandboxes(cfg)
    with pytest.raises((AgentError, HypervisorError), match="did not answer within 8s"):
        sb.start()
    _assert_nothing_left(sb)


def test_check_boot_prints_boot_time_and_guest_kernel(runtime_config: RuntimeConfig) -> None:
    env = dict(os.environ)
    out = subprocess.run(
        [sys.executable, "-m", "kata_py.cli", "--root", runtime_config.state_dir,
         "check", "--boot"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    image = load_image(Path(runtime_config.hypervisor.image_dir))
    assert "agent ready" in out.stdout
    assert f"kernel {image.kernel_release}" in out.stdout
    assert leftovers(runtime_config.state_dir + "/vm") == []


def test_cli_error_is_one_line_naming_the_fix(tmp_path: Path,
                                              runtime_config: RuntimeConfig) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(f'[hypervisor]\nimage_dir = "{tmp_path}/none"\n')
    out = subprocess.run(
        [sys.executable, "-m", "kata_py.cli", "--root", runtime_config.state_dir,
         "--config", str(conf), "check", "--boot"], capture_output=True, text=True,
        timeout=120)
    assert out.returncode != 0
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("kata-py: guest image: ")
    assert "guest-image/build.py" in out.stderr


def test_qmp_pauses_and_resumes_the_vm(sandboxes: Callable[..., Sandbox]) -> None:
    sb = sandboxes()
    sb.start()
    qmp = Qmp(sb.qmp_socket)
    assert qmp.status() == "running"
    qmp.stop()
    assert qmp.status() == "paused"
    assert sb.agent is not None and sb.agent.check(timeout_s=1.0) is False
    qmp.cont()
    assert qmp.status() == "running"
    assert sb.agent.check(timeout_s=10)


def test_q35_machine_boots_the_same_image(sandboxes: Callable[..., Sandbox],
                                          runtime_config: RuntimeConfig) -> None:
    sb = sandboxes(_with_hypervisor(runtime_config, machine="q35"))
    sb.start()
    assert sb.agent is not None
    assert sb.agent.guest_details().shared_dir_mounted
