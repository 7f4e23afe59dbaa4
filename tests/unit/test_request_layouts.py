"""A worker reads a request laid out as a recent one (same bytes up to the pixels, same length)
without walking its fields: it gets what a full read would give, and the images of such
requests, which share their metadata, are prepared as each one alone would be."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest

from tms.v1 import image_pb2, model_service_pb2
from tms_client.protocol.codec import encode_parts
from tms_client.protocol.wire import ImageParts, join_images, split_images
from tms_server import servicer
from tms_server.errors import InvalidArgument
from tms_server.invoke import prepare_image
from tms_server.registry import LoadedModel

pb = model_service_pb2


def request(model: str, value: int, args: str = "", shape: tuple[int, ...] = (4, 5, 3)) -> bytes:
    image = encode_parts(np.full(shape, value, np.uint8), image_pb2.COLOR_ORDER_BGR)
    return join_images(pb.RunImageRequest(model=model, args_json=args), 2, [image])


def read(data: bytes) -> tuple[pb.RunImageRequest, bytes, image_pb2.Image]:
    message, images = servicer._read(pb.RunImageRequest, data, 8)
    assert len(images) == 1
    return message, bytes(images[0].data), images[0].meta


def full_read(data: bytes) -> tuple[pb.RunImageRequest, bytes, image_pb2.Image]:
    message, images = split_images(pb.RunImageRequest, data, 2)
    return message, bytes(images[0].data), images[0].meta


def test_requests_laid_out_alike_read_as_a_full_read_does() -> None:
    cases = [
        request("a", 1),
        request("a", 2),  # the same layout, other pixels
        request("b", 3),  # as long, another model
        request("a", 4, '{"k":1}'),
        request("a", 5, '{"k":2}'),  # as long, other args
        request("b", 6),
        request("a", 7, shape=(5, 4, 3)),  # as long, another shape
        request("a", 8),
    ]
    for data in cases * 2:
        assert read(data) == full_read(data)


def test_pixels_are_a_read_only_view_of_the_request() -> None:
    data = request("view", 9)
    read(data)
    _, images = servicer._read(pb.RunImageRequest, data, 8)
    view = memoryview(images[0].data)
    assert view.readonly
    assert view.obj is data


def test_requests_laid_out_otherwise_are_read_in_full() -> None:
    image = encode_parts(np.full((2, 3), 7, np.uint8), image_pb2.COLOR_ORDER_GRAY)
    args_last = pb.RunImageRequest(model="m", image=image.to_message(), args_json='{"a":1}')
    data = args_last.SerializeToString()  # the args after the image
    for _ in range(2):
        assert read(data) == full_read(data)
    twice = data + request("m", 8)  # the image field twice: protobuf merges them
    for _ in range(2):
        message, images = servicer._read(pb.RunImageRequest, twice, 8)
        assert len(images) == 2
        assert message.args_json == '{"a":1}'


def model(
    color: image_pb2.ColorOrder.ValueType = image_pb2.COLOR_ORDER_UNSPECIFIED, dtype: str = ""
) -> LoadedModel:
    info = pb.ModelInfo(name="m", color_order=color)
    return LoadedModel(None, info, np.dtype(dtype) if dtype else None, None, nullcontext())


def test_images_of_one_metadata_are_prepared_as_the_first_for_each_model() -> None:
    meta = encode_parts(np.zeros((2, 3, 3), np.uint8), image_pb2.COLOR_ORDER_BGR).meta
    as_sent, rgb, floats = model(), model(image_pb2.COLOR_ORDER_RGB), model(dtype="float32")
    for value in range(3):
        pixels = np.arange(18, dtype=np.uint8).reshape(2, 3, 3) + value
        parts = ImageParts(meta, pixels.tobytes())  # the metadata shared, as laid out alike
        same = prepare_image(as_sent, parts, 100)
        assert same.flags.writeable is False
        np.testing.assert_array_equal(same, pixels)
        np.testing.assert_array_equal(prepare_image(rgb, parts, 100), pixels[..., ::-1])
        assert prepare_image(floats, parts, 100).dtype == np.float32
        with pytest.raises(InvalidArgument, match="exceeds the limit of 5"):
            prepare_image(as_sent, parts, 5)
        with pytest.raises(InvalidArgument, match="needs 18"):
            prepare_image(as_sent, ImageParts(meta, pixels.tobytes()[1:]), 100)
