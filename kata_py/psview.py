"""`kata-py ps`: the container's processes in the columns of procps' ps(1).

runc runs the host's `ps -ef` (or the ps options given after the id) and
keeps the rows whose PID is one of the container's (runc ps.go). A kata-py
container's processes live in its VM, whose image has no procps, so this
module renders those rows itself from the /proc files the agent reads in
the container's pid namespace (ReadProcesses: what podman top reads through
the holder's /proc, procview.py): pids as the container sees them.

The output is procps-ng 4.0's (src/ps/output.c: each column's header,
width and justification, show_one_proc()'s rule for a value wider than its
column; library/readproc.c and escape.c for commands), for the options
parse_options() reads as procps does (parser.c); any other option or
format keyword is refused by name. BSD's `e` (the environment) is read but
shows nothing: the agent does not read environments. Users and groups get
the host's names, as the host's ps gives them under runc; times come from
the guest's clock (its boot, its CLOCK_BOOTTIME when the files were read).
Selection is procps' too, for processes on another machine: -e, -A or `ax`
select them all, `x` those of our effective uid, `a` those with a
terminal, and no selection option those on our terminal, which is none.

Not a container process: kata-py's launcher (agent/launcher.py) before it
execs what the container runs (a created container's init, an exec on its
way). Its command line names the agent's package: `python3 -m
kata_py.agent.launcher`, or `-c "…kata_py.agent.launcher…"`
(agent/containers.py LAUNCHER_START), or, forked by the zygote, the agent's
own (guest-image/init).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kata_py.errors import KataError

log = logging.getLogger(__name__)

USER_HZ = 100                    # the clock tick of /proc/PID/stat, on both kernels
LAUNCHER_MARK = "kata_py.agent"  # in every launcher's command line (module doc)
SPACE_AMOUNT = 144               # output.c: most padding show_one_proc() writes
PID_MAX_FILE = Path("/proc/sys/kernel/pid_max")   # the width of pid columns (procps_pid_length)
DEFAULT_PS_OPTIONS = ("-ef",)    # runc's
OPTIONS_HINT = ("kata-py renders ps's columns itself from the guest's /proc and takes -e, -A, "
                "-f, a, x, h, -o/--format and --no-headers (`kata-py ps --help` lists the "
                "format keywords)")

# /proc/PID/stat fields after the ")" that ends the command name (proc(5) numbering - 3)
STATE, PPID, PGRP, SESSION, TTY_NR, TPGID = 0, 1, 2, 3, 4, 5
UTIME, STIME, NICE, NUM_THREADS, STARTTIME, POLICY = 11, 12, 16, 17, 19, 38


class PsError(KataError):
    pass


@dataclass(frozen=True)
class Proc:
    """One process, from its stat, status and cmdline (procfs(5))."""

    pid: int
    comm: str          # escaped as procps escapes it
    args: str          # the command line as ps shows it ("[comm]" when it has none)
    state: str
    ppid: int
    pgrp: int
    session: int
    tty_nr: int
    tpgid: int
    ticks: int         # utime + stime
    nice: int
    nlwp: int
    start_ticks: int   # since the guest booted
    policy: int
    ruid: int
    euid: int
    rgid: int
    egid: int
    vm_size_kb: int
    vm_rss_kb: int
    vm_lck_kb: int

    @property
    def is_launcher(self) -> bool:
        return LAUNCHER_MARK in self.args


@dataclass(frozen=True)
class Clock:
    """The guest's time, as procps reads it from /proc."""

    boot_s: int        # when it booted, seconds since 1970 (/proc/stat btime)
    uptime_ticks: int  # its uptime when the files were read (/proc/uptime)
    now_s: int         # time(NULL), for STIME's "today" and "this year"

    @classmethod
    def of_guest(cls, boottime_ns: int) -> Clock:
        now = time.time()
        return cls(int(now - boottime_ns / 1e9), boottime_ns * USER_HZ // 1_000_000_000,
                   int(now))

    def elapsed_s(self, p: Proc) -> float:
        """pids.c TIME_ELAPSED."""
        ticks = self.uptime_ticks - p.start_ticks
        return ticks / USER_HZ if ticks > 0 else 0.0


