"""Image codec shared by the TMS client and server.

Turns numpy arrays into ``tms.v1.Image`` messages and back (colour orders are in
``protocol.colors``, JSON results in ``protocol.jsontext``). Raw pixels decode to a read-only
numpy view of the message bytes: no copy. PNG/JPEG need Pillow (the ``pil`` extra), imported
only when used.
"""

from __future__ import annotations

import io
import math
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from tms.v1 import image_pb2
from tms_client.protocol.colors import LAYOUT, RGB_OF, ColorValue, convert_color
from tms_client.protocol.wire import Buffer, ImageParts

__all__ = [
    "DTypeValue",
    "EncodingValue",
    "ImageError",
    "check_channels",
    "decode_image",
    "dtype_of",
    "encode_array",
    "encode_file",
    "encode_parts",
    "file_parts",
    "numpy_dtype",
]

DType = image_pb2.DType
ColorOrder = image_pb2.ColorOrder
Encoding = image_pb2.Encoding
DTypeValue: TypeAlias = image_pb2.DType.ValueType
EncodingValue: TypeAlias = image_pb2.Encoding.ValueType

_NUMPY_DTYPES: dict[DTypeValue, np.dtype[Any]] = {
    image_pb2.D_TYPE_UINT8: np.dtype("u1"),
    image_pb2.D_TYPE_INT8: np.dtype("i1"),
    image_pb2.D_TYPE_UINT16: np.dtype("<u2"),
    image_pb2.D_TYPE_INT16: np.dtype("<i2"),
    image_pb2.D_TYPE_INT32: np.dtype("<i4"),
    image_pb2.D_TYPE_INT64: np.dtype("<i8"),
    image_pb2.D_TYPE_FLOAT16: np.dtype("<f2"),
    image_pb2.D_TYPE_FLOAT32: np.dtype("<f4"),
    image_pb2.D_TYPE_FLOAT64: np.dtype("<f8"),
    image_pb2.D_TYPE_BOOL: np.dtype("?"),
}
_DTYPES_BY_KIND = {(dt.kind, dt.itemsize): code for code, dt in _NUMPY_DTYPES.items()}

# What a decoded PNG/JPEG holds, by Pillow mode.
_PIL_COLOR: dict[str, ColorValue] = {
    "L": image_pb2.COLOR_ORDER_GRAY,
    "RGB": image_pb2.COLOR_ORDER_RGB,
    "RGBA": image_pb2.COLOR_ORDER_RGBA,
}
# Other modes a PNG/JPEG opens in, and the mode each becomes without losing a value.
_PIL_CONVERT = {
    "1": "L",  # 1-bit gray: 0 and 255
    "P": "RGB",  # palette: its colours (RGBA when the file has a tRNS chunk)
    "PA": "RGBA",
    "LA": "RGBA",  # gray+alpha: no colour order holds it, so the gray goes to R, G and B
    "CMYK": "RGB",  # Adobe JPEGs: a change of colour space, not of depth
}
# 16-bit gray: "I;16", or "I" (32-bit) in older Pillow; the samples fit uint16 either way.
_PIL_GRAY16 = ("I;16", "I")
# Pillow has no 16-bit colour mode: for these PNG pixel formats it keeps only the high byte of
# each sample. Decoding the file again with an unpacker of the same pixel size (so that the PNG
# row filters still apply) reads the low bytes it dropped.
_PNG16_LOW_BYTES = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L"}
_PIL_FORMATS = {image_pb2.ENCODING_PNG: "PNG", image_pb2.ENCODING_JPEG: "JPEG"}


class ImageError(ValueError):
    """An image message that cannot be decoded: the message says what is wrong."""


def numpy_dtype(dtype: DTypeValue) -> np.dtype[Any]:
    """The numpy dtype of a ``tms.v1.DType`` value."""
    try:
        return _NUMPY_DTYPES[dtype]
    except KeyError:
        known = ", ".join(DType.Name(code) for code in _NUMPY_DTYPES)
        raise ImageError(f"unknown dtype {dtype}; expected one of {known}") from None


def dtype_of(dtype: npt.DTypeLike) -> DTypeValue:
    """The ``tms.v1.DType`` value of a numpy dtype."""
    np_dtype = np.dtype(dtype)
    try:
        return _DTYPES_BY_KIND[(np_dtype.kind, np_dtype.itemsize)]
    except KeyError:
        raise ImageError(f"dtype {np_dtype} cannot be sent as an image") from None


def check_channels(shape: tuple[int, ...], color_order: ColorValue) -> None:
    """Raise ImageError if a shape has too few or too many dimensions or its channel count
    contradicts the colour order."""
    if len(shape) not in (2, 3):
        raise ImageError(f"image shape {list(shape)} must be (H, W) or (H, W, C)")
    if color_order == image_pb2.COLOR_ORDER_UNSPECIFIED:
        return
    layout = LAYOUT.get(color_order)
    if layout is None:
        raise ImageError(f"unknown color_order {color_order}")
    channels = 1 if len(shape) == 2 else shape[2]
    if channels != len(layout):
        name = ColorOrder.Name(color_order)
        raise ImageError(
            f"{name} needs {len(layout)} channel(s), but shape {list(shape)} has {channels}"
        )


