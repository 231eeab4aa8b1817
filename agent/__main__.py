"""Agent entry point: `python3 -m kata_py.agent` — PID 1 of the guest.

The guest's /init (guest-image/init) mounts the basics and execs this. As
PID 1 the agent reaps every orphan (a SIGCHLD handler), and when the host
destroys the sandbox it syncs and ends the VM. Outside a VM (tests) it
runs as an ordinary process listening on a unix socket.

The VM is ended with a guest *reboot*, not a power-off: QEMU runs with
-no-reboot, so a reboot makes it exit whether or not the guest has ACPI.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from kata_py.agent import shared
from kata_py.agent.server import VSOCK_LISTEN, AgentServer

log = logging.getLogger("kata_py.agent")

LINUX_REBOOT_CMD_RESTART = 0x01234567
LOG_LEVEL_PARAM = "kata_py.agent.log="


def _reap_children(signum: int, frame: FrameType | None) -> None:
    """Collect every exited child so no zombie stays (PID 1's duty)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _end_vm() -> None:
    os.sync()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.reboot(LINUX_REBOOT_CMD_RESTART)
    log.error("reboot failed: errno %d", ctypes.get_errno())


def _level_from_cmdline(default: str) -> str:
    try:
        words = Path("/proc/cmdline").read_text().split()
    except OSError:
        return default
    for word in words:
        if word.startswith(LOG_LEVEL_PARAM):
            return word[len(LOG_LEVEL_PARAM):]
    return default


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kata_py.agent")
    parser.add_argument("--listen", default=VSOCK_LISTEN,
                        help="vsock:PORT (default 1024) or a gRPC address such as unix:PATH")
    parser.add_argument("--shared-dir", type=Path, default=shared.SHARED_DIR)
    parser.add_argument("--log-level", default=None)
    args = parser.parse_args(argv)

    pid1 = os.getpid() == 1
    level = args.log_level or _level_from_cmdline("warning")
    logging.basicConfig(stream=sys.stderr, level=level.upper(),
                        format="kata-py-agent: %(levelname)s %(name)s: %(message)s")
    if pid1:
        signal.signal(signal.SIGCHLD, _reap_children)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, f: server.stopping.set())

    server = AgentServer(args.listen, args.shared_dir)
    server.start()
    if pid1:
        print("kata-py-agent: ready", file=sys.stderr, flush=True)
    while not server.stopping.wait(3600):
        pass
    server.stop()
    log.info("agent stopped")
    if pid1:
        _end_vm()
    return 0


if __name__ == "__main__":
    sys.exit(main())
