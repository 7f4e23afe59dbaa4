"""The image and JSON codec shared by client and server: raw, PNG, JPEG, colour, JSON."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage

from tms.v1 import image_pb2
from tms_client.protocol.codec import (
    DTypeValue,
    EncodingValue,
    ImageError,
    decode_image,
    dtype_of,
    encode_array,
    encode_file,
    numpy_dtype,
)
from tms_client.protocol.colors import ColorValue, convert_color
from tms_client.protocol.jsontext import from_json, to_json

GRAY = image_pb2.COLOR_ORDER_GRAY
RGB = image_pb2.COLOR_ORDER_RGB
BGR = image_pb2.COLOR_ORDER_BGR
RGBA = image_pb2.COLOR_ORDER_RGBA
BGRA = image_pb2.COLOR_ORDER_BGRA
UNSPECIFIED = image_pb2.COLOR_ORDER_UNSPECIFIED
RAW = image_pb2.ENCODING_RAW
PNG = image_pb2.ENCODING_PNG
JPEG = image_pb2.ENCODING_JPEG

# Every DType of the proto but UNSPECIFIED, with the numpy dtype it stands for.
DTYPES: dict[DTypeValue, np.dtype[Any]] = {
    image_pb2.D_TYPE_UINT8: np.dtype(np.uint8),
    image_pb2.D_TYPE_INT8: np.dtype(np.int8),
    image_pb2.D_TYPE_UINT16: np.dtype(np.uint16),
    image_pb2.D_TYPE_INT16: np.dtype(np.int16),
    image_pb2.D_TYPE_INT32: np.dtype(np.int32),
    image_pb2.D_TYPE_INT64: np.dtype(np.int64),
    image_pb2.D_TYPE_FLOAT16: np.dtype(np.float16),
    image_pb2.D_TYPE_FLOAT32: np.dtype(np.float32),
    image_pb2.D_TYPE_FLOAT64: np.dtype(np.float64),
    image_pb2.D_TYPE_BOOL: np.dtype(np.bool_),
}
DTYPE_IDS = [image_pb2.DType.Name(code) for code in DTYPES]
# Shapes of 1 to 5 channels, and the colour orders each channel count allows.
SHAPES = [(4, 5), (4, 5, 1), (4, 5, 2), (4, 5, 3), (4, 5, 4), (4, 5, 5)]
ORDERS_BY_CHANNELS: dict[int, list[ColorValue]] = {
    1: [GRAY],
    2: [],
    3: [RGB, BGR],
    4: [RGBA, BGRA],
    5: [],
}
LAYOUTS: dict[ColorValue, str] = {GRAY: "L", RGB: "RGB", BGR: "BGR", RGBA: "RGBA", BGRA: "BGRA"}
ORDER_IDS = {order: image_pb2.ColorOrder.Name(order) for order in LAYOUTS}


def random_pixels(dtype: np.dtype[Any], shape: tuple[int, ...], seed: int = 0) -> Any:
    """Pixels spread over the whole range of ``dtype``, extremes included."""
    rng = np.random.default_rng(seed)
    if dtype.kind == "b":
        return rng.random(shape) > 0.5
    if dtype.kind == "f":
        values = rng.standard_normal(shape) * 1000
        values.flat[:2] = [np.finfo(dtype).min, np.finfo(dtype).max]
        return values.astype(dtype)
    info = np.iinfo(dtype)
    values = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    values.flat[:2] = [info.min, info.max]
    return values


def root_buffer(array: Any) -> Any:
    """The object at the end of an array's ``base`` chain: what its memory belongs to."""
    while isinstance(array, np.ndarray):
        array = array.base
    return array


def raw_message(array: Any, color_order: ColorValue = UNSPECIFIED) -> image_pb2.Image:
    """A raw message built by hand, independently of encode_array."""
    return image_pb2.Image(
        dtype=dtype_of(array.dtype),
        shape=array.shape,
        data=array.tobytes(),
        color_order=color_order,
        encoding=RAW,
    )


