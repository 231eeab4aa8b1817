"""Debian packages: the lock file, dependency closure, download cache, extraction.

``guest-image/packages.lock`` pins every .deb the image is built from::

    kernel linux-image-6.1.0-56-cloud-amd64 6.1.192-2
    deb    python3.11-minimal 3.11.2-6+deb12u9

``--relock`` (or a missing lock) resolves it again with apt-cache: the kernel
from the ``linux-image-cloud-amd64`` meta package, the rest as the
Depends/Pre-Depends closure of :data:`ROOT_PACKAGES`. A pinned version the
mirror no longer has (Debian drops superseded kernel ABI packages) is
replaced by the current candidate for this build only, with a warning.

Downloaded .debs are kept in the download cache and never fetched twice.
Nothing is installed into the host: packages are unpacked with ``dpkg-deb -x``.
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from guestimage import BuildError
from guestimage.tools import C_ENV, run

log = logging.getLogger(__name__)

KERNEL_META = "linux-image-cloud-amd64"
ROOT_PACKAGES = (
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "libstdc++6",  # protobuf's upb extension (_message.abi3.so) links it
    "busybox-static",
)
# Dependencies that are tools or data, not libraries Python loads: not followed.
EXCLUDED = frozenset(
    {
        "dpkg",
        "install-info",
        "tar",
        "debconf",
        "perl",
        "perl-base",
        "perl-modules-5.36",
        "libperl5.36",
        "mailcap",
        "mime-support",
        "media-types",
        "readline-common",
        "libtirpc-common",
        "gcc-12-base",
    }
)
APT_HINT = "check the network reaches the Debian mirror and run apt-get update"
GONE_MARKERS = ("was not found", "Unable to locate package", "404", "Couldn't find any package")


@dataclass(frozen=True)
class Pin:
    kind: str  # "kernel" or "deb"
    name: str
    version: str

    def spec(self) -> str:
        return f"{self.name}={self.version}"


def read_lock(path: Path) -> list[Pin]:
    pins = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 3 or fields[0] not in ("kernel", "deb"):
            raise BuildError(
                f"{path}:{lineno}: expected 'kernel|deb NAME VERSION', got {line!r}",
                "fix the line or regenerate the file with build.py --relock",
            )
        pins.append(Pin(*fields))
    if sum(p.kind == "kernel" for p in pins) != 1:
        raise BuildError(f"{path}: needs exactly one 'kernel' line", "run build.py --relock")
    return pins


def write_lock(path: Path, pins: list[Pin]) -> None:
    lines = [
        "# Debian packages the kata-py guest image is built from (see guest-image/README.md).",
        "# Regenerate with: .venv/bin/python guest-image/build.py --relock",
        *(f"{p.kind:<6} {p.name} {p.version}" for p in pins),
    ]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def candidate_versions(names: list[str]) -> dict[str, str]:
    out = run(["apt-cache", "show", "--no-all-versions", *names], "apt-cache show", APT_HINT)
    versions: dict[str, str] = {}
    name = ""
    for line in out.decode().splitlines():
        if line.startswith("Package: "):
            name = line.split()[1]
        elif line.startswith("Version: ") and name and name not in versions:
            versions[name] = line.split()[1]
    missing = [n for n in names if n not in versions]
    if missing:
        raise BuildError(f"apt knows no candidate for {', '.join(missing)}", APT_HINT)
    return versions


def parse_depends(text: str) -> dict[str, list[list[str]]]:
    """``apt-cache depends`` output -> package -> list of alternative groups.

    ``|Depends:`` joins the next line's alternative; the indented provider
    lines under a ``<virtual>`` target become further alternatives.
    """
    result: dict[str, list[list[str]]] = {}
    current = ""
    pending: list[str] = []
    for line in text.splitlines():
        if not line.startswith(" "):
            current = line.strip()
            result.setdefault(current, [])
            continue
        stripped = line.strip()
        kind, sep, target = stripped.partition(": ")
        if sep and kind.lstrip("|") in ("Depends", "PreDepends"):
            pending.append(target.strip())
            if not kind.startswith("|"):
                result[current].append(pending)
                pending = []
        elif line.startswith("    ") and result.get(current):
            result[current][-1].append(stripped)  # provider of a virtual package
    return result


def choose(group: list[str]) -> str | None:
    for alt in group:
        if not alt.startswith("<") and alt not in EXCLUDED:
            return alt
    return None


def resolve_closure(roots: tuple[str, ...]) -> list[str]:
    seen: list[str] = []
    todo = list(roots)
    while todo:
        batch = [p for p in dict.fromkeys(todo) if p not in seen]
        todo = []
        if not batch:
            break
        seen.extend(batch)
        out = run(
            [
                "apt-cache",
                "depends",
                "--no-recommends",
                "--no-suggests",
                "--no-conflicts",
                "--no-breaks",
                "--no-replaces",
                "--no-enhances",
                *batch,
            ],
            "apt-cache depends",
            APT_HINT,
        )
        for groups in parse_depends(out.decode()).values():
            todo.extend(c for g in groups if (c := choose(g)) and c not in seen)
    return seen


def resolve_kernel() -> Pin:
    out = run(["apt-cache", "depends", KERNEL_META], f"apt-cache depends {KERNEL_META}", APT_HINT)
    deps = [c for g in parse_depends(out.decode()).get(KERNEL_META, []) if (c := choose(g))]
    concrete = [d for d in deps if d.startswith("linux-image-")]
    if not concrete:
        raise BuildError(f"{KERNEL_META} depends on no linux-image package", APT_HINT)
    return Pin("kernel", concrete[0], candidate_versions([concrete[0]])[concrete[0]])


def resolve_lock() -> list[Pin]:
    """Fresh pins for the kernel and the closure of ROOT_PACKAGES."""
    names = resolve_closure(ROOT_PACKAGES)
    versions = candidate_versions(names)
    return [resolve_kernel(), *(Pin("deb", n, versions[n]) for n in sorted(names))]


def cached_deb(cache: Path, pin: Pin) -> Path | None:
    hits = sorted(cache.glob(f"{pin.name}_{pin.version.replace(':', '%3a')}_*.deb"))
    return hits[0] if hits else None


def apt_download(specs: list[str], cache: Path) -> str:
    """Download into a temp dir, then move into the cache; return apt's stderr on failure."""
    with tempfile.TemporaryDirectory(dir=cache, prefix=".dl-") as tmp:
        proc = subprocess.run(
            ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", *specs],
            cwd=tmp,
            capture_output=True,
            env=C_ENV,
        )
        for deb in Path(tmp).glob("*.deb"):
            deb.replace(cache / deb.name)
        return proc.stderr.decode(errors="replace") if proc.returncode else ""


