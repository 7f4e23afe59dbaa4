"""OIP REST bodies to gRPC messages and back (tms_server.http.tensors): no server."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from tms_server._gen.inference import grpc_predict_v2_pb2 as oip
from tms_server.errors import InvalidArgument
from tms_server.http.tensors import (
    DECLARED_HEADER_BYTES,
    declared_input,
    infer_response,
    parse_infer,
)


def body(document: object) -> bytes:
    return json.dumps(document).encode()


def test_json_tensors_become_raw_contents():
    image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    document = {
        "id": "x",
        "parameters": {"color_order": "rgb", "args": {"k": [1, 2]}, "n": 3, "on": True},
        "inputs": [
            {"name": "IMAGE", "datatype": "UINT8", "shape": [2, 2, 3], "data": image.tolist()}
        ],
    }
    message = parse_infer("face", "", body(document), None).message
    assert (message.model_name, message.id) == ("face", "x")
    assert message.parameters["color_order"].string_param == "rgb"
    assert json.loads(message.parameters["args"].string_param) == {"k": [1, 2]}
    assert message.parameters["n"].int64_param == 3
    assert message.parameters["on"].bool_param is True
    assert list(message.inputs[0].shape) == [2, 2, 3]
    assert message.raw_input_contents[0] == image.tobytes()


@pytest.mark.parametrize(
    ("datatype", "data", "dtype"),
    [
        ("FP16", [0.5, -2.0], "<f2"),
        ("FP32", [1, 2.5], "<f4"),
        ("INT16", [-3, 300], "<i2"),
        ("BOOL", [True, False], "?"),
    ],
)
def test_datatypes(datatype, data, dtype):
    document = {"inputs": [{"name": "IMAGE", "datatype": datatype, "shape": [2], "data": data}]}
    raw = parse_infer("m", "", body(document), None).message.raw_input_contents[0]
    np.testing.assert_array_equal(np.frombuffer(raw, dtype), np.array(data, dtype))


def test_bytes_are_length_prefixed():
    document = {
        "inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [2], "data": ["a", "hé"]}]
    }
    raw = parse_infer("m", "", body(document), None).message.raw_input_contents[0]
    assert raw == struct.pack("<I", 1) + b"a" + struct.pack("<I", 3) + "hé".encode()


def test_binary_inputs_come_after_the_json():
    head = body(
        {
            "inputs": [
                {
                    "name": "A",
                    "datatype": "UINT8",
                    "shape": [3],
                    "parameters": {"binary_data_size": 3},
                },
                {"name": "B", "datatype": "UINT8", "shape": [1], "data": [9]},
                {
                    "name": "C",
                    "datatype": "UINT8",
                    "shape": [2],
                    "parameters": {"binary_data_size": 2},
                },
            ],
            "outputs": [{"name": "X", "parameters": {"binary_data": True}}, {"name": "Y"}],
        }
    )
    request = parse_infer("m", "", head + b"abcde", str(len(head)), max_inputs=3)
    assert list(request.message.raw_input_contents) == [b"abc", b"\x09", b"de"]
    assert "binary_data_size" not in request.message.inputs[0].parameters
    assert [o.name for o in request.message.outputs] == ["X", "Y"]
    assert request.binary("X")
    assert not request.binary("Y")


@pytest.mark.parametrize(
    ("document", "header", "words"),
    [
        (
            {"inputs": [{"name": "A", "datatype": "UINT8", "shape": [2], "data": [1]}]},
            None,
            "needs 2",
        ),
        (
            {"inputs": [{"name": "A", "datatype": "UINT8", "shape": [1], "data": [256]}]},
            None,
            "range",
        ),
        (
            {"inputs": [{"name": "A", "datatype": "UINT8", "shape": [1], "data": [1.5]}]},
            None,
            "integers",
        ),
        (
            {"inputs": [{"name": "A", "datatype": "UINT8", "shape": [2], "data": [[1], 2]}]},
            None,
            "row-major",
        ),
        ({"inputs": [{"name": "A", "datatype": "NOPE", "shape": [1], "data": [1]}]}, None, "NOPE"),
        (
            {"inputs": [{"name": "A", "datatype": "UINT8", "shape": [-1], "data": []}]},
            None,
            "sizes",
        ),
        ({"inputs": [{"name": 1, "datatype": "UINT8", "shape": [1], "data": [1]}]}, None, "name"),
        ({"inputs": [{"name": "A", "datatype": "UINT8", "shape": [1]}]}, None, "missing"),
        ({"inputs": "no"}, None, "inputs"),
        ({"inputs": [1, 2, 3]}, None, "takes one input .IMAGE, or TEXT.; the request lists 3 in"),
        (
            {
                "inputs": [{"name": "A", "datatype": "UINT8", "shape": [1], "data": [1]}],
                "outputs": [{"name": "RESULT"}] * 3,
            },
            None,
            "OUTPUT_IMAGE; the request lists 3 in 'outputs'",
        ),
        (
            {"inputs": [{"name": "A", "datatype": "UINT8", "shape": [1], "data": [1]}]},
            "x",
            "Length",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "A",
                        "datatype": "UINT8",
                        "shape": [1],
                        "parameters": {"binary_data_size": 5},
                    }
                ]
            },
            "auto",
            "past the end",
        ),
    ],
)
def test_malformed_requests_say_what_is_wrong(document, header, words):
    data = body(document)
    if header == "auto":
        header = str(len(data))
    with pytest.raises(InvalidArgument, match=words):
        parse_infer("m", "", data, header)


def test_responses_in_json_or_binary():
    response = oip.ModelInferResponse(model_name="m", model_version="1", id="r")
    response.outputs.add(name="RESULT", datatype="BYTES", shape=[1])
    response.outputs.add(name="OUTPUT_IMAGE", datatype="UINT8", shape=[1, 2])
    result = struct.pack("<I", 2) + b"{}"
    response.raw_output_contents.extend([result, b"\x01\x02"])
    document = {"inputs": [{"name": "A", "datatype": "UINT8", "shape": [1], "data": [1]}]}
    request = parse_infer("m", "", body(document), None)
    data, length = infer_response(request, response, 1 << 20)
    assert length == len(data)
    assert json.loads(data) == {
        "model_name": "m",
        "model_version": "1",
        "id": "r",
        "outputs": [
            {"name": "RESULT", "datatype": "BYTES", "shape": [1], "data": ["{}"]},
            {"name": "OUTPUT_IMAGE", "datatype": "UINT8", "shape": [1, 2], "data": [1, 2]},
        ],
    }
    request.binary_by_default = True
    data, length = infer_response(request, response, 1 << 20)
    outputs = json.loads(data[:length])["outputs"]
    assert [o["parameters"]["binary_data_size"] for o in outputs] == [6, 2]
    assert data[length:] == result + b"\x01\x02"


def test_an_output_too_large_for_json_is_refused_before_it_is_made():
    # A number is two bytes of JSON at least (and tens of bytes in memory on the way): an
    # output of more values than half the message limit cannot be an answer in JSON.
    response = oip.ModelInferResponse(model_name="m", model_version="1")
    response.outputs.add(name="OUTPUT_IMAGE", datatype="UINT8", shape=[600, 1000])
    response.raw_output_contents.append(bytes(600_000))
    document = {"inputs": [{"name": "A", "datatype": "UINT8", "shape": [1], "data": [1]}]}
    request = parse_infer("m", "", body(document), None)
    with pytest.raises(
        InvalidArgument, match="1200000 bytes or more as JSON, over the 1 MiB"
    ) as caught:
        infer_response(request, response, 1 << 20)
    assert caught.value.reason == "IMAGE_TOO_LARGE"
    request.binary_outputs.add("OUTPUT_IMAGE")  # as binary data it fits
    data, length = infer_response(request, response, 1 << 20)
    assert len(data) - length == 600_000


def test_the_input_a_binary_header_declares_is_read_without_the_data():
    header = {"inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": [4, 5, 3]}]}
    head = json.dumps(header).encode()
    body = head + bytes(60)
    assert declared_input(body, str(len(head))) == ("UINT8", [4, 5, 3])
    assert declared_input(body, "not a length") is None
    for head in (b"[1, 2]", b'{"inputs": []}', b'{"inputs": [{"shape": [-1]}]}', b"{"):
        assert declared_input(head + bytes(60), str(len(head))) is None
    padded = json.dumps({**header, "id": "x" * DECLARED_HEADER_BYTES}).encode()
    assert declared_input(padded, str(len(padded))) is None  # too large to read on the loop


def test_a_shape_of_too_many_dimensions_is_refused_before_its_size_is_reckoned():
    # 1000 dimensions of 2**31 - 1: their product has more digits than Python writes out.
    tensor = {"name": "IMAGE", "datatype": "UINT8", "shape": [2**31 - 1] * 1000, "data": [1]}
    with pytest.raises(InvalidArgument, match="at most 8 sizes"):
        parse_infer("m", "", body({"inputs": [tensor]}), None)
