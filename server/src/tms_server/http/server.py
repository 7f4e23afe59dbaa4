"""The HTTP server of one worker (aiohttp), on the worker's event loop, beside its gRPC server.

Every call that runs a model goes through the worker's admission (tms_server.admission: its
threads, queue and pixel budget) to the servicer methods the gRPC calls run, is counted and
logged as they are (``--metrics-port``, ``--log-requests``), and needs the same call token
(``--tokens-file``); the page and the health endpoints are open.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.resources
import json
import logging
import math
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import grpc
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from google.protobuf import json_format

from tms.v1 import image_pb2, model_service_pb2
from tms_client.protocol.methods import OUTPUT_FIELD
from tms_client.protocol.wire import ImageParts, split_images
from tms_server import __version__, oip, security
from tms_server._gen.inference import grpc_predict_v2_pb2 as oip_pb
from tms_server.callinfo import CURRENT, REQUEST_ID_KEY, CallInfo
from tms_server.errors import (
    InvalidArgument,
    Reason,
    Unauthenticated,
    as_service_error,
    status_of,
)
from tms_server.health import HealthServicer
from tms_server.http.tensors import (
    HEADER_LENGTH,
    check_json_size,
    declared_input,
    infer_response,
    parse_infer,
    tensor_values,
    to_json,
)
from tms_server.oip.tensors import DATATYPES
from tms_server.registry import ModelRegistry
from tms_server.rpc import Worker
from tms_server.servicer import ModelServicer
from tms_server.settings import Settings

__all__ = ["HttpServer"]

pb = model_service_pb2
log = logging.getLogger("tms_server")
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: The HTTP status of each gRPC status code a call can end with.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.FAILED_PRECONDITION: 503,  # a model that failed to load, or is elsewhere
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
#: The status code of a call whose body could not be read, by the HTTP status it gets.
UNREAD = {
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
#: Reasons of INVALID_ARGUMENT that say the input is too large.
TOO_LARGE = {Reason.IMAGE_TOO_LARGE, Reason.BATCH_TOO_LARGE}
#: Paths open without a token: the page (it holds no data) and the health endpoints.
OPEN_PATHS = frozenset({"/", "/v2/health/live", "/v2/health/ready"})
#: The page's content security: its own inline script and style, images from data and blobs.
PAGE_POLICY = (
    "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src 'self' data: blob:; frame-ancestors 'none'"
)


class HttpServer:
    """The HTTP/JSON API and page of one worker, served on ``port``."""

    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self._runner = runner
        self.port = port

    def __repr__(self) -> str:
        return f"<HttpServer port={self.port}>"

    @classmethod
    async def start(
        cls,
        settings: Settings,
        port: int,
        *,
        worker: Worker,
        models: ModelServicer,
        inference: oip.InferenceServicer,
        registry: ModelRegistry,
        health: HealthServicer,
    ) -> HttpServer:
        """Serve on ``settings.host``:``port`` (shared with the other workers by SO_REUSEPORT),
        with TLS when the server has it, and the worker's call tokens (``worker.tokens``).
        Call it on the worker's event loop."""
        api = _Api(
            settings=settings,
            worker=worker,
            models=models,
            inference=inference,
            registry=registry,
            health=health,
        )
        app = web.Application(client_max_size=settings.max_message_bytes, middlewares=[api.guard])
        api.add_routes(app.router)
        runner = web.AppRunner(
            app,
            access_log=None,
            shutdown_timeout=settings.grace_seconds,
            keepalive_timeout=_idle_seconds(settings),
            # Bodies are read as sent: aiohttp would inflate a compressed one on the event
            # loop before any limit applies (1 MB of gzip is 1 GiB); such bodies get 415.
            auto_decompress=False,
            logger=_ProtocolLog(logging.getLogger("aiohttp.server")),
        )
        await runner.setup()
        sock = _bind(settings.host, port)
        site = _BoundedSite(
            runner,
            sock,
            settings.max_connections,
            tls=security.https_context(settings) if settings.tls else None,
            handshake_seconds=settings.slow_client_seconds or None,
        )
        await site.start()
        return cls(runner, sock.getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and end the calls in flight after the grace period."""
        await self._runner.cleanup()


class _ProtocolLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's log of its connections, where a request it cannot parse (answered 400) is one
    DEBUG line, not an ERROR with a traceback: callers on a network must not fill the log."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        error = kwargs.get("exc_info")
        if isinstance(error, HttpProcessingError):
            level, kwargs["exc_info"] = logging.DEBUG, None
            msg, args = "refused a malformed HTTP request: %s", (str(error).splitlines()[0],)
        super().log(level, msg, *args, **kwargs)


def _infer_pixels(body: bytes, header_length: str | None) -> int:
    """What an inference body weighs against --max-pixels-in-flight, told before it is parsed
    (on the event loop): with the binary extension, N x H x W of the image its JSON header
    declares (0 for text); else half the body's length (an element takes two bytes at least,
    so that is never less than its elements; bodies all JSON are small, or should be binary)."""
    declared = None if header_length is None else declared_input(body, header_length)
    if declared is None:
        return len(body) // 2
    return oip.input_pixels(*declared)


def _idle_seconds(settings: Settings) -> float:
    """How long a connection may go without a whole request: --slow-client-seconds, so that a
    caller trickling its headers in (or sending nothing) holds it no longer, and at most
    --max-connection-idle-seconds between requests (aiohttp keeps one timer for both; it never
    closes a connection whose request is being read or answered)."""
    bounds = (settings.slow_client_seconds, settings.max_connection_idle_seconds)
    return min((seconds for seconds in bounds if seconds > 0), default=_NEVER)


_NEVER = 365 * 86_400.0
#: How long the HTTPS port waits before accepting again after an accept failed (as asyncio's
#: own servers do when the process is out of file descriptors).
ACCEPT_PAUSE = 0.1


class _BoundedSite(web.SockSite):
    """A SockSite that holds at most ``limit`` connections at once (--max-connections, as on
    the gRPC port), those still in their TLS handshake included: one more is closed as it
    arrives, before any handshake. A handshake gets ``handshake_seconds``."""

    def __init__(
        self,
        runner: web.AppRunner,
        sock: socket.socket,
        limit: int,
        *,
        tls: ssl.SSLContext | None,
        handshake_seconds: float | None,
    ) -> None:
        super().__init__(runner, sock, backlog=1024)
        self._limit = limit
        self._tls = tls
        self._handshake_seconds = handshake_seconds

    async def start(self) -> None:
        await web.BaseSite.start(self)  # not SockSite.start: it serves every connection
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        if self._tls is None:

            def protocol() -> asyncio.BaseProtocol:
                return _Refused() if len(server.connections) >= self._limit else server()

            self._server = await loop.create_server(protocol, sock=self._sock, backlog=1024)
            return
        # With TLS, connections are taken here, counted while their handshake runs: asyncio
        # would hand one to aiohttp (and count it) only once its handshake is over.
        self._sock.listen(1024)
        self._sock.setblocking(False)
        self._server = cast(Any, _Acceptor(loop.create_task(self._accept(server)), self._sock))

    async def _accept(self, server: web.Server) -> None:
        loop = asyncio.get_running_loop()
        handshakes: set[asyncio.Task[None]] = set()
        failing = False  # said once while accepting fails
        while True:
            try:
                connection, _ = await loop.sock_accept(self._sock)
            except OSError as exc:  # out of descriptors, say: accept again in a moment
                if not failing:
                    log.warning("the HTTP port cannot accept connections for now: %s", exc)
                failing = True
                await asyncio.sleep(ACCEPT_PAUSE)
                continue
            failing = False
            if len(server.connections) + len(handshakes) >= self._limit:
                connection.close()
                continue
            task = loop.create_task(self._secure(server, connection))
            handshakes.add(task)
            task.add_done_callback(handshakes.discard)

    async def _secure(self, server: web.Server, connection: socket.socket) -> None:
        """The TLS handshake of ``connection``, then it is aiohttp's; closed if it fails."""
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                server,
                sock=connection,
                ssl=self._tls,
                ssl_handshake_timeout=self._handshake_seconds,
            )
        except Exception as exc:  # refused, reset, timed out: a caller's doing
            log.debug("a TLS handshake on the HTTP port failed: %r", exc)
            connection.close()