def replacement(pin: Pin) -> Pin:
    """The pin to use when ``pin`` is gone from the mirror."""
    if pin.kind == "kernel":
        new = resolve_kernel()
        log.warning(
            "pinned kernel %s %s is gone from the mirror; using %s %s from %s "
            "(run build.py --relock to pin it)",
            pin.name,
            pin.version,
            new.name,
            new.version,
            KERNEL_META,
        )
        return new
    new = Pin("deb", pin.name, candidate_versions([pin.name])[pin.name])
    log.warning(
        "pinned %s %s is gone from the mirror; using %s (run build.py --relock to pin it)",
        pin.name,
        pin.version,
        new.version,
    )
    return new


def fetch(pins: list[Pin], cache: Path) -> dict[Pin, Path]:
    """Every pin's .deb in the download cache (downloading what is missing).

    Returns actual pin -> file; an actual pin differs from the locked one only
    when the locked version is gone from the mirror.
    """
    cache.mkdir(parents=True, exist_ok=True)
    missing = [p for p in pins if cached_deb(cache, p) is None]
    if missing:
        log.info("downloading %d packages", len(missing))
        if apt_download([p.spec() for p in missing], cache):
            for pin in missing:
                err = apt_download([pin.spec()], cache) if not cached_deb(cache, pin) else ""
                if err and not any(m in err for m in GONE_MARKERS):
                    raise BuildError(
                        f"apt-get download {pin.spec()} failed: {err.strip()}", APT_HINT
                    )
    result: dict[Pin, Path] = {}
    for pin in pins:
        actual = pin
        path = cached_deb(cache, pin)
        if path is None:
            actual = replacement(pin)
            path = cached_deb(cache, actual)
            if path is None and (err := apt_download([actual.spec()], cache)):
                raise BuildError(
                    f"apt-get download {actual.spec()} failed: {err.strip()}", APT_HINT
                )
            path = cached_deb(cache, actual)
            if path is None:
                raise BuildError(f"apt-get download {actual.spec()} produced no file", APT_HINT)
        result[actual] = path
    return result


def extract(deb: Path, root: Path) -> None:
    run(["dpkg-deb", "-x", deb, root], f"dpkg-deb -x {deb.name}", "check the .deb is intact")
