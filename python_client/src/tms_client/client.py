"""``ModelClient``: call one model of TMS servers, spread over all their worker processes."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from tms_client import calls
from tms_client.calls import Builder, FrameResult, FrameStream, ModelInfo, as_method
from tms_client.exceptions import ModelNotFoundError
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
        self._pool = WorkerPool(self.options)
        self._pool.start()

    def __repr__(self) -> str:
        return f"<ModelClient model={self.model!r} pool={self._pool!r}>"

    def __enter__(self) -> ModelClient:
        self._pool.core.check_open()
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
        self._pool.close()

    def _send(self, call: calls.Call[R]) -> R:
        with call_span(call.path, call.model) as metadata:
            data, timeout = fit_within(call.request, self.options.max_message_bytes, self.timeout)
            request = Request(call.path, data, timeout, metadata)
            reply = self._pool.call(request, call.model)
        return call.parse(reply)

    def _bind(self, build: Builder[P, R]) -> Callable[P, R]:
        def method(*args: P.args, **kwargs: P.kwargs) -> R:
            return self._send(build(self.model, *args, **kwargs))

        return as_method(method, build)

    def _stream(self, stream: FrameStream) -> Iterator[FrameResult]:
        # A gRPC thread reads the frames and sends them while there is room in the window;
        # this thread takes the answers and makes room.
        frames = iter(stream.frames)  # type: ignore[arg-type]
        first = next(frames, _END)
        if first is _END:
            return
        room = threading.Condition()
        max_bytes = self.options.max_message_bytes

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

        with call_span(stream.path, self.model) as metadata:
            request = stream.opening(first, max_bytes, metadata)
            replies = self._pool.stream(request, more(), self.model)
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
        return self._pool.worker_infos()


_END: Any = object()  # the end of the frames
