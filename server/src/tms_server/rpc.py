"""How every call to a TMS service runs in a worker: read, admit, run, answer.

A worker serves with grpc.aio: its event loop reads requests and sends answers, so a caller
that is slow to send its request, or never takes its answer, holds no thread; a thread is
held only while a servicer method runs. For every method of the TMS services (tms.v1, the
Open Inference Protocol, admin) ``add_service`` registers one handler, made here, that:

1. reads the request (the StallWatch times a caller that is slow to send it);
2. refuses the call while the worker drains (UNAVAILABLE: the client retries elsewhere);
3. runs the servicer method: a ``quick`` one (no model, no waiting) on the event loop, the
   others on the worker's threads, as tms_server.admission admits them (calls at once, pixels
   at once); a model call is noted on the worker board while it runs, and refused at once if
   its input has crashed workers (tms_server.crashes);
4. ends the call with the status its exception stands for (``errors.status_of``: code,
   message, and google.rpc details), and the worker's load and the call's request id in the
   trailing metadata;
5. hands the answer to gRPC (the StallWatch times a caller that does not take it).

Each call gets a CallInfo (tms_server.callinfo) as it starts: the caller's ``x-request-id`` or
a new one, and the model the request names. When the call is over the handler counts it in
the metrics (``--metrics-port``) and logs it (``--log-requests``), if those are on.

A method whose requests and responses both stream (RunImageStream) gets the same handler,
once per stream: one CallInfo, request id, log line and metrics count for the whole stream,
refused while the worker drains (when it opens, and between its messages), ended with the
status of what it raises. Its servicer method is an async generator of responses reading a
``Stream`` of requests: the StallWatch times the caller sending the first request and taking
each answer (not the wait between messages: a stream may idle, holding no thread), and
``Stream.run`` admits each piece of work, a frame say, as one call of its own (a thread, a
place in the queue, its pixels), so a stream holds a call slot only while its work runs.

ModelService.Calls is a stream of unary model calls, each run by ``handle`` as a call of its
own (tms_server.carrier).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, NoReturn, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from tms_server import carrier as carrier_calls
from tms_server.admission import CallRunner, Key
from tms_server.callinfo import CURRENT, REQUEST_ID_KEY, CallInfo, request_id
from tms_server.crashes import UNWATCHED, Buffer, CrashGuard
from tms_server.errors import (
    InvalidArgument,
    ResourceExhausted,
    ServiceError,
    Unauthenticated,
    Unavailable,
    status_details,
    status_of,
)
from tms_server.load import WorkerLoad
from tms_server.logs import log_call
from tms_server.metrics import WorkerMetrics
from tms_server.security import TokenFile, bearer_token
from tms_server.stalls import Context, StallWatch
from tms_server.tracing import end_call_span, start_call_span

__all__ = ["Method", "Stream", "Worker", "add_service", "quick", "raw"]

F = TypeVar("F", bound=Callable[..., Any])
Q = TypeVar("Q")
T = TypeVar("T")

#: How long a caller refused for a worker's streams is told to wait (RetryInfo).
STREAMS_FULL_RETRY_SECONDS = 1.0
#: Trailing metadata, as grpc takes it.
Trailers = tuple[tuple[str, str | bytes], ...]
#: A call's metadata, as grpc and the HTTP server give it.
Metadata = Iterable[tuple[str, str | bytes]]


def quick(method: F) -> F:
    """Mark a servicer method to run on the event loop: it neither calls a model nor waits."""
    method.quick = True  # type: ignore[attr-defined]
    return method


def aside(method: F) -> F:
    """Mark a servicer method to run on a thread of its own, outside the worker's calls: not
    admitted, not counted in its load, not bound by --call-time-limit (an admin operation
    that waits for the other workers)."""
    method.aside = True  # type: ignore[attr-defined]
    return method


def raw(method: F) -> F:
    """Mark a servicer method to take its requests as bytes, as ``add_service``'s
    ``raw_requests`` does (it reads its images in place)."""
    method.raw = True  # type: ignore[attr-defined]
    return method


@dataclass(frozen=True)
class Method:
    """One RPC of a service, as its handler runs it."""

    name: str  # /package.Service/Method
    function: Callable[[Any, Context], Any]  # the servicer's method
    parse: Callable[[bytes], Any] | None  # bytes to request message (None: keep the bytes)
    weigh: Callable[[bytes], int] | None  # the pixels a request declares
    on_loop: bool  # a quick method, run on the event loop
    on_own_thread: bool = False  # an aside method
    calls_models: bool = False  # it calls the model its request names (see QuickCalls)
    names_model: bool = False  # its requests name a model in field 1 (for logs and metrics)
    streams: bool = False  # requests and responses both stream (see Worker.handle_stream)
    #: what a request's input is made of, the same whether its images are in it or in shared
    #: memory (read after ``weigh``); None: the request bytes are the input
    content: Callable[[bytes], Sequence[Buffer] | None] | None = None

    @functools.cached_property
    def rpc(self) -> str:
        """The method's own name, e.g. RunImage."""
        return self.name.rpartition("/")[2]

    def call(self, request: bytes, context: Context, load: WorkerLoad, tail: Trailers) -> Any:
        """Parse the request and run the method; the answer's trailers carry the load (as it
        is while this call still runs) and ``tail``."""
        response = self.function(self.parsed(request), context)
        context.set_trailing_metadata(load.trailers() + tail)
        return response

    def parsed(self, request: bytes) -> Any:
        if self.parse is None:
            return request
        try:
            return self.parse(request)
        except DecodeError as exc:
            kind = getattr(self.parse, "__self__", None)
            what = kind.DESCRIPTOR.name if kind is not None else "request"
            raise InvalidArgument(f"malformed {what}: {exc}") from None