def _utf8_locale() -> bool:
    """Whether ps would run in a UTF-8 locale (escape.c: else it shows every
    non-ASCII byte as "?")."""
    value = next((v for v in map(os.environ.get, ("LC_ALL", "LC_CTYPE", "LANG")) if v), "")
    return "utf8" in value.lower().replace("-", "")


def escape(raw: bytes, utf8: bool) -> str:
    """escape.c escape_str(): control characters as "?"; in a UTF-8 locale
    valid UTF-8 as it is, else (or when it is not valid) non-ASCII as "?"
    and control characters as "." ("@" for NUL)."""
    if utf8:
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            pass
        else:
            return "".join("?" if ord(c) < 0x20 or c == "\x7f" else c for c in text)
    return "".join(chr(b) if 0x20 <= b < 0x7f else "@" if b == 0 else "." if b < 0x80 else "?"
                   for b in raw)


def _status_ints(status: bytes, key: bytes) -> list[int]:
    for line in status.splitlines():
        name, _, rest = line.partition(b":")
        if name == key:
            return [int(f) for f in rest.split() if f.isdigit()]
    return []


def parse(pid: int, stat: bytes, status: bytes, cmdline: bytes, utf8: bool) -> Proc | None:
    """A process from its /proc files; None when they are not a process's."""
    head, sep, tail = stat.rpartition(b")")
    f = tail.split()
    if not sep or len(f) <= POLICY or b"(" not in head:
        return None
    comm = escape(head.partition(b"(")[2], utf8)
    state = f[STATE].decode(errors="replace")
    # readproc.c read_unvectored(): trailing NULs dropped, NULs and newlines
    # between arguments as spaces; no command line: "[comm]", " <defunct>" for a zombie
    line = cmdline.rstrip(b"\0").replace(b"\0", b" ").replace(b"\n", b" ")
    args = escape(line, utf8) if line else f"[{comm}]" + (" <defunct>" if state == "Z" else "")
    uids = _status_ints(status, b"Uid") or [0, 0]
    gids = _status_ints(status, b"Gid") or [0, 0]
    try:
        return Proc(pid=pid, comm=comm, args=args or "?", state=state, ppid=int(f[PPID]),
                    pgrp=int(f[PGRP]), session=int(f[SESSION]), tty_nr=int(f[TTY_NR]),
                    tpgid=int(f[TPGID]), ticks=int(f[UTIME]) + int(f[STIME]),
                    nice=int(f[NICE]), nlwp=int(f[NUM_THREADS]), start_ticks=int(f[STARTTIME]),
                    policy=int(f[POLICY]), ruid=uids[0], euid=uids[1], rgid=gids[0],
                    egid=gids[1],
                    vm_size_kb=(_status_ints(status, b"VmSize") or [0])[0],
                    vm_rss_kb=(_status_ints(status, b"VmRSS") or [0])[0],
                    vm_lck_kb=(_status_ints(status, b"VmLck") or [0])[0])
    except (ValueError, IndexError):
        return None


def container_processes(entries: Iterable[tuple[int, bytes, bytes, bytes, str]]
                        ) -> list[Proc]:
    """The container's processes (AgentClient.read_processes() entries) by
    pid, kata-py's launchers left out (module doc)."""
    utf8 = _utf8_locale()
    found = (parse(pid, stat, status, cmdline, utf8) for pid, stat, status, cmdline, _ in entries)
    return sorted((p for p in found if p is not None and not p.is_launcher),
                  key=lambda p: p.pid)


# --- the columns --------------------------------------------------------------------

