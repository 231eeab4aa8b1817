#!/usr/bin/env python3
"""Build the kata-py guest image: kernel + initramfs (+ read-only rootfs image).

    .venv/bin/python guest-image/build.py [--cache-dir DIR] [--format initrd|image]
                                          [--force] [--relock]

Everything comes from Debian packages pinned in guest-image/packages.lock and
the grpcio/protobuf wheels pinned in pyproject.toml; outputs and manifest.json
land in the cache dir (default /var/cache/kata-py/guest). When the digest of
all inputs matches the manifest and the files are intact, nothing is rebuilt.
See guest-image/README.md. This file is the command line: it parses options,
orders the steps and prints; the work is in guestimage/.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import importlib.metadata
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from guestimage import BuildError, debs, kernel, kmod, manifest, pack, rootfs, tools  # noqa: E402

DEFAULT_CACHE_DIR = Path("/var/cache/kata-py/guest")
# Measured winners (README.md, "Boot-time measurements"):
DEFAULT_FORMAT = "image"  # 4.69 s vs 5.10 s for one initramfs
DEFAULT_KERNEL_FORMAT = "vmlinux"  # ELF via PVH: 4.69 s vs 4.94 s for the bzImage
DEFAULT_ROOTFS_TYPE = "ext4"  # built in; erofs (a module) was no faster: 4.74 s
LOCK_FILE = HERE / "packages.lock"
WHEELS = ("grpcio", "protobuf")
EPOCH = 1_700_000_000  # every file time in the image (reproducible archives)
STEPS = 7
log = logging.getLogger("guest-image")


@dataclass(frozen=True)
class Options:
    cache_dir: Path
    format: str
    kernel_format: str
    rootfs_type: str
    force: bool
    relock: bool
    agent_dir: Path
    kata_init: Path


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    p.add_argument(
        "--format",
        choices=manifest.FORMATS,
        default=DEFAULT_FORMAT,
        help=f"initrd: one initramfs; image: initramfs + rootfs image (default {DEFAULT_FORMAT})",
    )
    p.add_argument("--kernel-format", choices=("vmlinux", "bzimage"), default=DEFAULT_KERNEL_FORMAT)
    p.add_argument(
        "--rootfs-type",
        choices=tuple(pack.ROOTFS_MAKERS),
        default=DEFAULT_ROOTFS_TYPE,
        help=f"filesystem of the image format's rootfs (default {DEFAULT_ROOTFS_TYPE})",
    )
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p.add_argument("--relock", action="store_true", help="re-resolve packages.lock with apt")
    p.add_argument(
        "--agent-dir",
        type=Path,
        default=REPO / "agent",
        help="the folder installed as kata_py.agent (default: the repo's agent/)",
    )
    a = p.parse_args(argv)
    return Options(
        a.cache_dir.resolve(),
        a.format,
        a.kernel_format,
        a.rootfs_type,
        a.force,
        a.relock,
        a.agent_dir.resolve(),
        REPO / "kata_py/__init__.py",
    )


def step(n: int, text: str) -> None:
    print(f"[{n}/{STEPS}] {text} …", flush=True)


def wheel_pins() -> dict[str, str]:
    """Wheels for the guest: grpcio/protobuf as pinned (==) in pyproject.toml, plus
    their runtime requirements at the versions installed in this (the project's)
    venv — the guest always matches the host."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for dep in deps:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;,]+)\s*", dep)
        if m and m.group(1).lower() in WHEELS:
            pins[m.group(1).lower()] = m.group(2)
    missing = [w for w in WHEELS if w not in pins]
    if missing:
        raise BuildError(
            f"pyproject.toml does not pin {', '.join(missing)} with ==",
            "pin them exactly (the guest must match the host)",
        )
    for name in WHEELS:
        for req in importlib.metadata.requires(name) or []:
            dep_m = re.match(r"[A-Za-z0-9_.-]+", req)
            if dep_m is None or "extra ==" in req:
                continue
            dep_name = dep_m.group(0).lower()
            try:
                pins.setdefault(dep_name, importlib.metadata.version(dep_name))
            except importlib.metadata.PackageNotFoundError as exc:
                raise BuildError(
                    f"{name} needs {dep_name}, not installed in {sys.prefix}",
                    "pip install -e /work/main into the venv",
                ) from exc
    return pins


def wheel_stem(name: str, version: str) -> str:
    return f"{re.sub(r'[-_.]+', '_', name)}-{version}-"


