"""Structured error details: the server's one table (errors.status_of builds a google.rpc.Status
with ErrorInfo, BadRequest and RetryInfo), the client's reading of it (from_rpc_error), and the
retry decision that honours RetryInfo."""

from __future__ import annotations

from typing import Any, NamedTuple

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status  # type: ignore[import-untyped]

from tms_client import RetryPolicy
from tms_client.exceptions import (
    CallError,
    InvalidInputError,
    ResourceExhaustedError,
    UnavailableError,
    from_code,
    from_rpc_error,
)
from tms_client.protocol.codec import ImageError
from tms_client.retry import Attempts
from tms_server import errors
from tms_server.errors import (
    InvalidArgument,
    Reason,
    ResourceExhausted,
    ServiceError,
    Unavailable,
    status_of,
)
from tms_server.model import InvalidInput

DETAILS_KEY = "grpc-status-details-bin"


def unpacked(status: grpc.Status) -> dict[str, Any]:
    """The details of a grpc.Status, by kind."""
    [(key, value)] = status.trailing_metadata
    assert key == DETAILS_KEY
    rich = status_pb2.Status.FromString(value)
    assert (rich.code, rich.message) == (status.code.value[0], status.details)
    found: dict[str, Any] = {}
    for detail in rich.details:
        for kind in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.RetryInfo,
        ):
            message = kind()
            if detail.Unpack(message):
                found[kind.DESCRIPTOR.name] = message
    assert len(found) == len(rich.details)
    return found


# -- the server's table ---------------------------------------------------------------------------


def test_every_service_error_class_has_a_reason_and_a_code() -> None:
    classes = [getattr(errors, name) for name in errors.__all__]
    classes = [c for c in classes if isinstance(c, type) and issubclass(c, ServiceError)]
    assert len(classes) == 10
    for cls in classes:
        assert isinstance(cls.reason, Reason)
        assert isinstance(cls.code, grpc.StatusCode)


def test_a_service_error_becomes_a_status_with_its_details() -> None:
    exc = InvalidArgument("too deep", reason=Reason.INVALID_ARGS, field="args_json")
    status = status_of(exc, "/tms.v1.ModelService/RunImage", model="probe")
    assert (status.code, status.details) == (grpc.StatusCode.INVALID_ARGUMENT, "too deep")
    found = unpacked(status)
    info = found["ErrorInfo"]
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "INVALID_ARGS",
        "tms",
        {"model": "probe"},
    )
    [violation] = found["BadRequest"].field_violations
    assert (violation.field, violation.description) == ("args_json", "too deep")
    assert "RetryInfo" not in found


def test_queue_full_and_draining_carry_retry_info() -> None:
    full = unpacked(status_of(ResourceExhausted("busy", retry_after=0.1), "m"))
    assert full["ErrorInfo"].reason == "QUEUE_FULL"
    assert full["RetryInfo"].retry_delay.ToNanoseconds() == 100_000_000
    draining = unpacked(status_of(Unavailable("bye", retry_after=0.0), "m"))
    assert draining["ErrorInfo"].reason == "DRAINING"
    assert draining["RetryInfo"].retry_delay.ToNanoseconds() == 0


def test_exceptions_from_outside_get_their_reasons(caplog: pytest.LogCaptureFixture) -> None:
    refused = status_of(InvalidInput("no cats"), "m")
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert unpacked(refused)["ErrorInfo"].reason == "INVALID_INPUT"
    undecodable = status_of(ImageError("cannot decode PNG image"), "m")
    assert unpacked(undecodable)["ErrorInfo"].reason == "INVALID_IMAGE"
    bug = status_of(KeyError("x"), "/tms.v1.ModelService/RunText")
    assert bug.code == grpc.StatusCode.INTERNAL
    assert bug.details == "internal error in /tms.v1.ModelService/RunText: KeyError: 'x'"
    assert unpacked(bug)["ErrorInfo"].reason == "INTERNAL"
    assert "failed" in caplog.text


def test_explicit_metadata_adds_to_the_model() -> None:
    exc = errors.NotFound("no version 2", metadata={"version": "2"})
    info = unpacked(status_of(exc, "m", model="probe"))["ErrorInfo"]
    assert dict(info.metadata) == {"model": "probe", "version": "2"}


# -- the client's reading -------------------------------------------------------------------------


