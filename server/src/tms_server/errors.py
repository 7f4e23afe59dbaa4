"""Errors the server raises, each carrying its gRPC status code, and the one place that
turns them (and anything unexpected) into a status code and message (``status_of``)."""

from __future__ import annotations

import logging

import grpc

from tms_client.protocol.codec import ImageError
from tms_server.model import InvalidInput

__all__ = [
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "ServiceError",
    "Unavailable",
    "Unimplemented",
    "status_of",
]

log = logging.getLogger("tms_server")


class ServiceError(Exception):
    """An error that ends a call with ``code`` and the exception's message."""

    code = grpc.StatusCode.INTERNAL


class NotFound(ServiceError):  # noqa: N818 - named after the status code
    code = grpc.StatusCode.NOT_FOUND


class InvalidArgument(ServiceError):  # noqa: N818
    code = grpc.StatusCode.INVALID_ARGUMENT


class Unimplemented(ServiceError):  # noqa: N818
    code = grpc.StatusCode.UNIMPLEMENTED


class FailedPrecondition(ServiceError):  # noqa: N818
    code = grpc.StatusCode.FAILED_PRECONDITION


class Internal(ServiceError):  # noqa: N818
    code = grpc.StatusCode.INTERNAL


class Unavailable(ServiceError):  # noqa: N818
    code = grpc.StatusCode.UNAVAILABLE


class PermissionDenied(ServiceError):  # noqa: N818
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(ServiceError):  # noqa: N818
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


def status_of(exc: Exception, method: str) -> tuple[grpc.StatusCode, str]:
    """The status code and message that end a call which raised ``exc``.

    ServiceError carries its own code (a model's own exceptions arrive as Internal); a
    model's InvalidInput and a malformed image are INVALID_ARGUMENT; anything else is a bug
    in the server: INTERNAL, with the traceback logged here.
    """
    if isinstance(exc, ServiceError):
        return exc.code, str(exc)
    if isinstance(exc, (InvalidInput, ImageError)):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    log.error("%s failed", method, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error in {method}: {type(exc).__name__}: {exc}"
