"""The client's calls as values: the method, the serialized request, and how to read the reply.

``ModelClient`` and ``AsyncModelClient`` build the same ``Call`` for each API method and only
differ in how they send it, so request building and response parsing live here once.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Any, Concatenate, Generic, Literal, NamedTuple, ParamSpec, TypeVar, overload

import grpc
import numpy.typing as npt
from google.protobuf import wrappers_pb2

from tms.v1 import image_pb2, model_service_pb2
from tms_client.exceptions import CallError, from_status
from tms_client.images import ImageInput, fit, from_message, to_parts
from tms_client.options import ClientOptions
from tms_client.protocol.colors import color_name
from tms_client.protocol.jsontext import from_json
from tms_client.protocol.methods import HEALTH_CHECK, IMAGE_FIELD, OUTPUT_FIELD, method_path
from tms_client.protocol.wire import ImageMessage, split_images
from tms_client.retry import no_deadline_past
from tms_client.transport import Metadata, Request

__all__ = [
    "Args",
    "AsyncioClient",
    "Builder",
    "Call",
    "FrameResult",
    "FrameStream",
    "ImageToImageResult",
    "ModelClientBase",
    "ModelInfo",
    "ModelMethod",
    "StreamMethod",
    "ThreadClient",
    "as_method",
    "failed_models",
    "health",
    "info",
    "list_models",
    "run_image",
    "run_image_stream",
    "run_image_to_image",
    "run_images",
    "run_text",
    "run_texts",
]

pb = model_service_pb2
R = TypeVar("R")
P = ParamSpec("P")
F = TypeVar("F", bound=Callable[..., Any])
#: A model's arguments: a JSON object, or None for none.
Args = Mapping[str, Any] | None

_HEALTH = ("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")
_CALLS = {
    pb.MODEL_CALL_RUN_IMAGE: "run_image",
    pb.MODEL_CALL_RUN_IMAGE_BATCH: "run_images",
    pb.MODEL_CALL_RUN_IMAGE_TO_IMAGE: "run_image_to_image",
    pb.MODEL_CALL_RUN_TEXT: "run_text",
    pb.MODEL_CALL_RUN_TEXT_BATCH: "run_texts",
}


#: What builds a call for a model: a function of the model's name and the method's arguments.
Builder = Callable[Concatenate[str, P], "Call[R]"]


def as_method(method: F, build: Callable[..., Any]) -> F:
    """``method`` (bound to a client), named, documented and with the signature of ``build``
    but for its first argument, the model, which the client fills in."""
    method.__name__ = method.__qualname__ = build.__name__
    method.__doc__ = build.__doc__
    signature = inspect.signature(build)
    params = list(signature.parameters.values())[1:]
    returns = str(signature.return_annotation).removeprefix("Call[").removesuffix("]")
    method.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=params, return_annotation=returns
    )
    return method


@dataclass(frozen=True)
class Call(Generic[R]):
    """One call: ``path`` gets ``request`` (serialized, or an ImageMessage whose images the
    channel writes: as bytes, or into shared memory on the same host); ``parse`` turns the
    reply bytes into what the API method returns. ``model`` is the model it is about ("" for
    the whole server): the pool sends it to a worker that has that model."""

    path: str
    request: bytes | ImageMessage
    parse: Callable[[bytes], R]
    model: str = ""


@dataclass(frozen=True)
class ModelInfo:
    """What a server says about a model."""

    name: str
    description: str
    input_shape: tuple[int | None, ...] | None  # None for a dimension of any size
    dtype: str | None
    color: str | None
    calls: frozenset[str]  # client method names: run_image, run_images, ...
    thread_safe: bool
    output_color: str | None  # colour order of the images run_image_to_image returns
    #: The model's version: declared by the model, else a hash of its files ("" from servers
    #: that send none).
    version: str = ""
    #: The most inputs one batch call may carry (None from servers that send none).
    max_batch_size: int | None = None
    #: Dynamic batching: how long, in seconds, a ``run_image`` call may wait in its worker for
    #: other calls to run with it as one batch (None: the model's calls run one at a time).
    max_batch_delay: float | None = None
    #: The JSON Schema (a dict) the model's args must match, None when it declares none.
    args_schema: dict[str, Any] | None = None
    #: The JSON Schema of the model's results, None when it declares none.
    result_schema: dict[str, Any] | None = None

    @classmethod
    def from_proto(cls, info: model_service_pb2.ModelInfo) -> ModelInfo:
        dtype = image_pb2.DType.Name(info.input_dtype).removeprefix("D_TYPE_").lower()
        shape = tuple(None if d < 0 else d for d in info.input_shape)
        return cls(
            name=info.name,
            description=info.description,
            input_shape=shape or None,
            dtype=None if dtype == "unspecified" else dtype,
            color=color_name(info.color_order),
            calls=frozenset(_CALLS[c] for c in info.calls if c in _CALLS),
            thread_safe=info.thread_safe,
            output_color=color_name(info.output_color_order),
            version=info.version,
            max_batch_size=info.max_batch_size or None,
            max_batch_delay=(
                info.max_batch_delay.ToNanoseconds() / 1e9
                if info.HasField("max_batch_delay")
                else None
            ),
            args_schema=json.loads(info.args_schema_json) if info.args_schema_json else None,
            result_schema=json.loads(info.result_schema_json) if info.result_schema_json else None,
        )


class ImageToImageResult(NamedTuple):
    """What ``run_image_to_image`` returns: the output images and the model's result."""

    images: list[npt.NDArray[Any]]
    result: Any
    #: The colour order of each output image (None when it is not a colour image).
    colors: list[str | None]

    @property
    def image(self) -> npt.NDArray[Any]:
        """The first (usually the only) output image."""
        return self.images[0]


