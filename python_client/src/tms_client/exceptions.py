"""Exceptions raised by the TMS client.

The tree::

    TMSError                      anything the client raises on purpose
    ├── ConnectError              no server answered within the connect timeout (or refused)
    └── CallError                 a call ended with a gRPC status other than OK (.code, .details)
        ├── ClientClosedError     the client is closed (FAILED_PRECONDITION, said by the client)
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

A TMS server says more than the code, in the status details (``grpc-status-details-bin``, a
``google.rpc.Status``), and every CallError carries what it said: ``reason``, why the call
failed (``google.rpc.ErrorInfo.reason`` of domain ``tms``: ``MODEL_NOT_FOUND``,
``IMAGE_TOO_LARGE``, ``QUEUE_FULL``...; None from servers that send none) with
``error_metadata`` (e.g. ``{"model": name}``), ``field_violations``, the request fields at
fault (``google.rpc.BadRequest``: ``[("image.dtype", why)]``), and ``retry_delay``, the
seconds after which the server says trying again may succeed (``google.rpc.RetryInfo``, None
without it). So a RESOURCE_EXHAUSTED for a full queue (``QUEUE_FULL``, with a retry delay)
tells itself apart from one for a request too large (no retry delay).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError

# Neither ships py.typed (google.rpc has .pyi files, which mypy skips without it).
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status  # type: ignore[import-untyped]

__all__ = [
    "CallError",
    "ClientClosedError",
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
    "from_status",
    "status_of",
]


class TMSError(Exception):
    """Base class of every exception the client raises on purpose."""


class ConnectError(TMSError):
    """No server answered at the target within the connect timeout, or every address
    refused the connection (then ``refused`` names them)."""

    def __init__(self, message: str, *, refused: Sequence[str] = ()) -> None:
        super().__init__(message)
        #: The addresses that refused the connection (nothing listens there), if that is why.
        self.refused = tuple(refused)


class CallError(TMSError):
    """A call ended with a gRPC status other than OK."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        trailers: tuple[tuple[str, str | bytes], ...] = (),
        *,
        reason: str | None = None,
        error_metadata: Mapping[str, str] | None = None,
        field_violations: Sequence[tuple[str, str]] = (),
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        #: The call's trailing metadata (which worker answered, and its load).
        self.trailers = trailers
        #: Why the call failed, as the server names it (ErrorInfo.reason), or None.
        self.reason = reason
        #: What the server added to the reason (ErrorInfo.metadata), e.g. {"model": name}.
        self.error_metadata = dict(error_metadata or {})
        #: (field, description) for each request field at fault (BadRequest).
        self.field_violations = list(field_violations)
        #: Seconds after which the server says trying again may succeed (RetryInfo), or None.
        self.retry_delay = retry_delay


class ClientClosedError(CallError):
    """FAILED_PRECONDITION: the client is closed. Every call and stream in flight when it
    closed ends with this at once, as does every call after; make a new client to call again.
    Raised by the client itself: no server said it."""

    def __init__(self) -> None:
        super().__init__(
            grpc.StatusCode.FAILED_PRECONDITION,
            "this client is closed; make a new one to call again",
        )


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
    """The client exception for a failed call, with the status details it carries (the
    errors of grpc and grpc.aio calls both answer ``trailing_metadata()`` at once)."""
    code, details = status_of(error)
    trailers = getattr(error, "trailing_metadata", None)
    metadata = tuple(trailers() or ()) if callable(trailers) else ()
    return from_code(code, details, metadata, **(_status_details(error) if metadata else {}))


def from_code(
    code: grpc.StatusCode,
    details: str,
    trailers: tuple[tuple[str, str | bytes], ...] = (),
    **status: Any,
) -> CallError:
    """The client exception for a call that ended with ``code``; ``status`` are the status
    details that came with it, CallError's keyword arguments (reason, error_metadata,
    field_violations, retry_delay)."""
    return _BY_CODE.get(code, CallError)(code, details, trailers, **status)


def _status_details(error: grpc.RpcError) -> dict[str, Any]:
    """CallError's keyword arguments from the google.rpc.Status in a failed call's trailers;
    none when there is none, or it does not agree with the call's code and message."""
    try:
        status = rpc_status.from_call(error)
    except (ValueError, DecodeError):  # a status that contradicts the call's: ignored
        return {}
    if status is None:
        return {}
    return _details(status)


def from_status(data: bytes, trailers: tuple[tuple[str, str | bytes], ...] = ()) -> CallError:
    """The client exception for a serialized google.rpc.Status, as a RunImageStream answer
    carries a frame's error and a Calls answer a call's, with its ``trailers`` (a status that
    cannot be read is an UNKNOWN CallError)."""
    try:
        status = status_pb2.Status.FromString(data)
        code = _CODES[status.code]
    except (DecodeError, KeyError):
        return CallError(grpc.StatusCode.UNKNOWN, "an error status that cannot be read", trailers)
    return from_code(code, status.message, trailers, **_details(status))


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _details(status: Any) -> dict[str, Any]:
    """CallError's keyword arguments from a google.rpc.Status's details."""
    found: dict[str, Any] = {}
    info = error_details_pb2.ErrorInfo()
    bad_request = error_details_pb2.BadRequest()
    retry_info = error_details_pb2.RetryInfo()
    for detail in status.details:
        if detail.Unpack(info):
            found["reason"] = info.reason
            found["error_metadata"] = dict(info.metadata)
        elif detail.Unpack(bad_request):
            found["field_violations"] = [
                (violation.field, violation.description)
                for violation in bad_request.field_violations
            ]
        elif detail.Unpack(retry_info):
            found["retry_delay"] = retry_info.retry_delay.ToNanoseconds() / 1e9
    return found
