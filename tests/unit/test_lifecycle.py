"""The lifecycle's one transition table (kata_py/lifecycle.py): what each
verb needs, what it leads to, and the refusal every front end prints."""

from __future__ import annotations

import pytest

from kata_py.errors import StateError
from kata_py.lifecycle import RULES, check

STATUSES = ("creating", "created", "running", "paused", "stopped")

# verb -> the statuses it runs in (runc 1.1's rules)
ALLOWED = {
    "start": {"created"},
    "kill": {"created", "running", "paused"},
    "exec": {"created", "running"},
    "update": {"created", "running", "paused"},
    "stats": {"created", "running", "paused"},
    "pause": {"running"},
    "resume": {"paused"},
    "delete": {"creating", "created", "stopped"},
    "exit": {"creating", "created", "running", "paused"},
}


@pytest.mark.parametrize("verb", sorted(ALLOWED))
@pytest.mark.parametrize("status", STATUSES)
def test_each_verb_runs_in_runcs_statuses_only(verb: str, status: str) -> None:
    if status in ALLOWED[verb]:
        check("c1", status, verb)
    else:
        with pytest.raises(StateError):
            check("c1", status, verb)


def test_the_table_covers_exactly_those_verbs() -> None:
    assert set(RULES) == set(ALLOWED)


def test_transitions() -> None:
    assert [check("c1", s, v) for s, v in (("created", "start"), ("running", "pause"),
                                           ("paused", "resume"), ("running", "exit"),
                                           ("running", "kill"))] == [
        "running", "paused", "running", "stopped", None]


def test_refusals_name_the_container_its_status_and_the_fix() -> None:
    with pytest.raises(StateError) as exc:
        check("c1", "stopped", "start")
    assert (exc.value.message, exc.value.hint) == (
        "container c1 is stopped, not created", "only a created container can be started")
    with pytest.raises(StateError) as exc:
        check("c1", "running", "delete")
    assert (exc.value.message, exc.value.hint) == (
        "container c1 is running", "stop it first, or use `kata-py delete --force`")
    with pytest.raises(StateError) as exc:
        check("c1", "creating", "exec")
    assert (exc.value.message, exc.value.hint) == (
        "container c1 is not created yet", "wait for its `kata-py create` to finish")
