"""The agent's command line (hand-parsed: argparse costs 0.3 s of guest boot)."""

from __future__ import annotations

import pytest

from kata_py.agent.__main__ import parse_args
from kata_py.agent.shared import VSOCK_LISTEN


def test_defaults_listen_on_vsock_1024() -> None:
    opts = parse_args([])
    assert opts["listen"] == VSOCK_LISTEN == "vsock:1024"
    assert opts["shared_dir"] == "/run/kata-py/shared"


def test_both_flag_forms_are_accepted() -> None:
    opts = parse_args(["--listen", "unix:/tmp/a.sock", "--log-level=debug"])
    assert opts["listen"] == "unix:/tmp/a.sock" and opts["log_level"] == "debug"


@pytest.mark.parametrize("argv", [["--nope", "x"], ["listen"], ["--listen"]])
def test_bad_arguments_exit_with_usage(argv: list[str]) -> None:
    with pytest.raises(SystemExit, match="usage: python3 -m kata_py.agent"):
        parse_args(argv)