def _args_json(args: Args) -> str:
    if not args:
        return ""
    if not isinstance(args, Mapping):
        raise TypeError(f"args must be a mapping (a JSON object), not {type(args).__name__}")
    return json.dumps(args, separators=(",", ":"))


def _result(reply: bytes) -> Any:
    return from_json(pb.RunImageResponse.FromString(reply).result_json)


def run_image(
    model: str, image: ImageInput, args: Args = None, *, color: str | None = "bgr"
) -> Call[Any]:
    """Run the model on one image and return its result (parsed JSON).

    ``color`` is the colour order of a numpy array ("bgr" as OpenCV reads, "rgb", ...);
    PIL images, paths and PNG/JPEG bytes carry their own.
    """
    head = pb.RunImageRequest(model=model, args_json=_args_json(args))
    request = ImageMessage(head, IMAGE_FIELD, [to_parts(image, color=color)])
    return Call(method_path("RunImage"), request, _result, model)


def _results(reply: bytes) -> list[Any]:
    return [from_json(text) for text in pb.RunImageBatchResponse.FromString(reply).results_json]


def run_images(
    model: str, images: Sequence[ImageInput], args: Args = None, *, color: str | None = "bgr"
) -> Call[list[Any]]:
    """Run the model on several images in one call; one result per image."""
    head = pb.RunImageBatchRequest(model=model, args_json=_args_json(args))
    parts = [to_parts(image, color=color) for image in images]
    request = ImageMessage(head, IMAGE_FIELD, parts)
    return Call(method_path("RunImageBatch"), request, _results, model)


def run_image_to_image(
    model: str,
    images: ImageInput | Sequence[ImageInput],
    args: Args = None,
    *,
    color: str | None = "bgr",
    output_color: str | None = None,
    png: bool = False,
) -> Call[ImageToImageResult]:
    """Run an image-to-image model on one image (or a list, e.g. two video frames).

    Returns the output images as numpy arrays (converted to ``output_color`` when given
    and the model names theirs) and the model's result. ``png`` asks the server to send
    the outputs PNG-compressed (smaller over slow links, slower on fast ones); those PNG
    cannot hold (not 8- or 16-bit gray or 8-bit colour) come raw.
    """
    batch = list(images) if isinstance(images, (list, tuple)) else [images]
    head = pb.RunImageToImageRequest(
        model=model,
        args_json=_args_json(args),
        output_encoding=image_pb2.ENCODING_PNG if png else image_pb2.ENCODING_RAW,
    )
    parts = [to_parts(image, color=color) for image in batch]

    def parse(reply: bytes) -> ImageToImageResult:
        response, outputs = split_images(pb.RunImageToImageResponse, reply, OUTPUT_FIELD)
        colors = [  # an image of no colour order (a flow field, say) is not converted
            output_color
            if output_color is not None and o.meta.color_order
            else color_name(o.meta.color_order)
            for o in outputs
        ]
        arrays = [from_message(o, color=output_color) for o in outputs]
        return ImageToImageResult(arrays, from_json(response.result_json), colors)

    request = ImageMessage(head, IMAGE_FIELD, parts)
    return Call(method_path("RunImageToImage"), request, parse, model)


