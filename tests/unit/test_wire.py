"""tms_client.protocol.wire writes and reads the messages protobuf does, without copying pixels."""

from __future__ import annotations

import numpy as np
import pytest

from tms.v1 import image_pb2, model_service_pb2
from tms_client.protocol.codec import decode_image, encode_parts
from tms_client.protocol.wire import (
    ImageParts,
    WireError,
    join_images,
    merge_singular,
    split_images,
)

pb = model_service_pb2


def parts(value: int, shape: tuple[int, ...] = (3, 4, 3)) -> ImageParts:
    return encode_parts(np.full(shape, value, np.uint8), image_pb2.COLOR_ORDER_BGR)


def test_joined_bytes_are_the_message_protobuf_would_build() -> None:
    images = [parts(1), parts(2, (2, 2, 3))]
    head = pb.RunImageBatchRequest(model="m", args_json='{"a": 1}')
    joined = join_images(head, 2, images)
    expected = pb.RunImageBatchRequest(
        model="m", args_json='{"a": 1}', images=[p.to_message() for p in images]
    )
    # Same message; only the order of fields on the wire differs (images come last).
    assert pb.RunImageBatchRequest.FromString(joined) == expected


def test_split_reads_messages_protobuf_wrote_with_views_of_the_bytes() -> None:
    image = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    request = pb.RunImageRequest(
        model="m", args_json="{}", image=encode_parts(image).to_message()
    ).SerializeToString()
    message, occurrences = split_images(pb.RunImageRequest, request, 2)
    assert message.model == "m"
    assert message.args_json == "{}"
    assert not message.HasField("image")
    (found,) = occurrences
    decoded, _ = decode_image(found)
    assert np.array_equal(decoded, image)
    assert np.shares_memory(decoded, np.frombuffer(request, np.uint8))
    assert not decoded.flags.writeable


def test_repeated_occurrences_of_a_singular_field_merge_like_protobuf() -> None:
    first = image_pb2.Image(dtype=image_pb2.D_TYPE_UINT8, shape=[1, 1], data=b"a")
    second = image_pb2.Image(color_order=image_pb2.COLOR_ORDER_GRAY, data=b"b")
    request = (
        pb.RunImageRequest(model="m", image=first).SerializeToString()
        + pb.RunImageRequest(image=second).SerializeToString()
    )
    parsed = pb.RunImageRequest.FromString(request).image
    _, occurrences = split_images(pb.RunImageRequest, request, 2)
    merged = merge_singular(occurrences)
    assert merged is not None
    assert merged.to_message() == parsed
    assert merge_singular([]) is None


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x05ab",  # a string field longer than the message
        b"\x12\x80",  # truncated length varint
        b"\x12\x03\x1a\x05ab",  # image data longer than the image
        b"\x0b",  # wire type 3 (groups)
        b"\x00\x01",  # field number 0
        b"\x0a\x02\xff\xfe",  # a model name that is not UTF-8
        b"\x12" + b"\xff" * 11,  # an overlong varint
    ],
)
def test_malformed_bytes_are_wire_errors(data: bytes) -> None:
    with pytest.raises(WireError):
        split_images(pb.RunImageRequest, data, 2)


def test_unknown_fields_and_other_wire_types_are_kept() -> None:
    request = pb.RunImageToImageRequest(model="m", output_encoding=image_pb2.ENCODING_PNG)
    extra = b"\x39" + b"\0" * 8 + b"\x45" + b"\0" * 4  # unknown fields 7 (I64) and 8 (I32)
    message, occurrences = split_images(
        pb.RunImageToImageRequest, request.SerializeToString() + extra, 2
    )
    assert message.model == "m"
    assert message.output_encoding == image_pb2.ENCODING_PNG
    assert occurrences == []
