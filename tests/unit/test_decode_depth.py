"""PNG/JPEG files decode at their own bit depth and with all their channels, or not at all."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image as PILImage

from tms.v1 import image_pb2
from tms_client.protocol.codec import EncodingValue, decode_image
from tms_client.protocol.colors import ColorValue

GRAY = image_pb2.COLOR_ORDER_GRAY
RGB = image_pb2.COLOR_ORDER_RGB
RGBA = image_pb2.COLOR_ORDER_RGBA
PNG = image_pb2.ENCODING_PNG
JPEG = image_pb2.ENCODING_JPEG

# PNG colour types (IHDR byte 25) by channel count, and Adam7's passes as (x, y, dx, dy).
COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}
ADAM7 = [
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
]


def png16(pixels: npt.NDArray[np.uint16], *, interlaced: bool = False) -> bytes:
    """A 16-bit PNG of ``pixels`` (H, W) or (H, W, C), by hand: Pillow writes none in colour.

    Every row has the Sub filter, which adds the byte one pixel back: a decoder that takes the
    wrong pixel size gets wrong samples.
    """
    height, width = pixels.shape[:2]
    samples = pixels.astype(">u2").reshape(height, width, -1)
    pixel_size = samples.shape[2] * 2
    passes = [samples[y::dy, x::dx] for x, y, dx, dy in ADAM7] if interlaced else [samples]
    rows = b""
    for image in passes:
        for row in image:
            raw = np.frombuffer(row.tobytes(), np.uint8)
            filtered = raw.copy()
            filtered[pixel_size:] = raw[pixel_size:] - raw[:-pixel_size]
            rows += b"\x01" + filtered.tobytes()
    header = struct.pack(
        ">IIBBBBB", width, height, 16, COLOUR_TYPES[samples.shape[2]], 0, 0, int(interlaced)
    )
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows))
        + _chunk(b"IEND", b"")
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def pil_file(image: Any, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def decode(data: bytes, encoding: EncodingValue = PNG) -> tuple[npt.NDArray[Any], ColorValue]:
    return decode_image(image_pb2.Image(data=data, encoding=encoding))


def samples(shape: tuple[int, ...]) -> npt.NDArray[np.uint16]:
    return np.random.default_rng(7).integers(0, 1 << 16, shape, dtype=np.uint16)


@pytest.mark.parametrize("interlaced", [False, True], ids=["plain", "interlaced"])
@pytest.mark.parametrize(("channels", "color"), [(3, RGB), (4, RGBA)], ids=["rgb", "rgba"])
def test_16_bit_colour_png_keeps_every_sample(
    channels: int, color: ColorValue, interlaced: bool
) -> None:
    pixels = samples((13, 11, channels))
    pixels[0, 0] = [0x1234, 0x5678, 0x9ABC, 0xDEF0][:channels]
    decoded, decoded_color = decode(png16(pixels, interlaced=interlaced))
    assert decoded_color == color
    assert decoded.dtype == np.uint16
    assert decoded.shape == (13, 11, channels)
    assert decoded[0, 0].tolist() == [0x1234, 0x5678, 0x9ABC, 0xDEF0][:channels]
    np.testing.assert_array_equal(decoded, pixels)


@pytest.mark.parametrize("interlaced", [False, True], ids=["plain", "interlaced"])
def test_16_bit_gray_alpha_png_becomes_rgba_uint16(interlaced: bool) -> None:
    pixels = samples((5, 9, 2))
    decoded, color = decode(png16(pixels, interlaced=interlaced))
    assert color == RGBA
    assert decoded.dtype == np.uint16
    assert decoded.shape == (5, 9, 4)
    np.testing.assert_array_equal(decoded, pixels[..., [0, 0, 0, 1]])


def test_palette_png_with_transparency_becomes_rgba() -> None:
    image = PILImage.new("P", (6, 4), color=1)
    image.putpalette([10, 20, 30, 200, 100, 50, 7, 8, 9])
    image.putpixel((0, 0), 0)
    image.putpixel((5, 3), 2)
    decoded, color = decode(pil_file(image, "PNG", transparency=bytes([0, 128, 255])))
    assert color == RGBA
    assert decoded.dtype == np.uint8
    assert decoded.shape == (4, 6, 4)
    assert decoded[0, 0].tolist() == [10, 20, 30, 0]
    assert decoded[1, 1].tolist() == [200, 100, 50, 128]
    assert decoded[3, 5].tolist() == [7, 8, 9, 255]


def test_bilevel_png_stays_one_channel_of_0_and_255() -> None:
    image = PILImage.new("1", (6, 4), color=0)
    image.putpixel((1, 2), 1)
    decoded, color = decode(pil_file(image, "PNG"))
    assert color == GRAY
    assert decoded.dtype == np.uint8
    assert decoded.shape == (4, 6)
    expected = np.zeros((4, 6), np.uint8)
    expected[2, 1] = 255
    np.testing.assert_array_equal(decoded, expected)


# What decoded right before must still: these pass on the old code too.


@pytest.mark.parametrize("interlaced", [False, True], ids=["plain", "interlaced"])
def test_16_bit_gray_png_stays_uint16(interlaced: bool) -> None:
    pixels = samples((6, 5))
    decoded, color = decode(png16(pixels, interlaced=interlaced))
    assert color == GRAY
    assert decoded.dtype == np.uint16
    assert decoded.shape == (6, 5)
    np.testing.assert_array_equal(decoded, pixels)


def test_8_bit_rgb_png_decodes_as_before() -> None:
    pixels = samples((4, 6, 3)).astype(np.uint8)
    decoded, color = decode(pil_file(PILImage.fromarray(pixels), "PNG"))
    assert color == RGB
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, pixels)


def test_jpeg_decodes_as_before() -> None:
    pixels = np.full((8, 8, 3), [250, 10, 10], np.uint8)
    decoded, color = decode(pil_file(PILImage.fromarray(pixels), "JPEG", quality=95), JPEG)
    assert color == RGB
    assert decoded.dtype == np.uint8
    assert decoded.shape == (8, 8, 3)
    assert np.abs(decoded.astype(int) - pixels).max() <= 8