def _text_result(reply: bytes) -> Any:
    return from_json(pb.RunTextResponse.FromString(reply).result_json)


def run_text(model: str, text: str, args: Args = None) -> Call[Any]:
    """Run a text model on one text and return its result (parsed JSON)."""
    request = pb.RunTextRequest(model=model, text=text, args_json=_args_json(args))
    return Call(method_path("RunText"), request.SerializeToString(), _text_result, model)


def _text_results(reply: bytes) -> list[Any]:
    return [from_json(text) for text in pb.RunTextBatchResponse.FromString(reply).results_json]


def run_texts(model: str, texts: Sequence[str], args: Args = None) -> Call[list[Any]]:
    """Run a text model on several texts in one call; one result per text."""
    request = pb.RunTextBatchRequest(model=model, texts=list(texts), args_json=_args_json(args))
    return Call(method_path("RunTextBatch"), request.SerializeToString(), _text_results, model)


def _info(reply: bytes) -> ModelInfo:
    return ModelInfo.from_proto(pb.GetModelInfoResponse.FromString(reply).info)


def info(model: str) -> Call[ModelInfo]:
    """What the server says about this model."""
    request = pb.GetModelInfoRequest(model=model).SerializeToString()
    return Call(method_path("GetModelInfo"), request, _info, model)


def _models(reply: bytes) -> list[ModelInfo]:
    return [ModelInfo.from_proto(m) for m in pb.ListModelsResponse.FromString(reply).models]


def list_models() -> Call[list[ModelInfo]]:
    return Call(method_path("ListModels"), b"", _models)


def _failed(reply: bytes) -> dict[str, str]:
    return {m.name: m.reason for m in pb.ListModelsResponse.FromString(reply).failed}


def failed_models() -> Call[dict[str, str]]:
    """The models the answering worker failed to load, by name, and why."""
    return Call(method_path("ListModels"), b"", _failed)


def _health(reply: bytes) -> str:
    # HealthCheckResponse {enum status = 1} has the wire format of Int32Value; HealthCheckRequest
    # {string service = 1} that of StringValue. This spares a dependency on grpcio-health-checking.
    status = wrappers_pb2.Int32Value.FromString(reply).value
    return _HEALTH[status] if 0 <= status < len(_HEALTH) else "UNKNOWN"


def health(service: str) -> Call[str]:
    request = wrappers_pb2.StringValue(value=service).SerializeToString()
    return Call(HEALTH_CHECK, request, _health, service)


# -- streams of frames --------------------------------------------------------------------------


class FrameResult(NamedTuple):
    """The answer to one frame of ``run_image_stream``."""

    #: The frame's index among the frames given: 0, 1, 2...
    frame_id: int
    #: The model's result for the frame (parsed JSON); None when the frame failed.
    result: Any
    #: Why the frame failed (the CallError a RunImage of it would raise), else None; only
    #: with ``errors="yield"`` (by default a failed frame raises it).
    error: CallError | None = None


#: The frames of a stream: numpy arrays, PIL images, paths or PNG/JPEG bytes; the asyncio
#: client also takes an async iterable.
Frames = Iterable[ImageInput] | AsyncIterable[ImageInput]


