"""Pure parts of guest-image/: module load order, inputs digest, manifest, lock, cpio.

No downloads, no QEMU: everything runs on in-memory samples and tmp_path.
"""

from __future__ import annotations

import copy
import importlib.util
import struct
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

GUEST_IMAGE = Path(__file__).resolve().parents[2] / "guest-image"
sys.path.insert(0, str(GUEST_IMAGE))

from guestimage import BuildError, debs, elf, kmod, manifest, pack  # noqa: E402

# A modules.dep in depmod's format: full dependency lists, load-last first.
SAMPLE_MODULES_DEP = """\
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/vmw_vsock/vsock.ko:
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/net/vmw_vsock/vsock.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/fs/fuse/fuse.ko:
kernel/fs/fuse/virtiofs.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko kernel/fs/fuse/fuse.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
"""  # noqa: E501


def names(paths: list[str]) -> list[str]:
    return [kmod.module_name(p) for p in paths]


def test_load_order_loads_dependencies_first_in_the_order_asked() -> None:
    order = kmod.load_order(
        SAMPLE_MODULES_DEP, ["virtio_mmio", "vmw_vsock_virtio_transport", "virtiofs"]
    )
    assert names(order) == [
        "virtio_ring",
        "virtio",
        "virtio_mmio",
        "vsock",
        "vmw_vsock_virtio_transport_common",
        "vmw_vsock_virtio_transport",
        "fuse",
        "virtiofs",
    ]
    assert order[0] == "kernel/drivers/virtio/virtio_ring.ko"


def test_load_order_lists_each_module_once() -> None:
    order = kmod.load_order(SAMPLE_MODULES_DEP, ["virtiofs", "virtio_blk", "virtio", "virtiofs"])
    assert names(order) == ["fuse", "virtio_ring", "virtio", "virtiofs", "virtio_blk"]


def test_load_order_skips_builtin_modules() -> None:
    order = kmod.load_order(SAMPLE_MODULES_DEP, ["ext4", "virtio_blk"], builtin=["ext4"])
    assert names(order) == ["virtio_ring", "virtio", "virtio_blk"]


def test_load_order_of_a_module_missing_from_modules_dep_fails() -> None:
    with pytest.raises(BuildError, match="'erofs' is not in modules.dep"):
        kmod.load_order(SAMPLE_MODULES_DEP, ["erofs"])


def test_module_names_use_underscores_like_the_kernel() -> None:
    assert kmod.module_name("kernel/drivers/char/hw_random/virtio-rng.ko") == "virtio_rng"
    assert kmod.module_name("kernel/fs/erofs/erofs.ko.xz") == "erofs"
    assert names(kmod.load_order(SAMPLE_MODULES_DEP, ["virtio_rng"]))[-1] == "virtio_rng"


def test_written_modules_dep_reads_back_to_the_same_load_order() -> None:
    modules = {
        "virtio_ring": ("kernel/virtio_ring.ko", []),
        "virtio": ("kernel/virtio.ko", ["virtio_ring"]),
        "fuse": ("kernel/fuse.ko", []),
        "virtiofs": ("kernel/virtiofs.ko", ["fuse", "virtio"]),
    }
    text = kmod.format_modules_dep(modules)
    assert "kernel/virtiofs.ko: kernel/virtio.ko kernel/virtio_ring.ko kernel/fuse.ko\n" in text
    assert names(kmod.load_order(text, ["virtiofs"])) == [
        "fuse",
        "virtio_ring",
        "virtio",
        "virtiofs",
    ]


def test_module_dependency_cycle_is_reported() -> None:
    with pytest.raises(BuildError, match="cycle: a -> b -> a"):
        kmod.closure({"a": ["b"], "b": ["a"]}, ["a"])


def build_module_elf(modinfo: bytes) -> bytes:
    """A minimal ELF64 with a .modinfo and a .shstrtab section."""
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    body_off = 64
    modinfo_off, shstr_off = body_off, body_off + len(modinfo)
    shoff = shstr_off + len(shstrtab)
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x28, shoff)
    struct.pack_into("<HHH", header, 0x3A, 64, 3, 2)
    null = bytes(64)
    sec_modinfo = struct.pack("<IIQQQQIIQQ", 1, 1, 0, 0, modinfo_off, len(modinfo), 0, 0, 1, 0)
    sec_shstr = struct.pack("<IIQQQQIIQQ", 10, 3, 0, 0, shstr_off, len(shstrtab), 0, 0, 1, 0)
    return bytes(header) + modinfo + shstrtab + null + sec_modinfo + sec_shstr


