"""Turning what users hold (numpy, PIL, paths, bytes) into image messages, and back."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage

from tms.v1 import image_pb2
from tms_client.images import color_order, from_message, to_message
from tms_client.protocol.codec import EncodingValue, ImageError, decode_image, encode_array
from tms_client.protocol.colors import ColorValue

GRAY = image_pb2.COLOR_ORDER_GRAY
RGB = image_pb2.COLOR_ORDER_RGB
BGR = image_pb2.COLOR_ORDER_BGR
RGBA = image_pb2.COLOR_ORDER_RGBA
BGRA = image_pb2.COLOR_ORDER_BGRA
UNSPECIFIED = image_pb2.COLOR_ORDER_UNSPECIFIED
RAW = image_pb2.ENCODING_RAW
PNG = image_pb2.ENCODING_PNG
JPEG = image_pb2.ENCODING_JPEG


def pixels(shape: tuple[int, ...], dtype: Any = np.uint8, seed: int = 0) -> Any:
    return np.random.default_rng(seed).integers(0, 256, size=shape).astype(dtype)


def file_bytes(image: Any, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


# numpy arrays


@pytest.mark.parametrize(
    ("shape", "color", "expected"),
    [
        ((4, 5, 3), "bgr", BGR),
        ((4, 5, 3), "rgb", RGB),
        ((4, 5, 3), "RGB", RGB),
        ((4, 5, 3), "bgra", BGR),
        ((4, 5, 3), None, UNSPECIFIED),
        ((4, 5, 4), "bgr", BGRA),
        ((4, 5, 4), "rgb", RGBA),
        ((4, 5, 4), "rgba", RGBA),
        ((4, 5, 4), "BGRA", BGRA),
        ((4, 5, 4), None, UNSPECIFIED),
        ((4, 5), "bgr", GRAY),
        ((4, 5), None, GRAY),
        ((4, 5, 1), "rgb", GRAY),
        ((4, 5, 2), "bgr", UNSPECIFIED),
        ((4, 5, 5), "rgb", UNSPECIFIED),
    ],
    ids=str,
)
def test_numpy_arrays_get_the_colour_order_of_their_channels(
    shape: tuple[int, ...], color: str | None, expected: ColorValue
) -> None:
    array = pixels(shape)
    message = to_message(array, color=color)
    assert message.color_order == expected
    assert message.encoding == RAW
    assert tuple(message.shape) == shape
    decoded, order = decode_image(message)
    assert order == expected
    np.testing.assert_array_equal(decoded, array)


def test_numpy_arrays_are_bgr_by_default() -> None:
    assert to_message(pixels((2, 2, 3))).color_order == BGR
    assert to_message(pixels((2, 2, 4))).color_order == BGRA


@pytest.mark.parametrize("dtype", [np.float32, np.uint16, np.int64, np.bool_])
def test_numpy_arrays_keep_their_dtype(dtype: Any) -> None:
    array = pixels((3, 2, 3), dtype=dtype)
    decoded, _ = decode_image(to_message(array, color="rgb"))
    assert decoded.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(decoded, array)


def test_a_colour_contradicting_the_channels_is_an_image_error() -> None:
    with pytest.raises(ImageError, match="COLOR_ORDER_GRAY needs 1 channel"):
        to_message(pixels((2, 2, 3)), color="gray")
    with pytest.raises(ImageError, match=r"must be \(H, W\) or \(H, W, C\)"):
        to_message(pixels((2, 2, 3, 1)))


def test_an_unknown_colour_name_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown colour order 'hsv'"):
        to_message(pixels((2, 2, 3)), color="hsv")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (None, UNSPECIFIED),
        ("gray", GRAY),
        ("GRAY", GRAY),
        ("rgb", RGB),
        ("Bgr", BGR),
        ("rgba", RGBA),
        ("bgra", BGRA),
    ],
)
def test_color_order_names(name: str | None, expected: ColorValue) -> None:
    assert color_order(name) == expected


@pytest.mark.parametrize("name", ["", "grey", "rgbx", "yuv"])
def test_unknown_color_order_names(name: str) -> None:
    with pytest.raises(ValueError, match=f"unknown colour order {name!r}"):
        color_order(name)


def test_an_image_message_is_passed_through() -> None:
    message = encode_array(pixels((2, 2)))
    assert to_message(message) is message


# PIL images


@pytest.mark.parametrize(
    ("mode", "expected_color", "channels"),
    [("L", GRAY, None), ("RGB", RGB, 3), ("RGBA", RGBA, 4)],
)
def test_pil_images_are_sent_raw_in_their_own_colour_order(
    mode: str, expected_color: ColorValue, channels: int | None
) -> None:
    shape = (4, 5) if channels is None else (4, 5, channels)
    array = pixels(shape)
    image = PILImage.fromarray(array)
    assert image.mode == mode
    message = to_message(image, color="bgr")  # ``color`` is for numpy arrays only
    assert message.encoding == RAW
    assert message.color_order == expected_color
    decoded, _ = decode_image(message)
    np.testing.assert_array_equal(decoded, array)


def test_palette_images_are_sent_as_rgb() -> None:
    image = PILImage.new("P", (3, 2), color=1)
    image.putpalette([0, 0, 0, 250, 120, 10] + [0] * (256 * 3 - 6))
    image.putpixel((2, 1), 0)
    message = to_message(image)
    assert message.color_order == RGB
    decoded, _ = decode_image(message)
    expected = np.array([[[250, 120, 10]] * 3, [[250, 120, 10]] * 2 + [[0, 0, 0]]], np.uint8)
    np.testing.assert_array_equal(decoded, expected)


def test_gray_with_alpha_is_sent_as_rgba() -> None:
    image = PILImage.new("LA", (3, 2), color=(40, 90))
    message = to_message(image)
    assert message.color_order == RGBA
    decoded, _ = decode_image(message)
    np.testing.assert_array_equal(decoded, np.broadcast_to([40, 40, 40, 90], (2, 3, 4)))


@pytest.mark.parametrize("kind", [int, list, dict, object, float])
def test_unsupported_objects_are_a_type_error(kind: type) -> None:
    with pytest.raises(TypeError, match=f"cannot send {kind.__name__} as an image"):
        to_message(kind())


def test_objects_with_a_mode_but_no_bands_are_a_type_error() -> None:
    class ModeOnly:
        mode = "RGB"

    with pytest.raises(TypeError, match="cannot send ModeOnly as an image"):
        to_message(ModeOnly())


# Files and bytes


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_png_and_jpeg_files_are_sent_as_they_are(tmp_path: Path, fmt: str) -> None:
    data = file_bytes(PILImage.fromarray(pixels((6, 7, 3))), fmt)
    path = tmp_path / f"picture.{fmt.lower()}"
    path.write_bytes(data)
    expected = {"PNG": PNG, "JPEG": JPEG}[fmt]
    for given in (path, str(path)):
        message = to_message(given)
        assert message.encoding == expected
        assert message.data == data
    for given_bytes in (data, bytearray(data), memoryview(data)):
        message = to_message(given_bytes)
        assert message.encoding == expected
        assert message.data == data


def test_file_format_is_found_by_content_not_by_name(tmp_path: Path) -> None:
    data = file_bytes(PILImage.fromarray(pixels((6, 7))), "PNG")
    path = tmp_path / "misnamed.jpg"
    path.write_bytes(data)
    assert to_message(path).encoding == PNG


@pytest.mark.parametrize(
    ("fmt", "mode", "expected_color"),
    [("BMP", "RGB", RGB), ("TIFF", "RGB", RGB), ("TIFF", "RGBA", RGBA), ("BMP", "L", GRAY)],
)
def test_other_files_are_decoded_by_pillow_and_sent_raw(
    tmp_path: Path, fmt: str, mode: str, expected_color: ColorValue
) -> None:
    channels = {"RGB": (3,), "RGBA": (4,), "L": ()}[mode]
    array = pixels((5, 8, *channels), seed=3)
    path = tmp_path / f"picture.{fmt.lower()}"
    PILImage.fromarray(array).save(path, format=fmt)
    message = to_message(path)
    assert message.encoding == RAW
    assert message.color_order == expected_color
    decoded, _ = decode_image(message)
    np.testing.assert_array_equal(decoded, array)


def test_a_file_that_is_no_image_is_an_image_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(ImageError, match=r"cannot read .*notes\.png as an image"):
        to_message(path)


def test_an_empty_file_says_it_is_empty(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.png as an image: the file is empty"):
        to_message(empty)


def test_a_missing_file_is_a_file_not_found_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        to_message(tmp_path / "missing.png")


def test_bytes_that_are_neither_png_nor_jpeg_are_an_image_error() -> None:
    with pytest.raises(ImageError, match="neither a PNG nor a JPEG"):
        to_message(b"BM not a png")


# Output images


def test_from_message_returns_a_writable_copy_of_raw_pixels() -> None:
    array = pixels((3, 4, 3))
    message = encode_array(array, RGB)
    result = from_message(message)
    assert result.flags.writeable
    np.testing.assert_array_equal(result, array)
    result[0, 0, 0] = 255 - result[0, 0, 0]
    decoded, _ = decode_image(message)
    np.testing.assert_array_equal(decoded, array)


@pytest.mark.parametrize("encoding", [PNG, JPEG])
def test_from_message_returns_writable_arrays_for_files(encoding: EncodingValue) -> None:
    array = np.full((8, 8, 3), 100, dtype=np.uint8)
    result = from_message(encode_array(array, RGB, encoding=encoding))
    assert result.flags.writeable
    assert result.shape == (8, 8, 3)
    assert np.abs(result.astype(int) - 100).max() <= 2


@pytest.mark.parametrize(
    ("source", "color", "convert"),
    [
        (RGB, "bgr", lambda a: a[..., ::-1]),
        (BGR, "rgb", lambda a: a[..., ::-1]),
        (RGB, "rgb", lambda a: a),
        (RGB, None, lambda a: a),
        (BGR, "bgra", lambda a: np.dstack([a, np.full(a.shape[:2], 255, np.uint8)])),
        (RGB, "gray", lambda a: np.rint(a @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)),
    ],
    ids=["rgb-to-bgr", "bgr-to-rgb", "same", "none", "bgr-to-bgra", "rgb-to-gray"],
)
def test_from_message_converts_to_the_colour_asked_for(
    source: ColorValue, color: str | None, convert: Any
) -> None:
    array = pixels((3, 4, 3), seed=5)
    result = from_message(encode_array(array, source), color=color)
    assert result.flags.writeable
    np.testing.assert_array_equal(result, convert(array))


def test_from_message_leaves_unspecified_colour_alone() -> None:
    array = pixels((3, 4, 3))
    result = from_message(encode_array(array), color="bgr")
    np.testing.assert_array_equal(result, array)


def test_from_message_converts_png_output_from_rgb() -> None:
    array = pixels((3, 4, 3))
    message = encode_array(array, RGB, encoding=PNG)
    np.testing.assert_array_equal(from_message(message, color="bgr"), array[..., ::-1])
