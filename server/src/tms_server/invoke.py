"""Calling a model, shared by the tms.v1 and Open Inference Protocol services.

Inputs are prepared as the model declared them (dtype, colour order, shape), the model runs
under its lock, and its output is checked and encoded; every failure is a ServiceError with
the status code it stands for.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from PIL import Image as PILImage

from tms.v1 import image_pb2
from tms_client.protocol.codec import EncodingValue, ImageError, decode_image, encode_parts
from tms_client.protocol.colors import ColorValue, convert_color
from tms_client.protocol.jsontext import to_json
from tms_client.protocol.wire import ImageParts
from tms_server.callinfo import CURRENT
from tms_server.errors import Internal, InvalidArgument, Reason
from tms_server.model import InvalidInput
from tms_server.registry import MODEL_ERRORS, LoadedModel
from tms_server.repeats import FAILURES
from tms_server.tracing import model_span

__all__ = [
    "CHANNELS",
    "declared_pixels",
    "encode_output",
    "image_outputs",
    "prepare_image",
    "received",
    "result_json",
    "run_batch",
    "run_model",
]

log = logging.getLogger("tms_server")
T = TypeVar("T")

#: Channels of an image in each colour order (the tms.v1 and OIP services check shapes by it).
CHANNELS: dict[ColorValue, int] = {
    image_pb2.COLOR_ORDER_GRAY: 1,
    image_pb2.COLOR_ORDER_RGB: 3,
    image_pb2.COLOR_ORDER_BGR: 3,
    image_pb2.COLOR_ORDER_RGBA: 4,
    image_pb2.COLOR_ORDER_BGRA: 4,
}


#: How much of a PNG/JPEG file is read to learn its size before it is decoded.
_HEADER_BYTES = 256 * 1024


def declared_pixels(parts: ImageParts, unknown: int) -> int:
    """H * W of an image as its metadata (raw) or its file's header (PNG/JPEG) declares it,
    without decoding; ``unknown`` when it cannot tell (the decode will say why)."""
    meta = parts.meta
    if meta.encoding in (image_pb2.ENCODING_RAW, image_pb2.ENCODING_UNSPECIFIED):
        shape = meta.shape
        return shape[0] * shape[1] if len(shape) >= 2 and shape[0] > 0 and shape[1] > 0 else 0
    header = bytes(memoryview(parts.data)[:_HEADER_BYTES])
    try:
        with PILImage.open(io.BytesIO(header), formats=["PNG", "JPEG"]) as image:
            width, height = image.size
    except Exception:
        return unknown
    return width * height


def prepare_image(
    model: LoadedModel, parts: ImageParts, max_pixels: int, field: str = "image"
) -> npt.NDArray[Any]:
    """The pixels of an image as ``model`` declared it wants them; errors name ``field``, the
    image's place in the request (BadRequest)."""
    try:
        array, color = decode_image(parts, max_pixels=max_pixels)
    except ImageError as exc:
        # Too large by the size it declares, or else not an image the server can use.
        too_large = declared_pixels(parts, unknown=0) > max_pixels
        reason = Reason.IMAGE_TOO_LARGE if too_large else Reason.INVALID_IMAGE
        raise InvalidArgument(str(exc), reason=reason, field=field) from None
    if model.dtype is not None and array.dtype != model.dtype:
        if not np.can_cast(array.dtype, model.dtype, "safe"):
            raise InvalidArgument(
                f"model {model.name!r} takes {model.dtype} images; "
                f"{array.dtype} cannot be converted to it without loss",
                reason=Reason.INVALID_IMAGE,
                field=f"{field}.dtype",
            )
        array = array.astype(model.dtype)
    if model.color != image_pb2.COLOR_ORDER_UNSPECIFIED:
        if color == image_pb2.COLOR_ORDER_UNSPECIFIED:
            color = _assume_color(model, array, field)
        array = convert_color(array, color, model.color)
    if model.input_shape is not None:
        expected = model.input_shape
        if len(expected) != array.ndim or any(
            e not in (-1, a) for e, a in zip(expected, array.shape, strict=True)
        ):
            raise InvalidArgument(
                f"model {model.name!r} takes images of shape {list(expected)} (-1: any), "
                f"not {list(array.shape)}",
                reason=Reason.INVALID_IMAGE,
                field=f"{field}.shape",
            )
    return array