def test_modinfo_reads_depends_and_name_from_the_elf_section() -> None:
    ko = build_module_elf(b"license=GPL\0depends=virtio,virtio_ring\0name=virtio_blk\0")
    assert elf.modinfo(ko) == {
        "license": "GPL",
        "depends": "virtio,virtio_ring",
        "name": "virtio_blk",
    }
    assert elf.modinfo(b"not an elf") == {}


# --- inputs digest and manifest ---------------------------------------------------


def test_inputs_digest_changes_when_any_input_changes() -> None:
    inputs = {"init": b"#!/bin/sh\n", "packages.lock": b"kernel k 1\n", "agent/x.py": b"x = 1\n"}
    base = manifest.inputs_digest(inputs)
    for name in inputs:
        changed = dict(inputs, **{name: inputs[name] + b"#"})
        assert manifest.inputs_digest(changed) != base, name
    assert manifest.inputs_digest({**inputs, "agent/new.py": b""}) != base
    assert manifest.inputs_digest(dict(reversed(inputs.items()))) == base


def test_inputs_digest_tells_a_renamed_file_from_the_original() -> None:
    assert manifest.inputs_digest({"a": b"1"}) != manifest.inputs_digest({"b": b"1"})


def load_build_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("guest_image_build", GUEST_IMAGE / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_build_inputs_cover_the_agent_sources(tmp_path: Path) -> None:
    build = load_build_module()
    agent = tmp_path / "agent"
    agent.mkdir()
    (agent / "__main__.py").write_text("print('agent')\n")
    opts = build.parse_args(["--cache-dir", str(tmp_path / "cache"), "--agent-dir", str(agent)])
    pins = {"grpcio": "1.85.1", "protobuf": "7.36.2"}
    inputs = build.collect_inputs(opts, pins)
    assert {"init", "packages.lock", "build/build.py", "agent/__main__.py"} <= set(inputs)
    before = manifest.inputs_digest(inputs)
    (agent / "__main__.py").write_text("print('agent v2')\n")
    assert manifest.inputs_digest(build.collect_inputs(opts, pins)) != before
    assert manifest.inputs_digest(build.collect_inputs(opts, {**pins, "grpcio": "9"})) != before


def good_manifest() -> dict[str, Any]:
    return {
        "format": "image",
        "kernel": "vmlinux-6.1.0-56-cloud-amd64-abc",
        "initrd": "initrd-abc.cpio",
        "rootfs": "rootfs-abc.ext4",
        "kernel_release": "6.1.0-56-cloud-amd64",
        "kernel_package": "linux-image-6.1.0-56-cloud-amd64",
        "kernel_version": "6.1.192-2",
        "kernel_params": "root=/dev/vda rootfstype=ext4",
        "python_version": "3.11.2",
        "grpcio": "1.85.1",
        "protobuf": "7.36.2",
        "files": {
            "vmlinux-6.1.0-56-cloud-amd64-abc": "0" * 64,
            "initrd-abc.cpio": "1" * 64,
            "rootfs-abc.ext4": "2" * 64,
        },
        "inputs_sha256": "f" * 64,
        "build_seconds": 12.5,
        "built_at": "2026-01-01T00:00:00+00:00",
    }


def test_manifest_with_every_contract_key_is_valid() -> None:
    assert manifest.validate(good_manifest())["format"] == "image"
    initrd_only = dict(good_manifest(), format="initrd", rootfs=None)
    assert manifest.validate(initrd_only)["rootfs"] is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kernel_params": None}, "'kernel_params' has the wrong type"),
        ({"format": "squashfs"}, "format 'squashfs' is not one of"),
        ({"rootfs": None}, "rootfs must be set exactly when format is 'image'"),
        ({"kernel": "../vmlinux"}, "not a plain file name"),
        ({"initrd": "other.cpio"}, "files has no sha256 for 'other.cpio'"),
        ({"build_seconds": True}, "'build_seconds' has the wrong type"),
    ],
)
def test_manifest_that_breaks_the_contract_is_rejected(
    change: dict[str, Any], message: str
) -> None:
    with pytest.raises(manifest.ManifestError, match=message):
        manifest.validate({**good_manifest(), **change})


