"""The `kata-py` command line. Thin: parse flags, call one runtime function,
print. Only this module prints; errors become `kata-py: <message>` on
stderr and a non-zero exit (tracebacks with --debug).

Heavy imports (grpc, qemu.qmp) happen inside the commands, not at import
time, so cheap verbs stay cheap.
"""

from __future__ import annotations

import inspect
import logging
import sys
from pathlib import Path
from typing import Any, TypeVar

import click

from kata_py import __version__
from kata_py.errors import KataError

log = logging.getLogger("kata_py")


DEFAULT_ROOT = "/run/kata-py"
F = TypeVar("F", bound=Any)


class Context:
    caller_umask = 0o022    # the caller's, before main() made ours 077 (private.py)

    def __init__(self, root: str | None, config: str | None, debug: bool) -> None:
        self.root = root
        self.config_path = config
        self.debug = debug

    @property
    def root_dir(self) -> Path:
        return Path(self.root or DEFAULT_ROOT)

    def config(self) -> Any:
        from dataclasses import replace

        from kata_py.config import load_config

        cfg = load_config(self.config_path)
        return replace(cfg, state_dir=self.root) if self.root else cfg


class JsonFormatter(logging.Formatter):
    """One JSON object per line, runc's `--log-format=json` shape
    ({"level": "error", "msg": …, "time": RFC 3339}): podman reads the "msg"
    of the --log file to report why a create or exec failed."""

    def format(self, record: logging.LogRecord) -> str:
        import json
        from datetime import UTC, datetime

        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        when = datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z")
        return json.dumps({"level": record.levelname.lower(), "msg": msg, "time": when})


def _tag_warnings(record: logging.LogRecord) -> bool:
    """A text log's warnings read `kata-py: warning: …`, apart from errors."""
    setattr(record, "tag", "warning: " if record.levelno == logging.WARNING else "")  # noqa: B010
    return True


