"""Bad input through podman: what the user sees when kata-py refuses or
fails, and that nothing is left behind (the `podman` fixture checks for
processes, mounts, state directories and host cgroups after each test).

podman prints a failed create as `Error: OCI runtime error: <reason>` with
exit status 126, taking the reason from kata-py's JSON --log; a command that
cannot be found or run is 127/126 with podman's own words after kata-py's,
as with runc."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from .conftest import IMAGE, PODMAN_TIMEOUT_S, Podman

pytestmark = pytest.mark.vm

NONE = ("--network", "none")
GUEST_DIR = Path("/var/cache/kata-py/guest")


def _one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_preserve_fds_is_refused_with_one_line(podman: Podman) -> None:
    # `--userns=auto` never reaches the runtime (podman wants /etc/subuid ranges
    # first); `--preserve-fds` does: podman hands the fds to `kata-py create`.
    # podman insists on fds 3.. being open in its own process.
    res = subprocess.run(["sh", "-c", 'exec "$@" 3</dev/null', "sh", "podman", "run", "--rm",
                          *NONE, "--preserve-fds", "1", IMAGE, "true"],
                         env=podman.env, stdin=subprocess.DEVNULL, capture_output=True,
                         text=True, timeout=PODMAN_TIMEOUT_S, check=False)
    assert res.returncode == 126, res
    assert _one_error_line(res.stderr) == (
        "Error: OCI runtime error: kata-py: --preserve-fds 1: file descriptors cannot be "
        "passed into the container's VM: pass data through the process's stdio or a bind "
        "mount instead")
    assert podman.ok("ps", "--all", "--quiet") == ""


def test_an_image_whose_command_is_missing_fails_create_with_127(podman: Podman) -> None:
    """runc fails `create` with 127 here (podman: "OCI runtime attempted to
    invoke a command that was not found"), before the container exists."""
    broken = "localhost/broken:latest"
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as t:
        for name in ("bin", "etc"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            t.addfile(info)
    podman.ok("import", "--change", 'CMD ["/bin/app"]', "-", broken, stdin=tar.getvalue())
    try:
        res = podman("run", "--rm", *NONE, broken)
        assert res.returncode == 127, res
        line = _one_error_line(res.stderr)
        assert line.startswith("Error: kata-py: "), line
        assert line.endswith('exec: "/bin/app": stat /bin/app: no such file or directory: '
                             "OCI runtime attempted to invoke a command that was not found"), line
        assert podman.ok("ps", "--all", "--quiet") == ""
    finally:
        podman("rmi", "--force", broken)


def test_a_vm_that_cannot_boot_fails_create_with_kata_pys_reason(
        podman: Podman, tmp_path: Path) -> None:
    """The guest image's kernel is not a kernel: QEMU refuses it at once."""
    manifest = json.loads((GUEST_DIR / "manifest.json").read_text())
    (tmp_path / "vmlinux-broken").write_bytes(b"this is not a kernel\n" * 256)
    for key in ("initrd", "rootfs"):
        if manifest.get(key):
            (tmp_path / manifest[key]).symlink_to(GUEST_DIR / manifest[key])
    manifest.update(kernel="vmlinux-broken", files={})
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))

    with podman.runtime_config(f'[hypervisor]\nimage_dir = "{tmp_path}"\n'):
        res = podman("run", "--rm", *NONE, IMAGE, "true")
    assert res.returncode == 126, res
    line = _one_error_line(res.stderr)
    # By default QEMU fails while the VM template is built (kata_py/factory.py).
    assert line.startswith("Error: OCI runtime error: kata-py: building the VM template failed: "
                           "QEMU for kata-py-template-"), line
    assert "failed to start: qemu: linux kernel too old to load a ram disk" in line, line
    assert podman.ok("ps", "--all", "--quiet") == ""