# Raw round trips


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("code", DTYPES, ids=DTYPE_IDS)
def test_every_dtype_and_channel_count_round_trips(
    code: DTypeValue, shape: tuple[int, ...]
) -> None:
    array = random_pixels(DTYPES[code], shape)
    message = encode_array(array)
    assert message.dtype == code
    assert tuple(message.shape) == shape
    assert message.encoding == RAW
    assert len(message.data) == math.prod(shape) * DTYPES[code].itemsize
    decoded, color = decode_image(message)
    assert color == UNSPECIFIED
    assert decoded.dtype == DTYPES[code]
    assert decoded.shape == shape
    np.testing.assert_array_equal(decoded, array)


@pytest.mark.parametrize(
    ("shape", "order"),
    [
        (shape, order)
        for shape in SHAPES
        for order in ORDERS_BY_CHANNELS[1 if len(shape) == 2 else shape[2]]
    ],
    ids=str,
)
@pytest.mark.parametrize("code", DTYPES, ids=DTYPE_IDS)
def test_colour_order_travels_with_the_pixels(
    code: DTypeValue, shape: tuple[int, ...], order: ColorValue
) -> None:
    array = random_pixels(DTYPES[code], shape, seed=1)
    decoded, color = decode_image(encode_array(array, order))
    assert color == order
    np.testing.assert_array_equal(decoded, array)


def test_unspecified_encoding_is_raw() -> None:
    array = np.arange(6, dtype=np.int16).reshape(2, 3)
    message = raw_message(array)
    message.encoding = image_pb2.ENCODING_UNSPECIFIED
    decoded, _ = decode_image(message)
    np.testing.assert_array_equal(decoded, array)
    encoded = encode_array(array, encoding=image_pb2.ENCODING_UNSPECIFIED)
    assert encoded.encoding == RAW


@pytest.mark.parametrize("code", DTYPES, ids=DTYPE_IDS)
def test_raw_pixels_decode_to_a_read_only_view_of_the_message_bytes(code: DTypeValue) -> None:
    array = random_pixels(DTYPES[code], (3, 4, 3))
    message = encode_array(array)
    decoded, _ = decode_image(message)
    buffer = root_buffer(decoded)
    assert isinstance(buffer, bytes)
    assert buffer == message.data
    assert not decoded.flags.owndata
    assert np.shares_memory(decoded, np.frombuffer(buffer, dtype=np.uint8))
    assert not decoded.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        decoded[0, 0, 0] = decoded[1, 1, 1]


@pytest.mark.parametrize("code", [code for code, dt in DTYPES.items() if dt.itemsize > 1], ids=str)
def test_big_endian_arrays_are_sent_little_endian(code: DTypeValue) -> None:
    values = random_pixels(DTYPES[code], (3, 4))
    big = values.astype(DTYPES[code].newbyteorder(">"))
    message = encode_array(big)
    assert message.dtype == code
    assert message.data == values.astype(DTYPES[code].newbyteorder("<")).tobytes()
    assert message.data != big.tobytes()
    decoded, _ = decode_image(message)
    np.testing.assert_array_equal(decoded, values)


@pytest.mark.parametrize(
    "view",
    [
        lambda a: a[::2, ::3],
        lambda a: a[1:, :-2, 1],
        lambda a: a.transpose(1, 0, 2),
        lambda a: a[..., ::-1],
        np.asfortranarray,
        lambda a: a[::-1, ::-1, :2],
    ],
    ids=["strided", "channel", "transposed", "reversed-channels", "fortran", "reversed"],
)
def test_non_contiguous_arrays_round_trip(view: Any) -> None:
    array = view(random_pixels(np.dtype(np.float32), (6, 9, 3)))
    assert not array.flags.c_contiguous or array.ndim == 2
    decoded, _ = decode_image(encode_array(array))
    assert decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


# Raw decoding errors


def test_data_shorter_or_longer_than_the_shape_is_rejected() -> None:
    message = raw_message(np.zeros((2, 3), dtype=np.uint16))
    for data in (message.data[:-1], message.data + b"\x00", b""):
        message.data = data
        with pytest.raises(ImageError, match=f"{len(data)} bytes.*needs 12"):
            decode_image(message)