def _setup_logging(log_file: str | None, log_format: str, debug: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING
    handler: logging.Handler = (logging.FileHandler(log_file) if log_file
                                else logging.StreamHandler(sys.stderr))
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.addFilter(_tag_warnings)
        handler.setFormatter(logging.Formatter(
            "kata-py: %(levelname)s %(name)s: %(message)s" if debug
            else "kata-py: %(tag)s%(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)


def _version_lines() -> list[str]:
    """runc's version lines (version, commit, spec) plus the guest kernel."""
    import json
    import subprocess

    from kata_py.records import OCI_VERSION

    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=5).stdout.strip()
    except OSError:
        commit = ""
    try:
        manifest = json.loads(Path("/var/cache/kata-py/guest/manifest.json").read_text())
        kernel = str(manifest.get("kernel_release", "unknown"))
    except (OSError, ValueError):
        kernel = "no guest image"
    return [__version__, f"commit: {commit or 'unknown'}", f"spec: {OCI_VERSION}",
            f"guest kernel: {kernel}"]


def _print_version(ctx: click.Context) -> None:
    version, *rest = _version_lines()
    click.echo("\n".join([f"kata-py version {version}", *rest]))
    ctx.exit(0)


# --- help in runc's layout (urfave/cli's templates) --------------------------------

PROG = "kata-py"
ABOUT = """kata-py runs OCI containers as runc does, each inside its own QEMU micro-VM:
the container's namespaces, cgroups and process are made by an agent in the
guest, and its root filesystem is shared into the VM with virtio-fs.

To run a container from a bundle (a directory with config.json and a root
filesystem):

    # kata-py run [ -b bundle ] <container-id>"""


def _go_default(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


def _option_rows(params: list[click.Parameter]) -> list[tuple[str, str]]:
    """runc's option lines: long name first, "value" after a flag that takes one."""
    rows = []
    for param in params:
        if not isinstance(param, click.Option) or param.hidden:
            continue
        value = "" if param.is_flag or param.count else " value"
        names = sorted(param.opts + param.secondary_opts, key=lambda n: not n.startswith("--"))
        text = param.help or ""
        if not (param.is_flag or param.default is None or param.default == ""
                or callable(param.default) or param.multiple):
            text += f" (default: {_go_default(param.default)})"
        rows.append((", ".join(n + value for n in names), text))
    return rows


def _rows(rows: list[tuple[str, str]]) -> list[str]:
    width = max((len(left) for left, _ in rows), default=0) + 2
    return [f"   {left.ljust(width)}{right}".rstrip() for left, right in rows]


class RuncCommand(click.Command):
    """A verb whose --help reads as runc's: NAME, USAGE, DESCRIPTION, OPTIONS."""

    def __init__(self, *args: Any, args_usage: str = "<container-id>", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.args_usage = args_usage

    def usage_line(self) -> str:
        return inspect.cleandoc(self.help or "").partition("\n")[0]

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = _option_rows([p for p in self.get_params(ctx) if "--help" not in p.opts])
        description = inspect.cleandoc(self.help or "").partition("\n")[2].strip()
        lines = ["NAME:", f"   {PROG} {self.name} - {self.usage_line()}", "", "USAGE:",
                 f"   {PROG} {self.name}{' [command options]' if rows else ''} "
                 f"{self.args_usage}".rstrip()]
        if description:
            lines += ["", "DESCRIPTION:", *(f"   {line}".rstrip()
                                            for line in description.splitlines())]
        if rows:
            lines += ["", "OPTIONS:", *_rows(rows)]
        formatter.write("\n".join(lines) + "\n")


class RuncGroup(click.Group):
    """The top level: runc's help layout, `help`/`h`, help without a verb."""

    command_class = RuncCommand

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, "help" if cmd_name == "h" else cmd_name)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        commands = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is None or command.hidden or name == "help":
                continue
            usage = command.usage_line() if isinstance(command, RuncCommand) else ""
            commands.append((name, usage))
        commands.append(("help, h", "Shows a list of commands or help for one command"))
        params = [p for p in self.get_params(ctx)
                  if "--help" not in p.opts and "--version" not in p.opts]
        options = _option_rows(params) + [("--help, -h", "show help"),
                                          ("--version, -v", "print the version")]
        version, *more = _version_lines()
        lines = ["NAME:", f"   {PROG} - {(self.help or '').strip()}", "", ABOUT, "", "USAGE:",
                 f"   {PROG} [global options] command [command options] [arguments...]", "",
                 "VERSION:", f"   {version}", *more, "", "COMMANDS:", *_rows(commands), "",
                 "GLOBAL OPTIONS:", *_rows(options)]
        formatter.write("\n".join(lines) + "\n")


@click.group(cls=RuncGroup, invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", default=None,
              help=f"root directory for storage of container state (default: \"{DEFAULT_ROOT}\")")
@click.option("--log", "log_file", default=None,
              help="set the log file to write kata-py logs to (default is stderr)")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              help="set the log format ('text' or 'json')")
@click.option("--debug", is_flag=True, help="enable debug logging, and tracebacks")
@click.option("--config", default=None, envvar="KATA_PY_CONFIG",
              help="runtime configuration TOML (default: configs/kata-py.toml values; "
                   "$KATA_PY_CONFIG)")
@click.option("--version", "-v", is_flag=True, is_eager=True, expose_value=False,
              callback=lambda ctx, _, value: _print_version(ctx) if value else None,
              help="print the version")
# Engines pass these (conmon: --systemd-cgroup with podman's systemd cgroup
# manager; podman: --cgroup-manager=disabled with --cgroups=disabled). The
# container's cgroup lives in the guest, so the host cgroup manager is moot.
@click.option("--systemd-cgroup", is_flag=True, hidden=True, expose_value=False)
@click.option("--cgroup-manager", type=click.Choice(["cgroupfs", "systemd", "disabled"]),
              hidden=True, expose_value=False)
@click.pass_context
def cli(ctx: click.Context, root: str | None, log_file: str | None, log_format: str,
        debug: bool, config: str | None) -> None:
    """run OCI containers inside QEMU micro-VMs"""
    _setup_logging(log_file, log_format, debug)
    ctx.obj = Context(root, config, debug)
    if ctx.invoked_subcommand is None:      # runc prints its help, and succeeds
        click.echo(ctx.get_help())


@cli.command(args_usage="")
@click.option("--boot", is_flag=True, help="also boot a throwaway sandbox and time it")
@click.pass_obj
def check(obj: Context, boot: bool) -> None:
    """Say whether this host can run kata-py, and why not."""
    from kata_py import check as checks

    report = checks.run_checks(obj.config(), boot=boot)
    for line in report.lines:
        click.echo(line)
    if not report.ok:
        raise KataError(report.failure or "this host cannot run kata-py")


@cli.command(args_usage="")
@click.option("--bundle", "-b", default=".", type=click.Path(file_okay=False),
              help="directory to write config.json into")
@click.option("--rootless", is_flag=True, help="a spec for a rootless container")
def spec(bundle: str, rootless: bool) -> None:
    """Write a default config.json (the one `runc spec` writes)."""
    import json
    import os
    from pathlib import Path

    from kata_py.spec_default import default_spec

    path = Path(bundle) / "config.json"
    if path.exists():
        raise KataError(f"{path} already exists", "remove it first")
    try:
        # The caller's file, with the caller's umask (runc's 0666 & ~umask), not ours.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.fchmod(fd, 0o666 & ~Context.caller_umask)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(default_spec(rootless), indent="\t") + "\n")
    except OSError as exc:
        raise KataError(f"cannot write {path}: {exc.strerror}",
                        "check that the bundle directory exists") from exc


@cli.command(args_usage="")
def features() -> None:
    """Print what kata-py supports (OCI features document, JSON)."""
    import json

    from kata_py.features import features as document

    click.echo(json.dumps(document(), indent=4))


def _create_flags(command: F) -> F:
    """The flags create and run share (runc's)."""
    for option in reversed((
            click.option("--console-socket", default=None,
                         help="unix socket that receives the terminal's master "
                              "(process.terminal)"),
            click.option("--no-pivot", is_flag=True,
                         help="move the root instead of pivot_root (rootfs on a ramdisk)"),
            click.option("--no-new-keyring", is_flag=True,
                         help="accepted; the guest kernel's keyring is the VM's own"),
            click.option("--preserve-fds", default=0, type=int,
                         help="only 0: host fds cannot cross into the VM"))):
        command = option(command)
    return command


@cli.command()
@click.option("--bundle", "-b", default=".", help="path to the OCI bundle")
@click.option("--pid-file", default=None, help="write the monitor's pid here")
@_create_flags
@click.argument("container_id")
@click.pass_obj
def create(obj: Context, bundle: str, pid_file: str | None, console_socket: str | None,
           no_pivot: bool, no_new_keyring: bool, preserve_fds: int, container_id: str) -> None:
    """Create a container: boot its VM, build it, leave its process waiting."""
    from kata_py import runtime

    _refuse_unsupported(preserve_fds)
    runtime.create(obj.root_dir, container_id, Path(bundle),
                   Path(pid_file) if pid_file else None, obj.config_path, obj.debug,
                   Path(console_socket) if console_socket else None, no_pivot)


def _refuse_unsupported(preserve_fds: int) -> None:
    """A host file descriptor cannot cross into the VM (neither can it in Kata)."""
    if preserve_fds:
        raise KataError(f"--preserve-fds {preserve_fds}: file descriptors cannot be passed "
                        "into the container's VM",
                        "pass data through the process's stdio or a bind mount instead")


@cli.command()
@click.argument("container_id")
@click.pass_obj
def start(obj: Context, container_id: str) -> None:
    """Start a created container's process."""
    from kata_py import runtime

    runtime.start(obj.root_dir, container_id, obj.config_path)


@cli.command()
@click.argument("container_id")
@click.pass_obj
def state(obj: Context, container_id: str) -> None:
    """Print the container's OCI state as JSON."""
    from kata_py.fastcli import go_dumps, runc_state
    from kata_py.state import store

    st = store(obj.root_dir).load(container_id)
    click.echo(go_dumps(runc_state(st.oci()), indent=True), nl=False)  # runc's


@cli.command(args_usage="<container-id> [signal]")
@click.option("--all", "-a", "all_processes", is_flag=True,
              help="signal every process of the container")
@click.argument("container_id")
@click.argument("signal", default="TERM")
@click.pass_obj
def kill(obj: Context, all_processes: bool, container_id: str, signal: str) -> None:
    """Send a signal (name or number, default TERM) to the container.

    Signal 0 sends nothing: it succeeds while the container's process exists."""
    from kata_py import runtime
    from kata_py.signals import parse_signal

    signum = 0 if signal.strip() == "0" else parse_signal(signal)
    runtime.kill(obj.root_dir, container_id, signum, all_processes, obj.config_path)


@cli.command()
@click.option("--force", "-f", is_flag=True, help="kill a running container first")
@click.argument("container_id")
@click.pass_obj
def delete(obj: Context, force: bool, container_id: str) -> None:
    """Delete a container and its VM."""
    from kata_py import runtime

    runtime.delete(obj.root_dir, container_id, force, obj.config_path)


@cli.command()
@click.option("--bundle", "-b", default=".", help="path to the OCI bundle")
@click.option("--pid-file", default=None)
@click.option("--detach", "-d", is_flag=True, help="do not wait for the container")
@click.option("--keep", is_flag=True, help="do not delete the container after it exits")
@_create_flags
@click.argument("container_id")
@click.pass_obj
def run(obj: Context, bundle: str, pid_file: str | None, detach: bool, keep: bool,
        console_socket: str | None, no_pivot: bool, no_new_keyring: bool, preserve_fds: int,
        container_id: str) -> None:
    """Create and start a container; exit with its exit code."""
    from kata_py import runtime

    _refuse_unsupported(preserve_fds)
    code = runtime.run(obj.root_dir, container_id, Path(bundle),
                       Path(pid_file) if pid_file else None, detach, keep, obj.config_path,
                       obj.debug, Path(console_socket) if console_socket else None,
                       no_pivot)
    sys.exit(code)


@cli.command(args_usage="<container-id> <command> [command options]",
             context_settings={"allow_interspersed_args": False})   # options end at the id
@click.option("--process", "-p", "process_file", default=None,
              help="JSON file with an OCI process object")
@click.option("--tty", "-t", is_flag=True,
              help="give the process a terminal (with -d and --console-socket)")
@click.option("--detach", "-d", is_flag=True, help="do not wait for the process")
@click.option("--pid-file", default=None)
@click.option("--console-socket", default=None,
              help="unix socket that receives the terminal's master")
@click.option("--cwd", default=None, help="working directory in the container")
@click.option("--env", "-e", multiple=True, help="KEY=VALUE, repeatable")
@click.option("--user", "-u", default=None, help="uid[:gid]")
@click.option("--preserve-fds", default=0, type=int,
              help="only 0: host fds cannot cross into the VM")
@click.argument("container_id")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def exec(obj: Context, process_file: str | None, tty: bool, detach: bool,
         pid_file: str | None, console_socket: str | None, cwd: str | None,
         env: tuple[str, ...], user: str | None, preserve_fds: int, container_id: str,
         command: tuple[str, ...]) -> None:
    """Run a process in a running container; exit with its exit code."""
    import json

    from kata_py import runtime

    _refuse_unsupported(preserve_fds)
    process = None
    if process_file:
        try:
            process = json.loads(Path(process_file).read_text())
        except (OSError, ValueError) as exc:
            raise KataError(f"cannot read --process {process_file}: {exc}",
                            "give a JSON file with an OCI process object") from exc
    code = runtime.exec_process(obj.root_dir, container_id, process, list(command), list(env),
                                cwd, user, detach, Path(pid_file) if pid_file else None,
                                obj.config_path, tty,
                                Path(console_socket) if console_socket else None)
    sys.exit(code)


@cli.command()
@click.argument("container_id")
@click.pass_obj
def pause(obj: Context, container_id: str) -> None:
    """Freeze every process of the container."""
    from kata_py import runtime

    runtime.pause(obj.root_dir, container_id, obj.config_path)


@cli.command()
@click.argument("container_id")
@click.pass_obj
def resume(obj: Context, container_id: str) -> None:
    """Thaw a paused container."""
    from kata_py import runtime

    runtime.resume(obj.root_dir, container_id, obj.config_path)


@cli.command(args_usage="<container-id> [ps options]",
             context_settings={"allow_interspersed_args": False})   # ps's options follow the id
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "json"]), default="table",
              help="select one of: table or json")
