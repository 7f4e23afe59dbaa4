"""The Open Inference Protocol (inference.GRPCInferenceService) beside tms.v1.

In-process: every RPC with the server's own generated messages, checked against the Python
client. Interop: Triton's ``tritonclient``, installed in a virtual environment of its own,
against a real multi-process server.
"""

from __future__ import annotations

import json
import struct
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest

from tests.support import EXAMPLE_MODELS, MEET, digit_scans, write_models
from tests.toolchains import TRITONCLIENT_CALLS, tritonclient_python
from tms_client import ModelClient
from tms_server._gen.inference import grpc_predict_v2_pb2 as oip

Tensor = oip.ModelInferRequest.InferInputTensor
Requested = oip.ModelInferRequest.InferRequestedOutputTensor


def string(value: str) -> oip.InferParameter:
    return oip.InferParameter(string_param=value)


class Inference:
    """Calls inference.GRPCInferenceService with the generated messages."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel

    def __call__(self, method: str, request: Any) -> Any:
        response_class = getattr(oip, type(request).__name__.replace("Request", "Response"))
        stub = self.channel.unary_unary(
            f"/inference.GRPCInferenceService/{method}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_class.FromString,
        )
        return stub(request, timeout=30)

    def infer(self, model: str, tensor: Tensor, raw: bytes | None = None, **fields: Any) -> Any:
        request = oip.ModelInferRequest(model_name=model, inputs=[tensor], **fields)
        if raw is not None:
            request.raw_input_contents.append(raw)
        return self("ModelInfer", request)

    def error(self, method: str, request: Any) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as caught:
            self(method, request)
        return caught.value.code(), caught.value.details() or ""


@pytest.fixture(scope="module")
def inference(example_server):
    with grpc.insecure_channel(example_server.target) as channel:
        yield Inference(channel)


def image_tensor(pixels: np.ndarray, datatype: str = "UINT8", **params: str) -> Tensor:
    return Tensor(
        name="IMAGE",
        datatype=datatype,
        shape=pixels.shape,
        parameters={key: string(value) for key, value in params.items()},
    )


def bytes_elements(raw: bytes) -> list[bytes]:
    items, pos = [], 0
    while pos < len(raw):
        (size,) = struct.unpack_from("<I", raw, pos)
        items.append(raw[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return items


@pytest.fixture(scope="module")
def python_faces(example_server, astronaut_bgr):
    with ModelClient("face", example_server.target) as face:
        return face.run_image(astronaut_bgr)


def test_server_and_model_status(inference):
    assert inference("ServerLive", oip.ServerLiveRequest()).live
    assert inference("ServerReady", oip.ServerReadyRequest()).ready
    metadata = inference("ServerMetadata", oip.ServerMetadataRequest())
    assert metadata.name == "tms"
    assert "model_configuration" in metadata.extensions
    assert inference("ModelReady", oip.ModelReadyRequest(name="face")).ready
    assert inference("ModelReady", oip.ModelReadyRequest(name="face", version="1")).ready
    assert not inference("ModelReady", oip.ModelReadyRequest(name="face", version="2")).ready
    assert not inference("ModelReady", oip.ModelReadyRequest(name="no_such_model")).ready


def test_model_metadata_describes_the_tensors(inference):
    face = inference("ModelMetadata", oip.ModelMetadataRequest(name="face"))
    assert (face.name, list(face.versions), face.platform) == ("face", ["1"], "tms")
    [image] = face.inputs
    assert (image.name, image.datatype, list(image.shape)) == ("IMAGE", "UINT8", [-1, -1, -1, 3])
    assert [(o.name, o.datatype, list(o.shape)) for o in face.outputs] == [
        ("RESULT", "BYTES", [-1, 1])
    ]
    edges = inference("ModelMetadata", oip.ModelMetadataRequest(name="edges"))
    assert [o.name for o in edges.outputs] == ["OUTPUT_IMAGE", "RESULT"]
    assert list(edges.inputs[0].shape) == [-1, -1, -1, 1]
    text = inference("ModelMetadata", oip.ModelMetadataRequest(name="text_stats"))
    assert (text.inputs[0].name, text.inputs[0].datatype) == ("TEXT", "BYTES")


def test_model_config_in_triton_terms(inference):
    config = inference("ModelConfig", oip.ModelConfigRequest(name="edges")).config
    assert config.name == "edges"
    assert config.max_batch_size == 64  # --max-batch-size
    digits = inference("ModelConfig", oip.ModelConfigRequest(name="digits")).config
    assert digits.max_batch_size == 16  # its own
    [model_input] = config.input
    assert model_input.name == "IMAGE"
    assert model_input.data_type == oip.TYPE_UINT8
    assert model_input.format == oip.ModelInput.FORMAT_NHWC
    assert list(model_input.dims) == [-1, -1, 1]
    assert [(o.name, o.data_type) for o in config.output] == [
        ("OUTPUT_IMAGE", oip.TYPE_UINT8),
        ("RESULT", oip.TYPE_STRING),
    ]


def test_infer_one_image_agrees_with_the_python_client(inference, astronaut_bgr, python_faces):
    response = inference.infer(
        "face", image_tensor(astronaut_bgr), astronaut_bgr.tobytes(), id="request-7"
    )
    assert (response.model_name, response.model_version, response.id) == ("face", "1", "request-7")
    [output] = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("RESULT", "BYTES", [1])
    [result] = bytes_elements(response.raw_output_contents[0])
    assert json.loads(result) == python_faces


def test_infer_rgb_with_a_color_order_parameter(inference, astronaut_bgr, python_faces):
    rgb = np.ascontiguousarray(astronaut_bgr[:, :, ::-1])
    on_tensor = inference.infer("face", image_tensor(rgb, color_order="rgb"), rgb.tobytes())
    on_request = inference.infer(
        "face", image_tensor(rgb), rgb.tobytes(), parameters={"color_order": string("rgb")}
    )
    for response in (on_tensor, on_request):
        assert json.loads(bytes_elements(response.raw_output_contents[0])[0]) == python_faces


def test_infer_a_batch_runs_run_batch_with_args(inference, astronaut_bgr):
    batch = np.stack([astronaut_bgr, np.zeros_like(astronaut_bgr)])
    response = inference.infer(
        "face",
        image_tensor(batch),
        batch.tobytes(),
        parameters={"args": string(json.dumps({"min_neighbors": 3}))},
    )
    assert list(response.outputs[0].shape) == [2, 1]
    first, second = (json.loads(r) for r in bytes_elements(response.raw_output_contents[0]))
    assert first["faces"]
    assert second == {"faces": []}


def test_infer_a_batch_of_gray_images_with_their_channel(inference):
    # Gray is (H, W) or (H, W, 1); a batch with the channel, as ModelMetadata advertises it
    # ([-1, -1, -1, 1]), reaches a gray model as (H, W) images.
    scans, truth = digit_scans()
    batch = np.stack(scans[:4])[..., None]
    response = inference.infer("digits", image_tensor(batch), batch.tobytes())
    assert list(response.outputs[0].shape) == [4, 1]
    results = [json.loads(r) for r in bytes_elements(response.raw_output_contents[0])]
    assert [r["digit"] for r in results] == list(truth[:4])


def test_infer_typed_contents(inference):
    pixels = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
    tensor = image_tensor(pixels, "FP32")
    tensor.contents.fp32_contents.extend(pixels.ravel().tolist())
    response = inference.infer("mean", tensor)
    [result] = bytes_elements(response.raw_output_contents[0])
    assert json.loads(result)["mean"] == pytest.approx(float(pixels.mean()))


def test_typed_contents_that_disagree_with_the_shape_are_refused_unread(inference):
    # A shape of one pixel with a million values: refused on their count, before they are
    # copied out eight bytes apiece (and weighed by their length, not the shape's one pixel).
    tensor = Tensor(name="IMAGE", datatype="UINT8", shape=[1, 1])
    tensor.contents.uint_contents.extend([1] * 1_000_000)
    code, details = inference.error(
        "ModelInfer", oip.ModelInferRequest(model_name="mean", inputs=[tensor])
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "holds 1000000 values in contents, not what its shape [1, 1] needs" in details
    # Text too: a million strings for one are refused on their count, not read.
    text = Tensor(name="TEXT", datatype="BYTES", shape=[1])
    text.contents.bytes_contents.extend([b"x"] * 1_000_000)
    code, details = inference.error(
        "ModelInfer", oip.ModelInferRequest(model_name="text_stats", inputs=[text])
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "holds 1000000 values in contents, not what its shape [1] needs" in details


def test_infer_image_to_image_returns_the_tensor(inference, example_server, astronaut_bgr):
    with ModelClient("edges", example_server.target) as edges:
        expected = edges.run_image_to_image(astronaut_bgr).image
    response = inference.infer(
        "edges", image_tensor(astronaut_bgr, color_order="bgr"), astronaut_bgr.tobytes()
    )
    image, result = response.outputs
    assert (image.name, image.datatype, list(image.shape)) == ("OUTPUT_IMAGE", "UINT8", [512, 512])
    assert response.raw_output_contents[0] == expected.tobytes()
    assert result.name == "RESULT"
    assert bytes_elements(response.raw_output_contents[1]) == [b"null"]

    gray = np.ascontiguousarray(astronaut_bgr[:, :, :1])
    batch = np.stack([gray, gray])
    only_image = inference.infer(
        "edges", image_tensor(batch), batch.tobytes(), outputs=[Requested(name="OUTPUT_IMAGE")]
    )
    [stacked] = only_image.outputs
    assert list(stacked.shape) == [2, 512, 512]


def test_infer_image_to_image_of_several_frames(inference, example_server, astronaut_bgr):
    """A batch is the model's list of images: optical_flow's two frames, one flow field out."""
    gray = np.ascontiguousarray(astronaut_bgr[:256, :256, 1])
    frames = [gray, np.roll(gray, 3, axis=1)]
    with ModelClient("optical_flow", example_server.target) as flow:
        expected = flow.run_image_to_image(frames)
    batch = np.stack(frames)[..., None]
    response = inference.infer("optical_flow", image_tensor(batch), batch.tobytes())
    image, result = response.outputs
    assert (image.datatype, list(image.shape)) == ("FP32", [1, 256, 256, 2])
    assert result.name == "RESULT"
    flow_field = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(256, 256, 2)
    np.testing.assert_array_equal(flow_field, expected.image)
    assert json.loads(bytes_elements(response.raw_output_contents[1])[0]) == expected.result


def test_infer_text(inference):
    tensor = Tensor(name="TEXT", datatype="BYTES", shape=[2])
    tensor.contents.bytes_contents.extend([b"one two two", "héllo".encode()])
    response = inference.infer("text_stats", tensor)
    assert list(response.outputs[0].shape) == [2]
    first, second = (json.loads(r) for r in bytes_elements(response.raw_output_contents[0]))
    assert first["words"] == 3
    assert second["characters"] == 5


def test_infer_naming_its_model_out_of_place_is_refused(inference):
    # Admission counts a call against the model its request's first field names; protobuf
    # takes the last model_name field, anywhere. The two must agree (see test_streams).
    tensor = Tensor(name="TEXT", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(b"one two")
    body = oip.ModelInferRequest(inputs=[tensor]).SerializeToString()
    name = oip.ModelInferRequest(model_name="text_stats").SerializeToString()
    infer = inference.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    for request in (
        body + name,
        oip.ModelInferRequest(model_name="face").SerializeToString() + body + name,
    ):
        with pytest.raises(grpc.RpcError) as caught:
            infer(request, timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "write the model_name field first and once" in (caught.value.details() or "")
    # As protobuf encoders write it, the model_name field first:
    answer = oip.ModelInferResponse.FromString(infer(name + body, timeout=30))
    assert json.loads(bytes_elements(answer.raw_output_contents[0])[0])["words"] == 2


@pytest.mark.parametrize(
    ("model", "tensor", "raw", "fields", "code", "message"),
    [
        ("no_such_model", None, None, {}, "NOT_FOUND", "no model named 'no_such_model'"),
        ("face", None, None, {"model_version": "2"}, "NOT_FOUND", "no version '2'"),
        ("../etc", None, None, {}, "INVALID_ARGUMENT", "invalid model name"),
        ("face", Tensor(name="PIXELS"), None, {}, "INVALID_ARGUMENT", "named IMAGE"),
        (
            "face",
            Tensor(name="IMAGE", datatype="UINT8", shape=[2, 2, 3]),
            b"\0" * 11,
            {},
            "INVALID_ARGUMENT",
            "needs 12",
        ),
        (
            "face",
            Tensor(name="IMAGE", datatype="UINT8", shape=[2, 2, 3]),
            b"\0" * 13,
            {},
            "INVALID_ARGUMENT",
            "needs 12",
        ),
        (
            "face",
            Tensor(
                name="IMAGE",
                datatype="UINT8",
                shape=[2, 2, 3],
                contents=oip.InferTensorContents(uint_contents=[0] * 12),
            ),
            b"\0" * 12,
            {},
            "INVALID_ARGUMENT",
            "both in contents and raw_input_contents",
        ),
        (
            "face",
            Tensor(name="IMAGE", datatype="UINT32", shape=[2, 2, 3]),
            b"\0" * 48,
            {},
            "INVALID_ARGUMENT",
            "datatype 'UINT32'",
        ),
        (
            "face",
            Tensor(name="IMAGE", datatype="FP32", shape=[2, 2, 3]),
            b"\0" * 48,
            {},
            "INVALID_ARGUMENT",
            "without loss",
        ),
        (
            "face",
            Tensor(name="IMAGE", datatype="UINT8", shape=[2, 3]),
            b"\0" * 6,
            {"parameters": {"args": oip.InferParameter(string_param="{bad")}},
            "INVALID_ARGUMENT",
            "not valid JSON",
        ),
        (
            "face",
            Tensor(name="IMAGE", datatype="UINT8", shape=[2, 3]),
            b"\0" * 6,
            {"parameters": {"args": oip.InferParameter(string_param='{"min_neighbors": -1}')}},
            "INVALID_ARGUMENT",
            "min_neighbors",
        ),
        (
            "face",
            Tensor(name="IMAGE", datatype="UINT8", shape=[2, 3]),
            b"\0" * 6,
            {"outputs": [Requested(name="MASK")]},
            "INVALID_ARGUMENT",
            "no output 'MASK'",
        ),
        (
            "edges",
            Tensor(name="IMAGE", datatype="UINT8", shape=[2, 2, 3]),
            b"\0" * 12,
            {},
            "INVALID_ARGUMENT",
            "needs its color_order set",
        ),
        (
            "face",
            Tensor(name="IMAGE", datatype="UINT8", shape=[65, 1, 1, 3]),
            b"\0" * 195,
            {},
            "INVALID_ARGUMENT",
            "a batch holds 1 to 64 images (--max-batch-size), not 65",
        ),
        (  # the model's own max_batch_size, as over tms.v1
            "digits",
            Tensor(name="IMAGE", datatype="UINT8", shape=[17, 1, 1, 1]),
            b"\0" * 17,
            {},
            "INVALID_ARGUMENT",
            "a batch holds 1 to 16 images (the max_batch_size of model 'digits'), not 17",
        ),
    ],
)
def test_infer_errors_are_status_codes(inference, model, tensor, raw, fields, code, message):
    request = oip.ModelInferRequest(model_name=model, **fields)
    if tensor is not None:
        request.inputs.append(tensor)
    if raw is not None:
        request.raw_input_contents.append(raw)
    status, details = inference.error("ModelInfer", request)
    assert status.name == code
    assert message in details


def test_metadata_errors_are_status_codes(inference):
    status, details = inference.error("ModelMetadata", oip.ModelMetadataRequest(name="nope"))
    assert status == grpc.StatusCode.NOT_FOUND
    assert "no model named 'nope'" in details
    status, _ = inference.error("ModelConfig", oip.ModelConfigRequest(name="face", version="9"))
    assert status == grpc.StatusCode.NOT_FOUND


def test_model_errors_are_internal(in_process_server, tmp_path):
    models = write_models(
        tmp_path,
        {
            "broken": """
                import tms_server
                class Model(tms_server.Model):
                    def run(self, image, args):
                        raise RuntimeError("boom")
            """
        },
    )
    server = in_process_server(models)
    with grpc.insecure_channel(server.target) as channel:
        tensor = Tensor(name="IMAGE", datatype="UINT8", shape=[1, 1, 1])
        status, details = Inference(channel).error(
            "ModelInfer",
            oip.ModelInferRequest(model_name="broken", inputs=[tensor], raw_input_contents=[b"\0"]),
        )
    assert status == grpc.StatusCode.INTERNAL
    assert "boom" in details


def test_images_count_against_the_pixels_in_flight(in_process_server, tmp_path):
    # Two calls at once meet at a barrier when the worker runs them together. Small images fit
    # --max-pixels-in-flight side by side; images larger than it run one at a time, as for
    # tms.v1: the pixels an OIP request declares are weighed before it runs.
    models = write_models(tmp_path, {"meet": MEET})
    server = in_process_server(models, threads=4, max_pixels_in_flight=1000)

    def together(phase: str, side: int) -> list[bool]:
        request = oip.ModelInferRequest(
            model_name="meet",
            inputs=[Tensor(name="IMAGE", datatype="UINT8", shape=[side, side])],
            raw_input_contents=[bytes(side * side)],
            parameters={"args": string(json.dumps({"phase": phase}))},
        )
        with grpc.insecure_channel(server.target) as channel:
            inference = Inference(channel)
            with ThreadPoolExecutor(2) as pool:
                replies = list(pool.map(inference, ["ModelInfer"] * 2, [request] * 2))
        return [json.loads(reply.raw_output_contents[0][4:])["together"] for reply in replies]

    assert together("small", 10) == [True, True]  # 100 pixels each
    assert together("large", 40) == [False, False]  # 1600 pixels each: one at a time


@pytest.mark.slow
def test_tritonclient_against_a_real_server(
    server_process, tmp_path_factory, tmp_path, astronaut_bgr, python_faces
):
    """Triton's own client, from PyPI in its own venv, against a two-worker tms-server."""
    python = tritonclient_python(tmp_path_factory.mktemp("tritonclient-venv"))
    server = server_process(EXAMPLE_MODELS, workers=2)
    photo = tmp_path / "photo.npy"
    np.save(photo, np.ascontiguousarray(astronaut_bgr[:, :, ::-1]))  # RGB
    edges_file = tmp_path / "edges.raw"
    result = subprocess.run(
        [str(python), str(TRITONCLIENT_CALLS), server.target, str(photo), str(edges_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)

    assert answers["live"]
    assert answers["ready"]
    assert answers["face_ready"]
    assert not answers["unknown_ready"]
    assert answers["server"]["name"] == "tms"
    assert answers["face_metadata"]["inputs"][0]["name"] == "IMAGE"
    assert answers["edges_config"]["config"]["input"][0]["data_type"] == "TYPE_UINT8"

    assert answers["faces"] == python_faces
    assert answers["faces_shape"] == [1]
    assert answers["batch_faces"][0]["faces"]
    assert len(answers["batch_faces"]) == 2

    with ModelClient("edges", server.target) as edges:
        expected = edges.run_image_to_image(astronaut_bgr).image
    assert answers["edges"] == {"shape": list(expected.shape), "dtype": "uint8"}
    assert edges_file.read_bytes() == expected.tobytes()

    assert answers["text_stats"]["words"] == 3

    errors = answers["errors"]
    assert errors["unknown_model"]["status"] == "StatusCode.NOT_FOUND"
    assert "no model named 'no_such_model'" in errors["unknown_model"]["message"]
    assert errors["unknown_model_metadata"]["status"] == "StatusCode.NOT_FOUND"
    assert errors["wrong_input_name"]["status"] == "StatusCode.INVALID_ARGUMENT"
