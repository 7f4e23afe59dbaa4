"""Errors the server raises, each carrying its gRPC status code and its reason, and the one
place that turns them (and anything unexpected) into the status a call ends with
(``status_of``).

A status is AIP-193 style: its code and human message, and in its details (the
``grpc-status-details-bin`` trailer, a ``google.rpc.Status``) an ``ErrorInfo`` (domain
``tms``, a ``Reason``, and metadata such as the model's name), a ``BadRequest`` naming the
field at fault when there is one, and a ``RetryInfo`` when trying again after a delay helps.
Each class has a default reason; a raise names another, the field or the retry delay where
the class alone does not say it.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Mapping, Sequence

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message

# Neither ships py.typed (google.rpc has .pyi files, which mypy skips without it).
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status  # type: ignore[import-untyped]

from tms_client.protocol.codec import ImageError
from tms_server.model import InvalidInput
from tms_server.repeats import FAILURES

__all__ = [
    "DOMAIN",
    "STATUS_DETAILS_KEY",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "Reason",
    "ResourceExhausted",
    "ServiceError",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "as_service_error",
    "rich_status",
    "status_details",
    "status_of",
]

log = logging.getLogger("tms_server")

#: ErrorInfo.domain of every TMS error.
DOMAIN = "tms"
#: Longest status message sent, in characters; the rest is cut. The message goes twice into the
#: trailers (grpc-message, and base64 in the details), which clients take up to 8 KiB of by
#: default: a longer message would lose the call its status (RESOURCE_EXHAUSTED instead).
MAX_MESSAGE = 2000
_MAX_DESCRIPTION = 200  # of a BadRequest field violation, which repeats the message


class Reason(enum.StrEnum):
    """Why a call failed: ErrorInfo.reason, one for each distinct cause (the list in the
    proto's documentation; clients may switch on it, so a reason is never renamed)."""

    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"  # NOT_FOUND: no such model (or model version)
    MODEL_NOT_LOADED = "MODEL_NOT_LOADED"  # FAILED_PRECONDITION: failed to load, or elsewhere
    INVALID_REQUEST = "INVALID_REQUEST"  # INVALID_ARGUMENT: malformed message, missing field
    INVALID_IMAGE = "INVALID_IMAGE"  # INVALID_ARGUMENT: an image that cannot be decoded/used
    INVALID_ARGS = "INVALID_ARGS"  # INVALID_ARGUMENT: args_json too long, deep, not an object
    INVALID_INPUT = "INVALID_INPUT"  # INVALID_ARGUMENT: the model refused it (InvalidInput)
    IMAGE_TOO_LARGE = "IMAGE_TOO_LARGE"  # INVALID_ARGUMENT: more pixels than --max-pixels
    BATCH_TOO_LARGE = "BATCH_TOO_LARGE"  # INVALID_ARGUMENT: more than --max-batch-size
    QUEUE_FULL = "QUEUE_FULL"  # RESOURCE_EXHAUSTED: the worker is busy; RetryInfo
    DRAINING = "DRAINING"  # UNAVAILABLE: the worker is shutting down; RetryInfo (0 s)
    RELOAD_IN_PROGRESS = "RELOAD_IN_PROGRESS"  # UNAVAILABLE: another ReloadModel runs
    MODEL_FAILED = "MODEL_FAILED"  # INTERNAL: the model raised or returned something invalid
    UNSUPPORTED_CALL = "UNSUPPORTED_CALL"  # UNIMPLEMENTED: the model lacks this call
    UNAUTHENTICATED = "UNAUTHENTICATED"  # UNAUTHENTICATED: no call token, or a wrong one
    PERMISSION_DENIED = "PERMISSION_DENIED"  # PERMISSION_DENIED: admin off, or no admin token
    INTERNAL = "INTERNAL"  # INTERNAL: a bug in the server (its traceback is logged)
    # FAILED_PRECONDITION: shared memory off, or the region cannot be attached here
    SHARED_MEMORY_UNAVAILABLE = "SHARED_MEMORY_UNAVAILABLE"
    # FAILED_PRECONDITION: an image names a region this worker has not attached
    SHARED_MEMORY_NOT_ATTACHED = "SHARED_MEMORY_NOT_ATTACHED"


class ServiceError(Exception):
    """An error that ends a call with ``code`` and the exception's message.

    ``reason`` defaults to the class's; ``field`` names the request field at fault (a
    BadRequest field violation, described by the message), ``violations`` lists several
    (``(field, description)`` pairs, one BadRequest field violation each, in place of
    ``field``), ``retry_after`` the seconds after which trying again
    may succeed (RetryInfo), ``metadata`` adds to ErrorInfo.metadata.
    """

    code = grpc.StatusCode.INTERNAL
    reason = Reason.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        reason: Reason | None = None,
        field: str | None = None,
        violations: Sequence[tuple[str, str]] = (),
        retry_after: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        self.field = field
        self.violations = list(violations)
        self.retry_after = retry_after
        self.metadata = dict(metadata or {})


class NotFound(ServiceError):  # noqa: N818 - named after the status code
    code = grpc.StatusCode.NOT_FOUND
    reason = Reason.MODEL_NOT_FOUND


class InvalidArgument(ServiceError):  # noqa: N818
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = Reason.INVALID_REQUEST


class Unimplemented(ServiceError):  # noqa: N818
    code = grpc.StatusCode.UNIMPLEMENTED
    reason = Reason.UNSUPPORTED_CALL


class FailedPrecondition(ServiceError):  # noqa: N818
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = Reason.MODEL_NOT_LOADED


class Internal(ServiceError):  # noqa: N818
    code = grpc.StatusCode.INTERNAL
    reason = Reason.INTERNAL


class Unavailable(ServiceError):  # noqa: N818
    code = grpc.StatusCode.UNAVAILABLE
    reason = Reason.DRAINING


class Unauthenticated(ServiceError):  # noqa: N818
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = Reason.UNAUTHENTICATED


class PermissionDenied(ServiceError):  # noqa: N818
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = Reason.PERMISSION_DENIED


class ResourceExhausted(ServiceError):  # noqa: N818
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = Reason.QUEUE_FULL


def status_of(exc: Exception, method: str, *, model: str = "") -> grpc.Status:
    """The status that ends a call of ``method`` (for ``model``, if it names one) which
    raised ``exc``: ``.code``, ``.details`` (the message) and ``.trailing_metadata`` (the
    google.rpc.Status details, as grpc_status puts them).

    ServiceError carries its own code and reason (a model's own exceptions arrive as
    Internal, MODEL_FAILED); a model's InvalidInput and a malformed image are
    INVALID_ARGUMENT; anything else is a bug in the server: INTERNAL, with the traceback
    logged here (a repeat of the same failure counted instead, tms_server.repeats).
    """
    exc = as_service_error(exc, method)
    metadata = {"model": model} if model else {}
    status: grpc.Status = rpc_status.to_status(rich_status(exc, metadata))
    return status


def status_details(trailers: Iterable[tuple[str, str | bytes]]) -> bytes:
    """The serialized google.rpc.Status among a failed call's ``trailers`` (``status_of``
    puts it there, under grpc-status-details-bin); empty when there is none."""
    for key, value in trailers:
        if key == STATUS_DETAILS_KEY:
            return value if isinstance(value, bytes) else value.encode()
    return b""


#: The trailer of a failed call that carries its google.rpc.Status.
STATUS_DETAILS_KEY = "grpc-status-details-bin"


def as_service_error(exc: Exception, method: str) -> ServiceError:
    """``exc`` as the ServiceError it stands for (see ``status_of``; an unexpected one is
    logged with its traceback here)."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, InvalidInput):
        return InvalidArgument(str(exc), reason=Reason.INVALID_INPUT)
    if isinstance(exc, ImageError):
        return InvalidArgument(str(exc), reason=Reason.INVALID_IMAGE)
    if FAILURES.first(exc, method, rpc=method):
        log.error("%s failed", method, exc_info=exc)
    return Internal(f"internal error in {method}: {type(exc).__name__}: {exc}")


def rich_status(exc: ServiceError, metadata: Mapping[str, str] | None = None) -> status_pb2.Status:
    """``exc`` as a google.rpc.Status: its code, its message (cut at MAX_MESSAGE), and its
    details."""
    message = _cut(str(exc), MAX_MESSAGE)
    info = error_details_pb2.ErrorInfo(
        reason=exc.reason, domain=DOMAIN, metadata={**(metadata or {}), **exc.metadata}
    )
    details: list[Message] = [info]
    violations = exc.violations
    if not violations and exc.field is not None:
        violations = [(exc.field, message)]
    if violations:
        field_violations = [
            error_details_pb2.BadRequest.FieldViolation(
                field=field, description=_cut(description, _MAX_DESCRIPTION)
            )
            for field, description in violations
        ]
        details.append(error_details_pb2.BadRequest(field_violations=field_violations))
    if exc.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(round(exc.retry_after * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(code=exc.code.value[0], message=message)
    for detail in details:
        status.details.add().Pack(detail)
    return status


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"