class FrameStream:
    """One ``run_image_stream`` apart from its I/O, for both clients: the frames' requests
    built, the answers parsed and checked, and the window: at most ``window`` frames sent and
    not yet answered. The server reads a frame only once it has answered the one before, so
    the window bounds the frames in flight, and a producer faster than the model (a video
    file) waits for room instead of piling frames up. The clients wait for room with their
    own condition or event (``has_room``), and set ``ended`` when they stop."""

    path = method_path("RunImageStream")

    def __init__(
        self,
        model: str,
        frames: Frames,
        args: Args,
        *,
        window: int,
        color: str | None,
        errors: Literal["raise", "yield"],
        timeout: float | None,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        if errors not in ("raise", "yield"):
            raise ValueError(f"errors must be 'raise' or 'yield', not {errors!r}")
        self.model = model
        self.frames = frames
        self.window = window
        self.color = color
        self.errors = errors
        self.timeout = no_deadline_past(timeout)
        self.sent = 0
        self.answered = 0
        self.ended = False
        self.failure: Exception | None = None  # what reading the frames raised
        self._args_json = _args_json(args)

    def __repr__(self) -> str:
        return (
            f"<FrameStream model={self.model!r} sent={self.sent} answered={self.answered} "
            f"window={self.window}{' ended' if self.ended else ''}>"
        )

    def has_room(self) -> bool:
        """Whether another frame may be sent now (or the stream has ended: stop waiting)."""
        return self.ended or self.sent - self.answered < self.window

    def request(self, image: ImageInput, max_bytes: int) -> ImageMessage:
        """The next frame's request, its id the frame's index; the first also names the
        model and carries the stream's args. Images are written by the channel (as bytes,
        or into shared memory on the same host); a raw frame that would make a message of
        over ``max_bytes`` goes as PNG, as a unary call's image does (images.fit)."""
        first = self.sent == 0
        head = pb.RunImageStreamRequest(
            model=self.model if first else "",
            args_json=self._args_json if first else "",
            frame_id=self.sent,
        )
        message = fit(
            ImageMessage(head, IMAGE_FIELD, [to_parts(image, color=self.color)]), max_bytes
        )
        self.sent += 1
        return message

    def opening(self, first: ImageInput, max_bytes: int, metadata: Metadata) -> Request:
        """The request that opens the stream, carrying its ``first`` frame."""
        return Request(self.path, self.request(first, max_bytes), self.timeout, metadata)

    def answer(self, reply: bytes) -> FrameResult:
        """The next frame's answer; raises its error unless ``errors="yield"``."""
        response = pb.RunImageStreamResponse.FromString(reply)
        expected, self.answered = self.answered, self.answered + 1
        if response.frame_id != expected:
            raise CallError(
                grpc.StatusCode.INTERNAL,
                f"the server answered frame {response.frame_id} where frame {expected} was due",
            )
        if not response.error_status:
            return FrameResult(expected, from_json(response.result_json))
        error = from_status(response.error_status)
        if self.errors == "raise":
            raise error
        return FrameResult(expected, None, error)

    def finished(self) -> None:
        """The server ended the stream well: raises what reading the frames raised, or
        INTERNAL if the server left a frame sent unanswered."""
        if self.failure is not None:
            raise self.failure
        if self.answered < self.sent:
            raise CallError(
                grpc.StatusCode.INTERNAL,
                f"the stream ended before frame {self.answered} was answered",
            )


def run_image_stream(
    model: str,
    frames: Frames,
    args: Args = None,
    *,
    window: int = 4,
    color: str | None = "bgr",
    errors: Literal["raise", "yield"] = "raise",
    timeout: float | None = None,
) -> FrameStream:
    """Run the model on a stream of frames (a video) and yield a FrameResult for each, in
    order, as they come.

    The whole stream goes to one worker, whose model may keep state across its frames (a
    tracker); ``args`` are the stream's. At most ``window`` frames are in flight: the next
    frame is read from ``frames`` only when there is room (with the thread client, on a
    gRPC thread). A frame that fails raises its error (CallError: InvalidInputError...) and
    ends the stream, unless ``errors="yield"``: then its FrameResult carries the error and
    the stream goes on. ``timeout`` bounds the whole stream (the client's per-call timeout
    does not apply); the stream is not retried. Stop iterating to end it early.
    """
    return FrameStream(
        model, frames, args, window=window, color=color, errors=errors, timeout=timeout
    )


# -- the clients' model methods, declared once -------------------------------------------------


class ModelMethod(Generic[P, R]):
    """A method of both clients that sends the call ``build`` makes for the client's model:
    ModelClient's returns the result, AsyncModelClient's a coroutine of it."""

    def __init__(self, build: Builder[P, R]) -> None:
        self.build = build
        self.name = build.__name__
        self.__doc__ = build.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, client: None, owner: type) -> ModelMethod[P, R]: ...
    @overload
    def __get__(self, client: ThreadClient, owner: type) -> Callable[P, R]: ...
    @overload
    def __get__(
        self, client: AsyncioClient, owner: type
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...
    def __get__(self, client: ModelClientBase | None, owner: type) -> Any:
        if client is None:
            return self
        method = client._bind(self.build)
        client.__dict__[self.name] = method  # made once per client
        return method


class StreamMethod(Generic[P]):
    """A method of both clients that runs the stream ``build`` declares for the client's
    model: ModelClient's returns an iterator of FrameResult, AsyncModelClient's an async
    iterator (see ``ThreadClient._stream`` and ``AsyncioClient._stream``)."""

    def __init__(self, build: Callable[Concatenate[str, P], FrameStream]) -> None:
        self.build = build
        self.name = build.__name__
        self.__doc__ = build.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, client: None, owner: type) -> StreamMethod[P]: ...
    @overload
    def __get__(self, client: ThreadClient, owner: type) -> Callable[P, Iterator[FrameResult]]: ...
    @overload
    def __get__(
        self, client: AsyncioClient, owner: type
    ) -> Callable[P, AsyncIterator[FrameResult]]: ...
    def __get__(self, client: ModelClientBase | None, owner: type) -> Any:
        if client is None:
            return self
        build = self.build

        def method(*args: Any, **kwargs: Any) -> Any:
            return client._stream(build(client.model, *args, **kwargs))

        bound = as_method(method, build)
        returns = "AsyncIterator" if isinstance(client, AsyncioClient) else "Iterator"
        bound.__signature__ = bound.__signature__.replace(  # type: ignore[attr-defined]
            return_annotation=f"{returns}[FrameResult]"
        )
        client.__dict__[self.name] = bound  # made once per client
        return bound