def _names(lookup: Callable[[int], str]) -> Callable[[int], str]:
    cache: dict[int, str] = {}

    def name(number: int) -> str:
        if number not in cache:
            try:
                cache[number] = lookup(number)
            except KeyError:
                cache[number] = str(number)     # libproc2: the number when there is no name
        return cache[number]
    return name


def _user(uid: int) -> str:
    import pwd
    return pwd.getpwuid(uid).pw_name


def _group(gid: int) -> str:
    import grp
    return grp.getgrgid(gid).gr_name


user_name, group_name = _names(_user), _names(_group)


def tty_name(tty_nr: int) -> str:
    """The terminal of a guest process by its device number (procps
    devname.c, for the devices a guest has)."""
    if not tty_nr:
        return "?"
    major = (tty_nr >> 8) & 0xFFF
    minor = (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)
    if 136 <= major <= 143:
        return f"pts/{(major - 136) * 256 + minor}"
    if major == 4:
        return f"tty{minor}" if minor < 64 else f"ttyS{minor - 64}"
    if major == 5:
        return {0: "tty", 1: "console", 2: "ptmx"}.get(minor, "?")
    if major == 229:
        return f"hvc{minor}"
    return "?"


def _clock_time(seconds: int, days_and_hours: bool) -> str:
    """output.c pr_time ([dd-]hh:mm:ss) and pr_etime ([[dd-]hh:]mm:ss)."""
    ss, mm, hh, dd = seconds % 60, seconds // 60 % 60, seconds // 3600 % 24, seconds // 86400
    text = f"{dd}-" if dd else ""
    if days_and_hours or dd or hh:
        text += f"{hh:02d}:"
    return text + f"{mm:02d}:{ss:02d}"


def _per_cent(p: Proc, clock: Clock, scale: int) -> int:
    """output.c pr_c/pr_pcpu: CPU time over lifetime, in 1/scale."""
    jiffies = int(clock.elapsed_s(p) * USER_HZ)      # a double in ps, truncated
    return p.ticks * scale // jiffies if jiffies else 0


def _pcpu(p: Proc, clock: Clock) -> str:
    value = _per_cent(p, clock, 1000)
    return f"{value // 10}" if value > 999 else f"{value // 10}.{value % 10}"