def collect_inputs(opts: Options, pins: dict[str, str]) -> dict[str, bytes]:
    """Everything the image is made from, by name: a change to any means a rebuild."""
    inputs = {
        "options": f"{opts.format} {opts.kernel_format} {opts.rootfs_type}\n".encode(),
        "pins": "".join(f"{k}=={v}\n" for k, v in sorted(pins.items())).encode(),
        "kata_py/__init__.py": opts.kata_init.read_bytes(),
        "packages.lock": LOCK_FILE.read_bytes(),
        "init": (HERE / "init").read_bytes(),
    }
    for src in sorted(HERE.rglob("*.py")):
        if "__pycache__" not in src.parts:
            inputs[f"build/{src.relative_to(HERE)}"] = src.read_bytes()
    for src in sorted(opts.agent_dir.rglob("*")):
        if src.is_file() and "__pycache__" not in src.parts and src.suffix != ".pyc":
            inputs[f"agent/{src.relative_to(opts.agent_dir)}"] = src.read_bytes()
    return inputs


def fetch_wheels(pins: dict[str, str], cache: Path) -> list[Path]:
    cache.mkdir(parents=True, exist_ok=True)
    wanted = [
        f"{n}=={v}" for n, v in pins.items() if not any(cache.glob(f"{wheel_stem(n, v)}*.whl"))
    ]
    if wanted:
        with tempfile.TemporaryDirectory(dir=cache, prefix=".dl-") as tmp:
            flags = "-q --no-deps --only-binary=:all: --implementation cp --python-version 3.11"
            platforms = "--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64"
            argv = [sys.executable, "-m", "pip", "download", *flags.split(), *platforms.split()]
            argv += ["-d", tmp, *wanted]
            tools.run(argv, f"pip download {' '.join(wanted)}", "check the network reaches PyPI")
            for whl in Path(tmp).glob("*.whl"):
                whl.replace(cache / whl.name)
    found = [sorted(cache.glob(f"{wheel_stem(n, v)}*.whl")) for n, v in pins.items()]
    if not all(found):
        raise BuildError("pip download produced no matching wheel", "check the pins exist on PyPI")
    return [f[0] for f in found]


