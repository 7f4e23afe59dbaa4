"""ModelService.Calls: unary calls carried one after another over one stream.

A unary gRPC call costs both sides a new HTTP/2 stream, its headers, its status and trailers:
in Python, more CPU than a small model call's own work (benchmarks/bench_floor.py). A Calls
stream pays that once; each of its messages is one call of a unary method of the service,
which ``serve`` runs through ``Worker.handle`` exactly as if it had come alone: its own
CallInfo (request id, model), the worker's admission and crash guard, its status, trailers,
log line and metrics count, under its method's name. A ``Carried`` stands in for the gRPC
context of that one call. The answer carries the call's response or its error (a
google.rpc.Status), and its trailers.

The stream itself holds nothing between calls, and is not a call: it is neither logged nor
counted, and no StallWatch times the wait for its next message. It ends UNAVAILABLE once the
worker drains, before running a call it has read: a call that got no answer was not run.
Beyond MAX_IDLE streams waiting for a call, the one waiting longest is ended (UNAVAILABLE):
its client opens another when it needs one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn, cast

import grpc
from google.protobuf.message import DecodeError
from google.rpc import status_pb2  # type: ignore[import-untyped]

from tms.v1 import model_service_pb2 as pb
from tms_client.protocol.methods import PER_CALL_METADATA, from_entries, to_entries
from tms_server.errors import (
    STATUS_DETAILS_KEY,
    InvalidArgument,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    status_details,
    status_of,
)
from tms_server.security import bearer_token

if TYPE_CHECKING:  # tms_server.rpc registers ``serve``
    from tms_server.load import WorkerLoad
    from tms_server.rpc import Method, Trailers, Worker
    from tms_server.stalls import Context

    #: A carried method and how its responses are written (None: they are bytes already).
    Carriable = tuple[Method, Callable[[Any], bytes] | None]

__all__ = ["MAX_IDLE", "Carried", "serve"]

#: Calls streams a worker keeps waiting for a call (each holds a task and a little memory).
MAX_IDLE = 1024


class Aborted(Exception):  # noqa: N818 - what context.abort does
    """How a carried call ends with an error: what ``context.abort`` was given."""

    def __init__(self, code: grpc.StatusCode, details: str, trailers: Trailers) -> None:
        super().__init__(details)
        self.code, self.details, self.trailers = code, details, trailers


class Carried:
    """The gRPC context of one call carried by a Calls stream, as ``Worker.handle`` uses it:
    the request is the message's, the metadata the call's own and the stream's (its call token,
    say) under other keys than those and PER_CALL_METADATA, the trailers and status go into the
    answer; the peer is the stream's."""

    def __init__(self, peer: str, opened: Trailers, message: pb.CallsRequest) -> None:
        self._peer = peer
        self._request: Any = message.request
        self._metadata = opened
        if message.metadata:
            own = from_entries(message.metadata)
            mine = {key for key, _ in own}
            self._metadata = (*(entry for entry in opened if entry[0] not in mine), *own)
        self.trailers: Trailers = ()
        self._done: list[Callable[[Any], object]] = []

    async def read(self) -> Any:
        request, self._request = self._request, grpc.aio.EOF
        return request

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata

    def set_trailing_metadata(self, trailers: Trailers) -> None:
        self.trailers = trailers

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailers: Trailers = ()
    ) -> NoReturn:
        raise Aborted(code, details, trailers)

    def peer(self) -> str:
        return self._peer  # read once: the stream's call may be gone when this is asked

    def add_done_callback(self, callback: Callable[[Any], object]) -> None:
        self._done.append(callback)

    def done(self) -> None:
        """The answer is sent, or will never be (the stream ended): what waited for that
        runs (the StallWatch stops timing the call)."""
        for callback in self._done:
            callback(self)