def _stime(p: Proc, clock: Clock) -> str:
    """output.c pr_stime: hh:mm today, MmmDD this year, else the year."""
    started = time.localtime(clock.boot_s + p.start_ticks // USER_HZ)
    now = time.localtime(clock.now_s)
    if now.tm_year != started.tm_year:
        return time.strftime("%Y", started)
    return time.strftime("%H:%M" if now.tm_yday == started.tm_yday else "%b%d", started)


def _stat(p: Proc, clock: Clock) -> str:
    """output.c pr_stat: the state and BSD's flags."""
    return (p.state + ("<" if p.nice < 0 else "N" if p.nice > 0 else "")
            + ("L" if p.vm_lck_kb else "") + ("s" if p.session == p.pid else "")
            + ("l" if p.nlwp > 1 else "") + ("+" if p.pgrp == p.tpgid else ""))


def _bsdtime(p: Proc, clock: Clock) -> str:
    seconds = p.ticks // USER_HZ
    return f"{seconds // 60:3d}:{seconds % 60:02d}"


Value = Callable[[Proc, Clock], str]
RIGHT, LEFT, USER, UNLIMITED = "right", "left", "user", "unlimited"
# key: (header, width, justification, value); widths -1 are pid columns (PIDMAX)
KEYWORDS: dict[str, tuple[str, int, str, Value]] = {
    "pid": ("PID", -1, RIGHT, lambda p, c: str(p.pid)),
    "ppid": ("PPID", -1, RIGHT, lambda p, c: str(p.ppid)),
    "pgid": ("PGID", -1, RIGHT, lambda p, c: str(p.pgrp)),
    "sid": ("SID", -1, RIGHT, lambda p, c: str(p.session)),
    "sess": ("SESS", -1, RIGHT, lambda p, c: str(p.session)),
    "tpgid": ("TPGID", -1, RIGHT, lambda p, c: str(p.tpgid)),
    "uid": ("UID", 5, RIGHT, lambda p, c: str(p.euid)),
    "ruid": ("RUID", 5, RIGHT, lambda p, c: str(p.ruid)),
    "gid": ("GID", 5, RIGHT, lambda p, c: str(p.egid)),
    "rgid": ("RGID", 5, RIGHT, lambda p, c: str(p.rgid)),
    "uid_hack": ("UID", 8, USER, lambda p, c: user_name(p.euid)),
    "user": ("USER", 8, USER, lambda p, c: user_name(p.euid)),
    "euser": ("EUSER", 8, USER, lambda p, c: user_name(p.euid)),
    "ruser": ("RUSER", 8, USER, lambda p, c: user_name(p.ruid)),
    "group": ("GROUP", 8, USER, lambda p, c: group_name(p.egid)),
    "egroup": ("EGROUP", 8, USER, lambda p, c: group_name(p.egid)),
    "rgroup": ("RGROUP", 8, USER, lambda p, c: group_name(p.rgid)),
    "comm": ("COMMAND", 15, UNLIMITED, lambda p, c: p.comm),
    "ucmd": ("CMD", 15, UNLIMITED, lambda p, c: p.comm),
    "args": ("COMMAND", 27, UNLIMITED, lambda p, c: p.args),
    "cmd": ("CMD", 27, UNLIMITED, lambda p, c: p.args),
    "c": ("C", 2, RIGHT, lambda p, c: f"{min(99, _per_cent(p, c, 100)):2d}"),
    "%cpu": ("%CPU", 4, RIGHT, _pcpu),
    "stime": ("STIME", 5, RIGHT, _stime),
    "start_time": ("START", 5, RIGHT, _stime),
    "tty": ("TT", 8, LEFT, lambda p, c: tty_name(p.tty_nr)),
    "tname": ("TTY", 8, LEFT, lambda p, c: tty_name(p.tty_nr)),
    "time": ("TIME", 8, RIGHT, lambda p, c: _clock_time(p.ticks // USER_HZ, True)),
    "times": ("TIME", 8, RIGHT, lambda p, c: str(p.ticks // USER_HZ)),
    "etime": ("ELAPSED", 11, RIGHT, lambda p, c: _clock_time(int(c.elapsed_s(p)), False)),
    "etimes": ("ELAPSED", 7, RIGHT, lambda p, c: str(int(c.elapsed_s(p)))),
    "stat": ("STAT", 4, LEFT, _stat),
    "s": ("S", 1, LEFT, lambda p, c: p.state),
    "ni": ("NI", 3, RIGHT,
           lambda p, c: str(p.nice) if p.policy in (0, 3, -1) else "-"),
    "nlwp": ("NLWP", 4, RIGHT, lambda p, c: str(p.nlwp)),
    "thcount": ("THCNT", 5, RIGHT, lambda p, c: str(p.nlwp)),
    "vsz": ("VSZ", 6, RIGHT, lambda p, c: str(p.vm_size_kb)),
    "rss": ("RSS", 5, RIGHT, lambda p, c: str(p.vm_rss_kb)),
    "rsz": ("RSZ", 5, RIGHT, lambda p, c: str(p.vm_rss_kb)),
    "bsdtime": ("TIME", 6, RIGHT, _bsdtime),
}
ALIASES = {"tgid": "pid", "pgrp": "pgid", "session": "sess", "euid": "uid", "egid": "gid",
           "uname": "user", "ucomm": "comm", "command": "args", "pcpu": "%cpu",
           "cputime": "time", "cputimes": "times", "tt": "tty", "state": "s", "nice": "ni",
           "vsize": "vsz", "rssize": "rss"}
HEADERS = {"tgid": "TGID", "pgrp": "PGRP", "session": "SESS", "euid": "EUID", "egid": "EGID",
           "ucomm": "COMMAND"}
# sortformat.c generate_sysv_list(), by (-f, a BSD option seen)
DEFAULT_FORMATS = {(False, False): "pid,tname,time,ucmd",
                   (True, False): "uid_hack,pid,ppid,c,stime,tname,time,cmd",
                   (False, True): "pid,tname,stat,bsdtime,args",
                   (True, True): "uid_hack,pid,ppid,c,stime,tname,stat,bsdtime,cmd"}
LIST_SEPARATORS = " ,\t\n"
# Option letters procps reads (parser.c); those kata-py does not render are refused.
UNIX_LETTERS = set("ACFGHJLMNOPRTUVZacdefgjlmopqstuwyz")


@dataclass(frozen=True)
class Column:
    key: str           # in KEYWORDS
    header: str
    width: int
    justify: str

    def text(self, p: Proc, clock: Clock, full: bool) -> str:
        if full and self.key in ("comm", "ucmd"):
            return p.args           # output.c pr_comm: the command line with -f
        return KEYWORDS[self.key][3](p, clock)


def _pid_width() -> int:
    try:
        return len(PID_MAX_FILE.read_text().strip())
    except OSError:
        return 5


def column(spec: str, header: str | None = None) -> Column:
    """One -o keyword, with the header given after its "=" if any."""
    key = ALIASES.get(spec, spec)
    if key not in KEYWORDS or ":" in spec:
        raise PsError(f"ps format keyword {spec!r} is not supported", OPTIONS_HINT)
    name, width, justify, _ = KEYWORDS[key]
    name = HEADERS.get(spec, name)
    if width < 0:
        width = max(_pid_width(), len(name))
    if header is not None:
        width, name = max(width, len(header)), header
    return Column(key, name, width, justify)


def format_list(text: str) -> list[Column]:
    """A -o list (sortformat.c format_parse): keywords split by commas or
    blanks, each with its header after a "=" if any; one trailing
    separator is allowed."""
    body = text[:-1] if text[-1:] and text[-1] in LIST_SEPARATORS else text
    items = body.translate({ord(c): " " for c in LIST_SEPARATORS}).split(" ")
    if not text or not all(items):
        raise PsError(f"ps format list {text!r} is improper", OPTIONS_HINT)
    return [column(key, header if eq else None)
            for key, eq, header in (item.partition("=") for item in items)]


@dataclass(frozen=True)
class Format:
    columns: tuple[Column, ...]
    select: Callable[[Proc], bool]
    full: bool = False        # -f: comm shows the command line (output.c pr_comm)
    header: bool = True


class _NotUnix(Exception):
    """procps' first pass failed: it reads every option again as BSD's."""


@dataclass
class _Options:
    every: bool = False       # -e, -A
    full: bool = False        # -f
    bsd: bool = False         # a BSD option was seen: BSD's default format
    letters: str = ""         # BSD a and x
    environment: bool = False
    no_header: bool = False
    custom: tuple[Column, ...] = ()


def parse_options(options: Sequence[str]) -> Format:
    """ps's options (runc: `ps ID [ps options]`, -ef when none), read in
    procps' two passes (parser.c arg_parse): UNIX, GNU and BSD options as
    written; when that fails, every option as BSD's (so `-e -x` is BSD's
    e and x)."""
    args = list(options) or list(DEFAULT_PS_OPTIONS)
    try:
        opts = _parse(args, force_bsd=False)
    except _NotUnix:
        opts = _parse(args, force_bsd=True)
    if opts.environment:
        log.warning("ps e: the environment of a guest process is not shown")
    columns = opts.custom or tuple(format_list(DEFAULT_FORMATS[opts.full, opts.bsd]))
    return Format(columns, _selection(opts.every, opts.letters), opts.full,
                  not opts.no_header and any(c.header for c in columns))


def _parse(args: list[str], force_bsd: bool) -> _Options:
    opts = _Options(bsd=force_bsd)
    rest = iter(args)

    def unsupported(arg: str) -> PsError:
        return PsError(f"ps option {arg} is not supported", OPTIONS_HINT)

    def list_after(arg: str, tail: str) -> tuple[Column, ...]:
        value = tail or next(rest, None)
        if value is None:
            raise PsError(f"ps option {arg} needs a format list", OPTIONS_HINT)
        return tuple(format_list(value))

    for arg in rest:
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if name in ("--no-headers", "--no-heading") and not eq:
                opts.no_header = True
            elif name == "--format":
                opts.custom += list_after(name, value if eq else "")
            else:
                raise unsupported(arg)
        elif arg.startswith("-") and not force_bsd:
            for n, letter in enumerate(arg[1:] or "-", 1):
                if letter in "eA":
                    opts.every = True
                elif letter == "f":
                    opts.full = True
                elif letter == "o":
                    opts.custom += list_after(arg, arg[n + 1:])
                    break
                elif letter != "w":             # wide: no width limits here anyway
                    if letter in UNIX_LETTERS:
                        raise unsupported(arg)
                    raise _NotUnix()
        else:
            opts.bsd = True
            letters = arg.lstrip("-") if force_bsd else arg
            for n, letter in enumerate(letters or "-"):
                if letter in "ax":
                    opts.letters += letter
                elif letter == "e":
                    opts.environment = True
                elif letter == "h":
                    opts.no_header = True
                elif letter == "o":
                    opts.custom += list_after(arg, letters[n + 1:])
                    break
                elif letter != "w":
                    raise unsupported(arg)
    if opts.full and opts.custom and not force_bsd:
        raise _NotUnix()                        # "conflicting format options"
    return opts


def _selection(every: bool, letters: str) -> Callable[[Proc], bool]:
    """Which processes the options select (module doc)."""
    if every or ("a" in letters and "x" in letters):
        return lambda p: True
    if "x" in letters:
        euid = os.geteuid()
        return lambda p: p.euid == euid
    if "a" in letters:
        return lambda p: p.tty_nr != 0
    return lambda p: False          # ps's default: our terminal's, and no guest process has it


# --- the table ----------------------------------------------------------------------

def _line(cells: Sequence[tuple[Column, str]]) -> str:
    """output.c show_one_proc(): each column after one space, right-justified
    ones padded to their width; a value wider than its column pushes the
    rest right, and the next columns take back what they can of it."""
    out = []
    correct = actual = dospace = 0
    for n, (col, text) in enumerate(cells):
        leftpad = max(0, col.width - len(text)) if col.justify == RIGHT else 0
        space = correct - actual + leftpad
        if space < 1:
            space = dospace
        space = min(space, SPACE_AMOUNT)
        out.append(" " * space + text)
        if n == len(cells) - 1:
            break
        actual += space + len(text)
        correct += col.width + 1
        dospace = 1
    return "".join(out)


def _fit(col: Column, text: str, last: bool) -> str:
    """What of a value the column shows: a command (output.c pr_args,
    pr_comm) only its width unless it is the last column; a name
    (do_pr_name) that does not fit ends in "+"; anything else all of it."""
    if last or len(text) <= col.width:
        return text
    if col.justify == UNLIMITED:
        return text[:col.width]
    if col.justify == USER and text[col.width - 1].isascii():
        return text[:col.width - 1] + "+"
    return text


def render(fmt: Format, processes: Iterable[Proc], clock: Clock) -> str:
    """The table, a line per process (and the header line first)."""
    lines = []
    if fmt.header:
        lines.append(_line([(c, c.header) for c in fmt.columns]))
    last = len(fmt.columns) - 1
    for p in processes:
        if not fmt.select(p):
            continue
        lines.append(_line([(col, _fit(col, col.text(p, clock, fmt.full), n == last))
                            for n, col in enumerate(fmt.columns)]))
    return "".join(line + "\n" for line in lines)