def test_manifest_missing_a_key_is_rejected() -> None:
    data = good_manifest()
    del data["inputs_sha256"]
    with pytest.raises(manifest.ManifestError, match="lacks 'inputs_sha256'"):
        manifest.validate(data)


def test_up_to_date_needs_the_same_digest_and_intact_files(tmp_path: Path) -> None:
    data = copy.deepcopy(good_manifest())
    for name in data["files"]:
        (tmp_path / name).write_bytes(name.encode())
        data["files"][name] = manifest.sha256_file(tmp_path / name)
    manifest.write(tmp_path, data)
    assert manifest.up_to_date(tmp_path, "f" * 64)
    assert not manifest.up_to_date(tmp_path, "e" * 64)
    (tmp_path / "initrd-abc.cpio").write_bytes(b"half written")
    assert not manifest.up_to_date(tmp_path, "f" * 64)
    assert not manifest.up_to_date(tmp_path / "missing", "f" * 64)


# --- packages.lock and apt output ---------------------------------------------------

APT_DEPENDS = """\
libpython3.11-stdlib
  Depends: libpython3.11-minimal
 |Depends: media-types
  Depends: mime-support
  Depends: <libc-dev>
    libc6-dev
python3.11-minimal
  PreDepends: libc6
  Depends: zlib1g
"""


def test_apt_depends_output_parses_into_alternative_groups() -> None:
    parsed = debs.parse_depends(APT_DEPENDS)
    assert parsed["libpython3.11-stdlib"] == [
        ["libpython3.11-minimal"],
        ["media-types", "mime-support"],
        ["<libc-dev>", "libc6-dev"],
    ]
    assert parsed["python3.11-minimal"] == [["libc6"], ["zlib1g"]]
    assert debs.choose(["media-types", "mime-support"]) is None  # both excluded
    assert debs.choose(["<libc-dev>", "libc6-dev"]) == "libc6-dev"


def test_lock_file_round_trips_and_rejects_bad_lines(tmp_path: Path) -> None:
    lock = tmp_path / "packages.lock"
    pins = [
        debs.Pin("kernel", "linux-image-6.1.0-56-cloud-amd64", "6.1.192-2"),
        debs.Pin("deb", "busybox-static", "1:1.35.0-4+deb12u1+b1"),
    ]
    debs.write_lock(lock, pins)
    assert debs.read_lock(lock) == pins
    lock.write_text("deb busybox-static\n")
    with pytest.raises(BuildError, match="expected 'kernel|deb NAME VERSION'"):
        debs.read_lock(lock)
    lock.write_text("deb busybox-static 1\n")
    with pytest.raises(BuildError, match="exactly one 'kernel' line"):
        debs.read_lock(lock)


def test_cached_deb_matches_apt_file_names_with_epochs(tmp_path: Path) -> None:
    deb = tmp_path / "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb"
    deb.touch()
    assert (
        debs.cached_deb(tmp_path, debs.Pin("deb", "busybox-static", "1:1.35.0-4+deb12u1+b1")) == deb
    )
    assert debs.cached_deb(tmp_path, debs.Pin("deb", "busybox-static", "1:1.36")) is None


# --- cpio ---------------------------------------------------------------------------


def read_cpio(data: bytes) -> dict[str, tuple[int, bytes]]:
    entries: dict[str, tuple[int, bytes]] = {}
    pos = 0
    while True:
        assert data[pos : pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos : pos + size]
        pos += size + (-size % 4)
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, body)


def test_cpio_holds_the_tree_parents_first_and_a_console_node(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin/busybox").write_bytes(b"\x7fELF...")
    (root / "bin/sh").symlink_to("busybox")
    (root / "init").write_text("#!/bin/sh\n")
    pack.write_cpio(root, tmp_path / "i.cpio", 1_700_000_000)
    entries = read_cpio((tmp_path / "i.cpio").read_bytes())
    assert list(entries) == ["bin", "bin/busybox", "bin/sh", "init", "dev/console"]
    assert entries["bin/sh"][1] == b"busybox"
    assert entries["init"][1] == b"#!/bin/sh\n"
    assert entries["dev/console"][0] == 0o020600
