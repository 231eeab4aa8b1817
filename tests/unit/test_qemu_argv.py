"""QEMU command lines built from typed VM configs, against golden argv."""

from __future__ import annotations

from pathlib import Path

from kata_py.hypervisor import qemu


def _cfg(**over: object) -> qemu.VmConfig:
    base: dict[str, object] = dict(
        name="kata-py-sb1", binary="/usr/bin/qemu-system-x86_64", machine="microvm",
        accelerator="tcg", vcpus=2, memory_mib=512, kernel=Path("/img/vmlinux"),
        initrd=Path("/img/initrd.img"), kernel_params="console=ttyS0 quiet",
        console_log=Path("/s/console.log"), qmp_socket=Path("/s/qmp.sock"),
        pidfile=Path("/s/qemu.pid"),
        vsock=qemu.VsockDevice("vhost-user", socket=Path("/s/vhost-vsock.sock")),
        virtiofs_socket=Path("/s/virtiofs.sock"))
    base.update(over)
    return qemu.VmConfig(**base)  # type: ignore[arg-type]


def test_microvm_tcg_sandbox_argv_matches_golden() -> None:
    assert qemu.build_argv(_cfg()) == [
        "/usr/bin/qemu-system-x86_64", "-name", "kata-py-sb1,debug-threads=on",
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-machine", "microvm,memory-backend=mem,acpi=on,x-option-roms=off",
        "-global", "virtio-mmio.force-legacy=false",
        "-accel", "tcg,tb-size=32", "-cpu", "max",
        "-smp", "2", "-m", "512M",
        "-object", "memory-backend-memfd,id=mem,size=512M,share=on",
        "-kernel", "/img/vmlinux", "-initrd", "/img/initrd.img",
        "-append", "console=ttyS0 quiet",
        "-chardev", "file,id=console,path=/s/console.log", "-serial", "chardev:console",
        "-chardev", "socket,id=qmp,path=/s/qmp.sock,server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        "-chardev", "socket,id=fs0,path=/s/virtiofs.sock",
        "-device", "vhost-user-fs-device,chardev=fs0,tag=kataShared",
        "-chardev", "socket,id=vsock0,path=/s/vhost-vsock.sock",
        "-device", "vhost-user-vsock-device,chardev=vsock0",
        "-pidfile", "/s/qemu.pid",
    ]


def test_q35_uses_pci_devices_and_numa_free_memory_backend() -> None:
    argv = qemu.build_argv(_cfg(machine="q35"))
    assert "q35,memory-backend=mem" in argv
    assert "vhost-user-fs-pci,chardev=fs0,tag=kataShared" in argv
    assert "vhost-user-vsock-pci,chardev=vsock0" in argv
    assert "virtio-mmio.force-legacy=false" not in argv


def test_kvm_uses_host_cpu() -> None:
    assert qemu.accel_args(_cfg(accelerator="kvm")) == ["-accel", "kvm", "-cpu", "host"]


def test_kernel_vhost_vsock_passes_guest_cid() -> None:
    cfg = _cfg(vsock=qemu.VsockDevice("vhost", guest_cid=42))
    assert qemu.vsock_args(cfg) == ["-device", "vhost-vsock-device,guest-cid=42"]


def test_block_rootfs_is_attached_read_only() -> None:
    cfg = _cfg(rootfs=Path("/img/rootfs.img"))
    assert qemu.rootfs_args(cfg) == [
        "-drive", "file=/img/rootfs.img,if=none,id=rootfs,format=raw,readonly=on",
        "-device", "virtio-blk-device,drive=rootfs"]


def test_no_initrd_and_no_share_leave_their_options_out() -> None:
    argv = qemu.build_argv(_cfg(initrd=None, virtiofs_socket=None))
    assert "-initrd" not in argv
    assert not any("vhost-user-fs" in a for a in argv)


NICS = (qemu.NetDevice("net0", 7, "aa:bb:cc:00:00:02"),
        qemu.NetDevice("net1", 9, "aa:bb:cc:00:00:03"))


def test_nics_are_taps_by_inherited_fd_on_virtio_mmio() -> None:
    assert qemu.net_args(_cfg(nics=NICS)) == [
        "-netdev", "tap,id=net0,fd=7",
        "-device", "virtio-net-device,netdev=net0,mac=aa:bb:cc:00:00:02",
        "-netdev", "tap,id=net1,fd=9",
        "-device", "virtio-net-device,netdev=net1,mac=aa:bb:cc:00:00:03"]


def test_nics_on_q35_are_pci_without_an_option_rom() -> None:
    assert qemu.net_args(_cfg(machine="q35", nics=NICS[:1])) == [
        "-netdev", "tap,id=net0,fd=7",
        "-device", "virtio-net-pci,netdev=net0,mac=aa:bb:cc:00:00:02,romfile="]


def test_nics_come_after_vsock_and_before_daemonizing() -> None:
    argv = qemu.build_argv(_cfg(nics=NICS[:1]))
    assert argv.index("tap,id=net0,fd=7") > argv.index("vhost-user-vsock-device,chardev=vsock0")
    assert argv.index("tap,id=net0,fd=7") < argv.index("-pidfile")
    assert "-netdev" not in qemu.build_argv(_cfg())
