"""podman 4.3 + conmon, as Debian 12 ships them, driving kata-py.

The session gets a podman of its own under a temporary directory — never
/etc/containers or /var/lib/containers: CONTAINERS_CONF is
configs/containers.conf.d/kata-py.conf plus that directory's paths, with
kata-py as the default runtime; CONTAINERS_STORAGE_CONF puts images and
containers below it too (overlay where the kernel has it, else vfs). The
runtime podman calls is a two-line script that runs this checkout's kata-py
with `--root <session>/k`, so the tests' containers and VMs live apart from
/run/kata-py (podman's --runtime-flag would not outlive the first verb).

The image is busybox-static's /bin/busybox with its applet links, built
into a tarball cached under /var/cache/kata-py/e2e/ and `podman import`ed
— no registry. Never skipped: without podman the tests fail and say how to
get it (scripts/setup.sh installs it).

After every test: `podman rm -af`, its kata-py logs printed if it failed,
and no qemu/virtiofsd/vsock backend/monitor/conmon of the session may be left,
nor the host cgroup (podman's cgroupfs `libpod_parent/libpod-<id>`) of a
container the test created.

A test can give kata-py a runtime config of its own for a while
(`Podman.runtime_config`): the wrapper exports KATA_PY_CONFIG while
`<session>/kata-py.toml` exists (podman passes the runtime no environment of
the test's).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kata_py.config import load_config
from kata_py.factory import FAILED_BUILD
from tests.integration.conftest import leftovers

REPO = Path(__file__).resolve().parents[2]
SNIPPET = REPO / "configs" / "containers.conf.d" / "kata-py.conf"
KATA_PY = Path(sys.executable).parent / "kata-py"
CACHE = Path("/var/cache/kata-py/e2e")
BUSYBOX = Path("/bin/busybox")
IMAGE = "localhost/busybox:latest"
IMAGE_LAYOUT = b"busybox image v1"       # bump when busybox_tar() changes what it writes
DEBIAN_IMAGE = "localhost/debian:bookworm-minbase"
DEBIAN_BUILD = ["mmdebstrap", "--variant=minbase", "--quiet", "bookworm"]  # the host's mirror
DEBIAN_BUILD_TIMEOUT_S = 600.0
PODMAN_TIMEOUT_S = 120.0                 # one verb; a VM boot is ~6 s under TCG
LEFTOVER_WAIT_S = 15.0                   # conmon and `podman container cleanup` exit late
CGROUP_WAIT_S = 5.0                      # delete removes them before `podman rm` returns
# podman's cgroupfs manager: linux.cgroupsPath = <cgroup_parent>/libpod-<id> in every hierarchy
HOST_CGROUPS = ("/sys/fs/cgroup/libpod_parent/libpod-{id}",
                "/sys/fs/cgroup/*/libpod_parent/libpod-{id}")
SETUP_HINT = "run scripts/setup.sh (it installs podman, conmon, netavark, aardvark-dns, mmdebstrap)"


@dataclass(frozen=True)
class Podman:
    """`podman` of this session: call it with podman's arguments."""

    base: Path                           # everything of the session is below it
    kata_root: Path                      # kata-py's --root
    runtime: Path                        # what podman runs (conmon's -r)
    env: dict[str, str]

    def leftovers(self) -> list[str]:
        """Live processes and mounts of kata-py and conmon for this session
        (not podman's own storage mount), after giving them time to exit."""
        deadline = time.monotonic() + LEFTOVER_WAIT_S
        while True:
            found = list(dict.fromkeys(leftovers(str(self.kata_root))
                                       + leftovers(str(self.runtime))))
            if not found or time.monotonic() > deadline:
                return found
            time.sleep(0.5)

    def leaked_cgroups(self, ids: set[str]) -> list[str]:
        """Host cgroups of the containers `ids` still there (kata-py's delete
        removes them), after giving cleanup time to finish."""
        deadline = time.monotonic() + CGROUP_WAIT_S
        while True:
            found = sorted(path for cid in ids for pattern in HOST_CGROUPS
                           for path in glob.glob(pattern.format(id=cid)))
            if not found or time.monotonic() > deadline:
                return found
            time.sleep(0.5)

    def created_ids(self) -> set[str]:
        """Every container this session's podman ever created (its events log)."""
        res = self("events", "--stream=false", "--filter", "event=create",
                   "--format", "{{.ID}}")
        assert res.returncode == 0, res.stderr
        return set(res.stdout.split())

    @contextlib.contextmanager
    def runtime_config(self, toml: str) -> Iterator[Path]:
        """kata-py runs with this runtime config (TOML text) until the block ends."""
        path = self.base / "kata-py.toml"
        path.write_text(toml)
        try:
            yield path
        finally:
            path.unlink()

    def __call__(self, *args: str, stdin: bytes | None = None,
                 timeout: float = PODMAN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """Run podman; output through files, not pipes: a detached container's
        conmon and monitor must not hold our pipe open."""
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.run(["podman", *args], input=stdin,
                                  stdin=None if stdin is not None else subprocess.DEVNULL,
                                  stdout=out, stderr=err, env=self.env, timeout=timeout,
                                  check=False)
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(proc.args, proc.returncode,
                                               out.read().decode(errors="replace"),
                                               err.read().decode(errors="replace"))

    def ok(self, *args: str, stdin: bytes | None = None,
           timeout: float = PODMAN_TIMEOUT_S) -> str:
        """Run podman, insist on exit status 0, return its stdout."""
        res = self(*args, stdin=stdin, timeout=timeout)
        assert res.returncode == 0, (f"podman {' '.join(args)}: exit {res.returncode}\n"
                                     f"stdout: {res.stdout}\nstderr: {res.stderr}")
        return res.stdout


def _require(binary: str) -> None:
    if shutil.which(binary) is None:
        pytest.fail(f"{binary} is not installed: {SETUP_HINT}", pytrace=False)


def containers_conf(base: Path, runtime: Path) -> str:
    """The snippet with this session's runtime path and directories."""
    text = SNIPPET.read_text()
    text, n = re.subn(r"^kata-py = \[.*\]$", f'kata-py = ["{runtime}"]', text, flags=re.M)
    assert n == 1, f"{SNIPPET}: no `kata-py = [...]` line in [engine.runtimes]"
    engine = (f'runtime = "kata-py"\ntmp_dir = "{base / "tmp"}"\n'
              f'volume_path = "{base / "volumes"}"\n')
    text, n = re.subn(r"^\[engine\]\n", lambda m: m.group(0) + engine, text, flags=re.M)
    assert n == 1, f"{SNIPPET}: no [engine] table"
    return text + f'\n[network]\nnetwork_config_dir = "{base / "networks"}"\n'


def storage_conf(base: Path) -> str:
    with open("/proc/filesystems") as f:
        driver = "overlay" if re.search(r"\boverlay$", f.read(), re.M) else "vfs"
    return (f'[storage]\ndriver = "{driver}"\ngraphroot = "{base / "storage"}"\n'
            f'runroot = "{base / "run"}"\n')


def debian_tar() -> Path:
    """A minimal Debian 12 root filesystem from the Debian mirror (mmdebstrap,
    ~25 s), cached under CACHE by its build command."""
    if shutil.which("mmdebstrap") is None:
        pytest.fail(f"mmdebstrap is not installed: {SETUP_HINT}", pytrace=False)
    digest = hashlib.sha256(" ".join(DEBIAN_BUILD).encode()).hexdigest()[:12]
    path = CACHE / f"debian-{digest}.tar"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tar")   # mmdebstrap reads the suffix
    try:
        subprocess.run([*DEBIAN_BUILD, str(tmp)], check=True, capture_output=True,
                       timeout=DEBIAN_BUILD_TIMEOUT_S)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def busybox_tar() -> Path:
    """A root filesystem of busybox-static: /bin with every applet, root and
    nobody in /etc/passwd and /etc/group, /tmp; cached by busybox's hash."""
    if not BUSYBOX.exists():
        pytest.fail(f"{BUSYBOX} is missing: {SETUP_HINT}", pytrace=False)
    binary = BUSYBOX.read_bytes()
    path = CACHE / f"busybox-{hashlib.sha256(binary + IMAGE_LAYOUT).hexdigest()[:12]}.tar"
    if path.exists():
        return path
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True,
                             check=True, timeout=30).stdout.split()
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tarfile.open(tmp, "w") as tar:
        def add(name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.size, info.linkname = kind, mode, len(data), link
            tar.addfile(info, io.BytesIO(data) if data else None)
        for d in ("bin", "etc", "dev", "proc", "sys", "root"):
            add(d, tarfile.DIRTYPE, 0o755)
        add("tmp", tarfile.DIRTYPE, 0o1777)
        add("bin/busybox", tarfile.REGTYPE, 0o755, binary)
        for applet in sorted(set(applets) - {"busybox"}):
            add(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
        add("etc/passwd", tarfile.REGTYPE, 0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:"
            b"/bin/false\n")
        add("etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\nnogroup:x:65534:\n")
    os.replace(tmp, path)
    return path


def _mounts_below(base: Path) -> list[str]:
    prefix = f"{base}/"
    points = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    return [p for p in points if p.startswith(prefix)]


def _unmount_below(base: Path) -> None:
    """containers/storage leaves its overlay home bind-mounted on itself."""
    for point in sorted(_mounts_below(base), key=len, reverse=True):
        subprocess.run(["umount", point], capture_output=True, timeout=30, check=False)


def new_podman(prefix: str, prelude: Callable[[Path], str] = lambda base: "",
               kata_py: Path = KATA_PY) -> Podman:
    """A podman with its own config and storage below a new temp dir; its
    runtime is a wrapper (with `prelude(base)` first) that runs `kata_py`
    (this checkout's, by default) with `--root` below that dir."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))   # short: unix socket paths
    kata_root = base / "k"
    runtime = base / "kata-py"
    runtime.write_text(f'#!/bin/sh\n{prelude(base)}exec {kata_py} --root {kata_root} "$@"\n')
    runtime.chmod(0o755)
    (base / "containers.conf").write_text(containers_conf(base, runtime))
    (base / "storage.conf").write_text(storage_conf(base))
    env = dict(os.environ, CONTAINERS_CONF=str(base / "containers.conf"),
               CONTAINERS_STORAGE_CONF=str(base / "storage.conf"))
    return Podman(base, kata_root, runtime, env)


@pytest.fixture(scope="session")
def podman_session() -> Iterator[Podman]:
    _require("podman")
    _require("conmon")
    podman = new_podman("kpe", lambda base: f'[ -f {base / "kata-py.toml"} ] && '
                        f'export KATA_PY_CONFIG={base / "kata-py.toml"}\n')  # runtime_config
    try:
        podman.ok("import", "--change", 'CMD ["sh"]', str(busybox_tar()), IMAGE)
        yield podman
    finally:
        podman("rm", "--all", "--force", "--time", "0")
        podman("rmi", "--all", "--force")
        left = podman.leftovers()
        _unmount_below(podman.base)
        left += leftovers(str(podman.base))
        shutil.rmtree(podman.base, ignore_errors=True)
        assert left == [], "left behind by the e2e session"


@pytest.fixture(scope="session")
def debian_image(podman_session: Podman) -> str:
    """The Debian image, imported once per session for the tests that want it."""
    podman_session.ok("import", "--change", 'CMD ["bash"]', str(debian_tar()), DEBIAN_IMAGE,
                      timeout=DEBIAN_BUILD_TIMEOUT_S)
    return DEBIAN_IMAGE


def _print_logs(kata_root: Path) -> None:
    logs = [*kata_root.glob("containers/*/monitor.log"), *kata_root.glob("vm/*/console.log")]
    # a template build that failed within the last 10 minutes (kata_py/factory.py)
    failed = Path(load_config(None).factory.template_dir) / FAILED_BUILD
    logs += [p for p in failed.glob("*.log") if time.time() - p.stat().st_mtime < 600]
    for path in logs:
        print(f"----- {path} (last 40 lines) -----")
        print("\n".join(path.read_text(errors="replace").splitlines()[-40:]))


@pytest.fixture
def podman(request: pytest.FixtureRequest, podman_session: Podman) -> Iterator[Podman]:
    """The session's podman; after the test every container is removed and
    nothing of it may survive."""
    before = podman_session.created_ids()
    yield podman_session
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        _print_logs(podman_session.kata_root)
    removed = podman_session("rm", "--all", "--force", "--time", "0")
    assert removed.returncode == 0, removed.stderr
    assert podman_session.leftovers() == [], f"left behind by {request.node.name}"
    leaked = podman_session.leaked_cgroups(podman_session.created_ids() - before)
    for path in leaked:                              # reported below; not kept on the host
        with contextlib.suppress(OSError):
            os.rmdir(path)
    assert leaked == [], (f"{len(leaked)} host cgroups left behind by {request.node.name}: "
                          + " ".join(leaked))
    for sub in ("containers", "vm"):
        directory = podman_session.kata_root / sub
        assert not (directory.exists() and any(directory.iterdir())), f"{directory} not empty"
