"""The guest image as the host runtime sees it: manifest.json in the image
directory (written by guest-image/build.py) naming the kernel, initrd and
optional read-only rootfs, with versions and sha256 sums.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from kata_py.errors import ImageError

MANIFEST = "manifest.json"
BUILD_HINT = "build it with `python guest-image/build.py` (or run scripts/setup.sh)"


@dataclass(frozen=True)
class GuestImage:
    directory: Path
    kernel: Path
    initrd: Path | None
    rootfs: Path | None
    kernel_release: str
    kernel_params: str
    files: dict[str, str]          # name -> sha256
    manifest: dict[str, object]

    def verify(self) -> None:
        """Check every file's sha256 against the manifest (slow: reads them all)."""
        for name, digest in self.files.items():
            path = self.directory / name
            h = hashlib.sha256()
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            if h.hexdigest() != digest:
                raise ImageError(f"guest image file {path} does not match its manifest",
                                 "rebuild it: python guest-image/build.py --force")


def load_image(directory: Path) -> GuestImage:
    """The guest image in `directory`, or ImageError saying how to build it."""
    manifest_path = directory / MANIFEST
    try:
        data = json.loads(manifest_path.read_text())
    except FileNotFoundError as exc:
        raise ImageError(f"no guest image in {directory}", BUILD_HINT) from exc
    except (OSError, ValueError) as exc:
        raise ImageError(f"guest image manifest {manifest_path} is unreadable ({exc})",
                         "rebuild it: python guest-image/build.py --force") from exc

    def member(key: str, required: bool) -> Path | None:
        name = data.get(key)
        if not name:
            if required:
                raise ImageError(f"guest image manifest {manifest_path} names no {key}",
                                 "rebuild it: python guest-image/build.py --force")
            return None
        path = directory / str(name)
        if not path.is_file():
            raise ImageError(f"guest image {key} {path} is missing", BUILD_HINT)
        return path

    kernel = member("kernel", True)
    assert kernel is not None
    return GuestImage(
        directory=directory, kernel=kernel, initrd=member("initrd", False),
        rootfs=member("rootfs", False),
        kernel_release=str(data.get("kernel_release", "")),
        kernel_params=str(data.get("kernel_params", "")),
        files={str(k): str(v) for k, v in dict(data.get("files", {})).items()},
        manifest=data,
    )