class ModelClientBase:
    """What ModelClient and AsyncModelClient share: the model, the options, the deadline."""

    def __init__(
        self,
        model: str,
        target: str | Sequence[str] | None = None,
        *,
        options: ClientOptions | None = None,
        **overrides: Any,
    ) -> None:
        self.model = model
        self.options = ClientOptions.of(target, options, overrides)
        self._timeout = self.options.timeout
        self._open()

    @property
    def timeout(self) -> float | None:
        """Each call's deadline in seconds (None: none); may be changed between calls."""
        return self._timeout

    @timeout.setter
    def timeout(self, seconds: float | None) -> None:
        self._timeout = no_deadline_past(seconds)

    def _open(self) -> None:
        """Make the pool (and, for the sync client, connect)."""

    def _bind(self, build: Builder[Any, Any]) -> Callable[..., Any]:
        """``build``'s call as a method of this client (see ModelMethod)."""
        raise NotImplementedError

    def _stream(self, stream: FrameStream) -> Any:
        """Run ``stream``: its answers, as an iterator or an async iterator (StreamMethod)."""
        raise NotImplementedError

    run_image = ModelMethod(run_image)
    run_images = ModelMethod(run_images)
    run_image_to_image = ModelMethod(run_image_to_image)
    run_text = ModelMethod(run_text)
    run_texts = ModelMethod(run_texts)
    info = ModelMethod(info)
    run_image_stream = StreamMethod(run_image_stream)

    @property
    def target(self) -> str:
        """The targets, as one string."""
        return ", ".join(self.options.targets)


class ThreadClient(ModelClientBase):
    """A client whose model methods return their results (ModelClient)."""


class AsyncioClient(ModelClientBase):
    """A client whose model methods return coroutines (AsyncModelClient)."""