def _assume_color(model: LoadedModel, array: npt.NDArray[Any], field: str) -> ColorValue:
    channels = 1 if array.ndim == 2 else array.shape[2]
    if channels == 1:
        return image_pb2.COLOR_ORDER_GRAY
    if channels == CHANNELS[model.color]:
        return model.color
    wanted = image_pb2.ColorOrder.Name(model.color)
    raise InvalidArgument(
        f"model {model.name!r} takes {wanted} images; an image of {channels} channels "
        "needs its color_order set",
        reason=Reason.INVALID_IMAGE,
        field=f"{field}.color_order",
    )


def run_model(model: LoadedModel, method: Callable[..., T], *args: Any) -> T:
    """Call a model method, one call at a time unless the model is thread-safe.

    InvalidInput passes through (INVALID_ARGUMENT); anything else the model raises is logged
    with its traceback (and the call's request id; a repeat of the same failure is counted
    instead, tms_server.repeats) and becomes INTERNAL (MODEL_FAILED). The
    time inside the method, not waiting for the lock, adds up in the call's CallInfo
    (tms_model_seconds).
    """
    call = CURRENT.get()
    traced = call is None or call.span is not None
    try:
        with model.lock, model_span(model.name, traced):
            began = time.perf_counter()
            try:
                return method(*args)
            finally:
                if call is not None:
                    call.ran_model(time.perf_counter() - began)
    except InvalidInput:
        raise
    except MODEL_ERRORS as exc:  # sys.exit in a model ends its call, not the worker
        if FAILURES.first(exc, f"model {model.name!r}", model=model.name):
            log.exception("model %r raised", model.name)
        message = f"model {model.name!r} raised {type(exc).__name__}: {exc}"
        raise Internal(message, reason=Reason.MODEL_FAILED) from exc


def run_batch(model: LoadedModel, args: dict[str, Any], inputs: list[Any]) -> list[Any]:
    """The model's ``run_batch`` on ``inputs``: one result for each, else INTERNAL."""
    results = list(run_model(model, model.instance.run_batch, inputs, args))
    if len(results) != len(inputs):
        raise Internal(
            f"model {model.name!r} returned {len(results)} results for {len(inputs)} inputs",
            reason=Reason.MODEL_FAILED,
        )
    return results


def received(images: Sequence[ImageParts]) -> None:
    """Count the bytes of the images a call received (tms_image_bytes_total)."""
    call = CURRENT.get()
    if call is not None:
        call.image_bytes += sum(
            memoryview(parts.data).nbytes or parts.meta.shared_memory.size for parts in images
        )


def result_json(model: LoadedModel, result: Any) -> str:
    try:
        return to_json(result)
    except (TypeError, ValueError) as exc:
        message = f"model {model.name!r} returned a result JSON cannot hold: {exc}"
        raise Internal(message, reason=Reason.MODEL_FAILED) from None


def image_outputs(model: LoadedModel, output: Any) -> tuple[list[Any], Any]:
    """What ``run_image_to_image`` returned, as (images, result)."""
    result: Any = None
    if isinstance(output, tuple):
        if len(output) != 2:
            raise Internal(
                f"model {model.name!r} returned a tuple of {len(output)}; "
                "expected (image(s), result)",
                reason=Reason.MODEL_FAILED,
            )
        output, result = output
    return (output if isinstance(output, list) else [output]), result


def encode_output(model: LoadedModel, array: Any, encoding: EncodingValue) -> ImageParts:
    """An image the model returned, checked and encoded."""
    if not isinstance(array, np.ndarray):
        raise Internal(
            f"model {model.name!r} returned {type(array).__name__} where an image "
            "(numpy array) was expected",
            reason=Reason.MODEL_FAILED,
        )
    try:
        return encode_parts(array, model.output_color, encoding=encoding)
    except ImageError as exc:
        if encoding == image_pb2.ENCODING_PNG:  # what PNG cannot hold (a flow field) comes raw
            return encode_output(model, array, image_pb2.ENCODING_RAW)
        message = f"model {model.name!r} returned an invalid image: {exc}"
        raise Internal(message, reason=Reason.MODEL_FAILED) from None
