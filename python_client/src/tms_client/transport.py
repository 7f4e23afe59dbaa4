"""The transport: how bytes reach one worker and come back.

The pool never touches gRPC itself. It asks a ``Transport`` to open a ``Channel`` (one
connection, so one worker process) to an address, and the channel to send request bytes to
a method path with a deadline and metadata, returning the reply bytes and the trailing
metadata; a failed call raises the client's ``CallError`` for its status, carrying the
trailers. ``stream`` is the same for calls with a stream of replies (or of requests).

``GrpcTransport`` and ``AioTransport`` are the real ones, on grpcio channels; channel options
and TLS credentials live here. Tests drive the pool with a scripted transport instead.

``AioTransport``'s channels carry the model calls (``CARRIED``) on ``ModelService.Calls``
streams kept open to the worker, one call at a time on each, as the server answers them
exactly as calls of their own: a message on an open stream costs both sides much less than a
call of its own (benchmarks/bench_floor.py). A call takes an idle stream or opens one; a
stream that fails or ends under a call is dropped, the call failing as a call of its own
would (UNAVAILABLE when the worker ended the stream: the call was not run). A call keeps to
its timeout: the server ends it then, and the client cancels its stream if no answer came (a
stalled worker). A server without Calls (older than it) gets calls of their own, as does every
call beyond ``MAX_STREAMS`` at once on a channel, and every call larger than
``MAX_CARRIED_BYTES``, whose bytes cost more than its call. ``carry=False`` turns it off.
``GrpcTransport``'s channels (grpcio's thread API) send each call on its own.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import grpc
import grpc.aio

from tms.v1 import model_service_pb2 as pb
from tms_client.exceptions import (
    CallError,
    DeadlineExceededError,
    UnavailableError,
    from_rpc_error,
    from_status,
)
from tms_client.protocol.methods import PER_CALL_METADATA, from_entries, method_path, to_entries
from tms_client.protocol.wire import ImageMessage, varint
from tms_client.targets import refused
from tms_client.tls import TLS

__all__ = [
    "AioTransport",
    "AsyncChannel",
    "AsyncStream",
    "AsyncTransport",
    "Channel",
    "GrpcTransport",
    "Metadata",
    "More",
    "Reply",
    "Request",
    "Stream",
    "Transport",
]

Metadata = tuple[tuple[str, str | bytes], ...]
#: The messages a streaming call sends after its request's (serialized, or to be written).
More = Iterable[bytes | ImageMessage]


@dataclass(frozen=True)
class Request:
    """One call to a worker: ``data`` (a serialized message, or one carrying images still to
    be written: see ``payload``) to the method ``path``."""

    path: str
    data: bytes | ImageMessage
    timeout: float | None  # seconds
    metadata: Metadata = ()
    #: Wait for the connection to be ready instead of failing at once when it is not.
    wait_for_ready: bool = False

    def payload(self) -> bytes:
        """``data`` as bytes, its images written in (tms_client.shm may send them otherwise)."""
        data = self.data
        return data.join() if isinstance(data, ImageMessage) else data


class Reply(NamedTuple):
    """What one call returned: the reply message's bytes and the trailing metadata."""

    data: bytes
    trailers: Metadata


class Stream(Protocol):
    """The replies of a streaming call, as they come; ``trailers`` once they have ended."""

    def __iter__(self) -> Iterator[bytes]: ...

    def trailers(self) -> Metadata: ...


