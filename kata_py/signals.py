"""Signal names as `kill` takes them (runc accepts KILL, SIGKILL, kill, 9)."""

from __future__ import annotations

import signal

from kata_py.errors import ConfigError

SIGRTMAX = 64


def parse_signal(text: str) -> int:
    """The signal number for a name (with or without SIG) or a number."""
    value = text.strip()
    if value.isdigit():
        number = int(value)
        if 1 <= number <= SIGRTMAX:
            return number
    else:
        name = value.upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        if name in signal.Signals.__members__:
            return int(signal.Signals[name])
        if name.startswith("SIGRTMIN+") and name[9:].isdigit():
            return int(signal.SIGRTMIN) + int(name[9:])
    raise ConfigError(f"unknown signal {text!r}",
                      "use a name such as TERM, SIGKILL or a number from 1 to 64")
