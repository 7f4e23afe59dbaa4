"""The tms.v1.ModelService of one worker process: validate, decode, run the model, encode."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf.message import Message

from tms.v1 import image_pb2, model_service_pb2
from tms_client.codec import (
    ColorValue,
    EncodingValue,
    ImageError,
    convert_color,
    decode_image,
    encode_parts,
    to_json,
)
from tms_client.wire import ImageParts, WireError, join_images, merge_singular, split_images
from tms_server.errors import (
    Internal,
    InvalidArgument,
    Unimplemented,
    message_handler,
    status_errors,
)
from tms_server.limits import parse_args
from tms_server.load import WorkerLoad
from tms_server.model import InvalidInput
from tms_server.registry import LoadedModel, ModelRegistry

__all__ = ["ModelServicer", "WorkerIdentity", "add_to_server"]

pb = model_service_pb2
log = logging.getLogger("tms_server")
M = TypeVar("M", bound=Message)
T = TypeVar("T")

_SERVICE = pb.DESCRIPTOR.services_by_name["ModelService"]
_IMAGE_FIELD = pb.RunImageRequest.DESCRIPTOR.fields_by_name["image"].number
_OUTPUT_FIELD = pb.RunImageToImageResponse.DESCRIPTOR.fields_by_name["images"].number
# Methods whose requests (and responses) the servicer handles as bytes.
_BYTES_REQUESTS = {"RunImage", "RunImageBatch", "RunImageToImage"}
_BYTES_RESPONSES = {"RunImageToImage"}
_CHANNELS: dict[ColorValue, int] = {
    image_pb2.COLOR_ORDER_GRAY: 1,
    image_pb2.COLOR_ORDER_RGB: 3,
    image_pb2.COLOR_ORDER_BGR: 3,
    image_pb2.COLOR_ORDER_RGBA: 4,
    image_pb2.COLOR_ORDER_BGRA: 4,
}
_CALL_NAMES: dict[pb.ModelCall.ValueType, str] = {
    pb.MODEL_CALL_RUN_IMAGE: "RunImage",
    pb.MODEL_CALL_RUN_IMAGE_BATCH: "RunImageBatch",
    pb.MODEL_CALL_RUN_IMAGE_TO_IMAGE: "RunImageToImage",
    pb.MODEL_CALL_RUN_TEXT: "RunText",
    pb.MODEL_CALL_RUN_TEXT_BATCH: "RunTextBatch",
}


@dataclass(frozen=True)
class WorkerIdentity:
    """Who this worker process is, as GetWorkerInfo reports it."""

    instance_id: str
    worker_index: int
    worker_count: int
    server_version: str

    @property
    def key(self) -> str:
        """``<instance id>/<pid>``, as clients key workers."""
        return f"{self.instance_id}/{os.getpid()}"

    def response(self) -> pb.GetWorkerInfoResponse:
        return pb.GetWorkerInfoResponse(
            instance_id=self.instance_id,
            pid=os.getpid(),
            worker_index=self.worker_index,
            worker_count=self.worker_count,
            server_version=self.server_version,
            hostname=socket.gethostname(),
        )


def _args(text: str) -> dict[str, Any]:
    """The model args: a JSON object, bounded in size and depth (see tms_server.limits)."""
    return parse_args(text)


def _read(cls: type[M], request: bytes) -> tuple[M, list[ImageParts]]:
    """A request message and the images it carries (field 2 in every such request)."""
    try:
        return split_images(cls, request, _IMAGE_FIELD)
    except WireError as exc:
        raise InvalidArgument(f"malformed {cls.DESCRIPTOR.name}: {exc}") from None


def _run(model: LoadedModel, method: Callable[..., T], *args: Any) -> T:
    """Call a model method, one call at a time unless the model is thread-safe.

    InvalidInput passes through (INVALID_ARGUMENT); anything else the model raises is logged
    with its traceback and becomes INTERNAL.
    """
    try:
        with model.lock:
            return method(*args)
    except InvalidInput:
        raise
    except Exception as exc:
        log.exception("model %r raised", model.name)
        raise Internal(f"model {model.name!r} raised {type(exc).__name__}: {exc}") from exc


def _result_json(model: LoadedModel, result: Any) -> str:
    try:
        return to_json(result)
    except (TypeError, ValueError) as exc:
        raise Internal(f"model {model.name!r} returned a result JSON cannot hold: {exc}") from None


class ModelServicer:
    """Serves the models of a registry; errors end calls through ``status_errors``.

    RunImage, RunImageBatch and RunImageToImage take their requests as bytes and
    RunImageToImage answers in bytes: tms_client.wire reads and writes the images in place.
    ``add_to_server`` registers the methods with the matching (de)serializers.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        identity: WorkerIdentity,
        *,
        max_pixels: int,
        load: WorkerLoad | None = None,
    ) -> None:
        self.load = load if load is not None else WorkerLoad(identity.key)
        self._registry = registry
        self._max_pixels = max_pixels
        self._worker_info = identity.response()

    def _model(self, name: str, call: pb.ModelCall.ValueType) -> LoadedModel:
        model = self._registry.get(name)
        if not model.supports(call):
            supported = ", ".join(_CALL_NAMES[c] for c in model.info.calls)
            raise Unimplemented(
                f"model {name!r} does not support {_CALL_NAMES[call]}; it supports {supported}"
            )
        return model

    def _image(self, model: LoadedModel, parts: ImageParts) -> npt.NDArray[Any]:
        """The pixels of an image as ``model`` declared it wants them."""
        array, color = decode_image(parts, max_pixels=self._max_pixels)
        if model.dtype is not None and array.dtype != model.dtype:
            if not np.can_cast(array.dtype, model.dtype, "safe"):
                raise InvalidArgument(
                    f"model {model.name!r} takes {model.dtype} images; "
                    f"{array.dtype} cannot be converted to it without loss"
                )
            array = array.astype(model.dtype)
        if model.color != image_pb2.COLOR_ORDER_UNSPECIFIED:
            if color == image_pb2.COLOR_ORDER_UNSPECIFIED:
                color = self._assume_color(model, array)
            array = convert_color(array, color, model.color)
        if model.input_shape is not None:
            expected = model.input_shape
            if len(expected) != array.ndim or any(
                e not in (-1, a) for e, a in zip(expected, array.shape, strict=True)
            ):
                raise InvalidArgument(
                    f"model {model.name!r} takes images of shape {list(expected)} (-1: any), "
                    f"not {list(array.shape)}"
                )
        return array

    @staticmethod
    def _assume_color(model: LoadedModel, array: npt.NDArray[Any]) -> ColorValue:
        channels = 1 if array.ndim == 2 else array.shape[2]
        if channels == 1:
            return image_pb2.COLOR_ORDER_GRAY
        if channels == _CHANNELS[model.color]:
            return model.color
        wanted = image_pb2.ColorOrder.Name(model.color)
        raise InvalidArgument(
            f"model {model.name!r} takes {wanted} images; an image of {channels} channels "
            "needs its color_order set"
        )

    def _images(self, model: LoadedModel, occurrences: Sequence[ImageParts]) -> list[Any]:
        if not occurrences:
            raise InvalidArgument("no images in the request")
        return [self._image(model, parts) for parts in occurrences]

    @status_errors
    def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelsResponse:
        # Built on each call: an admin may have reloaded a model since.
        return pb.ListModelsResponse(models=[m.info for m in self._registry.models.values()])

    @status_errors
    def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> pb.GetModelInfoResponse:
        return pb.GetModelInfoResponse(info=self._registry.get(request.model).info)

    @status_errors
    def RunImage(self, request: bytes, context: grpc.ServicerContext) -> pb.RunImageResponse:
        message, occurrences = _read(pb.RunImageRequest, request)
        model = self._model(message.model, pb.MODEL_CALL_RUN_IMAGE)
        parts = merge_singular(occurrences)
        if parts is None:
            raise InvalidArgument("no image in the request")
        image = self._image(model, parts)
        result = _run(model, model.instance.run, image, _args(message.args_json))
        return pb.RunImageResponse(result_json=_result_json(model, result))

    @status_errors
    def RunImageBatch(
        self, request: bytes, context: grpc.ServicerContext
    ) -> pb.RunImageBatchResponse:
        message, occurrences = _read(pb.RunImageBatchRequest, request)
        model = self._model(message.model, pb.MODEL_CALL_RUN_IMAGE_BATCH)
        images = self._images(model, occurrences)
        results = _run(model, model.instance.run_batch, images, _args(message.args_json))
        return pb.RunImageBatchResponse(results_json=self._batch_json(model, results, len(images)))

    @status_errors
    def RunImageToImage(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        message, occurrences = _read(pb.RunImageToImageRequest, request)
        model = self._model(message.model, pb.MODEL_CALL_RUN_IMAGE_TO_IMAGE)
        if message.output_encoding not in (
            image_pb2.ENCODING_UNSPECIFIED,
            image_pb2.ENCODING_RAW,
            image_pb2.ENCODING_PNG,
        ):
            raise InvalidArgument("output_encoding must be RAW or PNG")
        images = self._images(model, occurrences)
        args = _args(message.args_json)
        output = _run(model, model.instance.run_image_to_image, images, args)
        result: Any = None
        if isinstance(output, tuple):
            if len(output) != 2:
                raise Internal(
                    f"model {model.name!r} returned a tuple of {len(output)}; "
                    "expected (image(s), result)"
                )
            output, result = output
        arrays = output if isinstance(output, list) else [output]
        parts = [self._encode(model, a, message.output_encoding) for a in arrays]
        head = pb.RunImageToImageResponse(result_json=_result_json(model, result))
        return join_images(head, _OUTPUT_FIELD, parts)

    @staticmethod
    def _encode(model: LoadedModel, array: Any, encoding: EncodingValue) -> ImageParts:
        if not isinstance(array, np.ndarray):
            raise Internal(
                f"model {model.name!r} returned {type(array).__name__} where an image "
                "(numpy array) was expected"
            )
        try:
            return encode_parts(array, model.output_color, encoding=encoding)
        except ImageError as exc:
            raise Internal(f"model {model.name!r} returned an invalid image: {exc}") from None

    @status_errors
    def RunText(
        self, request: pb.RunTextRequest, context: grpc.ServicerContext
    ) -> pb.RunTextResponse:
        model = self._model(request.model, pb.MODEL_CALL_RUN_TEXT)
        result = _run(model, model.instance.run, request.text, _args(request.args_json))
        return pb.RunTextResponse(result_json=_result_json(model, result))

    @status_errors
    def RunTextBatch(
        self, request: pb.RunTextBatchRequest, context: grpc.ServicerContext
    ) -> pb.RunTextBatchResponse:
        model = self._model(request.model, pb.MODEL_CALL_RUN_TEXT_BATCH)
        texts = list(request.texts)
        if not texts:
            raise InvalidArgument("no texts in the request")
        results = _run(model, model.instance.run_batch, texts, _args(request.args_json))
        return pb.RunTextBatchResponse(results_json=self._batch_json(model, results, len(texts)))

    @staticmethod
    def _batch_json(model: LoadedModel, results: Any, expected: int) -> list[str]:
        results = list(results)
        if len(results) != expected:
            raise Internal(
                f"model {model.name!r} returned {len(results)} results for {expected} inputs"
            )
        return [_result_json(model, result) for result in results]

    @status_errors
    def GetWorkerInfo(
        self, request: pb.GetWorkerInfoRequest, context: grpc.ServicerContext
    ) -> pb.GetWorkerInfoResponse:
        return self._worker_info


def add_to_server(servicer: ModelServicer, server: grpc.Server) -> None:
    """Register ``servicer`` for tms.v1.ModelService on ``server``."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for name, method in _SERVICE.methods_by_name.items():
        request_class = getattr(pb, method.input_type.name)
        response_class = getattr(pb, method.output_type.name)
        serializer = None if name in _BYTES_RESPONSES else response_class.SerializeToString
        if name in _BYTES_REQUESTS:
            handlers[name] = grpc.unary_unary_rpc_method_handler(
                getattr(servicer, name), response_serializer=serializer
            )
        else:  # malformed bytes: INVALID_ARGUMENT, as for the requests read in place
            handlers[name] = message_handler(getattr(servicer, name), request_class, serializer)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(_SERVICE.full_name, handlers),)
    )
    server.add_registered_method_handlers(_SERVICE.full_name, handlers)