@pytest.mark.parametrize("shape", [(0, 4), (4, 0), (2, 2, 0), (-1, 4), (4, -3, 3)], ids=str)
def test_dimensions_must_be_positive(shape: tuple[int, ...]) -> None:
    message = image_pb2.Image(dtype=image_pb2.D_TYPE_UINT8, shape=shape, data=b"", encoding=RAW)
    with pytest.raises(ImageError, match="not positive"):
        decode_image(message)


@pytest.mark.parametrize("shape", [(), (6,), (1, 1, 2, 3), (1, 1, 1, 1, 6)], ids=str)
def test_shapes_of_other_than_two_or_three_dimensions_are_rejected(
    shape: tuple[int, ...],
) -> None:
    data = bytes(math.prod(shape))
    message = image_pb2.Image(dtype=image_pb2.D_TYPE_UINT8, shape=shape, data=data)
    with pytest.raises(ImageError, match=r"must be \(H, W\) or \(H, W, C\)"):
        decode_image(message)
    with pytest.raises(ImageError, match=r"must be \(H, W\) or \(H, W, C\)"):
        encode_array(np.zeros(shape, dtype=np.uint8))


@pytest.mark.parametrize("dtype", [image_pb2.D_TYPE_UNSPECIFIED, 11, 99])
def test_unknown_dtype_values_are_rejected(dtype: Any) -> None:
    message = image_pb2.Image(dtype=dtype, shape=[2, 2], data=bytes(4))
    with pytest.raises(ImageError, match=f"unknown dtype {dtype}; expected one of D_TYPE_UINT8"):
        decode_image(message)
    with pytest.raises(ImageError, match=f"unknown dtype {dtype}"):
        numpy_dtype(dtype)


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64, np.complex64, np.object_, "U3", "M8[s]"])
def test_numpy_dtypes_without_a_wire_type_cannot_be_encoded(dtype: Any) -> None:
    with pytest.raises(ImageError, match="cannot be sent as an image"):
        encode_array(np.zeros((2, 2), dtype=dtype))


def test_dtype_codes_and_numpy_dtypes_correspond() -> None:
    for code, dtype in DTYPES.items():
        assert numpy_dtype(code) == dtype
        assert dtype_of(dtype) == code
        assert dtype_of(dtype.newbyteorder(">")) == code


@pytest.mark.parametrize("order", [6, 9, 100])
def test_unknown_colour_orders_are_rejected(order: Any) -> None:
    message = image_pb2.Image(dtype=image_pb2.D_TYPE_UINT8, shape=[2, 2, 3], data=bytes(12))
    message.color_order = order
    with pytest.raises(ImageError, match=f"unknown color_order {order}"):
        decode_image(message)
    with pytest.raises(ImageError, match=f"unknown color_order {order}"):
        encode_array(np.zeros((2, 2, 3), dtype=np.uint8), order)


@pytest.mark.parametrize(
    ("order", "shape"),
    [
        (GRAY, (2, 2, 3)),
        (GRAY, (2, 2, 2)),
        (RGB, (2, 2)),
        (RGB, (2, 2, 1)),
        (RGB, (2, 2, 4)),
        (BGR, (2, 2, 4)),
        (RGBA, (2, 2, 3)),
        (BGRA, (2, 2, 5)),
    ],
    ids=str,
)
def test_channel_count_contradicting_the_colour_order_is_rejected(
    order: ColorValue, shape: tuple[int, ...]
) -> None:
    needed = len(LAYOUTS[order])
    channels = 1 if len(shape) == 2 else shape[2]
    pattern = rf"{ORDER_IDS[order]} needs {needed} channel\(s\), .* has {channels}"
    message = image_pb2.Image(
        dtype=image_pb2.D_TYPE_UINT8, shape=shape, data=bytes(math.prod(shape)), color_order=order
    )
    with pytest.raises(ImageError, match=pattern):
        decode_image(message)
    with pytest.raises(ImageError, match=pattern):
        encode_array(np.zeros(shape, dtype=np.uint8), order)


def test_raw_images_over_the_pixel_limit_are_rejected() -> None:
    message = encode_array(np.zeros((100, 50, 3), dtype=np.uint8))
    decoded, _ = decode_image(message, max_pixels=5000)
    assert decoded.shape == (100, 50, 3)
    with pytest.raises(ImageError, match="100x50 pixels exceeds the limit of 4999"):
        decode_image(message, max_pixels=4999)


