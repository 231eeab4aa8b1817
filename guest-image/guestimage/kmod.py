"""Kernel modules for the guest: modules.dep and the init's load order.

Debian's kernel package ships the ``.ko`` files but not ``modules.dep``
(depmod runs in its postinst), and the host may lack kmod. So the build
writes ``modules.dep`` itself from each module's ``.modinfo depends=`` field
(what modpost recorded at kernel build time), then computes the load order
from that file: dependencies first, each module once, in the order asked for.

The guest gets the modules the init loads at boot plus a few on-demand ones
(``modprobe`` from busybox reads the shipped ``modules.dep``), and
``/etc/kata-py/modules``: absolute ``.ko`` paths, one per line, in load order.
``/etc/kata-py/modules.net`` lists, the same way, what virtio_net needs on top
of the boot modules; the init loads it only when the VM has a virtio-net
device, so a sandbox without a NIC boots no slower.
This module must not hand-maintain any order; it only lists what is wanted.
"""

from __future__ import annotations

import lzma
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from guestimage import BuildError, elf

# Loaded by the init at boot, in this order of intent; dependencies are added
# from modules.dep. virtio_pci serves q35/pc machines, virtio_mmio microvm.
BOOT_MODULES = (
    "virtio_mmio",
    "virtio_pci",
    "vmw_vsock_virtio_transport",
    "virtiofs",
)
# Added to the boot set when the rootfs is a virtio-blk image.
IMAGE_BOOT_MODULES = ("virtio_blk",)
# Loaded by the init after BOOT_MODULES only when a virtio-net device exists.
NET_MODULES = ("virtio_net",)
# Shipped (with modules.dep) but loaded only on demand by the agent (modprobe).
ON_DEMAND_MODULES = ("virtio_blk", "virtio_net", "virtio_console", "overlay", "virtio_rng")
LOAD_ORDER_FILE = "etc/kata-py/modules"
NET_LOAD_ORDER_FILE = "etc/kata-py/modules.net"
KO_SUFFIXES = (".ko", ".ko.xz")


def module_name(path: str) -> str:
    """``kernel/drivers/char/hw_random/virtio-rng.ko`` -> ``virtio_rng``."""
    base = path.rsplit("/", 1)[-1]
    for suffix in KO_SUFFIXES[::-1]:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def read_ko(path: Path) -> bytes:
    data = path.read_bytes()
    return lzma.decompress(data) if path.name.endswith(".xz") else data


def scan_modules(moddir: Path) -> dict[str, tuple[str, list[str]]]:
    """``name -> (relative .ko path, direct dependency names)`` for a module tree."""
    found: dict[str, tuple[str, list[str]]] = {}
    for ko in sorted(moddir.rglob("*.ko*")):
        if not ko.name.endswith(KO_SUFFIXES):
            continue
        info = elf.modinfo(read_ko(ko))
        rel = ko.relative_to(moddir).as_posix()
        deps = [d.replace("-", "_") for d in info.get("depends", "").split(",") if d]
        found[info.get("name", module_name(rel)).replace("-", "_")] = (rel, deps)
    return found


def closure(direct: Mapping[str, Sequence[str]], names: Iterable[str]) -> list[str]:
    """``names`` and everything they depend on, dependencies first (post-order DFS)."""
    order: list[str] = []
    done: set[str] = set()
    active: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in active:
            raise BuildError(f"module dependency cycle: {' -> '.join([*active, name])}")
        if name not in direct:
            raise BuildError(
                f"kernel module {name!r} is not in modules.dep",
                "check the kernel package in packages.lock ships it as a module",
            )
        active.append(name)
        for dep in direct[name]:
            visit(dep)
        active.pop()
        done.add(name)
        order.append(name)

    for name in names:
        visit(name)
    return order


def format_modules_dep(modules: Mapping[str, tuple[str, Sequence[str]]]) -> str:
    """modules.dep text: each module with its full dependency list, depmod style.

    depmod lists dependencies so that loading them from last to first works;
    that is the reverse of the post-order closure.
    """
    direct = {name: deps for name, (_rel, deps) in modules.items()}
    lines = []
    for name in sorted(modules, key=lambda n: modules[n][0]):
        deps = closure(direct, [name])[:-1]
        paths = " ".join(modules[d][0] for d in reversed(deps))
        lines.append(f"{modules[name][0]}:{' ' + paths if paths else ''}")
    return "\n".join(lines) + "\n"


def parse_modules_dep(text: str) -> tuple[dict[str, list[str]], dict[str, str]]:
    """modules.dep -> (``name -> dependency names``, ``name -> relative path``).

    Each listed dependency list is reversed back into load-first order.
    """
    direct: dict[str, list[str]] = {}
    paths: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        target, sep, rest = line.partition(":")
        if not sep:
            raise BuildError(f"modules.dep line {lineno} has no ':': {line!r}")
        name = module_name(target.strip())
        paths[name] = target.strip()
        direct[name] = [module_name(p) for p in reversed(rest.split())]
    return direct, paths


def load_order(modules_dep: str, wanted: Iterable[str], builtin: Iterable[str] = ()) -> list[str]:
    """Relative .ko paths to insmod, in order, for ``wanted`` (built-ins skipped)."""
    direct, paths = parse_modules_dep(modules_dep)
    built = set(builtin)
    names = closure(direct, [w for w in wanted if w not in built])
    return [paths[n] for n in names]


def builtin_names(moddir: Path) -> set[str]:
    path = moddir / "modules.builtin"
    return {module_name(x) for x in path.read_text().split()} if path.exists() else set()


def install_modules(moddir: Path, release: str, dest: Path, boot: Sequence[str]) -> list[str]:
    """Copy the boot + on-demand modules into ``dest``; return the boot load order."""
    everything = scan_modules(moddir)
    (moddir / "modules.dep").write_text(format_modules_dep(everything))
    builtin = builtin_names(moddir)
    full_dep = (moddir / "modules.dep").read_text()
    order = load_order(full_dep, boot, builtin)
    net_order = [r for r in load_order(full_dep, [*boot, *NET_MODULES], builtin) if r not in order]
    shipped_rel = load_order(full_dep, [*boot, *NET_MODULES, *ON_DEMAND_MODULES], builtin)
    shipped = {module_name(r): everything[module_name(r)] for r in shipped_rel}
    target = dest / "lib/modules" / release
    for rel, _deps in shipped.values():
        out = target / rel.removesuffix(".xz")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(read_ko(moddir / rel))
    plain = {n: (r.removesuffix(".xz"), d) for n, (r, d) in shipped.items()}
    (target / "modules.dep").write_text(format_modules_dep(plain))
    for extra in ("modules.builtin", "modules.order"):
        if (moddir / extra).exists():
            shutil.copyfile(moddir / extra, target / extra)
    load_file = dest / LOAD_ORDER_FILE
    load_file.parent.mkdir(parents=True, exist_ok=True)
    for path, rels in ((load_file, order), (dest / NET_LOAD_ORDER_FILE, net_order)):
        abs_paths = [f"/lib/modules/{release}/{r.removesuffix('.xz')}" for r in rels]
        path.write_text("".join(p + "\n" for p in abs_paths))
    return [module_name(r) for r in order]
