"""Edge cases of the codec and image inputs: widest integers, byte order, 16-bit gray."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

import tms_client
from tms.v1 import image_pb2
from tms_client.images import to_message
from tms_client.protocol.codec import decode_image, encode_array
from tms_client.protocol.colors import convert_color


# convert_color: luma of the widest integer types neither overflows nor loses precision.
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.int32, np.int64])
def test_white_stays_white_in_gray_for_every_integer_dtype(dtype) -> None:
    top = np.iinfo(dtype).max
    white = np.full((2, 2, 3), top, dtype=dtype)
    gray = convert_color(white, image_pb2.COLOR_ORDER_RGB, image_pb2.COLOR_ORDER_GRAY)
    assert gray.dtype == np.dtype(dtype)
    # float64 cannot hold int64's top exactly; near it (and not wrapped round) is right.
    np.testing.assert_allclose(gray.astype(np.float64), float(top), rtol=1e-15)


def test_gray_pixels_of_int32_keep_their_value() -> None:
    value = 2**30 + 1  # needs 31 bits: float32 arithmetic rounds it
    gray = np.full((1, 1, 3), value, dtype=np.int32)
    assert convert_color(gray, image_pb2.COLOR_ORDER_RGB, image_pb2.COLOR_ORDER_GRAY)[0, 0] == value


# encode_array: byte order does not matter for PNG.
def test_big_endian_uint16_encodes_as_png() -> None:
    values = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    message = encode_array(values.astype(">u2"), encoding=image_pb2.ENCODING_PNG)
    decoded, _ = decode_image(message)
    np.testing.assert_array_equal(decoded, values)


# to_message: 16-bit gray PIL images and files keep their values.
def test_16_bit_gray_pil_images_keep_their_values() -> None:
    values = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    image = PILImage.fromarray(values)
    assert image.mode == "I;16"
    message = to_message(image)
    assert message.color_order == image_pb2.COLOR_ORDER_GRAY
    decoded, _ = decode_image(message)
    np.testing.assert_array_equal(decoded, values)


def test_16_bit_gray_tiff_files_keep_their_values(tmp_path: Path) -> None:
    values = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    path = tmp_path / "depth.tiff"
    PILImage.fromarray(values).save(path)
    decoded, _ = decode_image(to_message(path))
    np.testing.assert_array_equal(decoded, values)


# Every public name of tms_client is exported.
def test_every_public_name_of_tms_client_is_in_all() -> None:
    public = {
        name
        for name, value in vars(tms_client).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public - set(tms_client.__all__) == set()
