"""The other OCI tools users combine with a runtime, from Debian 12: an image
copied with skopeo and unpacked with umoci runs under `kata-py run`, and
buildah runs a build step with `--runtime kata-py`. All offline: the image
is the session's busybox, saved from its podman storage."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import leftovers

from .conftest import IMAGE, KATA_PY, SETUP_HINT, Podman

pytestmark = pytest.mark.vm

TOOL_TIMEOUT_S = 180.0


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: {SETUP_HINT}", pytrace=False)
    return path


def _run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, env=env,
                          timeout=TOOL_TIMEOUT_S, check=False)
    assert proc.returncode == 0, f"{' '.join(argv)}: {proc.returncode}\n{proc.stderr}"
    return proc


def test_an_image_from_skopeo_and_umoci_runs_under_kata_py(podman: Podman,
                                                            tmp_path: Path) -> None:
    archive = tmp_path / "busybox.tar"
    podman.ok("save", "--format", "oci-archive", "-o", str(archive), IMAGE)
    _run(_tool("skopeo"), "copy", f"oci-archive:{archive}", f"oci:{tmp_path / 'layout'}:bb")
    bundle = tmp_path / "bundle"
    _run(_tool("umoci"), "unpack", "--image", f"{tmp_path / 'layout'}:bb", str(bundle))
    config = json.loads((bundle / "config.json").read_text())
    config["process"].update(terminal=False, args=["sh", "-c", "echo from umoci; id -u"])
    (bundle / "config.json").write_text(json.dumps(config))
    root = tmp_path / "k"
    r = subprocess.run([str(KATA_PY), "--root", str(root), "run", "-b", str(bundle), "umoci"],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       timeout=TOOL_TIMEOUT_S, check=False)
    assert (r.returncode, r.stdout, r.stderr) == (0, "from umoci\n0\n", "")
    assert not any((root / "containers").iterdir()) and leftovers(str(root)) == []


def test_buildah_runs_a_build_step_with_kata_py(podman: Podman, tmp_path: Path) -> None:
    buildah = _tool("buildah")
    env = dict(podman.env, BUILDAH_ISOLATION="oci")
    name = _run(buildah, "from", "--pull=never", IMAGE, env=env).stdout.strip()
    try:
        step = _run(buildah, "run", "--runtime", str(podman.runtime), name, "--",
                    "sh", "-c", "echo built > /made; uname -r", env=env)
        guest_kernel = step.stdout.strip()
        assert guest_kernel and guest_kernel != _run("uname", "-r").stdout.strip(), step
        mount = _run(buildah, "mount", name, env=env).stdout.strip()
        assert Path(mount, "made").read_text() == "built\n"       # the step's change is kept
    finally:
        subprocess.run([buildah, "rm", name], env=env, capture_output=True, timeout=60,
                       check=False)
    assert podman.leftovers() == []
