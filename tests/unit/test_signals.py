"""Signal names and numbers as `kata-py kill` accepts them."""

from __future__ import annotations

import signal

import pytest

from kata_py.errors import ConfigError
from kata_py.signals import parse_signal


@pytest.mark.parametrize("text,number", [("KILL", 9), ("SIGKILL", 9), ("kill", 9), ("9", 9),
                                         ("TERM", 15), ("sigusr1", 10), ("HUP", 1),
                                         ("SIGRTMIN+1", int(signal.SIGRTMIN) + 1)])
def test_names_and_numbers_are_accepted(text: str, number: int) -> None:
    assert parse_signal(text) == number


@pytest.mark.parametrize("text", ["", "0", "65", "SIGNOPE", "-9", "TERM9"])
def test_unknown_signals_are_refused_with_the_fix(text: str) -> None:
    with pytest.raises(ConfigError, match="unknown signal .*use a name such as TERM"):
        parse_signal(text)
