"""The pixels an OIP ModelInferRequest declares, read from its bytes for admission: what
parsing the whole request would say, without touching its data."""

from __future__ import annotations

import numpy as np
import pytest

from tms_server._gen.inference import grpc_predict_v2_pb2 as oip
from tms_server.oip import declared_pixels

Tensor = oip.ModelInferRequest.InferInputTensor


def request(tensor: Tensor, raw: bytes | None = None) -> bytes:
    message = oip.ModelInferRequest(model_name="m", id="7", inputs=[tensor])
    message.parameters["args"].string_param = "{}"
    if raw is not None:
        message.raw_input_contents.append(raw)
    return message.SerializeToString()


@pytest.mark.parametrize(
    ("shape", "pixels"),
    [
        ((1080, 1920, 3), 1080 * 1920),
        ((480, 640), 480 * 640),
        ((4, 32, 48, 3), 4 * 32 * 48),  # a batch: every image counts
        ((1, 1, 1), 1),
        ((0, 5, 3), 0),
    ],
)
def test_an_image_declares_its_shape(shape, pixels):
    raw = np.zeros(shape, np.uint8).tobytes()
    assert declared_pixels(request(Tensor(name="IMAGE", datatype="UINT8", shape=shape), raw)) == (
        pixels
    )


def test_typed_contents_weigh_their_length_on_the_wire_at_least():
    # Each value takes a byte on the wire at least, and eight once read: a shape that claims
    # one pixel does not make a million values weigh one.
    tensor = Tensor(name="IMAGE", datatype="UINT8", shape=[3, 4])
    tensor.contents.uint_contents.extend(range(12))
    assert declared_pixels(request(tensor)) == len(tensor.contents.SerializeToString())
    liar = Tensor(name="IMAGE", datatype="UINT8", shape=[1, 1])
    liar.contents.uint_contents.extend([1] * 1_000_000)
    assert declared_pixels(request(liar)) >= 1_000_000


def test_text_weighs_its_length_and_shapes_a_call_refuses_count_nothing():
    # Text holds no pixels, but as much memory as its length, and more once read: twenty
    # million one-byte strings took a worker to 4 GB.
    text = Tensor(name="TEXT", datatype="BYTES", shape=[2])
    text.contents.bytes_contents.extend([b"a", b"b"])
    assert declared_pixels(request(text)) == len(text.contents.SerializeToString())
    assert declared_pixels(request(Tensor(name="TEXT", datatype="BYTES", shape=[1]))) == 0
    assert declared_pixels(request(Tensor(name="IMAGE", datatype="UINT8", shape=[-1, 5, 3]))) == 0
    assert declared_pixels(request(Tensor(name="IMAGE", datatype="UINT8", shape=[5]))) == 0
    assert declared_pixels(request(Tensor(name="IMAGE", datatype="UINT8", shape=[1] * 5))) == 0
    assert declared_pixels(oip.ModelInferRequest(model_name="m").SerializeToString()) == 0


@pytest.mark.parametrize("garbage", [b"\x00", b"\xff" * 20, b"\x2a\x05abc", b"\x2a\x80"])
def test_malformed_bytes_count_nothing(garbage):
    assert declared_pixels(garbage) == 0


def test_it_agrees_with_protobuf_on_random_shapes():
    rng = np.random.default_rng(3)
    for _ in range(200):
        shape = [int(d) for d in rng.integers(0, 5000, rng.integers(2, 5))]
        parsed = oip.ModelInferRequest.FromString(
            request(Tensor(name="IMAGE", datatype="FP32", shape=shape))
        )
        dims = list(parsed.inputs[0].shape)
        expected = int(np.prod(dims[:3])) if len(dims) == 4 else dims[0] * dims[1]
        assert declared_pixels(parsed.SerializeToString()) == expected
