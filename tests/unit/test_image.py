"""Loading the guest image manifest: clear errors for missing or bad images."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from kata_py.errors import ImageError
from kata_py.image import load_image


def _image(tmp_path: Path, **over: object) -> Path:
    (tmp_path / "vmlinux").write_bytes(b"kernel")
    (tmp_path / "initrd.img").write_bytes(b"initrd")
    manifest = {"format": "initrd", "kernel": "vmlinux", "initrd": "initrd.img",
                "rootfs": None, "kernel_release": "6.1.0-test", "kernel_params": "x=1",
                "files": {n: hashlib.sha256((tmp_path / n).read_bytes()).hexdigest()
                          for n in ("vmlinux", "initrd.img")}}
    manifest.update(over)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def test_a_built_image_loads_and_verifies(tmp_path: Path) -> None:
    image = load_image(_image(tmp_path))
    assert image.kernel == tmp_path / "vmlinux" and image.rootfs is None
    assert image.kernel_release == "6.1.0-test"
    image.verify()


def test_missing_image_says_how_to_build_it(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no guest image in .*build it with"):
        load_image(tmp_path / "none")


def test_missing_kernel_file_is_named(tmp_path: Path) -> None:
    _image(tmp_path)
    (tmp_path / "vmlinux").unlink()
    with pytest.raises(ImageError, match="guest image kernel .*vmlinux is missing"):
        load_image(tmp_path)


def test_a_modified_file_fails_verification(tmp_path: Path) -> None:
    image = load_image(_image(tmp_path))
    (tmp_path / "initrd.img").write_bytes(b"tampered")
    with pytest.raises(ImageError, match="does not match its manifest"):
        image.verify()


def test_corrupt_manifest_is_reported(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(ImageError, match="unreadable"):
        load_image(tmp_path)