def test_pixel_limit_is_checked_before_the_data_length() -> None:
    # A huge declared shape with no data must fail on the limit, not by allocating.
    message = image_pb2.Image(dtype=image_pb2.D_TYPE_UINT8, shape=[10**6, 10**6], data=b"")
    with pytest.raises(ImageError, match="exceeds the limit of 1000"):
        decode_image(message, max_pixels=1000)


@pytest.mark.parametrize("encoding", [4, 7, 100])
def test_unknown_encodings_are_rejected(encoding: Any) -> None:
    message = image_pb2.Image(dtype=image_pb2.D_TYPE_UINT8, shape=[1, 1], data=b"\x00")
    message.encoding = encoding
    with pytest.raises(ImageError, match=f"unknown encoding {encoding}"):
        decode_image(message)
    with pytest.raises(ImageError, match=f"unknown encoding {encoding}"):
        encode_array(np.zeros((1, 1), dtype=np.uint8), encoding=encoding)


# PNG and JPEG


def gradient(shape: tuple[int, ...], dtype: Any = np.uint8) -> Any:
    """A smooth image, which JPEG keeps close to the original."""
    height, width = shape[:2]
    top = np.iinfo(dtype).max
    rows = np.linspace(0, top, height)[:, None]
    cols = np.linspace(0, top, width)[None, :]
    plane = (rows + cols) / 2
    if len(shape) == 2:
        return plane.astype(dtype)
    planes = [plane, top - plane, np.full_like(plane, top / 3), rows * np.ones_like(cols)]
    return np.stack([planes[i % 4] for i in range(shape[2])], axis=-1).astype(dtype)


@pytest.mark.parametrize(
    ("shape", "dtype", "order", "mode", "decoded_shape"),
    [
        ((7, 9), np.uint8, UNSPECIFIED, "L", (7, 9)),
        ((7, 9, 1), np.uint8, GRAY, "L", (7, 9)),
        ((7, 9), np.uint16, GRAY, "I;16", (7, 9)),
        ((7, 9, 3), np.uint8, RGB, "RGB", (7, 9, 3)),
        ((7, 9, 4), np.uint8, RGBA, "RGBA", (7, 9, 4)),
    ],
    ids=["gray", "gray-3d", "gray16", "rgb", "rgba"],
)
def test_png_round_trips_exactly(
    shape: tuple[int, ...],
    dtype: Any,
    order: ColorValue,
    mode: str,
    decoded_shape: tuple[int, ...],
) -> None:
    array = random_pixels(np.dtype(dtype), shape)
    message = encode_array(array, order, encoding=PNG)
    assert message.encoding == PNG
    assert message.data.startswith(b"\x89PNG\r\n\x1a\n")
    with PILImage.open(io.BytesIO(message.data)) as opened:
        assert opened.format == "PNG"
        assert opened.mode == mode
        assert opened.size == (shape[1], shape[0])
    decoded, color = decode_image(message)
    expected_color = GRAY if len(decoded_shape) == 2 else order
    assert color == expected_color
    assert message.color_order == expected_color
    assert decoded.dtype == np.dtype(dtype)
    assert decoded.shape == decoded_shape
    np.testing.assert_array_equal(decoded, array.reshape(decoded_shape))


@pytest.mark.parametrize(
    ("source", "target", "reorder"),
    [(BGR, RGB, [2, 1, 0]), (BGRA, RGBA, [2, 1, 0, 3])],
    ids=["bgr", "bgra"],
)
def test_png_stores_bgr_pixels_as_rgb(
    source: ColorValue, target: ColorValue, reorder: list[int]
) -> None:
    array = random_pixels(np.dtype(np.uint8), (5, 6, len(reorder)))
    message = encode_array(array, source, encoding=PNG)
    assert message.color_order == target
    decoded, color = decode_image(message)
    assert color == target
    np.testing.assert_array_equal(decoded, array[..., reorder])
    with PILImage.open(io.BytesIO(message.data)) as opened:
        np.testing.assert_array_equal(np.asarray(opened), array[..., reorder])


