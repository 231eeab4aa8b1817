"""kata-py's one error tree. Only the CLI prints these; everything else raises.

    KataError(message, hint)
     ├── ConfigError        bad runtime config or config.json (names the field)
     ├── NotFoundError      unknown sandbox/container, missing file or binary
     ├── ExistsError        id already in use
     ├── StateError         the object is in the wrong state for the verb
     ├── ImageError         guest image missing, stale or corrupt
     ├── HypervisorError    QEMU/virtiofsd/vsock backend failed (log tail kept)
     ├── AgentError         the guest agent failed or did not answer (gRPC code)
     └── ResourceError      host resources: sockets, fds, mounts, devices

`str(err)` is the one line the CLI shows: the message, then the hint.
"""

from __future__ import annotations


class KataError(Exception):
    """A failure a user can act on: `message` names the object, `hint` the fix."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}: {self.hint}" if self.hint else self.message


class ConfigError(KataError):
    pass


class NotFoundError(KataError):
    pass


class ExistsError(KataError):
    pass


class StateError(KataError):
    pass


class CorruptStateError(StateError):
    """A container's state.json cannot be read; `delete --force` removes it."""


class ImageError(KataError):
    pass


# A failed start removes the sandbox directory and its logs; with --debug
# their tails are logged first (kata_py.sandbox), so that is where to look.
LOGS_HINT = "rerun with --debug to see the logs (a failed start removes them)"


class HypervisorError(KataError):
    """A hypervisor-side process failed; keeps its argv and the tail of its log."""

    def __init__(self, message: str, hint: str = "", *, argv: list[str] | None = None,
                 log_tail: str = "", exit_code: int | None = None) -> None:
        super().__init__(message, hint)
        self.argv = argv or []
        self.log_tail = log_tail
        self.exit_code = exit_code


class AgentError(KataError):
    """The agent answered with an error status, or never answered."""

    def __init__(self, message: str, hint: str = "", *, code: str = "") -> None:
        super().__init__(message, hint)
        self.code = code


class ResourceError(KataError):
    pass
