"""create's side of the monitor's notify pipe: the status line, and after an
error the monitor's log lines, without waiting on a pipe someone else holds."""

from __future__ import annotations

import os
import time

from kata_py import runtime


def test_ok_returns_at_the_line_while_the_monitor_keeps_running() -> None:
    r, w = os.pipe()
    try:
        os.write(w, b"ok 4242\n")
        start = time.monotonic()
        assert runtime._read_notify(r, 30.0) == ("ok 4242", "")
        assert time.monotonic() - start < 10.0   # not the 30 s deadline
    finally:
        os.close(w)


def test_an_error_brings_the_log_lines_that_follow_it() -> None:
    r, w = os.pipe()
    os.write(w, b"error the VM stopped\nmonitor: console.log ends with:\nKernel panic\n")
    os.close(w)
    assert runtime._read_notify(r, 30.0) == (
        "error the VM stopped", "monitor: console.log ends with:\nKernel panic\n")


def test_a_stray_holder_of_the_pipe_delays_an_error_by_at_most_the_details_wait() -> None:
    r, w = os.pipe()   # w stays open, as if a child of the monitor had inherited it
    try:
        os.write(w, b"error it failed\nlast words\n")
        start = time.monotonic()
        assert runtime._read_notify(r, 30.0) == ("error it failed", "last words\n")
        assert time.monotonic() - start < 10.0   # DETAILS_WAIT_S, not the 30 s deadline
    finally:
        os.close(w)
