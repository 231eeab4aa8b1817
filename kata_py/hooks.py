"""OCI hooks that run on the host, in the runtime namespace (runtime-spec
config.md "POSIX-platform Hooks"): prestart, createRuntime, poststart and
poststop. createContainer/startContainer run in the container namespace,
i.e. inside the guest: the launcher runs them (kata_py.agent.launcher).

Each hook gets the container's state JSON on stdin, runs with its own argv
(args[0] is argv0; path is what is executed) and env (empty: inherit ours,
as runc does), and is killed after `timeout` seconds. Hooks run in spec
order. A failing prestart/createRuntime hook is an error that stops the
container; a failing poststart/poststop hook is only a warning (the spec:
"the runtime MUST log a warning, but the remaining hooks and lifecycle
continue").
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from kata_py.errors import KataError

log = logging.getLogger(__name__)

FATAL_KINDS = frozenset({"prestart", "createRuntime"})
WARN_KINDS = frozenset({"poststart", "poststop"})
OUTPUT_TAIL_BYTES = 400


class HookLike(Protocol):
    @property
    def path(self) -> str: ...
    @property
    def args(self) -> Sequence[str]: ...
    @property
    def env(self) -> Sequence[str]: ...
    @property
    def timeout(self) -> int | None: ...


class HookError(KataError):
    pass


def _env(hook: HookLike) -> Mapping[str, str] | None:
    if not hook.env:
        return None  # inherit, like runc (exec.Cmd with a nil Env)
    return dict(item.partition("=")[::2] for item in hook.env)


def run_hook(kind: str, hook: HookLike, state: Mapping[str, Any]) -> None:
    """Run one hook; HookError naming the hook when it fails or times out."""
    argv = list(hook.args) or [hook.path]
    name = f"{kind} hook {hook.path}"
    try:
        proc = subprocess.run(argv, executable=hook.path, input=json.dumps(state).encode(),
                              env=_env(hook), capture_output=True, timeout=hook.timeout,
                              check=False, close_fds=True)
    except subprocess.TimeoutExpired as exc:
        raise HookError(f"{name} timed out after {hook.timeout}s",
                        "fix the hook or raise its timeout in config.json") from exc
    except OSError as exc:
        raise HookError(f"{name} could not run: {exc.strerror or exc}",
                        "check the hook's path in config.json") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-OUTPUT_TAIL_BYTES:].decode(errors="replace").strip()
        status = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
                  else f"exit status {proc.returncode}")
        raise HookError(f"{name} failed ({status})" + (f": {tail}" if tail else ""),
                        "fix the hook or remove it from config.json")


def run_hooks(kind: str, hooks: Sequence[HookLike], state: Mapping[str, Any]) -> None:
    """Run the hooks of one kind in order; see the module doc for failures."""
    if kind not in FATAL_KINDS | WARN_KINDS:
        raise ValueError(f"internal error: {kind} hooks do not run on the host")
    for hook in hooks:
        try:
            run_hook(kind, hook, state)
        except HookError as exc:
            if kind in FATAL_KINDS:
                raise
            log.warning("%s (continuing, as the OCI spec requires for %s hooks)", exc, kind)
        log.debug("%s hook %s done (pid %d)", kind, hook.path, os.getpid())
