"""Turning what users hold into ``tms.v1.Image`` messages, and output images into arrays.

Accepted inputs: a numpy array (its colour order given by ``color``, default ``"bgr"`` as
OpenCV delivers it), a PIL image (its mode says its colour order), a file path, or the bytes
of a PNG or JPEG file (sent as they are, decoded by the server). Pixels go raw, unless the
request would outgrow the message limit: then ``fit`` sends them as PNG, which loses nothing.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import time
import zlib
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
import numpy as np
import numpy.typing as npt

from tms.v1 import image_pb2
from tms_client.exceptions import DeadlineExceededError, ResourceExhaustedError
from tms_client.protocol.codec import ImageError, decode_image, encode_parts, file_parts
from tms_client.protocol.colors import (
    COLOR_ORDERS,
    RGB_OF,
    ColorValue,
    color_order,
    convert_color,
)
from tms_client.protocol.wire import ImageMessage, ImageParts

__all__ = [
    "COLOR_ORDERS",
    "ImageInput",
    "PILImage",
    "color_order",
    "fit",
    "from_message",
    "to_message",
    "to_parts",
]


class PILImage(Protocol):
    """What the client reads of a PIL image (``PIL.Image.Image`` has it; Pillow is optional)."""

    @property
    def mode(self) -> str: ...

    def getbands(self) -> tuple[str, ...]: ...


#: Anything ``run_image`` accepts: numpy array, PIL image, path, or PNG/JPEG bytes.
ImageInput = npt.NDArray[Any] | PILImage | str | os.PathLike[str] | bytes

_WITH_ALPHA = {"rgb": "rgba", "bgr": "bgra", "rgba": "rgba", "bgra": "bgra"}
_PIL_MODES = {"L": "gray", "RGB": "rgb", "RGBA": "rgba"}


def _array_color(array: npt.NDArray[Any], color: str | None) -> ColorValue:
    channels = 1 if array.ndim == 2 else array.shape[2] if array.ndim == 3 else 0
    if channels == 1:
        return image_pb2.COLOR_ORDER_GRAY
    if color is None:
        return image_pb2.COLOR_ORDER_UNSPECIFIED
    if channels == 3:
        return color_order(color.lower().removesuffix("a"))
    if channels == 4:
        return color_order(_WITH_ALPHA.get(color.lower(), color))
    return image_pb2.COLOR_ORDER_UNSPECIFIED


def to_message(image: Any, *, color: str | None = "bgr") -> image_pb2.Image:
    """A ``tms.v1.Image`` for any accepted input; see the module docstring."""
    if isinstance(image, image_pb2.Image):
        return image
    return to_parts(image, color=color).to_message()


def to_parts(image: Any, *, color: str | None = "bgr") -> ImageParts:
    """As ``to_message``, with the pixels (or file bytes) kept apart, uncopied where possible."""
    if isinstance(image, np.ndarray):
        return encode_parts(image, _array_color(image, color))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return file_parts(image)
    if isinstance(image, (str, os.PathLike)):
        return _from_path(Path(image))
    if isinstance(image, image_pb2.Image):
        return ImageParts(image, image.data)
    if hasattr(image, "mode") and hasattr(image, "getbands"):
        return _from_pil(image)
    raise TypeError(
        f"cannot send {type(image).__name__} as an image; pass a numpy array, a PIL image, "
        "a file path or PNG/JPEG bytes"
    )


def _from_pil(image: Any) -> ImageParts:
    name = _PIL_MODES.get(image.mode)
    if name is None and (image.mode in ("I", "F") or image.mode.startswith("I;16")):
        return encode_parts(np.asarray(image), image_pb2.COLOR_ORDER_GRAY)  # keep 16/32 bits
    if name is None:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        name = _PIL_MODES[image.mode]
    return encode_parts(np.asarray(image), color_order(name))


def _from_path(path: Path) -> ImageParts:
    data = path.read_bytes()
    if not data:
        raise ImageError(f"cannot read {path} as an image: the file is empty")
    try:
        return file_parts(data)
    except ImageError:
        pass
    try:
        from PIL import Image as PIL  # noqa: PLC0415, N814
        from PIL import UnidentifiedImageError  # noqa: PLC0415
    except ImportError:
        raise ImageError(
            f"{path} is not a PNG or JPEG file; other formats need Pillow "
            "(pip install 'tms-client[pil]')"
        ) from None
    try:
        with PIL.open(path) as opened:
            return _from_pil(opened)
    except UnidentifiedImageError:
        raise ImageError(f"cannot read {path} as an image: not a format Pillow reads") from None
    except OSError as exc:
        raise ImageError(f"cannot read {path} as an image: {exc.strerror or exc}") from None


def from_message(
    message: image_pb2.Image | ImageParts, *, color: str | None = None
) -> npt.NDArray[Any]:
    """The pixels of an output image as a writable array, converted to ``color`` if given and
    the image's colour order is known."""
    array, order = decode_image(message)
    target = color_order(color)
    unspecified = image_pb2.COLOR_ORDER_UNSPECIFIED
    if unspecified not in (target, order):
        converted = convert_color(array, order, target)
        if converted is not array:
            return converted
    return array.copy() if not array.flags.writeable else array


