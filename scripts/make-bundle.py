"""Make a busybox OCI bundle: rootfs from Debian's static busybox, and
kata-py's default config.json with the given command (no terminal).

    .venv/bin/python scripts/make-bundle.py DIR [COMMAND ...]
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from kata_py.spec_default import default_spec

BUSYBOX = Path("/bin/busybox")   # Debian's busybox-static


def make_bundle(directory: Path, args: list[str]) -> Path:
    rootfs = directory / "rootfs"
    if not (rootfs / "bin" / "busybox").exists():
        (rootfs / "bin").mkdir(parents=True, exist_ok=True)
        for d in ("proc", "dev", "sys", "tmp", "etc", "root"):
            (rootfs / d).mkdir(exist_ok=True)
        shutil.copy(BUSYBOX, rootfs / "bin" / "busybox")
        for applet in os.popen(f"{BUSYBOX} --list").read().split():
            link = rootfs / "bin" / applet
            if applet != "busybox" and not link.exists():
                link.symlink_to("busybox")
    spec = default_spec()
    spec["process"].update(terminal=False, args=args or ["sh"])
    spec["hostname"] = "kata-py"
    (directory / "config.json").write_text(json.dumps(spec, indent=1) + "\n")
    return directory


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    make_bundle(Path(sys.argv[1]), sys.argv[2:])
