"""Agent-side errors and their one mapping onto gRPC status codes.

Handlers raise these (or let OSError escape); `status_for` is the only place
that decides which gRPC status code the host sees. The host maps codes back
in kata_py/agent_client.py.
"""

from __future__ import annotations

import errno

import grpc


class AgentError(Exception):
    """Root of the agent's errors; the message is sent to the host as is."""

    code = grpc.StatusCode.INTERNAL


class InvalidArgument(AgentError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(AgentError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(AgentError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class DeadlineExceeded(AgentError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


_ERRNO_CODES = {
    errno.ENOENT: grpc.StatusCode.NOT_FOUND,
    errno.EEXIST: grpc.StatusCode.ALREADY_EXISTS,
    errno.EACCES: grpc.StatusCode.PERMISSION_DENIED,
    errno.EPERM: grpc.StatusCode.PERMISSION_DENIED,
    errno.EINVAL: grpc.StatusCode.INVALID_ARGUMENT,
    errno.ENOTDIR: grpc.StatusCode.INVALID_ARGUMENT,
    errno.EISDIR: grpc.StatusCode.INVALID_ARGUMENT,
}


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and message the host receives for `exc`."""
    if isinstance(exc, AgentError):
        return exc.code, str(exc)
    if isinstance(exc, OSError):
        code = _ERRNO_CODES.get(exc.errno or 0, grpc.StatusCode.INTERNAL)
        where = f" ({exc.filename})" if exc.filename else ""
        return code, f"{exc.strerror or exc}{where}"
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
