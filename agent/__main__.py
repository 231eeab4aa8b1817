"""Agent entry point: `python3 -m kata_py.agent` — PID 1 of the guest.

The guest's /init (guest-image/init) mounts the basics and execs this. As
PID 1 the agent reaps every orphan (agent/reaper.py), and when the host
destroys the sandbox it syncs and ends the VM. Outside a VM (tests) it
runs as an ordinary process listening on a unix socket.

The VM is ended with a guest *reboot*, not a power-off: QEMU runs with
-no-reboot, so a reboot makes it exit whether or not the guest has ACPI.
"""

from __future__ import annotations


def _uptime_s() -> float:
    try:
        with open("/proc/uptime") as f:
            return float(f.read().split()[0])
    except OSError:
        return 0.0


STARTED_AT_UPTIME_S = _uptime_s()  # before the heavy imports below

import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from kata_py.agent import shared  # noqa: E402
from kata_py.agent.reaper import Reaper  # noqa: E402
from kata_py.agent.shared import VSOCK_LISTEN  # noqa: E402

log = logging.getLogger("kata_py.agent")

LINUX_REBOOT_CMD_RESTART = 0x01234567
LOG_LEVEL_PARAM = "kata_py.agent.log="


def _end_vm() -> None:
    import ctypes  # only now: 0.18 s of guest boot under TCG

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


def _prepare_cgroups() -> None:
    """The containers' parent cgroup, ready before any create (cgroups.py)."""
    from kata_py.agent import cgroups
    try:
        cgroups.prepare_parent(shared.CGROUP_ROOT, shared.CGROUP_PARENT)
    except OSError as exc:      # each create still enables what it needs
        log.warning("cannot prepare %s/%s: %s", shared.CGROUP_ROOT, shared.CGROUP_PARENT, exc)


USAGE = ("usage: python3 -m kata_py.agent [--listen vsock:PORT|unix:PATH] "
         "[--shared-dir DIR] [--log-level LEVEL]")


def parse_args(argv: list[str]) -> dict[str, str]:
    """--listen/--shared-dir/--log-level (no argparse: it costs 0.3 s of guest
    boot under TCG, for three options)."""
    opts = {"listen": VSOCK_LISTEN, "shared_dir": str(shared.SHARED_DIR), "log_level": ""}
    args = list(argv)
    while args:
        flag = args.pop(0)
        name, _, value = flag.partition("=")
        key = name[2:].replace("-", "_")
        if not name.startswith("--") or key not in opts:
            raise SystemExit(f"kata-py-agent: unknown argument {flag!r}\n{USAGE}")
        if not value:
            if not args:
                raise SystemExit(f"kata-py-agent: {name} needs a value\n{USAGE}")
            value = args.pop(0)
        opts[key] = value
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)

    pid1 = os.getpid() == 1
    level = opts["log_level"] or _level_from_cmdline("warning")
    logging.basicConfig(stream=sys.stderr, level=level.upper(),
                        format="kata-py-agent: %(levelname)s %(name)s: %(message)s")
    # The zygote first: it must be forked before any thread starts and before
    # gRPC is imported (agent/zygote.py). It imports the launcher while this
    # process imports gRPC. Only as PID 1, where re-parented launchers come to us.
    zygote = None
    if pid1:
        from kata_py.agent.containers import CONFIG_FD, LAUNCHER_ENV
        from kata_py.agent.zygote import Zygote
        zygote = Zygote.fork(LAUNCHER_ENV, CONFIG_FD)
    if pid1:
        _prepare_cgroups()
    from kata_py.agent import deferred
    deferred.defer()       # modules grpc and protobuf import but never use here (deferred.py)
    from kata_py.agent.server import AgentServer  # gRPC: ~1 s of guest boot under TCG

    # The reaper owns every waitpid(); as PID 1 it also collects all orphans.
    reaper = Reaper().install()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, f: server.stopping.set())

    server = AgentServer(opts["listen"], Path(opts["shared_dir"]), reaper, zygote)
    server.start()
    if pid1:
        print(f"{shared.READY_LINE} (guest uptime {_uptime_s():.2f}s; python started at "
              f"{STARTED_AT_UPTIME_S:.2f}s)", file=sys.stderr, flush=True)
    while not server.stopping.wait(3600):
        pass
    server.stop()
    log.info("agent stopped")
    if pid1:
        _end_vm()
    return 0


if __name__ == "__main__":
    sys.exit(main())
