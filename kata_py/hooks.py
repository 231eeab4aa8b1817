"""OCI hooks that run on the host, in the runtime namespace (runtime-spec
config.md "POSIX-platform Hooks"): prestart, createRuntime, poststart and
poststop (each run by kata_py.agent.hookexec, which the guest shares).
createContainer/startContainer run in the container namespace,
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
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from kata_py.agent import hookexec
from kata_py.errors import KataError

log = logging.getLogger(__name__)

FATAL_KINDS = frozenset({"prestart", "createRuntime"})
WARN_KINDS = frozenset({"poststart", "poststop"})


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


def run_hook(kind: str, hook: HookLike, state: Mapping[str, Any]) -> None:
    """Run one hook; HookError naming the hook when it fails or times out."""
    try:
        hookexec.run_hook(kind, hook.path, hook.args, hook.env, hook.timeout,
                          json.dumps(state).encode())
    except hookexec.HookFailed as exc:
        raise HookError(exc.message, exc.hint) from exc


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
