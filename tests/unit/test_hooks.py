"""OCI hooks on the host: state on stdin, argv/env, order, failure rules."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from kata_py.hooks import HookError, run_hooks

STATE = {"ociVersion": "1.2.0", "id": "c1", "status": "created", "pid": 42,
         "bundle": "/b"}


@dataclass(frozen=True)
class Hook:
    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    timeout: int | None = None


def _script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_hook_gets_state_on_stdin_its_argv_and_env(tmp_path: Path) -> None:
    out = tmp_path / "out"
    hook = _script(tmp_path, "h", f'cat > {out}.state; echo "$0 $1 $FOO" > {out}.argv\n')
    run_hooks("prestart", [Hook(hook, ("custom-argv0", "one"), ("FOO=bar",))], STATE)
    assert json.loads(Path(f"{out}.state").read_text()) == STATE
    assert Path(f"{out}.argv").read_text().split() == [hook, "one", "bar"]


def test_hooks_run_in_spec_order(tmp_path: Path) -> None:
    log = tmp_path / "order"
    hooks = [Hook(_script(tmp_path, f"h{i}", f"echo {i} >> {log}\n")) for i in range(3)]
    run_hooks("createRuntime", hooks, STATE)
    assert log.read_text().split() == ["0", "1", "2"]


def test_failing_prestart_hook_is_an_error_naming_it(tmp_path: Path) -> None:
    hook = _script(tmp_path, "bad", "echo 'no network for you' >&2; exit 3\n")
    with pytest.raises(HookError, match=r"prestart hook .*bad failed \(exit status 3\): "
                                        r"no network for you"):
        run_hooks("prestart", [Hook(hook)], STATE)


def test_hook_past_its_timeout_is_killed_and_reported(tmp_path: Path) -> None:
    hook = _script(tmp_path, "slow", "exec sleep 30\n")
    with pytest.raises(HookError, match="timed out after 1s"):
        run_hooks("createRuntime", [Hook(hook, timeout=1)], STATE)


def test_missing_hook_binary_is_reported(tmp_path: Path) -> None:
    with pytest.raises(HookError, match="could not run"):
        run_hooks("prestart", [Hook(str(tmp_path / "nope"))], STATE)


def test_failing_poststop_hook_only_warns_and_the_rest_still_run(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mark = tmp_path / "ran"
    hooks = [Hook(_script(tmp_path, "bad", "exit 1\n")),
             Hook(_script(tmp_path, "good", f"touch {mark}\n"))]
    run_hooks("poststop", hooks, STATE)
    assert mark.exists()
    assert "poststop hook" in caplog.text and "continuing" in caplog.text


def test_in_container_hooks_are_not_run_on_the_host() -> None:
    with pytest.raises(ValueError, match="do not run on the host"):
        run_hooks("createContainer", [Hook("/bin/true")], STATE)


def test_empty_env_inherits_ours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KATA_PY_HOOK_TEST", "inherited")
    out = tmp_path / "env"
    run_hooks("poststart", [Hook(_script(tmp_path, "h", f'echo "$KATA_PY_HOOK_TEST" > {out}\n'))],
              STATE)
    assert out.read_text().strip() == "inherited"
    assert os.environ["KATA_PY_HOOK_TEST"] == "inherited"
