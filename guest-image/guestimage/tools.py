"""Host tools the build runs: presence checks and one subprocess helper.

Every external command goes through :func:`run` (argv lists, never a shell);
a failure becomes a :class:`BuildError` with the tail of stderr and a hint.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from guestimage import BuildError

# tool -> Debian package that provides it (for the "fix:" hint)
REQUIRED_TOOLS = {
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
    "strip": "binutils",
    "chroot": "coreutils",
}
IMAGE_TOOLS = {
    "ext4": {"mkfs.ext4": "e2fsprogs", "debugfs": "e2fsprogs"},
    "erofs": {"mkfs.erofs": "erofs-utils"},
}
KERNEL_TOOLS = {"lz4": "lz4"}
C_ENV = {**os.environ, "LC_ALL": "C", "LANG": "C"}


def require(tools: dict[str, str]) -> None:
    for tool, package in tools.items():
        if shutil.which(tool) is None:
            raise BuildError(f"{tool} is not installed", f"apt-get install {package}")


def run(
    argv: Sequence[str | Path],
    what: str,
    hint: str = "",
    cwd: Path | None = None,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
) -> bytes:
    """Run argv; return stdout; raise BuildError naming ``what`` on failure."""
    try:
        proc = subprocess.run(
            [str(a) for a in argv],
            cwd=cwd,
            input=stdin,
            capture_output=True,
            env={**C_ENV, **(env or {})},
        )
    except FileNotFoundError as exc:
        raise BuildError(f"{what}: {argv[0]} not found", hint or "install it") from exc
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise BuildError(f"{what} failed (exit {proc.returncode}): {' | '.join(tail)}", hint)
    return proc.stdout