def encode_array(
    array: npt.NDArray[Any],
    color_order: ColorValue = image_pb2.COLOR_ORDER_UNSPECIFIED,
    *,
    encoding: EncodingValue = image_pb2.ENCODING_RAW,
    quality: int = 90,
) -> image_pb2.Image:
    """A ``tms.v1.Image`` of ``array``, (H, W) or (H, W, C): raw pixels, or a PNG/JPEG file.

    PNG holds uint8 or uint16 gray and uint8 RGB/RGBA; JPEG (``quality`` 1-100) holds uint8
    gray and RGB. BGR(A) pixels are reordered to RGB(A) in the file.
    """
    return encode_parts(array, color_order, encoding=encoding, quality=quality).to_message()


def encode_parts(
    array: npt.NDArray[Any],
    color_order: ColorValue = image_pb2.COLOR_ORDER_UNSPECIFIED,
    *,
    encoding: EncodingValue = image_pb2.ENCODING_RAW,
    quality: int = 90,
) -> ImageParts:
    """As ``encode_array``, but the data stays apart from the message: for raw pixels a view
    of ``array`` itself when it is C-contiguous and little-endian (no copy)."""
    array = np.asarray(array)
    check_channels(array.shape, color_order)
    dtype = dtype_of(array.dtype)
    if encoding in (image_pb2.ENCODING_RAW, image_pb2.ENCODING_UNSPECIFIED):
        pixels = np.ascontiguousarray(array, dtype=_NUMPY_DTYPES[dtype])
        meta = _raw_meta(dtype, array.shape, color_order)
        # The pixels' bytes, flat, as a view (an empty array's cannot be cast: no bytes).
        data = pixels.data.cast("B") if pixels.size else memoryview(b"")
        return ImageParts(meta, data)
    fmt = _PIL_FORMATS.get(encoding)
    if fmt is None:
        raise ImageError(f"unknown encoding {encoding}")
    array = array.astype(array.dtype.newbyteorder("="), copy=False)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        color_order = image_pb2.COLOR_ORDER_GRAY
        allowed = (np.uint8, np.uint16) if fmt == "PNG" else (np.uint8,)
    else:
        if color_order in (image_pb2.COLOR_ORDER_UNSPECIFIED, image_pb2.COLOR_ORDER_GRAY):
            raise ImageError(f"a {fmt} of {array.shape[2]} channels needs an RGB(A)/BGR(A) order")
        if color_order in (image_pb2.COLOR_ORDER_BGR, image_pb2.COLOR_ORDER_BGRA):
            target = RGB_OF[color_order]
            array, color_order = convert_color(array, color_order, target), target
        if fmt == "JPEG" and color_order == image_pb2.COLOR_ORDER_RGBA:
            raise ImageError("JPEG cannot hold an alpha channel")
        allowed = (np.uint8,)
    if array.dtype not in allowed:
        raise ImageError(f"{fmt} cannot hold {array.dtype} pixels of shape {list(array.shape)}")
    pil = _pil()
    buffer = io.BytesIO()
    options = {"quality": quality} if fmt == "JPEG" else {"compress_level": 1}
    pil.fromarray(np.ascontiguousarray(array)).save(buffer, format=fmt, **options)
    meta = image_pb2.Image(
        dtype=dtype, shape=array.shape, color_order=color_order, encoding=encoding
    )
    return ImageParts(meta, buffer.getvalue())


#: The serialized metadata of raw images, by (dtype, shape, colour order): callers send
#: the same few again and again, and parsing it is cheaper than building it from fields.
_RAW_META: dict[tuple[DTypeValue, tuple[int, ...], ColorValue], bytes] = {}
_RAW_META_MAX = 256


def _raw_meta(
    dtype: DTypeValue, shape: tuple[int, ...], color_order: ColorValue
) -> image_pb2.Image:
    """A new ``Image`` describing raw pixels of ``dtype``, ``shape`` and ``color_order``."""
    key = (dtype, shape, color_order)
    known = _RAW_META.get(key)
    if known is not None:
        return image_pb2.Image.FromString(known)
    meta = image_pb2.Image(
        dtype=dtype, shape=shape, color_order=color_order, encoding=image_pb2.ENCODING_RAW
    )
    if len(_RAW_META) < _RAW_META_MAX:
        _RAW_META[key] = meta.SerializeToString()
    return meta


def _pil() -> Any:
    try:
        from PIL import Image as PILImage  # noqa: PLC0415
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImageError("PNG/JPEG need Pillow: pip install 'tms-client[pil]'") from None
    return PILImage


def encode_file(data: bytes) -> image_pb2.Image:
    """A ``tms.v1.Image`` holding an encoded PNG or JPEG file as it is."""
    return file_parts(data).to_message()


