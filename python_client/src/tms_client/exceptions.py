"""Exceptions raised by the TMS client.

The tree::

    TMSError                      anything the client raises on purpose
    ├── ConnectError              no server answered within the connect timeout
    └── CallError                 a call ended with a gRPC status other than OK (.code, .details)
        ├── InvalidInputError     INVALID_ARGUMENT: malformed image, text or args
        ├── ModelNotFoundError    NOT_FOUND: no model of that name
        ├── ModelNotReadyError    FAILED_PRECONDITION: the model failed to load
        ├── UnsupportedCallError  UNIMPLEMENTED: the model does not support that call
        ├── ModelFailedError      INTERNAL: the model raised or returned something invalid
        ├── UnavailableError      UNAVAILABLE: the worker or server went away
        ├── DeadlineExceededError DEADLINE_EXCEEDED: the call took longer than its timeout
        ├── ResourceExhaustedError RESOURCE_EXHAUSTED: too large, or the server is overloaded
        ├── UnauthenticatedError  UNAUTHENTICATED: missing or wrong token
        └── PermissionDeniedError PERMISSION_DENIED: not allowed

``CallError`` for any other status. Each is raised ``from`` the ``grpc.RpcError`` it maps.
"""

from __future__ import annotations

import grpc

__all__ = [
    "CallError",
    "ConnectError",
    "DeadlineExceededError",
    "InvalidInputError",
    "ModelFailedError",
    "ModelNotFoundError",
    "ModelNotReadyError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "TMSError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnsupportedCallError",
    "from_code",
    "from_rpc_error",
    "status_of",
]


class TMSError(Exception):
    """Base class of every exception the client raises on purpose."""


class ConnectError(TMSError):
    """No server answered at the target within the connect timeout."""


class CallError(TMSError):
    """A call ended with a gRPC status other than OK."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        trailers: tuple[tuple[str, str | bytes], ...] = (),
    ) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        #: The call's trailing metadata (which worker answered, and its load).
        self.trailers = trailers


class InvalidInputError(CallError):
    """INVALID_ARGUMENT: the server rejected the image, text or args."""


class ModelNotFoundError(CallError):
    """NOT_FOUND: the server has no model of that name."""


class ModelNotReadyError(CallError):
    """FAILED_PRECONDITION: the model failed to load on the server."""


class UnsupportedCallError(CallError):
    """UNIMPLEMENTED: the model does not support this call."""


class ModelFailedError(CallError):
    """INTERNAL: the model raised an exception or returned an invalid result."""


class UnavailableError(CallError):
    """UNAVAILABLE: the worker or the server is not reachable."""


class DeadlineExceededError(CallError):
    """DEADLINE_EXCEEDED: the call did not finish within its timeout."""


class ResourceExhaustedError(CallError):
    """RESOURCE_EXHAUSTED: the message is too large or the server is at capacity."""


class UnauthenticatedError(CallError):
    """UNAUTHENTICATED: the call carried no valid token."""


class PermissionDeniedError(CallError):
    """PERMISSION_DENIED: the caller may not do this."""


_BY_CODE: dict[grpc.StatusCode, type[CallError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInputError,
    grpc.StatusCode.NOT_FOUND: ModelNotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: ModelNotReadyError,
    grpc.StatusCode.UNIMPLEMENTED: UnsupportedCallError,
    grpc.StatusCode.INTERNAL: ModelFailedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
}


def status_of(error: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    """The status code and details of a failed call.

    The errors grpc raises for calls are also ``grpc.Call`` objects, which carry both.
    """
    code, details = getattr(error, "code", None), getattr(error, "details", None)
    status = code() if callable(code) else grpc.StatusCode.UNKNOWN
    text = details() if callable(details) else None
    return status, text or str(error)


def from_rpc_error(error: grpc.RpcError) -> CallError:
    """The client exception for a failed call."""
    code, details = status_of(error)
    trailers = getattr(error, "trailing_metadata", None)
    return from_code(code, details, tuple(trailers() or ()) if callable(trailers) else ())


def from_code(
    code: grpc.StatusCode, details: str, trailers: tuple[tuple[str, str | bytes], ...] = ()
) -> CallError:
    """The client exception for a call that ended with ``code``."""
    return _BY_CODE.get(code, CallError)(code, details, trailers)