@dataclass
class Worker:
    """What the handlers of one worker share: its load, admission and stall watch, and the
    metrics and call log when they are on."""

    load: WorkerLoad
    runner: CallRunner
    watch: StallWatch
    metrics: WorkerMetrics | None = field(default=None, kw_only=True)
    log_requests: bool = field(default=False, kw_only=True)
    max_streams: int = field(default=256, kw_only=True)  # open at once (--max-streams)
    streams: int = field(default=0, init=False)  # open now
    #: The call tokens (--tokens-file), which a stream's token must still be one of at each
    #: of its messages: a token taken out of the file ends it.
    tokens: TokenFile | None = field(default=None, kw_only=True)
    #: Notes the model calls running, for the supervisor to see if the worker crashes, and
    #: refuses inputs that crashed workers (tms_server.crashes).
    crashes: CrashGuard | None = field(default=None, kw_only=True)
    #: The Calls streams waiting for their next call, the longest waiting first, and those
    #: of them told to end (tms_server.carrier).
    idle_carriers: dict[asyncio.Task[Any], None] = field(default_factory=dict, init=False)
    ended_carriers: set[asyncio.Task[Any]] = field(default_factory=set, init=False)

    def end_idle_carriers(self) -> None:
        """End, UNAVAILABLE, the Calls streams waiting for a call, once the worker drains (on
        its event loop): a stream busy with a call ends once it has answered it."""
        for task in self.idle_carriers:
            task.cancel()

    async def run_unwatched(
        self,
        function: Callable[..., T],
        *args: Any,
        pixels: int,
        key: Key | None,
        timed: bool = True,
    ) -> T:
        """``function(*args)`` through the runner, as model work whose input the crash guard
        does not watch (an HTTP call, a stream's): noted all the same, so that a crash
        meanwhile, which may be its input's, is not blamed on the calls beside it."""
        if self.crashes is not None:
            function, args = self.crashes.run, (UNWATCHED, function, *args)
        return await self.runner.run(function, *args, pixels=pixels, key=key, timed=timed)

    def begin(self, rpc: str, path: str, metadata: Metadata | None, model: str = "") -> CallInfo:
        """A call that starts: its CallInfo (the caller's request id or a new one), current in
        the running task (grpc.aio and aiohttp run each call in a task of its own), with its
        span when tracing is on."""
        call = CallInfo(rpc, request_id(metadata), model=model)
        CURRENT.set(call)
        call.span = start_call_span(path, metadata)
        return call

    async def read(self, context: Context) -> Any:
        """The next request of ``context``, the StallWatch timing the caller sending it."""
        self.watch.begin(context)
        try:
            return await context.read()
        finally:
            self.watch.end(context)

    def check_serving(self, hint: str = "try another") -> None:
        """UNAVAILABLE while the worker drains: another worker can take the call at once
        (RetryInfo of no delay)."""
        if self.load.draining:
            raise Unavailable(f"this worker is shutting down; {hint}", retry_after=0.0)

    async def handle(self, method: Method, context: Context, via: str | None = None) -> Any:
        began = time.perf_counter()
        call = self.begin(method.rpc, method.name, context.invocation_metadata())
        call.via = via
        tail: Trailers = ((REQUEST_ID_KEY, call.request_id),)
        request = await self.read(context)
        try:
            if request is grpc.aio.EOF:
                raise InvalidArgument("the call ended without a request message")
            model = _model_of(request) if method.names_model else None
            if model:
                call.model = model.decode(errors="replace")
            self.check_serving()
            if method.on_loop:
                response = method.call(request, context, self.load, tail)
            elif method.on_own_thread:
                response = await asyncio.to_thread(method.call, request, context, self.load, tail)
            else:
                pixels = method.weigh(request) if method.weigh is not None else 0
                key = (method.name, call.model) if method.calls_models else None
                function: Callable[..., Any] = method.call
                args: tuple[Any, ...] = (request, context, self.load, tail)
                if method.calls_models and self.crashes is not None:
                    # Internal at once for an input that crashed workers; else noted as it runs
                    content = method.content(request) if method.content is not None else None
                    mark = await self.crashes.admit(method.name, call.model, request, content)
                    function, args = self.crashes.run, (mark, function, *args)
                response = await self.runner.run(function, *args, pixels=pixels, key=key)
        except asyncio.CancelledError:  # the caller left
            self.finished(call, grpc.StatusCode.CANCELLED, began)
            raise
        except Exception as exc:
            await self._abort(exc, method, context, call=call, began=began, tail=tail)
        self.finished(call, grpc.StatusCode.OK, began)
        size = len(response) if isinstance(response, bytes) else response.ByteSize()
        self.watch.begin(context, size)  # until the caller has taken the answer
        context.add_done_callback(self.watch.end)  # type: ignore[arg-type]
        return response

    async def handle_stream(self, method: Method, context: Context) -> None:
        """Serve a stream: the servicer method's answers written as they come, the stream's
        status and trailers at its end."""
        load = self.load
        began = time.perf_counter()
        call = self.begin(method.rpc, method.name, context.invocation_metadata())
        tail: Trailers = ((REQUEST_ID_KEY, call.request_id),)
        stream: Stream[Any] = Stream(self, method, context, call)
        self.streams += 1
        try:
            if self.streams > self.max_streams:
                raise ResourceExhausted(
                    f"this worker has {self.max_streams} streams open, its most "
                    "(--max-streams); try again once one has closed",
                    retry_after=STREAMS_FULL_RETRY_SECONDS,
                )
            self.check_serving()
            async with contextlib.aclosing(method.function(stream, context)) as responses:
                async for response in responses:
                    await stream.write(response)
        except asyncio.CancelledError:  # the caller left
            self.finished(call, grpc.StatusCode.CANCELLED, began)
            raise
        except Exception as exc:
            await self._abort(exc, method, context, call=call, began=began, tail=tail)
        finally:
            self.streams -= 1
        self.finished(call, grpc.StatusCode.OK, began)
        context.set_trailing_metadata(load.trailers() + tail)

    async def _abort(
        self,
        exc: Exception,
        method: Method,
        context: Context,
        *,
        call: CallInfo,
        began: float,
        tail: Trailers,
    ) -> NoReturn:
        """End the call with the status ``exc`` stands for, counted, with the trailers."""
        status = status_of(exc, method.name, model=call.model)
        self.finished(call, status.code, began)
        trailers = self.load.trailers() + tail + tuple(status.trailing_metadata)
        await context.abort(status.code, status.details, trailers)

    def finished(self, call: CallInfo, code: grpc.StatusCode, began: float) -> None:
        """Count, log and trace a call that is over, as far as each is on."""
        if call.span is not None:
            end_call_span(call.span, code, call.model)
        if self.metrics is None and not self.log_requests:
            return
        seconds = time.perf_counter() - began
        if self.metrics is not None:
            self.metrics.finished(call, code, seconds)
        if self.log_requests:
            log_call(call, code, seconds)