def file_parts(data: Buffer) -> ImageParts:
    """As ``encode_file``, with the file's bytes kept apart from the message (no copy)."""
    head = bytes(memoryview(data)[:8])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        encoding = image_pb2.ENCODING_PNG
    elif head.startswith(b"\xff\xd8"):
        encoding = image_pb2.ENCODING_JPEG
    elif not head:
        raise ImageError("no bytes: an empty file is no image")
    else:
        raise ImageError("bytes are neither a PNG nor a JPEG file")
    return ImageParts(image_pb2.Image(encoding=encoding), data)


def decode_image(
    image: image_pb2.Image | ImageParts, *, max_pixels: int | None = None
) -> tuple[npt.NDArray[Any], ColorValue]:
    """The pixels of a ``tms.v1.Image`` (or of ImageParts) and their colour order.

    Raw pixels come back as a read-only view of the message's data: no copy. ``max_pixels``
    bounds H * W, checked before anything is decoded.
    """
    if isinstance(image, ImageParts):
        meta, data = image.meta, image.data
    else:
        meta, data = image, image.data
    encoding = meta.encoding
    if encoding in (image_pb2.ENCODING_RAW, image_pb2.ENCODING_UNSPECIFIED):
        color: ColorValue = meta.color_order
        return _decode_raw(meta, data, max_pixels), color
    if encoding in _PIL_FORMATS:
        return _decode_file(data, _PIL_FORMATS[encoding], max_pixels)
    raise ImageError(f"unknown encoding {encoding}")


def _decode_raw(image: image_pb2.Image, data: Buffer, max_pixels: int | None) -> npt.NDArray[Any]:
    dtype = numpy_dtype(image.dtype)
    shape = tuple(image.shape)
    check_channels(shape, image.color_order)
    if any(dim <= 0 for dim in shape):
        raise ImageError(f"image shape {list(shape)} has a dimension that is not positive")
    if max_pixels is not None and shape[0] * shape[1] > max_pixels:
        raise ImageError(
            f"image of {shape[0]}x{shape[1]} pixels exceeds the limit of {max_pixels} pixels "
            "(--max-pixels)"
        )
    expected = math.prod(shape) * dtype.itemsize
    size = memoryview(data).nbytes
    if size != expected:
        raise ImageError(
            f"image data has {size} bytes, but shape {list(shape)} of "
            f"{DType.Name(image.dtype)} needs {expected}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _decode_file(
    data: Buffer, fmt: str, max_pixels: int | None
) -> tuple[npt.NDArray[Any], ColorValue]:
    pil = _pil()
    try:
        with pil.open(io.BytesIO(data), formats=["PNG", "JPEG"]) as img:
            width, height = img.size
            if width <= 0 or height <= 0:
                raise ImageError(f"{fmt} file declares an empty image")
            if max_pixels is not None and width * height > max_pixels:
                raise ImageError(
                    f"{img.format} image of {height}x{width} pixels "
                    f"exceeds the limit of {max_pixels} pixels (--max-pixels)"
                )
            array, color = _pixels(pil, img, data)
    except ImageError:
        raise
    except pil.UnidentifiedImageError:
        raise ImageError(
            f"cannot decode {fmt} image: the data is not a complete PNG or JPEG file"
        ) from None
    except (OSError, ValueError, SyntaxError, pil.DecompressionBombError) as exc:
        raise ImageError(f"cannot decode {fmt} image: {exc}") from None
    return array, color


def _pixels(pil: Any, img: Any, data: Buffer) -> tuple[npt.NDArray[Any], ColorValue]:
    """The pixels of an opened PNG/JPEG at the file's bit depth, with all its channels."""
    rawmode = img.tile[0][3] if img.format == "PNG" and img.tile else None
    if rawmode in _PNG16_LOW_BYTES:
        high = np.asarray(img).astype(np.uint16)
        pixels = high << 8 | _reread_png(pil, data, _PNG16_LOW_BYTES[rawmode])
        return pixels, _PIL_COLOR[img.mode]
    if rawmode == "LA;16B":  # 16-bit gray+alpha: 4 bytes a pixel, read as 8-bit RGBA
        gray_alpha = _reread_png(pil, data, "RGBA").view(">u2")
        return gray_alpha[..., [0, 0, 0, 1]].astype(np.uint16), image_pb2.COLOR_ORDER_RGBA
    if img.mode in _PIL_GRAY16:
        return np.asarray(img).astype(np.uint16), image_pb2.COLOR_ORDER_GRAY
    target = "RGBA" if img.mode == "P" and img.has_transparency_data else _PIL_CONVERT.get(img.mode)
    if target is not None:
        img = img.convert(target)
    elif img.mode not in _PIL_COLOR:
        raise ImageError(
            f"cannot decode {img.format} image of Pillow mode {img.mode} without loss: "
            "send the pixels raw (encoding RAW)"
        )
    return np.asarray(img), _PIL_COLOR[img.mode]


def _reread_png(pil: Any, data: Buffer, rawmode: str) -> npt.NDArray[np.uint8]:
    """A PNG's pixels decoded again with another of Pillow's unpackers."""
    with pil.open(io.BytesIO(data), formats=["PNG"]) as img:
        img.tile = [(*img.tile[0][:3], rawmode)]
        pixels: npt.NDArray[np.uint8] = np.asarray(img)
    return pixels
