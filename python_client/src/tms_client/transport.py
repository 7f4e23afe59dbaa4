"""The transport: how bytes reach one worker and come back.

The pool never touches gRPC itself. It asks a ``Transport`` to open a ``Channel`` (one
connection, so one worker process) to an address, and the channel to send request bytes to
a method path with a deadline and metadata, returning the reply bytes and the trailing
metadata; a failed call raises the client's ``CallError`` for its status, carrying the
trailers. ``stream`` is the same for calls with a stream of replies (or of requests).

``GrpcTransport`` and ``AioTransport`` are the real ones, on grpcio channels; channel options
and TLS credentials live here. Tests drive the pool with a scripted transport instead.
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

from tms_client.exceptions import CallError, DeadlineExceededError, from_rpc_error
from tms_client.protocol.wire import ImageMessage
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

    def __init__(self, tls: TLS | None = None, max_message_bytes: int = 64 * 1024 * 1024) -> None:
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
    """As ``GrpcTransport``, on grpc.aio channels."""

    def open(self, address: str) -> AioChannel:
        return AioChannel(self._open(grpc.aio, address))

    async def refuses(self, address: str, timeout: float) -> bool:
        """As GrpcTransport.refuses, in a thread (the name may need looking up)."""
        return await asyncio.to_thread(refused, address, timeout)


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
    async def unary(self, request: Request) -> Reply:
        call = self._method(request.path)(
            request.payload(),
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

    def stream(
        self, request: Request, more: More | AsyncIterable[bytes | ImageMessage] = ()
    ) -> AioStream:
        return AioStream(self._streaming(request, more), request.timeout)

    async def close(self) -> None:
        await self._channel.close()


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