@pytest.mark.parametrize(
    ("shape", "order", "expected_color", "reorder"),
    [
        ((32, 40), UNSPECIFIED, GRAY, None),
        ((32, 40, 3), RGB, RGB, [0, 1, 2]),
        ((32, 40, 3), BGR, RGB, [2, 1, 0]),
    ],
    ids=["gray", "rgb", "bgr"],
)
def test_jpeg_round_trips_approximately(
    shape: tuple[int, ...], order: ColorValue, expected_color: ColorValue, reorder: list[int] | None
) -> None:
    array = gradient(shape)
    message = encode_array(array, order, encoding=JPEG, quality=95)
    assert message.encoding == JPEG
    assert message.data.startswith(b"\xff\xd8")
    decoded, color = decode_image(message)
    assert color == expected_color
    expected = array if reorder is None else array[..., reorder]
    assert decoded.shape == expected.shape
    assert decoded.dtype == np.uint8
    error = np.abs(decoded.astype(int) - expected.astype(int))
    assert error.mean() < 2
    assert error.max() < 16


def test_jpeg_quality_trades_size_for_fidelity() -> None:
    array = random_pixels(np.dtype(np.uint8), (64, 64, 3))
    low = encode_array(array, RGB, encoding=JPEG, quality=10)
    high = encode_array(array, RGB, encoding=JPEG, quality=95)
    assert len(low.data) < len(high.data)

    def error(message: image_pb2.Image) -> float:
        return float(np.abs(decode_image(message)[0].astype(int) - array.astype(int)).mean())

    assert error(high) < error(low)


@pytest.mark.parametrize(
    ("array", "order", "encoding", "pattern"),
    [
        (np.zeros((4, 4, 3), np.uint8), UNSPECIFIED, PNG, "PNG of 3 channels needs an RGB"),
        (np.zeros((4, 4, 2), np.uint8), UNSPECIFIED, PNG, "PNG of 2 channels needs an RGB"),
        (np.zeros((4, 4, 5), np.uint8), UNSPECIFIED, JPEG, "JPEG of 5 channels needs an RGB"),
        (np.zeros((4, 4), np.float32), UNSPECIFIED, PNG, "PNG cannot hold float32"),
        (np.zeros((4, 4), np.int16), GRAY, PNG, "PNG cannot hold int16"),
        (np.zeros((4, 4), np.bool_), GRAY, PNG, "PNG cannot hold bool"),
        (np.zeros((4, 4, 3), np.uint16), RGB, PNG, "PNG cannot hold uint16"),
        (np.zeros((4, 4), np.uint16), GRAY, JPEG, "JPEG cannot hold uint16"),
        (np.zeros((4, 4, 4), np.uint8), RGBA, JPEG, "JPEG cannot hold an alpha channel"),
        (np.zeros((4, 4, 4), np.uint8), BGRA, JPEG, "JPEG cannot hold an alpha channel"),
    ],
    ids=[
        "png-3-unspecified",
        "png-2-channels",
        "jpeg-5-channels",
        "png-float",
        "png-int16",
        "png-bool",
        "png-rgb16",
        "jpeg-16bit",
        "jpeg-rgba",
        "jpeg-bgra",
    ],
)
def test_arrays_a_file_format_cannot_hold_are_rejected(
    array: Any, order: ColorValue, encoding: EncodingValue, pattern: str
) -> None:
    with pytest.raises(ImageError, match=pattern):
        encode_array(array, order, encoding=encoding)


def test_encoded_images_over_the_pixel_limit_are_rejected() -> None:
    message = encode_array(np.zeros((40, 25), dtype=np.uint8), encoding=PNG)
    decoded, _ = decode_image(message, max_pixels=1000)
    assert decoded.shape == (40, 25)
    with pytest.raises(ImageError, match="PNG image of 40x25 pixels exceeds the limit of 999"):
        decode_image(message, max_pixels=999)
    jpeg = encode_array(np.zeros((40, 25), dtype=np.uint8), encoding=JPEG)
    with pytest.raises(ImageError, match="JPEG image of 40x25 pixels exceeds the limit of 999"):
        decode_image(jpeg, max_pixels=999)