class AsyncStream(Protocol):
    """As ``Stream``, for asyncio."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def trailers(self) -> Metadata: ...


class Channel(Protocol):
    """One connection to one worker. ``stream`` sends the request's data, then each of
    ``more``, and reads a stream of replies (a call of any of gRPC's four kinds)."""

    def unary(self, request: Request) -> Reply: ...

    def stream(self, request: Request, more: More = ()) -> Stream: ...

    def close(self) -> None: ...


class AsyncChannel(Protocol):
    """As ``Channel``, for asyncio."""

    async def unary(self, request: Request) -> Reply: ...

    def stream(
        self, request: Request, more: More | AsyncIterable[bytes | ImageMessage] = ()
    ) -> AsyncStream: ...

    async def close(self) -> None: ...


class Transport(Protocol):
    """Opens channels; ``refuses`` tells an address where nothing listens (a client that
    starts says so at once instead of waiting for a server that is not there)."""

    def open(self, address: str) -> Channel: ...

    def refuses(self, address: str, timeout: float) -> bool: ...


class AsyncTransport(Protocol):
    def open(self, address: str) -> AsyncChannel: ...

    async def refuses(self, address: str, timeout: float) -> bool: ...


class _Grpc:
    """grpcio channel settings shared by the sync and asyncio transports."""

    def __init__(
        self,
        tls: TLS | None = None,
        max_message_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        # Read the certificate files once, now; every channel shares the credentials.
        self.credentials = tls.credentials() if tls is not None else None
        self.options: list[tuple[str, Any]] = [
            # A private subchannel pool gives every channel its own TCP connection, and so
            # a chance to land on another worker process.
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # A channel belongs to one worker: never let gRPC retry on a new connection.
            ("grpc.enable_retries", 0),
            *(tls.channel_options() if tls is not None else ()),
        ]

    def _open(self, kind: Any, address: str) -> Any:
        """A new channel of ``kind`` (the grpc or the grpc.aio module) to ``address``."""
        if self.credentials is None:
            return kind.insecure_channel(address, options=self.options)
        return kind.secure_channel(address, self.credentials, options=self.options)


class GrpcTransport(_Grpc):
    """Channels of grpcio, each its own TCP connection; TLS when ``tls`` is given."""

    def open(self, address: str) -> GrpcChannel:
        return GrpcChannel(self._open(grpc, address))

    def refuses(self, address: str, timeout: float) -> bool:
        """Whether a TCP connection to ``address`` is refused (see targets.refused)."""
        return refused(address, timeout)


class AioTransport(_Grpc):
    """As ``GrpcTransport``, on grpc.aio channels, which carry the model calls on Calls
    streams (unless ``carry`` is False)."""

    def __init__(
        self,
        tls: TLS | None = None,
        max_message_bytes: int = 64 * 1024 * 1024,
        *,
        carry: bool = True,
    ) -> None:
        super().__init__(tls, max_message_bytes)
        self.carry = carry

    def open(self, address: str) -> AioChannel:
        return AioChannel(self._open(grpc.aio, address), carry=self.carry)

    async def refuses(self, address: str, timeout: float) -> bool:
        """As GrpcTransport.refuses, in a thread (the name may need looking up)."""
        return await asyncio.to_thread(refused, address, timeout)


#: The unary methods whose calls a channel carries on Calls streams.
CARRIED = frozenset(
    map(method_path, ("RunImage", "RunImageBatch", "RunImageToImage", "RunText", "RunTextBatch"))
)
#: Streams of a grpc.aio channel busy at once, beyond which calls go on their own.
MAX_STREAMS = 16
#: The largest request carried: the bytes of a larger one cost more than its call.
MAX_CARRIED_BYTES = 1024 * 1024
_CALLS = method_path("Calls")
_TIMED_OUT = "Deadline Exceeded"  # as grpc says it


class _Methods:
    """A grpcio channel (sync or asyncio) and its multi-callables, made once per path."""

    def __init__(self, channel: Any) -> None:
        self._channel = channel
        self._unary: dict[str, Any] = {}

    def _method(self, path: str) -> Any:
        method = self._unary.get(path)
        if method is None:
            method = self._unary.setdefault(path, self._channel.unary_unary(path))
        return method

    def _streaming(self, request: Request, more: More | AsyncIterable[bytes | ImageMessage]) -> Any:
        method = self._channel.stream_stream(request.path)
        messages: Any
        if isinstance(more, AsyncIterable):  # grpc.aio reads it on the event loop
            messages = _async_messages(request, more)
        else:  # grpc reads it in a thread of its own (grpc.aio: on the event loop)
            messages = itertools.chain((request.payload(),), map(_payload, more))
        return method(
            messages,
            timeout=request.timeout,
            metadata=request.metadata,
            wait_for_ready=request.wait_for_ready,
        )


class GrpcChannel(_Methods):
    """A channel of grpcio's thread API: each call on its own (grpcio sends a stream's
    messages from a thread of its own, and handing each call to that thread costs more than
    a call of its own; see tms_client.bridge)."""

    def unary(self, request: Request) -> Reply:
        try:
            reply, call = self._method(request.path).with_call(
                request.payload(),
                timeout=request.timeout,
                metadata=request.metadata,
                wait_for_ready=request.wait_for_ready,
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return Reply(bytes(reply), tuple(call.trailing_metadata() or ()))

    def stream(self, request: Request, more: More = ()) -> GrpcStream:
        return GrpcStream(self._streaming(request, more))

    def close(self) -> None:
        self._channel.close()


def _carried(request: Request, payload: bytes, opened: Metadata) -> bytes:
    """``request`` as a CallsRequest, with those of its metadata the stream was not opened
    with (``opened``), and those that belong to the call alone (PER_CALL_METADATA: the server
    never takes the stream's for them). Written by hand: protobuf would copy the payload
    once more."""
    path = request.path.encode()
    parts = [b"\x0a", varint(len(path)), path, b"\x12", varint(len(payload)), payload]
    own = [
        (key, value)
        for key, value in request.metadata
        if key in PER_CALL_METADATA or (key, value) not in opened
    ]
    if own:
        parts.append(pb.CallsRequest(metadata=to_entries(own)).SerializeToString())
    if request.timeout is not None:
        parts += (b"\x20", varint(max(1, int(request.timeout * 1e6))))
    return b"".join(parts)


def _reply(data: bytes) -> Reply:
    """The reply a CallsResponse carries; its error raised."""
    answer = pb.CallsResponse.FromString(data)
    trailers = from_entries(answer.trailers)
    if answer.error_status:
        raise from_status(answer.error_status, trailers)
    return Reply(answer.response, trailers)


def _broken(exc: grpc.RpcError) -> CallError:
    """The error of a call whose stream failed under it. A call's own errors come in its
    answer, so a status of the stream that no server sent (INTERNAL with no trailers, as
    grpc.aio ends a stream whose connection broke) is that of a worker gone: UNAVAILABLE."""
    error = from_rpc_error(exc)
    if error.code == grpc.StatusCode.INTERNAL and not error.trailers:
        return UnavailableError(
            grpc.StatusCode.UNAVAILABLE, f"the stream the call was sent on broke: {error.details}"
        )
    return error


def _ended() -> CallError:
    return UnavailableError(
        grpc.StatusCode.UNAVAILABLE,
        "the worker ended the stream the call was sent on; it did not run it",
    )


class GrpcStream:
    def __init__(self, call: Any) -> None:
        self._call = call

    def __iter__(self) -> Iterator[bytes]:
        try:
            for message in self._call:
                yield bytes(message)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            self._call.cancel()  # a reader that stops early ends the call (else: no-op)

    def trailers(self) -> Metadata:
        return tuple(self._call.trailing_metadata() or ())


class AioChannel(_Methods):
    def __init__(self, channel: Any, *, carry: bool = True) -> None:
        super().__init__(channel)
        self._carry = carry  # until the server says it has no Calls
        self._idle: list[_AioCallStream] = []  # streams waiting for a call, the last used last
        self._busy = 0  # streams carrying a call

    def _carries(self, request: Request, payload: bytes) -> bool:
        return self._carry and request.path in CARRIED and len(payload) <= MAX_CARRIED_BYTES

    def _idle_stream(self) -> _AioCallStream | None:
        """An idle stream still open, or None."""
        while self._idle:
            stream = self._idle.pop()
            if stream.open():
                return stream
        return None

    def _lost(self, stream: _AioCallStream, exc: grpc.RpcError, new: bool) -> CallError | None:
        """What a call raises whose stream (``new``: opened for it) failed under it with
        ``exc``; None when that says the server has no Calls (UNIMPLEMENTED): then this call,
        and every later one, goes on its own."""
        stream.close()
        if new and exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            self._carry = False
            return None
        return _broken(exc)

    async def unary(self, request: Request) -> Reply:
        payload = request.payload()
        if self._carries(request, payload) and self._busy < MAX_STREAMS:
            reply = await self._carried(request, payload)
            if reply is not None:
                return reply
        call = self._method(request.path)(
            payload,
            timeout=request.timeout,
            metadata=request.metadata,
            wait_for_ready=request.wait_for_ready,
        )
        try:
            reply = await call
            trailers = await call.trailing_metadata()
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return Reply(bytes(reply), tuple(trailers or ()))

    async def _carried(self, request: Request, payload: bytes) -> Reply | None:
        """``request`` sent on a Calls stream; None when the server has none."""
        stream: _AioCallStream | None = self._idle_stream()
        new = stream is None
        if stream is None:
            stream = _AioCallStream(self._channel.stream_stream(_CALLS), request)
        self._busy += 1
        try:
            async with asyncio.timeout(request.timeout):
                data = await stream.call(_carried(request, payload, stream.metadata))
        except grpc.RpcError as exc:
            if (error := self._lost(stream, exc, new)) is None:
                return None
            raise error from exc
        except TimeoutError:
            stream.close()
            raise DeadlineExceededError(grpc.StatusCode.DEADLINE_EXCEEDED, _TIMED_OUT) from None
        except BaseException:  # cancelled: what the stream holds is unknown
            stream.close()
            raise
        finally:
            self._busy -= 1
        if data is grpc.aio.EOF:
            stream.close()
            raise _ended()
        self._idle.append(stream)
        return _reply(data)

    def stream(
        self, request: Request, more: More | AsyncIterable[bytes | ImageMessage] = ()
    ) -> AioStream:
        return AioStream(self._streaming(request, more), request.timeout)

    async def close(self) -> None:
        for stream in self._idle:
            stream.close()
        await self._channel.close()


class _AioCallStream:
    """A Calls stream of grpc.aio, carrying one call at a time (asyncio.timeout keeps a call
    to its timeout)."""

    def __init__(self, method: Any, first: Request) -> None:
        self.metadata = first.metadata
        self._call = method(metadata=first.metadata, wait_for_ready=first.wait_for_ready)

    async def call(self, message: bytes) -> Any:
        await self._call.write(message)
        return await self._call.read()

    def open(self) -> bool:
        return not self._call.done()

    def close(self) -> None:
        self._call.cancel()


class AioStream:
    def __init__(self, call: Any, timeout: float | None) -> None:
        self._call = call
        self._deadline = None if timeout is None else time.monotonic() + timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for message in self._call:
                yield bytes(message)
        except grpc.RpcError as exc:
            error = from_rpc_error(exc)
            if self._past_deadline(error):
                raise DeadlineExceededError(
                    grpc.StatusCode.DEADLINE_EXCEEDED, "the stream outlasted its timeout"
                ) from exc
            raise error from exc
        finally:
            self._call.cancel()  # a reader that stops early ends the call (else: no-op)

    async def trailers(self) -> Metadata:
        return tuple(await self._call.trailing_metadata() or ())

    def _past_deadline(self, error: CallError) -> bool:
        """Whether ``error`` is how grpc.aio can end a stream whose deadline passed while
        the event loop was busy (reading the frames of a blocking iterator, say): INTERNAL,
        "Internal error from Core", with no trailers, as no server sent it."""
        return (
            error.code == grpc.StatusCode.INTERNAL
            and not error.trailers
            and self._deadline is not None
            and time.monotonic() >= self._deadline
        )


def _payload(message: bytes | ImageMessage) -> bytes:
    return message.join() if isinstance(message, ImageMessage) else message


async def _async_messages(
    request: Request, more: AsyncIterable[bytes | ImageMessage]
) -> AsyncIterator[bytes]:
    yield request.payload()
    async for message in more:
        yield _payload(message)
