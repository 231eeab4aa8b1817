"""Assemble the guest tree: Debian's Python + busybox + wheels + agent + init.

The tree keeps Debian's layout (``/usr/bin/python3.11``, stdlib in
``/usr/lib/python3.11``, packages in ``/usr/lib/python3/dist-packages`` which
Debian's ``site`` puts on ``sys.path``). Trimming removes what the agent never
loads: docs, locales, tools, the test suites and GUI/terminal modules, and
then every shared library no kept ELF file needs (DT_NEEDED closure).

Bytecode is compiled by the host interpreter (same 3.11 magic number) with
``unchecked-hash`` pycs, so file times never matter. The result is checked
by running the guest's own ``python3`` in a chroot and importing grpc.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path

from guestimage import BuildError, elf
from guestimage.tools import run

log = logging.getLogger(__name__)

PYTHON = "usr/bin/python3.11"
STDLIB = "usr/lib/python3.11"
SITE = "usr/lib/python3/dist-packages"
LIB_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64")
# dlopen()ed by glibc (pthread_exit/cancel unwinding), invisible to DT_NEEDED.
DLOPENED = ("libgcc_s.so.1",)
TRIM_PATHS = (
    "usr/share",
    "usr/sbin",
    "sbin",
    "usr/libexec",
    "usr/lib/locale",
    "var",
    "etc/ld.so.conf.d",
    "usr/lib/x86_64-linux-gnu/gconv",
    "usr/lib/x86_64-linux-gnu/audit",
    "usr/lib/x86_64-linux-gnu/engines-3",
    "usr/lib/x86_64-linux-gnu/ossl-modules",
)
TRIM_STDLIB = (
    "idlelib",
    "tkinter",
    "turtledemo",
    "turtle.py",
    "ensurepip",
    "lib2to3",
    "pydoc_data",
    "pydoc.py",
    "test",
    "unittest/test",
    "ctypes/test",
    "sqlite3",
    "curses",
    "dbm",
    "distutils",
    "__phello__",
    "config-3.11-x86_64-linux-gnu",
    "LICENSE.txt",
    # The agent never speaks TLS (vsock is host-local), and asyncio, which
    # grpc imports, loads ssl only if present: 0.24 s of guest boot under TCG.
    "ssl.py",
)
# Extension modules for the trimmed packages; their libraries then drop out too.
TRIM_DYNLOAD_PREFIXES = (
    "_curses",
    "readline",
    "nis",
    "_dbm",
    "_gdbm",
    "_sqlite3",
    "_tkinter",
    "_test",
    "_ctypes_test",
    "_xxtestfuzz",
    "xxlimited",
    "_testcapi",
    "_ssl",
)
# Imported in the chroot to prove the tree works; the agent needs all of these.
SMOKE_IMPORTS = (
    "grpc",
    "google.protobuf.message",
    "concurrent.futures",
    "ctypes",
    "json",
    "signal",
    "socket",
    "subprocess",
    "threading",
    "logging",
    "hashlib",
    "asyncio",
    "selectors",
)
BUSYBOX_SKIP_APPLETS = ("init", "linuxrc")
ROOT_DIRS = ("proc", "sys", "dev", "run", "tmp", "root", "mnt", "etc/kata-py")


def remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def trim(root: Path) -> None:
    for rel in TRIM_PATHS:
        remove(root / rel)
    for program in (root / "usr/bin").iterdir():
        if program.name != Path(PYTHON).name:
            remove(program)
    stdlib = root / STDLIB
    for rel in TRIM_STDLIB:
        remove(stdlib / rel)
    for so in (stdlib / "lib-dynload").iterdir():
        if so.name.startswith(TRIM_DYNLOAD_PREFIXES):
            so.unlink()
    for cache in root.rglob("__pycache__"):
        shutil.rmtree(cache)


def install_python_symlink(root: Path) -> None:
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    (root / "usr/bin/python3").symlink_to("python3.11")


def install_busybox(root: Path) -> None:
    """busybox applets as /bin symlinks (the static binary lists them on the host)."""
    busybox = root / "bin/busybox"
    if not busybox.exists():
        raise BuildError("busybox-static did not provide /bin/busybox", "check packages.lock")
    applets = run([busybox, "--list"], "busybox --list").decode().split()
    for applet in applets:
        link = root / "bin" / applet
        if applet not in BUSYBOX_SKIP_APPLETS and not link.exists() and not link.is_symlink():
            link.symlink_to("busybox")


def install_wheels(wheels: Iterable[Path], root: Path) -> None:
    site = root / SITE
    site.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                if ".data/" in info.filename.split("/", 1)[0] + "/":
                    raise BuildError(f"{wheel.name} has a .data directory; not supported")
                path = Path(zf.extract(info, site))
                mode = (info.external_attr >> 16) & 0o777
                if not info.is_dir():
                    path.chmod(0o755 if mode & 0o111 else 0o644)


def install_agent(kata_init: Path, agent_dir: Path, root: Path) -> None:
    """``kata_py/__init__.py`` + the agent folder as ``kata_py.agent`` in site-packages."""
    pkg = root / SITE / "kata_py"
    pkg.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(kata_init, pkg / "__init__.py")
    shutil.copytree(
        agent_dir, pkg / "agent", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "tests")
    )


def install_init(init: Path, root: Path) -> None:
    for rel in ROOT_DIRS:
        (root / rel).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(init, root / "init")
    (root / "init").chmod(0o755)


def lib_index(root: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for rel in LIB_DIRS:
        for path in sorted((root / rel).glob("*.so*")) if (root / rel).is_dir() else []:
            index.setdefault(path.name, path)
    return index


def elf_files(root: Path) -> list[Path]:
    """ELF files that are kept for their own sake (programs and Python extensions)."""
    found = [root / PYTHON, root / "bin/busybox"]
    for base in (root / STDLIB / "lib-dynload", root / SITE):
        found.extend(p for p in base.rglob("*.so*") if p.is_file() and not p.is_symlink())
    return found


def prune_libs(root: Path) -> list[str]:
    """Remove libraries nothing kept needs; return the names removed."""
    index = lib_index(root)
    keep: set[str] = set()
    todo = [*elf_files(root), *(index[n] for n in DLOPENED if n in index)]
    keep.update(p.name for p in todo)
    while todo:
        path = todo.pop()
        target = path.resolve() if path.is_symlink() else path
        if not target.exists():
            continue
        keep.add(target.name)
        for soname in elf.needed(target.read_bytes()):
            if soname not in keep:
                keep.add(soname)
                if soname not in index:
                    raise BuildError(
                        f"{path.relative_to(root)} needs {soname}, not in the image",
                        "add its package to debs.ROOT_PACKAGES and --relock",
                    )
                todo.append(index[soname])
    removed = []
    for name, path in index.items():
        if name not in keep and not name.startswith("ld-linux"):
            path.unlink()
            removed.append(name)
    return sorted(removed)


def strip_objects(root: Path) -> int:
    """``strip --strip-unneeded`` every shared object; return bytes saved."""
    saved = 0
    objs = [p for p in root.rglob("*.so*") if p.is_file() and not p.is_symlink()]
    for path in objs:
        if not elf.is_elf(path.read_bytes()[:4]):
            continue
        before = path.stat().st_size
        run(["strip", "--strip-unneeded", path], f"strip {path.name}")
        saved += before - path.stat().st_size
    return saved


def compile_bytecode(root: Path) -> None:
    """Compile stdlib + site-packages as the guest sees them (unchecked-hash pycs).

    A fixed PYTHONHASHSEED keeps set constants in one order: identical pycs.
    """
    if sys.version_info[:2] != (3, 11):
        raise BuildError(
            f"bytecode must be compiled by Python 3.11, this is {sys.version}",
            "run build.py with /work/main/.venv/bin/python (3.11)",
        )
    flags = "-q -q -j0 -p / --invalidation-mode unchecked-hash".split()
    argv = [sys.executable, "-m", "compileall", *flags, "-s", str(root)]
    argv += [str(root / STDLIB), str(root / SITE)]
    proc = subprocess.run(argv, capture_output=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    if proc.returncode != 0:
        log.warning("some files did not compile (kept as source): %s", proc.stdout[-300:])


def smoke_test(root: Path) -> str:
    """Import the agent's dependencies with the guest's python3 (chroot); return its version."""
    code = f"import platform, {', '.join(SMOKE_IMPORTS)}; print(platform.python_version())"
    env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    proc = subprocess.run(
        [chroot, str(root), "/usr/bin/python3", "-c", code], capture_output=True, env=env
    )
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-2:]
        raise BuildError(
            f"the guest python3 cannot import its modules: {' | '.join(tail)}",
            "run the build as root (chroot) and check the trimming lists",
        )
    return proc.stdout.decode().strip()


def normalize_mtimes(root: Path, epoch: int) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            os.utime(os.path.join(dirpath, name), (epoch, epoch), follow_symlinks=False)
    os.utime(root, (epoch, epoch))


def tree_size(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def split_initramfs(root: Path, tiny: Path) -> None:
    """The initramfs of the image format: busybox, modules, init (no Python)."""
    for rel in ("bin", "lib/modules", "etc/kata-py"):
        shutil.copytree(root / rel, tiny / rel, symlinks=True)
    for rel in (*ROOT_DIRS, "newroot"):
        (tiny / rel).mkdir(parents=True, exist_ok=True)
    shutil.copy2(root / "init", tiny / "init")
