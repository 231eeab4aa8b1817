"""manifest.json — the contract between the image build and the host runtime.

The host reads it to find the kernel, initrd and (format "image") the rootfs
image, and appends ``kernel_params`` to the guest command line. The build
writes it last (temp file + rename) so a manifest only ever describes files
that are complete; its ``inputs_sha256`` decides whether a rebuild is needed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from guestimage import BuildError

MANIFEST = "manifest.json"
FORMATS = ("initrd", "image")
REQUIRED_KEYS: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "kernel": str,
    "initrd": str,
    "rootfs": (str, type(None)),
    "kernel_release": str,
    "kernel_package": str,
    "kernel_version": str,
    "kernel_params": str,
    "python_version": str,
    "grpcio": str,
    "protobuf": str,
    "files": dict,
    "inputs_sha256": str,
    "build_seconds": (int, float),
    "built_at": str,
}


class ManifestError(BuildError):
    """manifest.json is missing, unreadable or does not match the contract."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def inputs_digest(inputs: Mapping[str, bytes]) -> str:
    """One digest over named inputs: names and contents both count, order does not."""
    outer = hashlib.sha256()
    for name in sorted(inputs):
        outer.update(f"{name}\0{hashlib.sha256(inputs[name]).hexdigest()}\n".encode())
    return outer.hexdigest()


def validate(data: Any) -> dict[str, Any]:
    """Check ``data`` against the contract; return it, or raise ManifestError."""
    if not isinstance(data, dict):
        raise ManifestError("manifest is not a JSON object")
    for key, kind in REQUIRED_KEYS.items():
        if key not in data:
            raise ManifestError(f"manifest lacks {key!r}")
        if not isinstance(data[key], kind) or isinstance(data[key], bool):
            raise ManifestError(f"manifest {key!r} has the wrong type: {data[key]!r}")
    if data["format"] not in FORMATS:
        raise ManifestError(f"manifest format {data['format']!r} is not one of {FORMATS}")
    if (data["rootfs"] is None) != (data["format"] == "initrd"):
        raise ManifestError("manifest rootfs must be set exactly when format is 'image'")
    named = [data["kernel"], data["initrd"], *([data["rootfs"]] if data["rootfs"] else [])]
    for name in named:
        if "/" in name or name in ("", ".", ".."):
            raise ManifestError(f"manifest file name {name!r} is not a plain file name")
        if name not in data["files"]:
            raise ManifestError(f"manifest files has no sha256 for {name!r}")
    return data


def load(cache_dir: Path) -> dict[str, Any]:
    path = cache_dir / MANIFEST
    try:
        return validate(json.loads(path.read_text()))
    except FileNotFoundError as exc:
        raise ManifestError(f"no {path}", "run guest-image/build.py") from exc
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not JSON: {exc}", "rebuild with --force") from exc


def up_to_date(cache_dir: Path, digest: str) -> bool:
    """True when the manifest was built from ``digest`` and every file still matches."""
    try:
        data = load(cache_dir)
    except ManifestError:
        return False
    if data["inputs_sha256"] != digest:
        return False
    for name, expected in data["files"].items():
        path = cache_dir / name
        if not path.is_file() or sha256_file(path) != expected:
            return False
    return True


def write(cache_dir: Path, data: dict[str, Any]) -> None:
    validate(data)
    tmp = cache_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    tmp.replace(cache_dir / MANIFEST)