@click.argument("container_id")
@click.argument("ps_options", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def ps(obj: Context, fmt: str, container_id: str, ps_options: tuple[str, ...]) -> None:
    """List the container's processes as ps(1) shows them (its own pids).

    ps options go after the id (after a --, if you like), -ef without any, as
    runc runs ps with them; kata-py renders ps's columns itself from the
    guest's /proc, for -e, -A, -f, a, x, h, --no-headers and -o/--format with
    these keywords (KEY=HEADER renames a column): pid ppid pgid sid tpgid uid
    ruid gid rgid user ruser group rgroup comm args c %cpu stime tty time
    times etime etimes stat s ni nlwp vsz rss bsdtime, and their aliases.
    --format json prints the pids alone."""
    from kata_py import psview, runtime
    from kata_py.fastcli import go_dumps

    options = ps_options[1:] if ps_options[:1] == ("--",) else ps_options
    layout = psview.parse_options(options) if fmt == "table" else None   # before the agent
    entries, boottime_ns = runtime.processes(obj.root_dir, container_id, obj.config_path)
    procs = psview.container_processes(entries)
    if layout is None:
        click.echo(go_dumps([p.pid for p in procs] or None))     # runc: null for none
        return
    click.echo(psview.render(layout, procs, psview.Clock.of_guest(boottime_ns)), nl=False)


def _bytes(value: str | None) -> int | None:
    """A size as runc takes it: bytes, or with a k/m/g suffix; -1 for unlimited."""
    if value is None:
        return None
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = value.strip().lower().rstrip("b")
    scale = units.get(text[-1:], 1)
    digits = text[:-1] if scale > 1 else text
    try:
        return int(digits) * scale if digits != "-1" else -1
    except ValueError:
        raise KataError(f"invalid size {value!r}", "use bytes or a k/m/g suffix") from None


@cli.command()
@click.option("--resources", "-r", default=None,
              help="file with OCI linux.resources JSON ('-' for stdin)")
@click.option("--memory", default=None, help="memory limit (bytes, k/m/g)")
@click.option("--memory-reservation", default=None)
@click.option("--memory-swap", default=None, help="memory + swap limit")
@click.option("--cpu-share", "--cpu-shares", "cpu_shares", type=int, default=None,
              help="CPU shares (relative weight vs. other containers)")
@click.option("--cpu-quota", type=int, default=None)
@click.option("--cpu-period", type=int, default=None)
@click.option("--cpuset-cpus", default=None)
@click.option("--cpuset-mems", default=None)
@click.option("--pids-limit", type=int, default=None)
@click.argument("container_id")
@click.pass_obj
def update(obj: Context, resources: str | None, memory: str | None,
           memory_reservation: str | None, memory_swap: str | None, cpu_shares: int | None,
           cpu_quota: int | None, cpu_period: int | None, cpuset_cpus: str | None,
           cpuset_mems: str | None, pids_limit: int | None, container_id: str) -> None:
    """Change a container's resource limits (its cgroup in the guest)."""
    import json

    from kata_py import runtime
    from kata_py.container import resources_update

    changes: dict[str, object] = {}
    if resources:
        try:
            text = sys.stdin.read() if resources == "-" else Path(resources).read_text()
            changes.update(resources_update(json.loads(text)))
        except (OSError, ValueError) as exc:
            raise KataError(f"cannot read --resources {resources}: {exc}",
                            "give OCI linux.resources JSON") from exc
    flags = {"memory_limit": _bytes(memory), "memory_reservation": _bytes(memory_reservation),
             "memory_swap": _bytes(memory_swap), "cpu_shares": cpu_shares,
             "cpu_quota": cpu_quota, "cpu_period": cpu_period, "cpuset_cpus": cpuset_cpus,
             "cpuset_mems": cpuset_mems, "pids_limit": pids_limit}
    changes.update({k: v for k, v in flags.items() if v is not None})
    runtime.update(obj.root_dir, container_id, changes, obj.config_path)


@cli.command()
@click.option("--stats", is_flag=True, help="print the statistics once and exit")
@click.option("--interval", default="5s", help="time between statistics (e.g. 5s, 500ms)")
@click.argument("container_id")
@click.pass_obj
def events(obj: Context, stats: bool, interval: str, container_id: str) -> None:
    """Print container statistics as JSON lines (runc's events)."""
    import time

    from kata_py import runtime
    from kata_py.fastcli import go_dumps

    text = interval.strip()
    try:
        seconds = float(text[:-2]) / 1000 if text.endswith("ms") else float(text.rstrip("s"))
    except ValueError:
        raise KataError(f"invalid --interval {interval!r}", "use e.g. 5s or 500ms") from None
    while True:
        data = runtime.stats(obj.root_dir, container_id, obj.config_path)
        click.echo(go_dumps({"type": "stats", "id": container_id, "data": data}))
        if stats:
            return
        time.sleep(seconds)


def _owner(path: Path) -> str:
    """runc's owner of a container: its state directory's, by name."""
    import pwd

    try:
        uid = path.stat().st_uid
    except OSError:
        return ""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"#{uid}"


def _tabwrite(rows: list[list[str]]) -> str:
    """Go's tabwriter.NewWriter(w, 12, 1, 3, ' ', 0), as runc's list uses it:
    each column but the last as wide as its widest cell plus 3, at least 12."""
    widths = [max(12, *(len(row[n]) + 3 for row in rows)) for n in range(len(rows[0]) - 1)]
    return "".join("".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True))
                   + row[-1] + "\n" for row in rows)