class Stream(Generic[Q]):
    """The requests of one streaming call as its servicer method reads them (``async for``),
    parsed as the method takes them (``Q``: a message, or bytes for a ``raw`` method), and
    the worker's admission for the work they ask for (``run``)."""

    def __init__(self, worker: Worker, method: Method, context: Context, call: CallInfo) -> None:
        self._worker = worker
        self._method = method
        self._context = context
        self._call = call
        self._key: tuple[str, str] | None = None  # its kind and model, for QuickCalls

    def __repr__(self) -> str:
        return f"<Stream {self._method.rpc} model={self._call.model!r}>"

    async def __aiter__(self) -> AsyncIterator[Q]:
        """Each request until the caller ends the stream; UNAVAILABLE once the worker drains.
        The StallWatch times the first request only: between requests a stream may idle."""
        context = self._context
        request = await self._worker.read(context)
        if isinstance(request, bytes) and self._method.names_model:
            model = _model_of(request)
            self._call.model = model.decode(errors="replace") if model else ""
            self._key = (self._method.name, self._call.model)
        tokens = self._worker.tokens
        token = bearer_token(context.invocation_metadata()) if tokens is not None else None
        while request is not grpc.aio.EOF:
            if self._worker.load.draining:
                raise Unavailable("this worker is shutting down; open the stream again")
            if tokens is not None and tokens.revokes(token):
                raise Unauthenticated(
                    "the token this stream was opened with is no longer valid here; open it "
                    "again with a valid one"
                )
            yield self._method.parsed(request)
            request = await context.read()

    async def run(
        self, function: Callable[..., T], *args: Any, pixels: int = 0, timed: bool = True
    ) -> T:
        """``function(*args)`` admitted as a call of its own (tms_server.admission): on one of
        the worker's threads, or on the event loop once the stream model's ``timed`` work
        (its frames) is proven quick; ResourceExhausted when the worker is full."""
        worker = self._worker
        return await worker.run_unwatched(
            function, *args, pixels=pixels, key=self._key, timed=timed
        )

    async def aside(self, function: Callable[[], T]) -> T:
        """``function()`` on a thread of its own, not admitted (it runs however full the
        worker is, and even if the caller leaves meanwhile), counted as work of the stream's
        model (no call of the model runs on the event loop meanwhile): a stream's close()."""
        quick, key = self._worker.runner.quick, self._key
        if key is not None:
            quick.started(key[1])

        def counted() -> T:
            try:
                return function()
            finally:
                if key is not None:
                    quick.finished(key, None)

        # to_thread runs it in this task's context: its log lines name the stream's call
        return await asyncio.shield(asyncio.to_thread(counted))

    async def write(self, response: Any) -> None:
        """Send one answer; the StallWatch times the caller taking it."""
        size = len(response) if isinstance(response, bytes) else response.ByteSize()
        watch = self._worker.watch
        watch.begin(self._context, size)
        try:
            await self._context.write(response)
        finally:
            watch.end(self._context)

    def error_status(self, exc: Exception) -> bytes:
        """What ``exc`` stands for as a serialized google.rpc.Status, the one a call ending
        with it would carry in its grpc-status-details-bin trailer (for an answer that fails
        alone, while its stream goes on)."""
        status = status_of(exc, self._method.name, model=self._call.model)
        return status_details(status.trailing_metadata)


