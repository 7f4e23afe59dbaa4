"""Turning what users hold into ``tms.v1.Image`` messages, and output images into arrays.

Accepted inputs: a numpy array (its colour order given by ``color``, default ``"bgr"`` as
OpenCV delivers it), a PIL image (its mode says its colour order), a file path, or the bytes
of a PNG or JPEG file (sent as they are, decoded by the server).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import numpy as np
import numpy.typing as npt

from tms.v1 import image_pb2
from tms_client.protocol.codec import ImageError, decode_image, encode_parts, file_parts
from tms_client.protocol.colors import COLOR_ORDERS, ColorValue, color_order, convert_color
from tms_client.protocol.wire import ImageParts

__all__ = [
    "COLOR_ORDERS",
    "ImageInput",
    "color_order",
    "from_message",
    "to_message",
    "to_parts",
]

#: Anything ``run_image`` accepts: numpy array, PIL image, path, or PNG/JPEG bytes.
ImageInput = Union[npt.NDArray[Any], "PILImage", str, os.PathLike[str], bytes]
PILImage = Any  # PIL.Image.Image; Pillow is optional

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


def _from_pil(image: PILImage) -> ImageParts:
    name = _PIL_MODES.get(image.mode)
    if name is None and (image.mode in ("I", "F") or image.mode.startswith("I;16")):
        return encode_parts(np.asarray(image), image_pb2.COLOR_ORDER_GRAY)  # keep 16/32 bits
    if name is None:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        name = _PIL_MODES[image.mode]
    return encode_parts(np.asarray(image), color_order(name))


def _from_path(path: Path) -> ImageParts:
    data = path.read_bytes()
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