@cli.command(name="list", args_usage="")
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "json"]), default="table",
              help="select one of: table or json")
@click.option("--quiet", "-q", is_flag=True, help="display only container IDs")
@click.pass_obj
def list_(obj: Context, fmt: str, quiet: bool) -> None:
    """List containers (runc's columns, or its JSON)."""
    from kata_py.fastcli import go_dumps, runc_state
    from kata_py.state import store as containers

    store = containers(obj.root_dir)
    states = [runc_state(st.oci(), _owner(store.root / st.id)) for st in store.list()]
    if quiet:
        for st in states:
            click.echo(st["id"])
    elif fmt == "json":
        click.echo(go_dumps(states or None))        # runc's: null when there are none
    else:
        click.echo(_tabwrite([["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]] + [
            [str(st[k]) for k in ("id", "pid", "status", "bundle", "created", "owner")]
            for st in states]), nl=False)


_ANY_ARGS = {"ignore_unknown_options": True, "allow_extra_args": True}


@cli.command(context_settings=_ANY_ARGS)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def checkpoint(args: tuple[str, ...]) -> None:
    """Checkpoint a running container: not supported by kata-py.

    runc's options are accepted, and the answer is the same whatever they are."""
    raise KataError("checkpoint is not supported",
                    "a container's processes live in its VM's memory, which kata-py cannot "
                    "save (there is no CRIU in the guest); stop it and run it again instead")


@cli.command(context_settings=_ANY_ARGS)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def restore(args: tuple[str, ...]) -> None:
    """Restore a container from a checkpoint: not supported by kata-py.

    runc's options are accepted, and the answer is the same whatever they are."""
    raise KataError("restore is not supported",
                    "kata-py cannot checkpoint a container, so there is nothing to restore; "
                    "create and start it again instead")


@cli.command(name="help", args_usage="[command]")
@click.argument("command", required=False)
@click.pass_context
def help_(ctx: click.Context, command: str | None) -> None:
    """Shows a list of commands or help for one command"""
    group = ctx.parent
    assert group is not None and isinstance(group.command, click.Group)
    if command is None:
        click.echo(group.get_help())
        return
    verb = group.command.get_command(group, command)
    if verb is None:
        raise KataError(f"no help topic for {command!r}", "see `kata-py help` for the commands")
    click.echo(verb.get_help(click.Context(verb, info_name=command, parent=group)))


def main() -> None:
    from kata_py.private import restrict_umask

    umask = restrict_umask()
    fast = getattr(sys.modules.get("kata_py.fastcli"), "CALLER_UMASK", None)
    Context.caller_umask = umask if fast is None else fast
    debug = "--debug" in sys.argv[1:]
    try:
        cli.main(prog_name=PROG, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("kata-py: aborted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except click.ClickException as exc:
        _log_failure(exc.format_message(), debug=False)
        click.echo(f"kata-py: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except KataError as exc:
        _log_failure(str(exc), debug)
        click.echo(f"kata-py: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - the one place that turns bugs into a line
        if debug:
            raise
        message = (f"internal error: {type(exc).__name__}: {exc} "
                   "(rerun with --debug for the traceback)")
        _log_failure(message, debug)
        click.echo(f"kata-py: {message}", err=True)
        sys.exit(1)


def _log_failure(message: str, debug: bool) -> None:
    """Like runc, put the fatal error in the --log file as well as on stderr
    (podman takes it from there); on stderr alone only with --debug, which
    adds the traceback."""
    to_file = any(isinstance(h, logging.FileHandler) for h in logging.getLogger().handlers)
    if to_file or debug:
        log.error("%s", message, exc_info=debug)


if __name__ == "__main__":
    main()