def encoded(encoding: EncodingValue) -> bytes:
    array = random_pixels(np.dtype(np.uint8), (32, 48, 3))
    return encode_array(array, RGB, encoding=encoding).data


def flip_bytes(data: bytes, start: int, stop: int) -> bytes:
    return data[:start] + bytes(byte ^ 0xFF for byte in data[start:stop]) + data[stop:]


@pytest.mark.parametrize(
    ("make_data", "encoding"),
    [
        (lambda: encoded(PNG)[: len(encoded(PNG)) // 2], PNG),
        (lambda: encoded(PNG)[:8], PNG),
        (lambda: flip_bytes(encoded(PNG), 100, 140), PNG),
        (lambda: encoded(JPEG)[: len(encoded(JPEG)) // 2], JPEG),
        (lambda: encoded(JPEG)[:2], JPEG),
        (lambda: b"hello, not an image", PNG),
        (lambda: b"", JPEG),
        (lambda: bytes(range(256)) * 4, JPEG),
    ],
    ids=[
        "png-truncated",
        "png-signature-only",
        "png-corrupt",
        "jpeg-truncated",
        "jpeg-marker-only",
        "text",
        "empty",
        "noise",
    ],
)
def test_corrupt_or_foreign_files_raise_image_error(
    make_data: Any, encoding: EncodingValue
) -> None:
    message = image_pb2.Image(data=make_data(), encoding=encoding)
    with pytest.raises(ImageError, match=f"cannot decode {_format(encoding)} image"):
        decode_image(message)


def _format(encoding: EncodingValue) -> str:
    return {PNG: "PNG", JPEG: "JPEG"}[encoding]


def pil_file(mode: str, fmt: str, size: tuple[int, int] = (6, 4), **options: Any) -> bytes:
    buffer = io.BytesIO()
    PILImage.new(mode, size, color=options.pop("color", None)).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def palette_png() -> bytes:
    image = PILImage.new("P", (6, 4), color=1)
    image.putpalette([0, 0, 0, 200, 100, 50] + [0] * (256 * 3 - 6))
    image.putpixel((0, 0), 0)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("make_data", "encoding", "color", "corner", "rest"),
    [
        (palette_png, PNG, RGB, [0, 0, 0], [200, 100, 50]),
        (lambda: pil_file("LA", "PNG", color=(9, 200)), PNG, RGBA, [9, 9, 9, 200], None),
        (lambda: pil_file("CMYK", "JPEG", color=(0, 0, 0, 0)), JPEG, RGB, None, None),
    ],
    ids=["palette", "gray-alpha", "cmyk-jpeg"],
)
def test_other_modes_in_files_decode_to_rgb_or_rgba(
    make_data: Any,
    encoding: EncodingValue,
    color: ColorValue,
    corner: list[int] | None,
    rest: list[int] | None,
) -> None:
    decoded, decoded_color = decode_image(image_pb2.Image(data=make_data(), encoding=encoding))
    assert decoded_color == color
    assert decoded.shape == (4, 6, len(LAYOUTS[color]))
    assert decoded.dtype == np.uint8
    if corner is not None:
        np.testing.assert_array_equal(decoded[0, 0], corner)
    if rest is not None:
        np.testing.assert_array_equal(decoded[1:, 1:], np.broadcast_to(rest, (3, 5, 3)))


def test_encode_file_detects_the_format_by_its_magic_bytes() -> None:
    png = encoded(PNG)
    jpeg = encoded(JPEG)
    for data, encoding in ((png, PNG), (jpeg, JPEG)):
        message = encode_file(data)
        assert message.encoding == encoding
        assert message.data == data
        assert message.dtype == image_pb2.D_TYPE_UNSPECIFIED
        assert list(message.shape) == []
        decoded, color = decode_image(message)
        assert decoded.shape == (32, 48, 3)
        assert color == RGB


@pytest.mark.parametrize(
    "data",
    [b"GIF89a" + bytes(10), b"BM" + bytes(60), b"\x89PNG", b"\xff", b"\x00\xff\xd8"],
    ids=["gif", "bmp", "short-png", "short-jpeg", "late-magic"],
)
def test_encode_file_rejects_bytes_that_are_neither_png_nor_jpeg(data: bytes) -> None:
    with pytest.raises(ImageError, match="neither a PNG nor a JPEG"):
        encode_file(data)


def test_encode_file_says_no_bytes_are_no_image() -> None:
    with pytest.raises(ImageError, match="an empty file is no image"):
        encode_file(b"")


def test_encode_file_with_a_bmp_file_is_rejected() -> None:
    with pytest.raises(ImageError, match="neither a PNG nor a JPEG"):
        encode_file(pil_file("RGB", "BMP"))


# Colour conversion


# Named pixels as (R, G, B, A), uint8.
PIXELS = {
    "red": (255, 0, 0, 255),
    "green": (0, 255, 0, 128),
    "blue": (0, 0, 255, 0),
    "white": (255, 255, 255, 255),
    "black": (0, 0, 0, 7),
    "mixed": (10, 100, 200, 50),
}
# ITU-R BT.601 luma of each, rounded: 0.299 R + 0.587 G + 0.114 B.
LUMA = {"red": 76, "green": 150, "blue": 29, "white": 255, "black": 0, "mixed": 84}


def pixels_in(order: ColorValue) -> Any:
    """The named pixels as a 2x3 image in ``order``; gray sources use the luma."""
    layout = LAYOUTS[order]
    rows = []
    for name, (red, green, blue, alpha) in PIXELS.items():
        if layout == "L":
            rows.append([LUMA[name]])
        else:
            by_letter = {"R": red, "G": green, "B": blue, "A": alpha}
            rows.append([by_letter[letter] for letter in layout])
    array = np.array(rows, dtype=np.uint8).reshape(2, 3, len(layout))
    return array[..., 0] if layout == "L" else array


def expected_in(source: ColorValue, target: ColorValue) -> Any:
    """What ``pixels_in(source)`` should look like in ``target``, written out channel by channel."""
    src, dst = LAYOUTS[source], LAYOUTS[target]
    rows = []
    for name, (red, green, blue, alpha) in PIXELS.items():
        if dst == "L":
            rows.append([LUMA[name]])
            continue
        rgb = (LUMA[name],) * 3 if src == "L" else (red, green, blue)
        kept_alpha = alpha if "A" in src else 255
        by_letter = {"R": rgb[0], "G": rgb[1], "B": rgb[2], "A": kept_alpha}
        rows.append([by_letter[letter] for letter in dst])
    array = np.array(rows, dtype=np.uint8).reshape(2, 3, len(dst))
    return array[..., 0] if dst == "L" else array


def test_bt601_luma_of_pure_colours() -> None:
    array = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], np.uint8)
    gray = convert_color(array, RGB, GRAY)
    np.testing.assert_array_equal(gray, [[76, 150, 29, 255]])
    np.testing.assert_array_equal(convert_color(array[..., ::-1], BGR, GRAY), gray)


@pytest.mark.parametrize("target", LAYOUTS, ids=ORDER_IDS.get)
@pytest.mark.parametrize("source", LAYOUTS, ids=ORDER_IDS.get)
def test_convert_color_between_every_pair(source: ColorValue, target: ColorValue) -> None:
    array = pixels_in(source)
    converted = convert_color(array, source, target)
    expected = expected_in(source, target)
    assert converted.dtype == np.uint8
    assert converted.shape == expected.shape
    np.testing.assert_array_equal(converted, expected)
    if source == target:
        assert converted is array
    else:
        assert not np.shares_memory(converted, array)


@pytest.mark.parametrize("order", [*LAYOUTS, UNSPECIFIED])
def test_unspecified_order_on_either_side_leaves_the_array_alone(order: ColorValue) -> None:
    array = np.zeros((2, 2, 3), dtype=np.uint8)
    assert convert_color(array, UNSPECIFIED, order) is array
    assert convert_color(array, order, UNSPECIFIED) is array


def test_gray_of_shape_h_w_1_converts_like_h_w() -> None:
    gray = np.array([[10, 20], [30, 40]], dtype=np.uint8)
    rgb = convert_color(gray[..., None], GRAY, RGB)
    np.testing.assert_array_equal(rgb, np.repeat(gray[..., None], 3, axis=2))
    np.testing.assert_array_equal(convert_color(gray, GRAY, RGB), rgb)


@pytest.mark.parametrize("code", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("target", [RGBA, BGRA])
def test_alpha_added_is_the_dtype_maximum(code: DTypeValue, target: ColorValue) -> None:
    dtype = DTYPES[code]
    opaque = np.iinfo(dtype).max if dtype.kind in "iu" else (True if dtype.kind == "b" else 1.0)
    colour = random_pixels(dtype, (3, 2, 3))
    for source, array in ((RGB, colour), (BGR, colour), (GRAY, colour[..., 0])):
        converted = convert_color(array, source, target)
        assert converted.dtype == dtype
        assert converted.shape == (3, 2, 4)
        assert (converted[..., 3] == opaque).all()


@pytest.mark.parametrize("code", DTYPES, ids=DTYPE_IDS)
def test_colour_channels_keep_their_values_in_every_dtype(code: DTypeValue) -> None:
    rgb = random_pixels(DTYPES[code], (3, 4, 3))
    bgra = convert_color(rgb, RGB, BGRA)
    np.testing.assert_array_equal(bgra[..., :3], rgb[..., ::-1])
    np.testing.assert_array_equal(convert_color(bgra, BGRA, RGB), rgb)


def test_gray_of_float_pixels_is_not_rounded() -> None:
    array = np.array([[[1.0, 0.0, 0.0], [0.5, 0.5, 0.5]]], dtype=np.float32)
    gray = convert_color(array, RGB, GRAY)
    assert gray.dtype == np.float32
    np.testing.assert_allclose(gray, [[0.299, 0.5]], rtol=1e-6)


# JSON


def test_to_json_turns_numpy_values_into_plain_json() -> None:
    value = {
        "count": np.int64(3),
        "score": np.float32(0.5),
        "flag": np.bool_(True),
        "boxes": np.array([[1, 2], [3, 4]], dtype=np.int32),
        "nested": [{"mean": np.float64(1.25)}, (np.uint8(7), "text")],
        "tags": {"b", "a", "c"},
        "ids": frozenset({np.int16(2), np.int16(1)}),
        "empty": np.zeros((0,), dtype=np.float32),
        "none": None,
    }
    text = to_json(value)
    assert " " not in text
    assert from_json(text) == {
        "count": 3,
        "score": 0.5,
        "flag": True,
        "boxes": [[1, 2], [3, 4]],
        "nested": [{"mean": 1.25}, [7, "text"]],
        "tags": ["a", "b", "c"],
        "ids": [1, 2],
        "empty": [],
        "none": None,
    }


def test_to_json_accepts_any_mapping() -> None:
    from types import MappingProxyType  # noqa: PLC0415

    assert from_json(to_json({"outer": MappingProxyType({"x": np.int8(-1)})})) == {
        "outer": {"x": -1}
    }


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        float("inf"),
        np.float32("nan"),
        np.float64("-inf"),
        {"mean": np.array([1.0, np.nan])},
        [1, [2, {"x": np.inf}]],
    ],
    ids=["nan", "inf", "np-nan", "np-inf", "array-nan", "nested-inf"],
)
def test_to_json_rejects_nan_and_infinity(value: Any) -> None:
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        to_json(value)


class Opaque:
    pass


@pytest.mark.parametrize(
    "value",
    [Opaque(), {"model": Opaque()}, [1, object()], b"bytes", {"z": 1j}],
    ids=["object", "nested-object", "nested-plain-object", "bytes", "complex"],
)
def test_to_json_rejects_objects(value: Any) -> None:
    with pytest.raises(TypeError, match="is not JSON serializable"):
        to_json(value)


@pytest.mark.parametrize(
    "value", [0, -1.5, "text", [1, "a", None], {"a": {"b": [True, False]}}, None]
)
def test_json_round_trips_plain_values(value: Any) -> None:
    assert from_json(to_json(value)) == value


def test_from_json_of_empty_text_is_none() -> None:
    assert from_json("") is None
    assert from_json("null") is None
    assert from_json("[]") == []
