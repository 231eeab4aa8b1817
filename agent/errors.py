"""Agent-side errors and their one mapping onto gRPC status codes.

Handlers raise these (or let OSError escape); `status_for` is the only place
that decides which gRPC status code the host sees. The host maps codes back
in kata_py/agent_client.py. Codes are grpc.StatusCode *names*: this module is
imported before the launcher zygote is forked, which must happen before gRPC
is imported (agent/zygote.py), so it does not import grpc.
"""

from __future__ import annotations

import errno


class AgentError(Exception):
    """Root of the agent's errors; the message is sent to the host as is."""

    code: str = "INTERNAL"


class InvalidArgument(AgentError):
    code = "INVALID_ARGUMENT"


class NotFound(AgentError):
    code = "NOT_FOUND"


class FailedPrecondition(AgentError):
    code = "FAILED_PRECONDITION"


class DeadlineExceeded(AgentError):
    code = "DEADLINE_EXCEEDED"


_ERRNO_CODES = {
    errno.ENOENT: "NOT_FOUND",
    errno.EEXIST: "ALREADY_EXISTS",
    errno.EACCES: "PERMISSION_DENIED",
    errno.EPERM: "PERMISSION_DENIED",
    errno.EINVAL: "INVALID_ARGUMENT",
    errno.ENOTDIR: "INVALID_ARGUMENT",
    errno.EISDIR: "INVALID_ARGUMENT",
}


def status_for(exc: BaseException) -> tuple[str, str]:
    """The gRPC status code (its name) and message the host receives for `exc`."""
    if isinstance(exc, AgentError):
        return exc.code, str(exc)
    if isinstance(exc, OSError):
        code = _ERRNO_CODES.get(exc.errno or 0, "INTERNAL")
        where = f" ({exc.filename})" if exc.filename else ""
        return code, f"{exc.strerror or exc}{where}"
    return "INTERNAL", f"internal error: {type(exc).__name__}: {exc}"