@contextmanager
def locked(cache_dir: Path) -> Iterator[None]:
    """One build per cache dir at a time; leftovers of killed builds are removed."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / ".lock").open("w") as fd:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another build in {cache_dir} …", flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        for stale in cache_dir.glob(".build-*"):
            shutil.rmtree(stale, ignore_errors=True)
        yield


def build_kernel(opts: Options, deb: Path, work: Path, out: Path, tag: str) -> tuple[str, str]:
    """Extract the kernel package; write the kernel file; return (release, file name)."""
    kroot = work / "kernel"
    debs.extract(deb, kroot)
    releases = sorted(p.name for p in (kroot / "lib/modules").iterdir())
    if len(releases) != 1:
        raise BuildError(f"{deb.name} ships {len(releases)} module trees, expected 1")
    release = releases[0]
    bzimage = (kroot / f"boot/vmlinuz-{release}").read_bytes()
    if opts.kernel_format == "vmlinux":
        name, data = f"vmlinux-{release}-{tag}", kernel.extract_vmlinux(bzimage)
    else:
        name, data = f"vmlinuz-{release}-{tag}", bzimage
    (out / name).write_bytes(data)
    return release, name


def build_tree(opts: Options, pkgs: dict[debs.Pin, Path], wheels: list[Path], root: Path) -> str:
    """Python + busybox + wheels + agent + init in ``root``; return the Python version."""
    for pin, path in pkgs.items():
        if pin.kind == "deb":
            debs.extract(path, root)
    rootfs.trim(root)
    rootfs.install_python_symlink(root)
    rootfs.install_busybox(root)
    names = ", ".join(" ".join(w.name.split("-")[:2]) for w in wheels)
    step(4, f"installing {names} and the agent")
    rootfs.install_wheels(wheels, root)
    rootfs.install_agent(opts.kata_init, opts.agent_dir, root)
    rootfs.install_init(HERE / "init", root)
    step(5, "trimming, stripping, compiling bytecode, checking imports")
    removed = rootfs.prune_libs(root)
    log.info("dropped %d libraries nothing in the image links", len(removed))
    log.info("strip saved %.1f MiB", rootfs.strip_objects(root) / 2**20)
    rootfs.compile_bytecode(root)
    version = rootfs.smoke_test(root)
    rootfs.normalize_mtimes(root, EPOCH)
    return version


def pack_outputs(opts: Options, root: Path, work: Path, tag: str) -> tuple[str, str | None, str]:
    """Pack ``root`` into work/out; return (initrd name, rootfs name or None, kernel params)."""
    out, initrd = work / "out", f"initrd-{tag}.cpio"
    if opts.format == "initrd":
        pack.write_cpio(root, out / initrd, EPOCH)
        return initrd, None, ""
    fs = opts.rootfs_type
    image = f"rootfs-{tag}.{fs}"
    tiny = work / "tiny"
    rootfs.split_initramfs(root, tiny)
    rootfs.normalize_mtimes(tiny, EPOCH)
    pack.write_cpio(tiny, out / initrd, EPOCH)
    pack.ROOTFS_MAKERS[fs](root, out / image, EPOCH)
    return initrd, image, f"root=/dev/vda rootfstype={fs}"


def build(opts: Options, pins: dict[str, str], digest: str) -> dict[str, Any]:
    """Build every output in a temp dir, move them in, write the manifest last."""
    started = time.monotonic()
    tag = digest[:12]
    downloads = opts.cache_dir / "downloads"
    work = Path(tempfile.mkdtemp(dir=opts.cache_dir, prefix=".build-"))
    try:
        step(1, "downloading packages and wheels (cached in downloads/)")
        pkgs = debs.fetch(debs.read_lock(LOCK_FILE), downloads / "debs")
        wheels = fetch_wheels(pins, downloads / "wheels")
        kpin = next(p for p in pkgs if p.kind == "kernel")
        out, root = work / "out", work / "root"
        out.mkdir()
        step(2, f"extracting kernel {kpin.name} {kpin.version} ({opts.kernel_format})")
        release, kname = build_kernel(opts, pkgs[kpin], work, out, tag)
        boot = [*kmod.BOOT_MODULES]
        if opts.format == "image":
            boot += [*kmod.IMAGE_BOOT_MODULES, opts.rootfs_type]
        loaded = kmod.install_modules(work / "kernel/lib/modules" / release, release, root, boot)
        log.info("boot modules in load order: %s", " ".join(loaded))
        step(3, f"extracting python3.11, busybox and {len(pkgs) - 1} packages")
        py_version = build_tree(opts, pkgs, wheels, root)
        log.info("guest tree: %.1f MiB", rootfs.tree_size(root) / 2**20)
        step(6, f"packing the {opts.format}")
        initrd, image, params = pack_outputs(opts, root, work, tag)
        step(7, "writing manifest.json")
        names = [n for n in (kname, initrd, image) if n]
        files = {n: manifest.sha256_file(out / n) for n in names}
        for n in names:
            (out / n).replace(opts.cache_dir / n)
        data: dict[str, Any] = {
            "format": opts.format,
            "kernel": kname,
            "initrd": initrd,
            "rootfs": image,
            "kernel_release": release,
            "kernel_package": kpin.name,
            "kernel_version": kpin.version,
            "kernel_params": params,
            "python_version": py_version,
            "grpcio": pins["grpcio"],
            "protobuf": pins["protobuf"],
            "files": files,
            "inputs_sha256": digest,
            "build_seconds": round(time.monotonic() - started, 1),
            "built_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "packages": {p.name: p.version for p in pkgs},
            "wheels": [w.name for w in wheels],
            "boot_modules": loaded,
        }
        manifest.write(opts.cache_dir, data)
        remove_stale_outputs(opts.cache_dir, set(names))
        return data
    finally:
        shutil.rmtree(work, ignore_errors=True)


def remove_stale_outputs(cache_dir: Path, keep: set[str]) -> None:
    for pattern in ("vmlinux-*", "vmlinuz-*", "initrd-*", "rootfs-*"):
        for path in cache_dir.glob(pattern):
            if path.name not in keep:
                path.unlink()


def run(opts: Options) -> int:
    started = time.monotonic()
    tools.require(tools.REQUIRED_TOOLS)
    if opts.format == "image":
        tools.require(tools.IMAGE_TOOLS[opts.rootfs_type])
    if opts.kernel_format == "vmlinux":
        tools.require(tools.KERNEL_TOOLS)
    if not opts.agent_dir.is_dir():
        raise BuildError(f"agent folder {opts.agent_dir} does not exist", "pass --agent-dir")
    with locked(opts.cache_dir):
        if opts.relock or not LOCK_FILE.exists():
            print(f"resolving {LOCK_FILE.name} with apt-cache …", flush=True)
            debs.write_lock(LOCK_FILE, debs.resolve_lock())
        pins = wheel_pins()
        digest = manifest.inputs_digest(collect_inputs(opts, pins))
        if not opts.force and manifest.up_to_date(opts.cache_dir, digest):
            print(f"guest image up to date ({opts.cache_dir / manifest.MANIFEST})")
            return 0
        data = build(opts, pins, digest)
    for name in data["files"]:
        size = (opts.cache_dir / name).stat().st_size / 2**20
        print(f"  {name}: {size:.1f} MiB")
    print(
        f"guest image built in {time.monotonic() - started:.1f} s: "
        f"{opts.cache_dir / manifest.MANIFEST}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="      %(message)s", stream=sys.stdout)
    opts = parse_args(argv)
    try:
        return run(opts)
    except BuildError as exc:
        print(f"guest-image: error: {exc}", file=sys.stderr)
        return 1
    except subprocess.SubprocessError as exc:
        print(f"guest-image: internal error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("guest-image: interrupted; nothing was replaced", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
