"""The container lifecycle: its statuses, the one table of which verb each
status allows and what it leads to, and the guard every front end calls.

Statuses are the OCI runtime-spec's (created, running, paused, stopped),
plus "creating", kata-py's record of a create still under way (shown to
users as "created", as runc shows its own). Nothing else in kata-py compares
statuses to decide whether a verb may run: the runc front end checks its
records here, the containerd shim its tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kata_py.errors import StateError

Status = Literal["creating", "created", "running", "paused", "stopped"]

LIVE: frozenset[str] = frozenset({"created", "running", "paused"})


@dataclass(frozen=True)
class Rule:
    allowed: frozenset[str]     # the statuses the verb runs in
    then: Status | None         # the status once it succeeded (None: unchanged)
    fix: str                    # what to do when the status does not allow it
    wanted: str = ""            # named in the refusal: "is stopped, not running"


PAUSE_FIX = "pause a running container, resume a paused one"
RULES: dict[str, Rule] = {
    "start": Rule(frozenset({"created"}), "running", "only a created container can be started",
                  "created"),
    "kill": Rule(LIVE, None, "only a created or running container can be signalled"),
    "exec": Rule(frozenset({"created", "running"}), None,
                 "exec needs a created or running container", "running"),
    "update": Rule(LIVE, None, "only a live container can be updated"),
    "stats": Rule(LIVE, None, "it has no statistics"),
    "pause": Rule(frozenset({"running"}), "paused", PAUSE_FIX, "running"),
    "resume": Rule(frozenset({"paused"}), "running", PAUSE_FIX, "paused"),
    # runc deletes a created container (killing its init) and a stopped one;
    # a running or paused one needs --force
    "delete": Rule(frozenset({"creating", "created", "stopped"}), None,
                   "stop it first, or use `kata-py delete --force`"),
    "exit": Rule(frozenset({"creating", *LIVE}), "stopped", "it has already stopped"),
}


def check(container_id: str, status: str, verb: str) -> Status | None:
    """Refuse `verb` unless `status` allows it (StateError naming the
    container, its status and what to do); returns the status it leads to."""
    rule = RULES[verb]
    if status in rule.allowed:
        return rule.then
    if status == "creating":
        raise StateError(f"container {container_id} is not created yet",
                         "wait for its `kata-py create` to finish")
    wanted = f", not {rule.wanted}" if rule.wanted else ""
    raise StateError(f"container {container_id} is {status}{wanted}", rule.fix)
