"""``ModelClient``: call one model of a TMS server, spread over all its worker processes."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple

import grpc
import numpy.typing as npt
from google.protobuf import wrappers_pb2

from tms.v1 import image_pb2, model_service_pb2
from tms_client.balancers import Balancer
from tms_client.codec import color_name, from_json
from tms_client.exceptions import from_rpc_error, status_of
from tms_client.images import ImageInput, from_message, to_parts
from tms_client.pool import WorkerPool
from tms_client.wire import join_images, split_images

__all__ = ["ImageToImageResult", "ModelClient", "ModelInfo", "WorkerInfo"]

pb = model_service_pb2

_CALLS = {
    pb.MODEL_CALL_RUN_IMAGE: "run_image",
    pb.MODEL_CALL_RUN_IMAGE_BATCH: "run_images",
    pb.MODEL_CALL_RUN_IMAGE_TO_IMAGE: "run_image_to_image",
    pb.MODEL_CALL_RUN_TEXT: "run_text",
    pb.MODEL_CALL_RUN_TEXT_BATCH: "run_texts",
}
_HEALTH = ("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")
# Field numbers of the images in the requests that carry them, and in RunImageToImageResponse.
_IMAGE_FIELD = pb.RunImageRequest.DESCRIPTOR.fields_by_name["image"].number
_OUTPUT_FIELD = pb.RunImageToImageResponse.DESCRIPTOR.fields_by_name["images"].number
assert pb.RunImageBatchRequest.DESCRIPTOR.fields_by_name["images"].number == _IMAGE_FIELD
assert pb.RunImageToImageRequest.DESCRIPTOR.fields_by_name["images"].number == _IMAGE_FIELD


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
        )


@dataclass(frozen=True)
class WorkerInfo:
    """One worker process the client is connected to."""

    target: str
    instance_id: str
    pid: int
    index: int
    count: int  # how many workers the server runs
    calls: int


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


def _args_json(args: Mapping[str, Any] | None) -> str:
    if not args:
        return ""
    if not isinstance(args, Mapping):
        raise TypeError(f"args must be a mapping (a JSON object), not {type(args).__name__}")
    return json.dumps(args, separators=(",", ":"))


class ModelClient:
    """A client for one model of a TMS server.

    On creation it waits up to ``connect_timeout`` seconds for the server (raising
    ``ConnectError`` after that), then connects to every worker process behind ``target``
    (``host:port``) and spreads calls over them with ``balancer`` (round-robin by default).
    ``timeout`` is the deadline of each call in seconds (None: no deadline).

    Use it as a context manager, or call ``close()``. It is safe to share between threads.
    """

    def __init__(
        self,
        model: str,
        target: str,
        *,
        connect_timeout: float = 10.0,
        timeout: float | None = 60.0,
        balancer: Balancer | None = None,
        max_message_mb: int = 64,
        discovery_attempts: int | None = None,
    ) -> None:
        self.model = model
        self.target = target
        self.timeout = timeout
        self._pool = WorkerPool(
            target,
            connect_timeout=connect_timeout,
            balancer=balancer,
            max_message_bytes=max_message_mb * 1024 * 1024,
            discovery_attempts=discovery_attempts,
        )
        self._pool.start()

    def __repr__(self) -> str:
        return f"<ModelClient model={self.model!r} pool={self._pool!r}>"

    def __enter__(self) -> ModelClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection."""
        self._pool.close()

    # -- images -------------------------------------------------------------------------------

    def run_image(
        self, image: ImageInput, args: Mapping[str, Any] | None = None, *, color: str | None = "bgr"
    ) -> Any:
        """Run the model on one image and return its result (parsed JSON).

        ``color`` is the colour order of a numpy array ("bgr" as OpenCV reads, "rgb", ...);
        PIL images, paths and PNG/JPEG bytes carry their own.
        """
        head = pb.RunImageRequest(model=self.model, args_json=_args_json(args))
        request = join_images(head, _IMAGE_FIELD, [to_parts(image, color=color)])
        response = self._pool.call("RunImage", request, timeout=self.timeout)
        return from_json(response.result_json)

    def run_images(
        self,
        images: Sequence[ImageInput],
        args: Mapping[str, Any] | None = None,
        *,
        color: str | None = "bgr",
    ) -> list[Any]:
        """Run the model on several images in one call; one result per image."""
        head = pb.RunImageBatchRequest(model=self.model, args_json=_args_json(args))
        parts = [to_parts(image, color=color) for image in images]
        request = join_images(head, _IMAGE_FIELD, parts)
        response = self._pool.call("RunImageBatch", request, timeout=self.timeout)
        return [from_json(text) for text in response.results_json]

    def run_image_to_image(
        self,
        images: ImageInput | Sequence[ImageInput],
        args: Mapping[str, Any] | None = None,
        *,
        color: str | None = "bgr",
        output_color: str | None = None,
        png: bool = False,
    ) -> ImageToImageResult:
        """Run an image-to-image model on one image (or a list, e.g. two video frames).

        Returns the output images as numpy arrays (converted to ``output_color`` when given
        and the model names theirs) and the model's result. ``png`` asks the server to send
        the outputs PNG-compressed (smaller over slow links, slower on fast ones).
        """
        batch = list(images) if isinstance(images, (list, tuple)) else [images]
        head = pb.RunImageToImageRequest(
            model=self.model,
            args_json=_args_json(args),
            output_encoding=image_pb2.ENCODING_PNG if png else image_pb2.ENCODING_RAW,
        )
        parts = [to_parts(image, color=color) for image in batch]
        request = join_images(head, _IMAGE_FIELD, parts)
        raw = self._pool.call("RunImageToImage", request, timeout=self.timeout)
        response, images_out = split_images(pb.RunImageToImageResponse, raw, _OUTPUT_FIELD)
        outputs = [from_message(m, color=output_color) for m in images_out]
        colors = [
            color_name(m.meta.color_order) if output_color is None else output_color
            for m in images_out
        ]
        return ImageToImageResult(outputs, from_json(response.result_json), colors)

    # -- text ---------------------------------------------------------------------------------

    def run_text(self, text: str, args: Mapping[str, Any] | None = None) -> Any:
        """Run a text model on one text and return its result (parsed JSON)."""
        request = pb.RunTextRequest(model=self.model, text=text, args_json=_args_json(args))
        response = self._pool.call("RunText", request.SerializeToString(), timeout=self.timeout)
        return from_json(response.result_json)

    def run_texts(self, texts: Sequence[str], args: Mapping[str, Any] | None = None) -> list[Any]:
        """Run a text model on several texts in one call; one result per text."""
        request = pb.RunTextBatchRequest(
            model=self.model, texts=list(texts), args_json=_args_json(args)
        )
        response = self._pool.call(
            "RunTextBatch", request.SerializeToString(), timeout=self.timeout
        )
        return [from_json(text) for text in response.results_json]

    # -- about the server ---------------------------------------------------------------------

    def info(self) -> ModelInfo:
        """What the server says about this model."""
        request = pb.GetModelInfoRequest(model=self.model).SerializeToString()
        response = self._pool.call("GetModelInfo", request, timeout=self.timeout)
        return ModelInfo.from_proto(response.info)

    def list_models(self) -> list[ModelInfo]:
        """Every model the server has loaded."""
        response = self._pool.call("ListModels", b"", timeout=self.timeout)
        return [ModelInfo.from_proto(info) for info in response.models]

    def health(self, service: str | None = None) -> str:
        """The standard gRPC health status of this model (or of ``service``; "" for the
        whole server) on one worker: SERVING, NOT_SERVING or SERVICE_UNKNOWN."""
        # HealthCheckRequest {string service = 1} and HealthCheckResponse {enum status = 1}
        # have the wire format of StringValue and Int32Value; this spares a dependency.
        check = self._pool.pick().channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=wrappers_pb2.StringValue.SerializeToString,
            response_deserializer=wrappers_pb2.Int32Value.FromString,
        )
        name = self.model if service is None else service
        try:
            status = check(wrappers_pb2.StringValue(value=name), timeout=self.timeout)
        except grpc.RpcError as exc:
            if status_of(exc)[0] == grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            raise from_rpc_error(exc) from exc
        return _HEALTH[status.value] if 0 <= status.value < len(_HEALTH) else "UNKNOWN"

    def workers(self) -> list[WorkerInfo]:
        """The worker processes this client is connected to, with the calls sent to each."""
        return [
            WorkerInfo(w.target, w.instance_id, w.pid, w.index, w.count, w.calls)
            for w in self._pool.workers
        ]
