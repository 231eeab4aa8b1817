"""VM templates without a VM: the template's shape and key, the clone's argv,
the QMP hot-plug sequence, the sparse RAM copy, pruning, and the agent's
RestoreSandbox checks. tests/integration/test_template.py boots real ones."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from kata_py import factory
from kata_py.agent import restore
from kata_py.agent.errors import DeadlineExceeded, InvalidArgument
from kata_py.hypervisor import qemu


def _vm(tmp_path: Path, **over: object) -> qemu.VmConfig:
    binary = tmp_path / "qemu-system-x86_64"
    if not binary.exists():
        binary.write_text("not really qemu")
    base: dict[str, object] = dict(
        name="kata-py-sb1", binary=str(binary), machine="microvm", accelerator="tcg",
        vcpus=2, memory_mib=512, kernel=Path("/img/vmlinux"), initrd=Path("/img/initrd"),
        rootfs=Path("/img/rootfs.ext4"), kernel_params="console=ttyS0 quiet",
        console_log=tmp_path / "console.log", qmp_socket=tmp_path / "qmp.sock",
        pidfile=tmp_path / "qemu.pid",
        vsock=qemu.VsockDevice("vhost-user", socket=tmp_path / "vhost-vsock.sock"),
        virtiofs_socket=tmp_path / "virtiofs.sock",
        nics=(qemu.NetDevice("net0", 7, "02:00:00:00:00:01"),))
    base.update(over)
    return qemu.VmConfig(**base)  # type: ignore[arg-type]


def test_the_template_vm_is_a_q35_with_empty_ports_and_nothing_to_plug(tmp_path: Path) -> None:
    argv = qemu.build_argv(factory.template_vm(_vm(tmp_path)))
    assert argv[argv.index("-machine") + 1] == "q35,memory-backend=mem"
    assert argv[argv.index("-append") + 1] == "kata_py.template=1 console=ttyS0 quiet"
    ports = [a for a in argv if a.startswith("pcie-root-port,")]
    assert ports == [f"pcie-root-port,id=hp{i},chassis={i + 1}"
                     for i in range(factory.HOTPLUG_PORTS)]
    joined = " ".join(argv)
    for absent in ("vhost-user", "virtio-net", "netdev", "-incoming"):
        assert absent not in joined


def test_a_clone_keeps_its_own_files_loads_the_state_paused_and_maps_the_memfd(
        tmp_path: Path) -> None:
    vm = _vm(tmp_path)
    tpl = factory.Template(tmp_path / "tpl", "k")
    clone = factory.restore_config(vm, tpl, memory_fd=11, state_fd=12)
    argv = qemu.build_argv(clone)
    assert argv[argv.index("-name") + 1] == "kata-py-sb1,debug-threads=on"
    assert f"path={vm.console_log}" in " ".join(argv)
    assert "memory-backend-file,id=mem,size=512M,mem-path=/proc/self/fd/11,share=on" in argv
    assert argv[argv.index("-incoming") - 1:argv.index("-incoming") + 2] == [
        "-S", "-incoming", "defer"]
    assert clone.pass_fds() == [11, 12]          # no tap: NICs are plugged over QMP
    # The clone's machine and ports are the template's, whatever the config says.
    assert argv[argv.index("-machine") + 1] == "q35,memory-backend=mem"
    assert [a for a in argv if "pcie-root-port" in a] == [
        a for a in qemu.build_argv(factory.template_vm(vm)) if "pcie-root-port" in a]


def test_the_key_follows_every_input_of_the_saved_vm(tmp_path: Path) -> None:
    vm = _vm(tmp_path)
    key = factory.template_key(vm)
    assert key == factory.template_key(vm)
    # Per-sandbox things do not change the template.
    assert key == factory.template_key(_vm(tmp_path, name="other", nics=(),
                                           console_log=tmp_path / "x"))
    for change in (dict(memory_mib=1024), dict(vcpus=1), dict(kernel_params="quiet"),
                   dict(rootfs=Path("/img/rootfs-2.ext4")), dict(accelerator="kvm"),
                   dict(tcg_tb_size_mib=64)):
        assert factory.template_key(_vm(tmp_path, **change)) != key, change
    time.sleep(0.01)
    Path(vm.binary).write_text("a new qemu")       # an upgraded QEMU: a new template
    assert factory.template_key(vm) != key


def test_plug_commands_add_vsock_share_and_nics_to_their_ports(tmp_path: Path) -> None:
    devices = factory.Plug(qemu.VsockDevice("vhost-user", socket=tmp_path / "v.sock"),
                           tmp_path / "fs.sock",
                           (qemu.NetDevice("net0", 7, "02:00:00:00:00:01"),
                            qemu.NetDevice("net1", 8, "02:00:00:00:00:02")))
    cmds = factory._plug_commands(devices)
    assert [c for c, _ in cmds] == ["chardev-add", "device_add", "chardev-add", "device_add",
                                    "getfd", "netdev_add", "device_add",
                                    "getfd", "netdev_add", "device_add"]
    assert cmds[0][1]["backend"]["data"]["addr"]["data"]["path"] == str(tmp_path / "v.sock")
    assert cmds[1][1] == {"driver": "vhost-user-vsock-pci", "id": "vsock",
                          "chardev": "vsock0", "bus": "hp0"}
    assert cmds[3][1] == {"driver": "vhost-user-fs-pci", "id": "fs", "chardev": "fs0",
                          "tag": "kataShared", "bus": "hp1"}
    assert cmds[4][1] == {"fdname": "net0fd", "fd": 7}
    assert cmds[5][1] == {"type": "tap", "id": "net0", "fd": "net0fd"}
    assert cmds[6][1]["mac"] == "02:00:00:00:00:01" and cmds[6][1]["bus"] == "hp2"
    assert cmds[9][1]["bus"] == "hp3"
    kernel = factory._plug_commands(factory.Plug(qemu.VsockDevice("vhost", guest_cid=9),
                                                 tmp_path / "fs.sock"))
    assert kernel[0] == ("device_add", {"driver": "vhost-vsock-pci", "id": "vsock",
                                        "guest-cid": 9, "bus": "hp0"})


def test_copy_memory_copies_the_data_and_leaves_the_holes(tmp_path: Path) -> None:
    tpl = factory.Template(tmp_path, "k")
    mib = 1 << 20
    with open(tpl.memory, "wb") as f:
        f.truncate(64 * mib)
        f.seek(3 * mib)
        f.write(b"a" * mib)
        f.seek(40 * mib)
        f.write(b"template end")
    fd = factory.copy_memory(tpl)
    try:
        st = os.fstat(fd)
        assert st.st_size == 64 * mib
        assert st.st_blocks * 512 < 4 * mib          # sparse: ~1 MiB allocated, not 64
        assert os.pread(fd, mib, 3 * mib) == b"a" * mib
        assert os.pread(fd, 12, 40 * mib) == b"template end"
        assert os.pread(fd, 16, 10 * mib) == bytes(16)
        assert os.get_inheritable(fd)                 # QEMU gets it through pass_fds
    finally:
        os.close(fd)


def test_prune_keeps_the_most_recently_used_templates(tmp_path: Path) -> None:
    dirs = []
    for i in range(factory.MAX_TEMPLATES + 2):
        d = tmp_path / f"t{i}"
        d.mkdir()
        (d / factory.META).write_text(json.dumps({"key": d.name}))
        os.utime(d / factory.META, (1000 + i, 1000 + i))
        dirs.append(d)
    (tmp_path / ".build-x-1").mkdir()
    factory._prune(tmp_path, keep=dirs[0])          # the one just used stays
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["t0"] + [f"t{i}" for i in range(3, factory.MAX_TEMPLATES + 2)]


def test_ensure_reuses_a_complete_template_without_booting(tmp_path: Path) -> None:
    vm = _vm(tmp_path)
    key = factory.template_key(vm)
    d = tmp_path / "templates" / key
    d.mkdir(parents=True)
    for name in ("memory", "state", factory.META):
        (d / name).write_text("x")
    os.utime(d / factory.META, (1000, 1000))
    tpl = factory.ensure(tmp_path / "templates", vm, boot_timeout_s=1)
    assert tpl.dir == d and (d / factory.META).stat().st_mtime > 1000


def test_restore_refuses_too_little_entropy() -> None:
    with pytest.raises(InvalidArgument, match="at least 32 bytes"):
        restore.reseed(b"short")


def test_mount_share_waits_for_the_device_and_gives_up(tmp_path: Path) -> None:
    driver = tmp_path / "virtiofs"
    driver.mkdir()
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="no virtio-fs device appeared"):
        restore.mount_share(tmp_path / "shared", driver=driver, wait_s=0.2)
    assert 0.2 <= time.monotonic() - start < 2


def test_a_template_dir_that_cannot_be_made_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(factory.HypervisorError, match="cannot keep VM templates in .*file/t"):
        factory.ensure(tmp_path / "file" / "t", _vm(tmp_path), boot_timeout_s=1)


def test_a_template_vm_that_never_answers_makes_the_sandbox_boot_instead() -> None:
    from kata_py.config import RuntimeConfig
    from kata_py.errors import HypervisorError
    from kata_py.sandbox import Sandbox, _Opening

    def stalled(vm_cfg: object) -> tuple[factory.Template, int, int]:
        raise factory.TemplateTimeout("the template VM's agent did not answer within 60s")

    def refused(vm_cfg: object) -> tuple[factory.Template, int, int]:
        raise HypervisorError("building the VM template failed: QEMU for kata-py-template-x")

    sb = Sandbox("t", RuntimeConfig())
    assert sb._template_result(_Opening(stalled, None)) is None      # type: ignore[arg-type]
    with pytest.raises(HypervisorError, match="QEMU for kata-py-template-x"):
        sb._template_result(_Opening(refused, None))                  # type: ignore[arg-type]