Sendable = TypeVar("Sendable", bound=bytes | ImageMessage)


def fit_within(
    request: Sendable, max_bytes: int, timeout: float | None
) -> tuple[Sendable, float | None]:
    """``fit``, and the time left of the call's ``timeout`` once it has: re-encoding a large
    image as PNG can take a second, which is the call's too (DeadlineExceededError when it
    took all of it)."""
    started = time.monotonic()
    fitted = fit(request, max_bytes)
    if fitted is request or timeout is None:
        return fitted, timeout
    left = timeout - (time.monotonic() - started)
    if left <= 0:
        raise DeadlineExceededError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"encoding the images as PNG, to fit them in a message, took the call's timeout "
            f"of {timeout:g}s",
        )
    return fitted, left


def fit(request: Sendable, max_bytes: int) -> Sendable:
    """``request`` as it can be sent in a message of at most ``max_bytes``: its raw images
    re-encoded as PNG (lossless), largest first, until it fits. ResourceExhaustedError
    saying the sizes and what to do when it cannot fit."""
    if not isinstance(request, ImageMessage):
        return request
    size = _size(request)
    if size <= max_bytes:
        return request
    images = list(request.images)
    for i in sorted(range(len(images)), key=lambda i: -_nbytes(images[i])):
        png = _as_png(images[i])
        if png is not None and _nbytes(png) < _nbytes(images[i]):
            size -= _nbytes(images[i]) - _nbytes(png)
            images[i] = png
        if size <= max_bytes:
            return dataclasses.replace(request, images=images)
    mib = 1024 * 1024
    raise ResourceExhaustedError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"the request needs {size / mib:.1f} MiB, more than the {max_bytes / mib:g} MiB a "
        "message may carry (after trying its images as PNG); raise the limit on both sides, "
        "the client's max_message_mb (tms --max-message-mb) and the server's "
        "--max-message-mb, or send a smaller image",
    )


def _nbytes(image: ImageParts) -> int:
    return memoryview(image.data).nbytes


def _size(message: ImageMessage) -> int:
    """At least the bytes ``message.join()`` writes (each image's field keys and lengths
    take at most 16 bytes)."""
    size = message.head.ByteSize()
    for image in message.images:
        size += image.meta.ByteSize() + _nbytes(image) + 16
    return size


_PNG_COLORS = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type: gray, RGB, RGBA
#: The order a PNG holds each colour order's channels in.
_PNG_ORDER = {
    **RGB_OF,
    image_pb2.COLOR_ORDER_RGB: image_pb2.COLOR_ORDER_RGB,
    image_pb2.COLOR_ORDER_RGBA: image_pb2.COLOR_ORDER_RGBA,
}


def _as_png(image: ImageParts) -> ImageParts | None:
    """A raw uint8 or uint16 image of 1, 3 or 4 channels as PNG; None for any other (the
    colours of 3 or 4 channels must have a known order: a PNG holds them as RGB(A))."""
    meta = image.meta
    if meta.encoding not in (image_pb2.ENCODING_RAW, image_pb2.ENCODING_UNSPECIFIED):
        return None
    if meta.dtype not in (image_pb2.D_TYPE_UINT8, image_pb2.D_TYPE_UINT16):
        return None
    array, order = decode_image(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    channels = 1 if array.ndim == 2 else array.shape[2]
    if channels not in _PNG_COLORS or (channels > 1 and order not in _PNG_ORDER):
        return None
    if channels == 1:
        order = image_pb2.COLOR_ORDER_GRAY
    elif order != _PNG_ORDER[order]:
        array, order = convert_color(array, order, _PNG_ORDER[order]), _PNG_ORDER[order]
    meta = image_pb2.Image(
        dtype=meta.dtype, shape=array.shape, color_order=order, encoding=image_pb2.ENCODING_PNG
    )
    return ImageParts(meta, _png(array))


def _png(array: npt.NDArray[Any]) -> bytes:
    """A PNG file of uint8 or uint16 pixels, (H, W) or (H, W, 3 or 4) in RGB(A) order.

    Written here rather than by Pillow, which is optional and writes no 16-bit colour; each
    row is "Sub"-filtered (each byte less the one a pixel before), which suits photographs.
    """
    height, width = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    depth = array.dtype.itemsize
    rows = np.ascontiguousarray(array, dtype=f">u{depth}").view(np.uint8).reshape(height, -1)
    step = channels * depth  # bytes per pixel
    filtered = np.empty((height, rows.shape[1] + 1), np.uint8)
    filtered[:, 0] = 1  # filter type Sub
    filtered[:, 1 : 1 + step] = rows[:, :step]
    np.subtract(rows[:, step:], rows[:, :-step], out=filtered[:, 1 + step :])

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, depth * 8, _PNG_COLORS[channels], 0, 0, 0)
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", header),
            chunk(b"IDAT", zlib.compress(filtered.data, 6)),
            chunk(b"IEND", b""),
        ]
    )