async def serve(worker: Worker, methods: Mapping[str, Carriable], stream: Context) -> None:
    """Serve a Calls stream: read a call, run it, answer it, until the caller ends the stream
    or the worker drains (UNAVAILABLE: a stream waiting for its next call ends at once, see
    ``Worker.end_idle_carriers``)."""
    opened: Trailers = tuple(stream.invocation_metadata() or ())
    tokens = worker.tokens
    token = bearer_token(opened) if tokens is not None else None
    # What every call has of the stream's metadata: not the stream's own request id or trace.
    opened = tuple(entry for entry in opened if entry[0] not in PER_CALL_METADATA)
    task = asyncio.current_task()
    assert task is not None
    peer = stream.peer()
    while (message := await _next(worker, stream, task)) is not grpc.aio.EOF:
        if tokens is not None and tokens.revokes(token):
            raise Unauthenticated(
                "the token this stream was opened with is no longer valid here; open it again "
                "with a valid one"
            )
        try:
            call = pb.CallsRequest.FromString(message)
        except DecodeError as exc:
            raise InvalidArgument(f"malformed CallsRequest: {exc}") from None
        context = Carried(peer, opened, call)
        try:
            answer = await _run(worker, methods.get(call.method), context, call)
            await stream.write(answer.SerializeToString())
        finally:
            context.done()


async def _next(worker: Worker, stream: Context, task: asyncio.Task[None]) -> Any:
    """The stream's next message, waited for as an idle carrier (``task``, serving the
    stream): the worker's stop ends the wait (UNAVAILABLE), so that no idle stream holds it
    for its grace period, and so does a newer idle stream beyond MAX_IDLE."""
    load = worker.load
    if load.draining:
        raise _draining_error()
    idle = worker.idle_carriers
    idle[task] = None
    if len(idle) > MAX_IDLE:
        oldest = next(iter(idle))
        idle.pop(oldest)
        worker.ended_carriers.add(oldest)
        oldest.cancel()
    try:
        return await stream.read()
    except asyncio.CancelledError:
        ended = task in worker.ended_carriers
        if not (task.cancelling() and (ended or _draining(load))):
            raise
        task.uncancel()
        if ended:
            raise Unavailable(
                f"this worker keeps at most {MAX_IDLE} Calls streams waiting for a call, and "
                "this one waited longest; open another"
            ) from None
        raise _draining_error() from None
    finally:
        idle.pop(task, None)
        worker.ended_carriers.discard(task)


async def _run(
    worker: Worker, carriable: Carriable | None, context: Carried, call: pb.CallsRequest
) -> pb.CallsResponse:
    """The answer to one carried call."""
    if carriable is None:
        error = Unimplemented(
            f"{call.method!r} cannot be carried by Calls; it carries "
            "/tms.v1.ModelService/RunImage, RunImageBatch, RunImageToImage, RunText and "
            "RunTextBatch: call any other method on its own"
        )
        status = status_of(error, "/tms.v1.ModelService/Calls")
        return pb.CallsResponse(error_status=status_details(status.trailing_metadata))
    method, serialize = carriable
    try:
        async with asyncio.timeout(call.timeout_us / 1e6 if call.timeout_us else None):
            response = await worker.handle(method, cast("Context", context), "Calls")
    except Aborted as exc:
        trailers = tuple((key, value) for key, value in exc.trailers if key != STATUS_DETAILS_KEY)
        return pb.CallsResponse(
            error_status=status_details(exc.trailers) or _status(exc.code, exc.details),
            trailers=to_entries(trailers),
        )
    except TimeoutError:
        return pb.CallsResponse(
            error_status=_status(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        )
    data = response if serialize is None else serialize(response)
    return pb.CallsResponse(response=data, trailers=to_entries(context.trailers))


def _status(code: grpc.StatusCode, message: str) -> bytes:
    data: bytes = status_pb2.Status(code=code.value[0], message=message).SerializeToString()
    return data


def _draining_error() -> Unavailable:
    return Unavailable("this worker is shutting down; send the call to another")


def _draining(load: WorkerLoad) -> bool:
    return load.draining  # as it is now: another thread sets it
