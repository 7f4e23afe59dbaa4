"""Errors the server raises, each carrying its gRPC status code, and the one place that
turns them (and anything unexpected) into the call's status."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from tms_client.codec import ImageError
from tms_server.model import InvalidInput

__all__ = [
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ServiceError",
    "Unavailable",
    "Unimplemented",
    "message_handler",
    "status_errors",
]

log = logging.getLogger("tms_server")

Handler = TypeVar("Handler", bound=Callable[..., Any])


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


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("context.abort returned")  # pragma: no cover


def status_errors(handler: Handler) -> Handler:
    """Run a servicer method; end the call with the status its exception stands for.

    Every answer carries the worker's load (``self.load``) in its trailing metadata; a worker
    that is draining answers UNAVAILABLE so that clients retry elsewhere.

    ServiceError carries its own code (a model's own exceptions arrive as Internal); a
    model's InvalidInput and a malformed image are INVALID_ARGUMENT; anything else is a bug
    in the server: INTERNAL, with the traceback logged here.
    """

    @functools.wraps(handler)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        load = self.load
        load.begin()
        try:
            if load.draining:
                raise Unavailable("this worker is shutting down; try another")
            response = handler(self, request, context)
            context.set_trailing_metadata(load.trailers())
            return response
        except ServiceError as exc:
            code, message = exc.code, str(exc)
        except (InvalidInput, ImageError) as exc:
            code, message = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        except Exception as exc:
            log.exception("%s failed", handler.__name__)
            code = grpc.StatusCode.INTERNAL
            message = f"internal error in {handler.__name__}: {type(exc).__name__}: {exc}"
        finally:
            load.end()
        context.set_trailing_metadata(load.trailers())
        _abort(context, code, message)

    return wrapper  # type: ignore[return-value]


def message_handler(
    method: Callable[[Any, grpc.ServicerContext], Any],
    request_class: type[Message],
    response_serializer: Callable[[Any], bytes] | None,
) -> grpc.RpcMethodHandler[Any, Any]:
    """A unary handler that parses the request itself, so that bytes which are not a
    ``request_class`` end the call with INVALID_ARGUMENT (gRPC's own parsing says INTERNAL)."""
    name = request_class.DESCRIPTOR.name

    def parse_then_handle(request: bytes, context: grpc.ServicerContext) -> Any:
        try:
            message = request_class.FromString(request)
        except DecodeError as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"malformed {name}: {exc}")
        return method(message, context)

    return grpc.unary_unary_rpc_method_handler(
        parse_then_handle, request_deserializer=None, response_serializer=response_serializer
    )
