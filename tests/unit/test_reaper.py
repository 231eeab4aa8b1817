"""The agent's reaper, run in a fresh interpreter (it takes over SIGCHLD and
reaps every child, which must not disturb the test process's subprocesses)."""

from __future__ import annotations

import subprocess
import sys

from kata_py.agent.reaper import exit_code

SCRIPT = r'''
import os, signal, sys, time
from kata_py.agent.reaper import Reaper

reaper = Reaper().install()

def spawn(*argv):
    return os.posix_spawn(argv[0], list(argv), os.environ)

# exit codes and signals reach the watcher
pid = spawn("/bin/sh", "-c", "exit 3")
assert reaper.watch(pid).wait(10) == 3
pid = spawn("/bin/sh", "-c", "kill -9 $$")
assert reaper.watch(pid).wait(10) == 137
# a child that exits before anyone watches it keeps its status
pid = spawn("/bin/sh", "-c", "exit 7")
time.sleep(0.5)
assert reaper.watch(pid).wait(10) == 7
# a running child reports None at the timeout, then its code
pid = spawn("/bin/sleep", "0.5")
ex = reaper.watch(pid)
assert ex.wait(0.05) is None
assert ex.wait(10) == 0
# orphans of our own children are reaped too (no zombies accumulate)
pids = [spawn("/bin/true") for _ in range(20)]
time.sleep(1)
zombies = [p for p in pids if os.path.exists(f"/proc/{p}")]
assert zombies == [], zombies
reaper.uninstall()
print("ok")
'''


def test_reaper_delivers_exit_codes_and_leaves_no_zombies() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_exit_code_follows_the_shell_convention() -> None:
    assert exit_code(3 << 8) == 3
    assert exit_code(9) == 137
