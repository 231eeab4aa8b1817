"""Running one OCI hook (runtime-spec config.md "POSIX-platform Hooks").

Shared by the host (kata_py.hooks: prestart, createRuntime, poststart,
poststop) and the guest launcher (createContainer, startContainer): `path`
is executed with `args` as its argv (args[0] is argv0), `env` as its
environment (empty: inherited, as runc does), the state JSON on stdin, and
it is killed after `timeout` seconds. Stdlib only: it runs in the guest too.
"""

from __future__ import annotations

from collections.abc import Sequence

OUTPUT_TAIL_BYTES = 400


class HookFailed(Exception):
    """One line naming the hook and what went wrong, plus the fix."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def run_hook(kind: str, path: str, args: Sequence[str], env: Sequence[str],
             timeout: int | None, state: bytes) -> None:
    """Run the hook to its end; HookFailed when it fails, cannot run or times out."""
    import subprocess  # only callers with hooks pay for it

    name = f"{kind} hook {path}"
    try:
        proc = subprocess.run(list(args) or [path], executable=path, input=state,
                              env=dict(e.partition("=")[::2] for e in env) if env else None,
                              capture_output=True, timeout=timeout, check=False,
                              close_fds=True)
    except subprocess.TimeoutExpired as exc:
        raise HookFailed(f"{name} timed out after {timeout}s",
                         "fix the hook or raise its timeout in config.json") from exc
    except OSError as exc:
        raise HookFailed(f"{name} could not run: {exc.strerror or exc}",
                         "check the hook's path in config.json") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-OUTPUT_TAIL_BYTES:].decode(errors="replace").strip()
        status = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
                  else f"exit status {proc.returncode}")
        raise HookFailed(f"{name} failed ({status})" + (f": {tail}" if tail else ""),
                         "fix the hook or remove it from config.json")
