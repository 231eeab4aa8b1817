"""Build steps of the kata-py guest image (kernel + initramfs/rootfs + agent).

``guest-image/build.py`` is the command line; the modules here do the work:

- ``debs``     — packages.lock, dependency closure, apt-get download, dpkg-deb -x
- ``elf``      — the two ELF facts the build needs (.modinfo, DT_NEEDED)
- ``kmod``     — kernel modules: modules.dep and the load order the init uses
- ``rootfs``   — assembling, trimming and byte-compiling the guest tree
- ``pack``     — cpio (newc) initramfs and the read-only ext4 image
- ``manifest`` — inputs digest and manifest.json (the contract with the host)

Nothing here prints: progress is logged and the command line prints it.
Every expected failure raises :class:`BuildError` with a hint naming the fix.
"""

from __future__ import annotations


class BuildError(Exception):
    """A build failure the user can act on: ``message`` and the ``hint`` to fix it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (fix: {self.hint})" if self.hint else self.message