class PlainStatus(NamedTuple):
    """A status with no details, as a server that sends none ends a call."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, Any], ...]


class FailedCall(grpc.RpcError):
    """A failed call as grpc raises it: code, details and trailing metadata."""

    def __init__(
        self, status: grpc.Status | PlainStatus, extra: tuple[tuple[str, Any], ...] = ()
    ) -> None:
        super().__init__()
        self.status = status
        self.extra = extra

    def code(self) -> grpc.StatusCode:
        return self.status.code

    def details(self) -> str:
        return self.status.details

    def trailing_metadata(self) -> Any:
        return (("tms-worker", "a/1"), *self.extra, *self.status.trailing_metadata)


def test_the_client_reads_reason_violations_and_retry_delay() -> None:
    status = status_of(
        InvalidArgument("bad", reason=Reason.INVALID_IMAGE, field="image.dtype"), "m", model="m1"
    )
    error = from_rpc_error(FailedCall(status))
    assert type(error) is InvalidInputError
    assert error.reason == "INVALID_IMAGE"
    assert error.error_metadata == {"model": "m1"}
    assert error.field_violations == [("image.dtype", "bad")]
    assert error.retry_delay is None
    assert ("tms-worker", "a/1") in error.trailers

    full = from_rpc_error(FailedCall(status_of(ResourceExhausted("busy", retry_after=0.1), "m")))
    assert type(full) is ResourceExhaustedError
    assert (full.reason, full.retry_delay, full.field_violations) == ("QUEUE_FULL", 0.1, [])


def test_a_status_without_details_or_contradicting_the_call_gives_none() -> None:
    plain = PlainStatus(grpc.StatusCode.NOT_FOUND, "gone", ())
    error = from_rpc_error(FailedCall(plain))
    assert (error.reason, error.field_violations, error.retry_delay) == (None, [], None)

    rich = status_pb2.Status(code=grpc.StatusCode.INTERNAL.value[0], message="another message")
    packed = any_pb2.Any()
    packed.Pack(error_details_pb2.ErrorInfo(reason="MODEL_FAILED", domain="tms"))
    rich.details.append(packed)
    liar = rpc_status.to_status(rich)
    contradicting = FailedCall(plain, tuple(liar.trailing_metadata))
    assert from_rpc_error(contradicting).reason is None


# -- the retry decision ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def queue_full(delay: float | None = 0.1) -> CallError:
    return from_code(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", reason="QUEUE_FULL", retry_delay=delay
    )


def test_retry_info_makes_a_failure_retriable_after_at_least_its_delay() -> None:
    clock = Clock()
    policy = RetryPolicy().with_jitter(0).with_backoff(0.05, 2.0)
    assert not policy.retries(grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert policy.retries(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_delay=0.1)
    attempts = Attempts(policy, timeout=5.0, clock=clock)
    attempts.begin()
    assert attempts.delay_after(queue_full(0.1)) == pytest.approx(0.1)  # more than 0.05
    for _ in range(3):
        attempts.begin()
    assert attempts.delay_after(queue_full(0.1)) == pytest.approx(0.4)  # backoff is longer


def test_the_same_failure_without_retry_info_is_not_retried() -> None:
    attempts = Attempts(RetryPolicy(), timeout=5.0, clock=Clock())
    attempts.begin()
    too_large = from_code(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "image too large", reason="IMAGE_TOO_LARGE"
    )
    with pytest.raises(ResourceExhaustedError, match="too large"):
        attempts.delay_after(too_large)


def test_a_policy_may_ignore_retry_info() -> None:
    attempts = Attempts(RetryPolicy().with_retry_info(False), timeout=5.0, clock=Clock())
    attempts.begin()
    with pytest.raises(ResourceExhaustedError):
        attempts.delay_after(queue_full())
    assert RetryPolicy().retry_info
    assert not RetryPolicy().with_retry_info(False).retry_info


def test_a_retry_delay_never_passes_the_deadline() -> None:
    clock = Clock()
    attempts = Attempts(RetryPolicy().with_jitter(0), timeout=1.0, clock=clock)
    attempts.begin()
    clock.now += 0.5
    with pytest.raises(ResourceExhaustedError):  # 0.6 s asked, 0.5 s left
        attempts.delay_after(queue_full(0.6))


def test_draining_is_retried_after_the_backoff_alone() -> None:
    attempts = Attempts(RetryPolicy().with_jitter(0), timeout=5.0, clock=Clock())
    attempts.begin()
    draining = from_code(grpc.StatusCode.UNAVAILABLE, "bye", reason="DRAINING", retry_delay=0.0)
    assert isinstance(draining, UnavailableError)
    assert attempts.delay_after(draining) == pytest.approx(0.05)