def _model_of(request: bytes) -> bytes | None:
    """The model a request names: field 1 of every model call's request, when it comes first
    (as protobuf libraries write it); None otherwise."""
    if len(request) < 2 or request[0] != _MODEL_KEY or request[1] > _SHORT:
        return None
    return request[2 : 2 + request[1]]


_MODEL_KEY = (1 << 3) | 2  # field 1, length-delimited
_SHORT = 0x7F  # a one-byte length: model names are at most 64 bytes


def add_service(
    server: grpc.aio.Server,
    service: ServiceDescriptor,
    servicer: object,
    worker: Worker,
    *,
    raw_requests: Iterable[str] = (),
    raw_responses: Iterable[str] = (),
    weighers: Mapping[str, Callable[[bytes], int]] | None = None,
    contents: Mapping[str, Callable[[bytes], Sequence[Buffer] | None]] | None = None,
    model_calls: Iterable[str] = (),
    carrier: str | None = None,
) -> None:
    """Register ``servicer``'s methods (named after the RPCs) for ``service`` on ``server``.

    Methods named in ``raw_requests`` (or marked ``raw``) take the request as bytes, those in
    ``raw_responses`` return bytes (they read and write images in place, see
    tms_client.protocol.wire); the others take and return messages. Bytes that are not the
    request message end the call with INVALID_ARGUMENT (gRPC's own parsing would say
    INTERNAL). ``weighers`` give, for methods
    of raw requests, the pixels a request declares (see admission.PixelBudget), and
    ``contents`` what their input is made of (see Method.content); the methods in
    ``model_calls`` call the model their request names first, and may run on the event
    loop once that model's calls are proven quick (see admission.QuickCalls). A method whose
    request names a model (see _names_model) is logged and counted by that name. A method
    whose requests and responses both stream is served by ``Worker.handle_stream``: it reads
    a ``Stream`` and yields its responses. The ``carrier`` method (the servicer has none) is a
    stream carrying calls of the ``model_calls`` methods (tms_server.carrier).
    """
    raw_requests, raw_responses = set(raw_requests), set(raw_responses)
    model_calls = set(model_calls)
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    carried: dict[str, carrier_calls.Carriable] = {}
    for name, descriptor in service.methods_by_name.items():
        if name == carrier:
            continue
        function = getattr(servicer, name)
        parse = None
        if name not in raw_requests and not getattr(function, "raw", False):
            parse = message_factory.GetMessageClass(descriptor.input_type).FromString
        serialize: Callable[[Message], bytes] | None = None
        if name not in raw_responses:
            serialize = message_factory.GetMessageClass(descriptor.output_type).SerializeToString
        method = Method(
            name=f"/{service.full_name}/{name}",
            function=function,
            parse=parse,
            weigh=(weighers or {}).get(name),
            content=(contents or {}).get(name),
            on_loop=getattr(function, "quick", False),
            on_own_thread=getattr(function, "aside", False),
            calls_models=name in model_calls,
            names_model=_names_model(descriptor.input_type),
            streams=descriptor.client_streaming and descriptor.server_streaming,
        )
        if method.streams:
            register = grpc.stream_stream_rpc_method_handler
        else:
            register = grpc.stream_unary_rpc_method_handler
        handlers[name] = register(_handler(worker, method), response_serializer=serialize)
        if method.calls_models and not method.streams:
            carried[method.name] = (method, serialize)
    if carrier is not None:

        async def carry(requests: Any, context: Context) -> None:
            try:
                await carrier_calls.serve(worker, carried, context)
            except ServiceError as exc:
                status = status_of(exc, f"/{service.full_name}/{carrier}")
                await context.abort(status.code, status.details, status.trailing_metadata)

        handlers[carrier] = grpc.stream_stream_rpc_method_handler(carry)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )


def _names_model(request: Descriptor) -> bool:
    """Field 1 is a string called model or model_name, or name in a Model...Request (OIP's
    ModelReadyRequest, ModelMetadataRequest; not AttachSharedMemoryRequest's region name)."""
    field = request.fields_by_number.get(1)
    if field is None or field.type != FieldDescriptor.TYPE_STRING:
        return False
    return field.name in ("model", "model_name") or (
        field.name == "name" and request.name.startswith("Model")
    )


def _handler(worker: Worker, method: Method) -> Callable[[Any, Context], Any]:
    # A unary method is registered as stream-unary (the same bytes on the wire) so that the
    # handler runs before the request arrives and can time it. Either kind reads with
    # context.read() (and a stream writes with context.write()), so that the StallWatch can
    # time both; the request iterator gRPC passes is left alone.
    serve = worker.handle_stream if method.streams else worker.handle

    async def handle(requests: Any, context: Context) -> Any:
        return await serve(method, context)

    return handle
