"""``AsyncModelClient``: the ModelClient API for asyncio services, on ``grpc.aio``.

It shares everything but the waiting with the sync client: the options, the calls
(tms_client.calls) and the pool core (tms_client.core), run by ``AsyncWorkerPool``.

    async with AsyncModelClient("face", "localhost:50051") as face:
        result = await face.run_image(image)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Coroutine
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from tms_client import calls
from tms_client.aio_pool import AsyncWorkerPool
from tms_client.calls import Builder, FrameResult, Frames, FrameStream, ModelInfo, as_method
from tms_client.exceptions import ClientClosedError, ModelNotFoundError, TMSError
from tms_client.images import fit_within
from tms_client.protocol.wire import ImageMessage
from tms_client.tracing import call_span
from tms_client.transport import Request
from tms_client.workers import WorkerInfo

__all__ = ["AsyncModelClient"]

R = TypeVar("R")
P = ParamSpec("P")


class AsyncModelClient(calls.AsyncioClient):
    """ModelClient for asyncio: the same options and methods, each awaited.

    Connecting waits for the servers, so it happens in ``await client.start()`` or
    ``async with AsyncModelClient(...)``; the first call starts a client not started yet.
    """

    def _open(self) -> None:
        self._pool: AsyncWorkerPool | None = None
        self._starting: asyncio.Future[None] | None = None  # the one start under way
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the pool belongs to
        self._closed = False

    def __repr__(self) -> str:
        return f"<AsyncModelClient model={self.model!r} pool={self._pool!r}>"

    async def start(self) -> None:
        """Wait for the servers and connect to their workers (ConnectError after the timeout).
        Calls that start the client at once share one start (and one pool);
        ClientClosedError once the client is closed."""
        if self._closed:
            raise ClientClosedError()
        loop = asyncio.get_running_loop()
        if self._loop is not None and self._loop is not loop:
            raise TMSError(
                "this AsyncModelClient was started in another event loop, and gRPC's asyncio "
                "channels belong to the loop that made them: make one client per event loop "
                "(in the coroutine that asyncio.run runs, say)"
            )
        if self._pool is not None:
            return
        if self._starting is None:
            self._loop = loop
            self._starting = asyncio.ensure_future(self._connect())
            self._starting.add_done_callback(_retrieve)
        starting = self._starting
        try:
            await asyncio.shield(starting)  # a caller that leaves ends no one else's start
        finally:
            if starting.done() and self._starting is starting:
                self._starting = None

    async def _connect(self) -> None:
        pool = AsyncWorkerPool(self.options)
        await pool.start()
        self._pool = pool

    async def __aenter__(self) -> AsyncModelClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every connection and stop looking for workers."""
        self._closed = True
        if self._loop is not asyncio.get_running_loop():
            # Never started, or its loop is another's (most likely closed): nothing here can
            # close its channels, which went with that loop.
            self._pool = self._starting = None
            return
        if self._starting is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._starting)
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _send(self, call: calls.Call[R]) -> R:
        with call_span(call.path, call.model) as metadata:
            data, timeout = fit_within(call.request, self.options.max_message_bytes, self.timeout)
            request = Request(call.path, data, timeout, metadata)
            reply = await self._call(request, call.model)
        return call.parse(reply)

    async def _call(self, request: Request, model: str) -> bytes:
        """``request`` sent through the pool (started first if it is not)."""
        if self._pool is None or self._loop is not asyncio.get_running_loop():
            await self.start()
        assert self._pool is not None
        return await self._pool.call(request, model)

    def _bind(self, build: Builder[P, R]) -> Callable[P, Coroutine[Any, Any, R]]:
        async def method(*args: P.args, **kwargs: P.kwargs) -> R:
            return await self._send(build(self.model, *args, **kwargs))

        return as_method(method, build)

    async def _stream(self, stream: FrameStream) -> AsyncGenerator[FrameResult, None]:
        # The frames are read on the event loop (pass an async iterable to read them off it),
        # and sent while there is room in the window; the answers make room.
        await self.start()
        assert self._pool is not None
        frames = _frames(stream.frames)
        first = await anext(frames, _END)
        if first is _END:
            return
        room = asyncio.Event()
        max_bytes = self.options.max_message_bytes

        async def more() -> AsyncIterator[ImageMessage]:
            try:
                while True:
                    while not stream.has_room():
                        room.clear()
                        await room.wait()
                    frame = _END if stream.ended else await anext(frames, _END)
                    if frame is _END:
                        return
                    yield stream.request(frame, max_bytes)
            except Exception as exc:  # gRPC would cancel the call with it: raised to the caller
                stream.failure = exc

        with call_span(stream.path, self.model) as metadata:
            request = stream.opening(first, max_bytes, metadata)
            replies = self._pool.stream(request, more(), self.model)
            async with contextlib.aclosing(replies):
                try:
                    async for reply in replies:
                        try:
                            answer = stream.answer(reply)
                        finally:
                            room.set()
                        yield answer
                finally:
                    stream.ended = True
                    room.set()
        stream.finished()

    async def list_models(self) -> list[ModelInfo]:
        """See ModelClient.list_models."""
        return await self._send(calls.list_models())

    async def failed_models(self) -> dict[str, str]:
        """See ModelClient.failed_models."""
        return await self._send(calls.failed_models())

    async def health(self, service: str | None = None) -> str:
        """See ModelClient.health."""
        try:
            return await self._send(calls.health(self.model if service is None else service))
        except ModelNotFoundError:
            return "SERVICE_UNKNOWN"

    async def workers(self) -> list[WorkerInfo]:
        """See ModelClient.workers; awaited like every method, it starts a client not
        started yet."""
        await self.start()
        assert self._pool is not None
        return self._pool.worker_infos()


_END: Any = object()  # the end of the frames


async def _frames(frames: Frames) -> AsyncIterator[Any]:
    if isinstance(frames, AsyncIterable):
        async for frame in frames:
            yield frame
    else:
        for frame in frames:
            yield frame


def _retrieve(start: asyncio.Future[None]) -> None:
    """Take a start's error in, so that asyncio does not log it when no caller awaits it
    any more (each caller awaiting it gets it)."""
    if not start.cancelled():
        start.exception()
