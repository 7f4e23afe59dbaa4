"""``ModelClient``: call one model of TMS servers, spread over all their worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import queue
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from tms_client import calls
from tms_client.aio import AsyncModelClient
from tms_client.aio_pool import AsyncWorkerPool
from tms_client.bridge import LOOP, usable
from tms_client.calls import Builder, FrameResult, FrameStream, ModelInfo, as_method
from tms_client.exceptions import ClientClosedError, ModelNotFoundError
from tms_client.images import fit_within
from tms_client.pool import WorkerPool
from tms_client.protocol.wire import ImageMessage
from tms_client.tracing import call_span
from tms_client.transport import Request
from tms_client.workers import WorkerInfo

__all__ = ["ModelClient"]

R = TypeVar("R")
P = ParamSpec("P")


class ModelClient(calls.ThreadClient):
    """A client for one model of a TMS server (or of several servers serving the same models).

    ``target`` is ``"host:port"``, a list of them, or ``"dns:///name:port"`` for every address
    a name resolves to. Every other setting is a field of ``ClientOptions``: pass
    ``options=ClientOptions(...)``, or the fields as keyword arguments (``timeout=10``,
    ``token=...``, ``tls=TLS(...)``, ``balancer=RoundRobin()``, ``retry=RetryPolicy.never()``...),
    which override those of ``options``.

    On creation the client waits up to ``connect_timeout`` seconds for the servers (raising
    ``ConnectError`` after that, or at once where nothing listens, unless ``wait_for_server``),
    then connects to every worker process behind them and
    spreads calls over them with the balancer (``LeastLoaded()`` by default, which steers
    calls away from a slow or stuck worker). A call that fails with a code the retry policy
    names (UNAVAILABLE by default) is sent again, to another worker, within ``timeout``. Lost
    workers are dropped and new ones found in the background. A server that refuses the
    token raises UnauthenticatedError.

    Use it as a context manager, or call ``close()``. It is safe to share between threads.
    """

    def _open(self) -> None:
        self._closed = False
        self._pid = os.getpid()
        self._client = AsyncModelClient(self.model, options=self.options)
        self._forking = threading.Lock()
        self._threads: WorkerPool | None = None  # see _threaded
        self._on_loop = usable()
        if not self._on_loop:
            self._threaded()  # connect now, as on the loop
            return
        # A client dropped unclosed closes its connections on the loop, as grpcio's thread
        # API closes a channel it collects: the pool's tasks there would keep them open.
        weakref.finalize(self, LOOP.start, self._client.close).atexit = False
        LOOP.run(self._client.start)

    @property
    def timeout(self) -> float | None:
        """Each call's deadline in seconds (None: none); may be changed between calls."""
        return self._client.timeout  # the calls on the loop are the asyncio client's

    @timeout.setter
    def timeout(self, seconds: float | None) -> None:
        self._client.timeout = seconds

    def __repr__(self) -> str:
        return f"<ModelClient model={self.model!r} pool={self._pool!r}>"

    @property
    def _pool(self) -> AsyncWorkerPool | None:
        """The pool the calls run on (None before it has started, or once closed)."""
        return self._client._pool

    def __enter__(self) -> ModelClient:
        if self._closed:
            raise ClientClosedError()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection and stop looking for workers."""
        self._closed = True
        if self._on_loop and self._pid == os.getpid():
            LOOP.run(self._client.close)
        if self._threads is not None:
            self._threads.close()

    def _threaded(self) -> WorkerPool | None:
        """The pool the calls run on with grpcio's thread API, where they cannot run on the
        loop: in a child made by fork (the loop of the parent's channels stayed behind, and
        gRPC's asyncio channels cannot be used across fork), or where gevent has made the
        threads greenlets (Locust's users: see bridge.usable). None where they can."""
        if self._on_loop and self._pid == os.getpid():
            return None
        if self._closed:
            raise ClientClosedError()
        with self._forking:
            if self._threads is None or self._threads.pid != os.getpid():
                pool = WorkerPool(self.options)
                pool.start()
                self._threads = pool
            return self._threads

    def _send(self, call: calls.Call[R]) -> R:
        threads = self._threaded()
        if threads is None:
            return LOOP.run(functools.partial(self._client._send, call))
        return self._send_on(threads, call)

    def _send_on(self, threads: WorkerPool, call: calls.Call[R]) -> R:
        with call_span(call.path, call.model) as metadata:
            data, timeout = fit_within(call.request, self.options.max_message_bytes, self.timeout)
            reply = threads.call(Request(call.path, data, timeout, metadata), call.model)
        return call.parse(reply)

    def _bind(self, build: Builder[P, R]) -> Callable[P, R]:
        on_loop = self._client._bind(build)

        def method(*args: P.args, **kwargs: P.kwargs) -> R:
            threads = self._threaded()
            if threads is None:
                # Built on the loop as well: the calling thread holds the GIL only to hand
                # the call over, which keeps the loop's thread going under many callers.
                return LOOP.run(functools.partial(on_loop, *args, **kwargs))
            return self._send_on(threads, build(self.model, *args, **kwargs))

        return as_method(method, build)

    def _stream(self, stream: FrameStream) -> Iterator[FrameResult]:
        threads = self._threaded()
        if threads is not None:
            yield from _stream_with_threads(threads, stream)
            return
        # The stream runs on the loop, reading the frames in a thread of its default
        # executor; each answer is handed to this thread, and the next one read once it is
        # taken, so a caller slower than the model holds the frames back too.
        stream.frames = _pulled(iter(stream.frames))  # type: ignore[arg-type]
        handoff = _Handoff()
        running = LOOP.start(self._relay, stream, handoff)
        try:
            while (answer := handoff.take()) is not _END:
                yield answer
        finally:
            running.cancel()
            running.done.acquire()  # the stream's regions given back, its call ended

    async def _relay(self, stream: FrameStream, handoff: _Handoff) -> None:
        try:
            if self._closed:
                raise ClientClosedError()
            async with contextlib.aclosing(self._client._stream(stream)) as answers:
                async for answer in answers:
                    await handoff.give(answer)
        except BaseException as exc:  # CancelledError too: the caller left, taking nothing
            handoff.fail(exc)
        else:
            handoff.give_last(_END)

    def list_models(self) -> list[ModelInfo]:
        """Every model the server has loaded."""
        return self._send(calls.list_models())

    def failed_models(self) -> dict[str, str]:
        """The models the server failed to load, by name, and why (empty when all loaded;
        their calls raise ModelNotReadyError)."""
        return self._send(calls.failed_models())

    def health(self, service: str | None = None) -> str:
        """The standard gRPC health status of this model (or of ``service``; "" for the
        whole server) on one worker: SERVING, NOT_SERVING or SERVICE_UNKNOWN."""
        try:
            return self._send(calls.health(self.model if service is None else service))
        except ModelNotFoundError:
            return "SERVICE_UNKNOWN"

    def workers(self) -> list[WorkerInfo]:
        """The worker processes this client is connected to, with their load."""
        threads = self._threaded()
        if threads is not None:
            return threads.worker_infos()
        if self._closed:
            raise ClientClosedError()
        return LOOP.run(self._client.workers)


_END: Any = object()  # the end of the frames, and of the answers


def _stream_with_threads(pool: WorkerPool, stream: FrameStream) -> Iterator[FrameResult]:
    """``stream`` through a pool of grpcio's thread API (see ModelClient._threaded): a gRPC
    thread reads the frames and sends them while there is room in the window; the caller's
    thread takes the answers and makes room."""
    frames = iter(stream.frames)  # type: ignore[arg-type]
    first = next(frames, _END)
    if first is _END:
        return
    room = threading.Condition()
    max_bytes = pool.options.max_message_bytes

    def more() -> Iterator[ImageMessage]:
        try:
            while True:
                with room:
                    room.wait_for(stream.has_room)
                frame = _END if stream.ended else next(frames, _END)
                if frame is _END:
                    return
                yield stream.request(frame, max_bytes)
        except Exception as exc:  # gRPC would only log it: raised to the caller
            stream.failure = exc

    with call_span(stream.path, stream.model) as metadata:
        request = stream.opening(first, max_bytes, metadata)
        replies = pool.stream(request, more(), stream.model)
        with contextlib.closing(replies):
            try:
                for reply in replies:
                    with room:
                        try:
                            answer = stream.answer(reply)
                        finally:
                            room.notify()
                    yield answer
            finally:
                with room:
                    stream.ended = True
                    room.notify()
    stream.finished()


async def _pulled(frames: Iterator[Any]) -> AsyncIterator[Any]:
    """``frames`` read one at a time in a thread of the loop's default executor (a thread
    a stream at most: see bridge.READERS), so that a source that blocks (a camera) holds up
    no other call."""
    while (frame := await asyncio.to_thread(next, frames, _END)) is not _END:
        yield frame


class _Handoff:
    """Answers handed from a task on the loop to the thread that takes them, one at a time:
    the task goes on once the thread has taken the answer."""

    def __init__(self) -> None:
        self._items: queue.SimpleQueue[tuple[Any, BaseException | None, Any]] = queue.SimpleQueue()

    async def give(self, item: Any) -> None:
        taken = asyncio.get_running_loop().create_future()
        self._items.put((item, None, taken))
        await taken

    def give_last(self, item: Any) -> None:
        self._items.put((item, None, None))

    def fail(self, error: BaseException) -> None:
        self._items.put((None, error, None))

    def take(self) -> Any:
        item, error, taken = self._items.get()
        if error is not None:
            raise error
        if taken is not None:
            taken.get_loop().call_soon_threadsafe(_set, taken)
        return item


def _set(taken: asyncio.Future[None]) -> None:
    if not taken.done():
        taken.set_result(None)