class _Acceptor:
    """What stops ``_BoundedSite``'s taking of TLS connections (its ``_server``)."""

    def __init__(self, task: asyncio.Task[None], sock: socket.socket) -> None:
        self._task = task
        self._sock = sock

    def close(self) -> None:
        self._task.cancel()
        self._sock.close()


class _Refused(asyncio.Protocol):
    """A connection over the limit: closed at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


def _bind(host: str, port: int) -> socket.socket:
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    return sock


class _Api:
    """The routes, each a method; ``guard`` checks tokens and turns errors into responses."""

    def __init__(
        self,
        *,
        settings: Settings,
        worker: Worker,
        models: ModelServicer,
        inference: oip.InferenceServicer,
        registry: ModelRegistry,
        health: HealthServicer,
    ) -> None:
        self._settings = settings
        self._worker = worker
        self._models = models
        self._inference = inference
        self._registry = registry
        self._health = health
        self._tokens = worker.tokens
        self._arriving: set[_Arrival] = set()  # the bodies still arriving
        self._arrived = 0  # their bytes so far
        page = importlib.resources.files(__package__).joinpath("page.html")
        self._page = page.read_bytes()

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/", self.page)
        router.add_get("/v2", self.server_metadata)
        router.add_get("/v2/health/live", self.live)
        router.add_get("/v2/health/ready", self.ready)
        router.add_get("/v2/models", self.list_models)
        for model in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            router.add_get(model, self.model_metadata)
            router.add_get(f"{model}/ready", self.model_ready)
            router.add_get(f"{model}/config", self.model_config)
            router.add_post(f"{model}/infer", self.infer)
        router.add_post("/v2/models/{name}/run", self.run)

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            message = f"request bodies are taken as they are, not with Content-Encoding {encoding}"
            return _error(415, message, Reason.INVALID_REQUEST)
        try:
            if self._tokens is not None and request.path not in OPEN_PATHS:
                self._check_token(request.headers.get("Authorization"))
            response = await handler(request)
        except web.HTTPException as exc:  # aiohttp's own: no such path, body too large, ...
            if exc.status == 413:
                message = (
                    f"the request body is larger than {self._settings.max_message_mb} MiB "
                    "(--max-message-mb)"
                )
            else:
                message = f"{exc.reason}: {request.method} {request.path}"
            response = _error(exc.status, message, Reason.INVALID_REQUEST, headers=exc.headers)
        except RequestPayloadError as exc:  # a body that breaks off, or lies about its chunks
            message = f"the request body could not be read: {exc}"
            response = _error(400, message, Reason.INVALID_REQUEST)
        except ConnectionError as exc:  # the caller left mid-request: nobody to answer
            log.debug("%s %s: the caller left: %r", request.method, request.path, exc)
            return _error(400, "the connection was lost", Reason.INVALID_REQUEST)
        except Exception as exc:
            return _failure(exc, "http", "")[1]
        call = CURRENT.get()  # set by _call, in this same task
        if call is not None:
            response.headers[REQUEST_ID_KEY] = call.request_id
        return await self._send(request, response)

    async def _send(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        """Send the answer within --slow-client-seconds, as gRPC answers are: a caller that
        does not take it by then has its connection closed, and the answer's memory freed."""
        seconds = self._settings.slow_client_seconds
        if not seconds or response.prepared:
            return response
        try:
            async with asyncio.timeout(seconds):
                await response.prepare(request)
                await response.write_eof()
        except TimeoutError:
            if request.transport is not None:
                request.transport.abort()
            log.info("closed an HTTP connection whose caller took no answer for %gs", seconds)
        except ConnectionError:  # the caller left: aiohttp notes it as it does any other
            pass
        return response

    def _check_token(self, header: str | None) -> None:
        assert self._tokens is not None
        token = security.bearer_token([("authorization", header)] if header else None)
        if token is None:
            raise Unauthenticated(
                "this server needs a token: send the header 'Authorization: Bearer <token>'"
            )
        if not self._tokens.accepts(token):
            raise Unauthenticated("the token is not valid here")

    async def page(self, request: web.Request) -> web.Response:
        headers = {"Content-Security-Policy": PAGE_POLICY, "X-Content-Type-Options": "nosniff"}
        return web.Response(body=self._page, content_type="text/html", headers=headers)

    async def live(self, request: web.Request) -> web.Response:
        return _json({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        """200 while the worker's gRPC health says SERVING for the server as a whole."""
        ready = self._health.serving()
        return _json({"ready": ready}, 200 if ready else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return _json(
            {
                "name": "tms",
                "version": __version__,
                "extensions": ["model_configuration", "parameters", "binary_tensor_data"],
            }
        )

    async def list_models(self, request: web.Request) -> web.Response:
        """Every model, as ``GET /v2/models/{name}`` describes it (a TMS extension)."""
        names = [info.name for info in self._registry.infos()]
        return _json({"models": [self._describe(name, "") for name in names]})

    async def model_metadata(self, request: web.Request) -> web.Response:
        info = request.match_info
        return _json(self._describe(info["name"], info.get("version", "")))

    def _describe(self, name: str, version: str) -> dict[str, Any]:
        """OIP model metadata, and in ``parameters`` what TMS says of the model."""
        request = oip_pb.ModelMetadataRequest(name=name, version=version)
        reply = self._inference.ModelMetadata(request, _NO_CONTEXT)
        info = self._registry.find(name).info

        def tensors(items: Any) -> list[dict[str, Any]]:
            return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

        calls = [pb.ModelCall.Name(call).removeprefix("MODEL_CALL_") for call in info.calls]
        return {
            "name": reply.name,
            "versions": list(reply.versions),
            "platform": reply.platform,
            "inputs": tensors(reply.inputs),
            "outputs": tensors(reply.outputs),
            "parameters": {
                "description": info.description,
                "version": info.version,
                "calls": calls,
                "args_schema": info.args_schema_json,
            },
        }

    async def model_ready(self, request: web.Request) -> web.Response:
        info = request.match_info
        if info["name"] not in self._registry.failed_anywhere():  # not ready, not an error
            self._inference.described(info["name"], info.get("version", ""))  # 404 for no such
        ready = self._inference.ModelReady(
            oip_pb.ModelReadyRequest(name=info["name"], version=info.get("version", "")),
            _NO_CONTEXT,
        ).ready
        return _json({"ready": ready}, 200 if ready else 503)

    async def model_config(self, request: web.Request) -> web.Response:
        """Triton's model configuration extension (``GET /v2`` names it): the ModelConfig of
        the gRPC form as JSON, its int64 dims as numbers, as Triton sends them."""
        info = request.match_info
        asked = oip_pb.ModelConfigRequest(name=info["name"], version=info.get("version", ""))
        config = self._inference.ModelConfig(asked, _NO_CONTEXT).config
        document = json_format.MessageToDict(
            config, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        for tensor in (*document["input"], *document["output"]):
            tensor["dims"] = [int(dim) for dim in tensor["dims"]]
        return _json(document)

    async def infer(self, request: web.Request) -> web.Response:
        """OIP inference: JSON tensors, and binary ones by the binary tensor data extension."""
        name, version = request.match_info["name"], request.match_info.get("version", "")

        async def prepare(_: CallInfo) -> tuple[Callable[[], tuple[bytes, int]], int]:
            self._registry.find(name)  # 404 for a model nobody has, whatever the body
            body = await self._body(request)
            header = request.headers.get(HEADER_LENGTH)

            def call() -> tuple[bytes, int]:
                parsed = parse_infer(name, version, body, header)
                reply = self._inference.ModelInfer(parsed.message, _NO_CONTEXT)
                return infer_response(parsed, reply, self._settings.max_message_bytes)

            return call, _infer_pixels(body, header)

        outcome = await self._call(request, "ModelInfer", name, prepare)
        if isinstance(outcome, web.Response):
            return outcome
        data, length = outcome
        if length == len(data):
            return web.Response(body=data, content_type="application/json")
        headers = {HEADER_LENGTH: str(length)}
        return web.Response(body=data, content_type="application/octet-stream", headers=headers)

    async def run(self, request: web.Request) -> web.Response:
        """A TMS extension for people, pages and curl: the body is an image file (PNG or JPEG)
        or, for a text model, UTF-8 text; ``?args=`` the model's args as JSON. The answer is
        JSON: the model's result, and the images an image-to-image model returns (PNG in
        base64, or tensors when they are not pictures)."""
        name = request.match_info["name"]

        async def prepare(call: CallInfo) -> tuple[Callable[[], bytes], int]:
            model = self._registry.find(name)
            texts = model.supports(pb.MODEL_CALL_RUN_TEXT)
            to_image = not texts and model.supports(pb.MODEL_CALL_RUN_IMAGE_TO_IMAGE)
            rpc = "RunText" if texts else "RunImageToImage" if to_image else "RunImage"
            call.rpc = f"http:{rpc}"
            args = request.query.get("args", "")
            body = await self._body(request)
            models = self._models
            if texts:
                try:
                    text = pb.RunTextRequest(model=name, text=body.decode(), args_json=args)
                except UnicodeDecodeError as exc:
                    raise InvalidArgument(f"model {name!r} takes UTF-8 text: {exc}") from None
                return lambda: _answer(name, models.RunText(text, _NO_CONTEXT)), 0
            if not body:
                raise InvalidArgument("send an image file (PNG or JPEG) as the request body")
            if not to_image:
                raw = pb.RunImageRequest(
                    model=name, image=_image_file(body), args_json=args
                ).SerializeToString()
                pixels = models.pixels(pb.RunImageRequest, raw)
                return lambda: _answer(name, models.RunImage(raw, _NO_CONTEXT)), pixels
            png = model.output_color != image_pb2.COLOR_ORDER_UNSPECIFIED
            limit = self._settings.max_message_bytes
            raw = pb.RunImageToImageRequest(
                model=name,
                images=[_image_file(body)],
                args_json=args,
                output_encoding=image_pb2.ENCODING_PNG if png else image_pb2.ENCODING_RAW,
            ).SerializeToString()

            def image_to_image() -> bytes:
                reply = models.RunImageToImage(raw, _NO_CONTEXT)
                head, parts = split_images(pb.RunImageToImageResponse, reply, OUTPUT_FIELD)
                images = [_output_image(i, part, png, limit) for i, part in enumerate(parts)]
                return _answer(name, head, images=images)

            return image_to_image, models.pixels(pb.RunImageToImageRequest, raw)

        # Counted as the tms.v1 RPC it stands for once the model is known, "http:Run" before.
        outcome = await self._call(request, "Run", name, prepare)
        if isinstance(outcome, web.Response):
            return outcome
        return web.Response(body=outcome, content_type="application/json")

    async def _body(self, request: web.Request) -> bytes:
        """The request body, within --slow-client-seconds and --max-message-mb; the bodies
        still arriving, together, within --max-untaken-mb (``_shed``)."""
        seconds = self._settings.slow_client_seconds or None
        limit = self._settings.max_message_bytes
        body = bytearray()
        call = CURRENT.get()
        arrival = _Arrival(request, call.request_id if call is not None else "")
        self._arriving.add(arrival)
        try:
            async with asyncio.timeout(seconds):
                async for chunk in request.content.iter_any():
                    if arrival not in self._arriving:
                        break
                    body += chunk
                    if len(body) > limit:  # over it, as gRPC counts: a body of the limit fits
                        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body))
                    arrival.size += len(chunk)
                    self._arrived += len(chunk)
                    self._shed()
                if arrival not in self._arriving:  # shed: its connection is closed, the body cut
                    raise ConnectionResetError("closed for holding too much (--max-untaken-mb)")
        except TimeoutError:
            raise web.HTTPRequestTimeout(
                reason=f"the request body took over {seconds:g}s (--slow-client-seconds)"
            ) from None
        finally:
            if arrival in self._arriving:
                self._arriving.discard(arrival)
                self._arrived -= arrival.size
        return bytes(body)

    def _shed(self) -> None:
        """Close the connections whose bodies hold the most, while the bodies still arriving
        add up to more than --max-untaken-mb: callers that send much and never finish (each
        may hold up to --max-message-mb until --slow-client-seconds) cannot fill the memory."""
        budget = self._settings.max_untaken_mb << 20
        while self._arrived > budget:
            arrival = max(self._arriving, key=lambda held: held.size)
            self._arriving.discard(arrival)
            self._arrived -= arrival.size
            log.warning(
                "closing the HTTP connection of %s (request %s): request bodies still arriving "
                "exceed %d bytes (--max-untaken-mb); its body holds the most of them",
                arrival.request.remote,
                arrival.request_id,
                budget,
            )
            if arrival.request.transport is not None:
                arrival.request.transport.abort()

    async def _call(
        self,
        request: web.Request,
        rpc: str,
        model: str,
        prepare: Callable[[CallInfo], Awaitable[tuple[Callable[[], T], int]]],
    ) -> T | web.Response:
        """The function ``prepare`` makes (it finds the model and reads the body), with the
        pixels it weighs, admitted, run, counted and logged as the worker's gRPC calls are,
        refusals before it runs included; what it raised as an error response."""
        worker = self._worker
        began = time.perf_counter()
        metadata = [(key.lower(), value) for key, value in request.headers.items()]
        call = worker.begin(f"http:{rpc}", f"/http/{rpc}", metadata, model)
        try:
            function, pixels = await prepare(call)
            worker.check_serving("try again")
            result = await worker.run_unwatched(function, pixels=pixels, key=(call.rpc, model))
        except asyncio.CancelledError:  # the caller left
            worker.finished(call, grpc.StatusCode.CANCELLED, began)
            raise
        except (web.HTTPException, RequestPayloadError, ConnectionError) as exc:
            worker.finished(call, _unread(exc), began)
            raise  # the body could not be read: guard answers
        except Exception as exc:
            code, response = _failure(exc, call.rpc.removeprefix("http:"), model)
            worker.finished(call, code, began)
            return response
        worker.finished(call, grpc.StatusCode.OK, began)
        return result


@dataclass(eq=False)  # each one itself, in a set
class _Arrival:
    """A request body still arriving, and its bytes so far."""

    request: web.Request
    request_id: str
    size: int = 0


#: The context of a servicer method called from HTTP: none (the methods it calls raise, and
#: never read their gRPC context).
_NO_CONTEXT: Any = None


def _json(document: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=to_json(document), status=status, content_type="application/json", headers=headers
    )


def _error(status: int, message: str, reason: str = "", headers: Any = None) -> web.Response:
    """``{"error": message}`` as OIP's REST form has it, and the TMS reason when there is one."""
    document = {"error": message, **({"reason": reason} if reason else {})}
    extra = {k: v for k, v in (headers or {}).items() if k.lower() in ("allow", "retry-after")}
    return _json(document, status, extra)


def _failure(exc: Exception, rpc: str, model: str) -> tuple[grpc.StatusCode, web.Response]:
    """The gRPC status code ``exc`` stands for (tms_server.errors) and its HTTP response."""
    error = as_service_error(exc, rpc)  # logs the traceback of an unexpected error
    status = status_of(error, rpc, model=model)
    code = status.code
    http = HTTP_STATUS.get(code, 500)
    reason = str(error.reason)
    if reason in TOO_LARGE:
        http = 413
    response = _error(http, status.details, reason)
    if error.retry_after is not None and http in (429, 503):
        response.headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    if code == grpc.StatusCode.UNAUTHENTICATED:
        response.headers["WWW-Authenticate"] = "Bearer"
    return code, response


def _unread(exc: Exception) -> grpc.StatusCode:
    """The status code a call is counted with whose body could not be read: too large as
    gRPC says it, too slow, broken, or its caller gone."""
    if isinstance(exc, ConnectionError):
        return grpc.StatusCode.CANCELLED
    status = exc.status if isinstance(exc, web.HTTPException) else 400
    return UNREAD.get(status, grpc.StatusCode.INVALID_ARGUMENT)


def _image_file(data: bytes) -> image_pb2.Image:
    jpeg = data[:2] == b"\xff\xd8"
    return image_pb2.Image(
        encoding=image_pb2.ENCODING_JPEG if jpeg else image_pb2.ENCODING_PNG, data=data
    )


def _answer(name: str, reply: Any, **extra: Any) -> bytes:
    """A tms.v1 reply as JSON: the model, its version and result (parsed), and ``extra``."""
    result = json.loads(reply.result_json) if reply.result_json else None
    document = {"model_name": name, "model_version": reply.model_version, "result": result}
    return to_json({**document, **extra})


def _output_image(index: int, part: ImageParts, png: bool, max_bytes: int) -> dict[str, Any]:
    """An output image as PNG in base64, or as a tensor when it is no picture (a flow field);
    IMAGE_TOO_LARGE (413) when either is longer than ``max_bytes``."""
    shape = list(part.meta.shape)
    instead = "call RunImageToImage over gRPC"
    if png:
        check_json_size(f"images[{index}]", 4 * -(-len(part.data) // 3), max_bytes, instead)
        return {"png": base64.b64encode(part.data).decode(), "shape": shape}
    check_json_size(f"images[{index}]", 2 * math.prod(shape), max_bytes, instead)
    datatype = DATATYPES[part.meta.dtype]
    return {"datatype": datatype, "shape": shape, "data": tensor_values(datatype, shape, part.data)}
