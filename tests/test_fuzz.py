"""Property-based fuzzing of a live server (Hypothesis): random, mutated and valid requests.

Every answer must be a response that parses, or a status code a client may expect
(INVALID_ARGUMENT, NOT_FOUND, UNIMPLEMENTED, RESOURCE_EXHAUSTED, PERMISSION_DENIED) — never
INTERNAL or UNKNOWN, which would be a bug in the server since the fuzzed models are
well-behaved — and the server must answer a normal call after each one.

The test command runs a bounded number of examples (about 20 s in all). A long campaign:

    TMS_FUZZ_EXAMPLES=100000 python3 -m uv run pytest tests/test_fuzz.py -p no:cacheprovider

The bounded run is derandomized: it sends the same examples on every run, so a failure in CI
is reproduced by running the test again. A campaign draws new examples (add
``--hypothesis-seed=N`` to pytest to draw a given set again), keeps the failing examples it
finds in ``.hypothesis/`` and replays them first on the next run. Any failure prints
``@reproduce_failure(...)``, which replays that one example when pasted above the test.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from tests.support import InProcessServer, start_in_process, write_models
from tms.v1 import admin_service_pb2, image_pb2, model_service_pb2
from tms_client.protocol.codec import encode_array
from tms_server._gen.inference import grpc_predict_v2_pb2 as oip

pb = model_service_pb2
CODE = grpc.StatusCode

EXAMPLES = int(os.environ.get("TMS_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=EXAMPLES or 300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    # The bounded run (CI's) draws the same examples every time, so a red run is red again
    # on any machine; a campaign draws new ones (pytest's --hypothesis-seed=N replays one).
    derandomize=not EXAMPLES,
    # A failure prints @reproduce_failure(...), the exact failing example to paste back in.
    print_blob=True,
    # The bounded run leaves no files behind; a campaign keeps what it finds.
    database=DirectoryBasedExampleDatabase(".hypothesis/examples") if EXAMPLES else None,
)

MODELS = {
    "probe": """
        import tms_server

        class Model(tms_server.Model):
            color = "rgb"
            thread_safe = True

            def run(self, image, args):
                return {"shape": image.shape, "dtype": str(image.dtype)}
    """,
    "invert": """
        import tms_server

        class Model(tms_server.Model):
            thread_safe = True

            def run_image_to_image(self, images, args):
                return [~image if image.dtype.kind in "iub" else -image for image in images]
    """,
    "upper": """
        import tms_server

        class Model(tms_server.Model):
            inputs = "text"
            thread_safe = True

            def run(self, text, args):
                return text.upper()
    """,
}
NAMES = ["probe", "invert", "upper"]
EXPECTED = {
    CODE.INVALID_ARGUMENT,
    CODE.NOT_FOUND,
    CODE.UNIMPLEMENTED,
    CODE.RESOURCE_EXHAUSTED,
    CODE.PERMISSION_DENIED,
}
MAX_PIXELS = 250_000

# Methods and the message their answer must parse as.
METHODS: dict[str, type[Message]] = {
    "/tms.v1.ModelService/ListModels": pb.ListModelsResponse,
    "/tms.v1.ModelService/GetModelInfo": pb.GetModelInfoResponse,
    "/tms.v1.ModelService/RunImage": pb.RunImageResponse,
    "/tms.v1.ModelService/RunImageBatch": pb.RunImageBatchResponse,
    "/tms.v1.ModelService/RunImageToImage": pb.RunImageToImageResponse,
    "/tms.v1.ModelService/RunText": pb.RunTextResponse,
    "/tms.v1.ModelService/RunTextBatch": pb.RunTextBatchResponse,
    "/tms.v1.ModelService/GetWorkerInfo": pb.GetWorkerInfoResponse,
    "/tms.v1.AdminService/ListWorkers": admin_service_pb2.ListWorkersResponse,
    "/tms.v1.AdminService/ReloadModel": admin_service_pb2.ReloadModelResponse,
    "/inference.GRPCInferenceService/ModelInfer": oip.ModelInferResponse,
    "/inference.GRPCInferenceService/ModelMetadata": oip.ModelMetadataResponse,
    "/inference.GRPCInferenceService/ModelReady": oip.ModelReadyResponse,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    models = write_models(tmp_path_factory.mktemp("fuzz"), MODELS)
    running = start_in_process(models, max_pixels=MAX_PIXELS, max_message_mb=1, threads=8)
    yield running
    running.running.stop(None)


@pytest.fixture(scope="module")
def channel(server: InProcessServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as channel:
        yield channel


def send(channel: grpc.Channel, method: str, request: bytes) -> None:
    """Send ``request``; the answer must parse or be an expected status. Then a normal call."""
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
    reply: bytes | None = None
    outcome: grpc.RpcError | None = None
    try:
        reply = call(request, timeout=30)
    except grpc.RpcError as exc:
        outcome = exc
    if outcome is None:
        assert reply is not None
        response = METHODS[method].FromString(reply)
        if isinstance(response, pb.RunImageResponse | pb.RunTextResponse):
            json.loads(response.result_json)
    else:
        code, details = outcome.code(), outcome.details()
        assert code in EXPECTED, (method, code, details)
        assert details, method
    normal(channel)


def normal(channel: grpc.Channel) -> None:
    image = encode_array(np.zeros((3, 4, 3), np.uint8), image_pb2.COLOR_ORDER_RGB)
    request = pb.RunImageRequest(model="probe", image=image).SerializeToString()
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        "/tms.v1.ModelService/RunImage"
    )
    result = json.loads(pb.RunImageResponse.FromString(call(request, timeout=30)).result_json)
    assert result["shape"] == [3, 4, 3]


# -- strategies ---------------------------------------------------------------------------------

int32 = st.integers(-(2**31), 2**31 - 1)
int64 = st.integers(-(2**63), 2**63 - 1)
dims = st.one_of(st.integers(-3, 70), int64, st.sampled_from([0, 1, 2**31, 2**62, -(2**63)]))
names = st.one_of(st.sampled_from([*NAMES, "", "../probe", "x" * 65]), st.text(max_size=80))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)
args_json = st.one_of(
    st.just(""),
    st.dictionaries(st.text(max_size=8), json_values, max_size=4).map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=200),
    st.integers(1, 5000).map(lambda n: "[" * n + "]" * n),
)


@st.composite
def images(draw: st.DrawFn) -> image_pb2.Image:
    """An image message with every field free: consistent, nearly so, or nonsense."""
    dtype = draw(st.one_of(st.sampled_from(list(image_pb2.DType.values())), int32))
    color = draw(st.one_of(st.sampled_from(list(image_pb2.ColorOrder.values())), int32))
    encoding = draw(st.one_of(st.sampled_from(list(image_pb2.Encoding.values())), int32))
    shape = draw(st.lists(dims, max_size=5))
    if draw(st.booleans()) and 0 < len(shape) <= 4 and all(0 < d <= 64 for d in shape):
        itemsize = {2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 8: 2, 9: 4, 10: 8, 1: 1}.get(dtype, 1)
        size = int(np.prod(shape)) * itemsize + draw(st.sampled_from([0, 0, 0, 1, -1]))
        data = draw(st.binary(min_size=max(0, size), max_size=max(0, size)))
    else:
        data = draw(st.binary(max_size=512))
    return image_pb2.Image(
        dtype=image_pb2.DType.ValueType(dtype),
        shape=shape,
        color_order=image_pb2.ColorOrder.ValueType(color),
        encoding=image_pb2.Encoding.ValueType(encoding),
        data=data,
    )


@dataclass(frozen=True)
class ValidImage:
    """An image message, what the probe model must report of it, and the raw array sent
    (None when encoded as PNG or JPEG)."""

    message: image_pb2.Image
    shape: tuple[int, int]
    dtype: str
    array: np.ndarray | None


def valid_image(draw: st.DrawFn) -> ValidImage:
    h, w = draw(st.integers(1, 16)), draw(st.integers(1, 16))
    kind = draw(st.sampled_from(["gray", "rgb", "bgr", "rgba", "float", "png", "jpeg"]))
    pixels = draw(st.binary(min_size=h * w * 4, max_size=h * w * 4))
    array = np.frombuffer(pixels, np.uint8)
    if kind == "gray":
        gray = array[: h * w].reshape(h, w)
        return ValidImage(encode_array(gray, image_pb2.COLOR_ORDER_GRAY), (h, w), "uint8", gray)
    if kind == "float":
        values = array[: h * w].astype(np.float32).reshape(h, w) * 1e30
        return ValidImage(encode_array(values), (h, w), "float32", values)
    if kind in ("png", "jpeg"):
        encoding = image_pb2.ENCODING_PNG if kind == "png" else image_pb2.ENCODING_JPEG
        rgb = array[: h * w * 3].reshape(h, w, 3)
        message = encode_array(rgb, image_pb2.COLOR_ORDER_RGB, encoding=encoding)
        return ValidImage(message, (h, w), "uint8", None)
    channels = 4 if kind == "rgba" else 3
    order = {"rgb": image_pb2.COLOR_ORDER_RGB, "bgr": image_pb2.COLOR_ORDER_BGR}
    color = order.get(kind, image_pb2.COLOR_ORDER_RGBA)
    raw = array[: h * w * channels].reshape(h, w, channels)
    return ValidImage(encode_array(raw, color), (h, w), "uint8", raw)


def probe_saw(image: ValidImage) -> dict[str, object]:
    """What the probe model answers for ``image``: converted to its RGB, dtype kept."""
    return {"shape": [*image.shape, 3], "dtype": image.dtype}


Check = Callable[[bytes], None]


def check_inverted(reply: bytes, image: ValidImage) -> None:
    (out,) = pb.RunImageToImageResponse.FromString(reply).images
    assert tuple(out.shape[:2]) == image.shape
    if image.array is not None:  # raw in, raw out: exactly the inverse
        got = np.frombuffer(out.data, image.array.dtype).reshape(image.array.shape)
        inverse = ~image.array if image.array.dtype.kind == "u" else -image.array
        assert np.array_equal(got, inverse)


@st.composite
def valid_requests(draw: st.DrawFn) -> tuple[str, bytes, Check]:
    """Requests that must succeed, each with a check of its answer."""
    which = draw(st.sampled_from(["image", "batch", "i2i", "text", "texts", "info", "infer"]))
    args = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3))
    args_text = json.dumps(args)
    if which == "image":
        image = valid_image(draw)
        request: Message = pb.RunImageRequest(
            model="probe", image=image.message, args_json=args_text
        )

        def check_image(reply: bytes) -> None:
            result = json.loads(pb.RunImageResponse.FromString(reply).result_json)
            assert result == probe_saw(image)

        return "/tms.v1.ModelService/RunImage", request.SerializeToString(), check_image
    if which == "batch":
        batch = [valid_image(draw) for _ in range(draw(st.integers(1, 3)))]
        request = pb.RunImageBatchRequest(
            model="probe", images=[i.message for i in batch], args_json=args_text
        )

        def check_batch(reply: bytes) -> None:
            results = pb.RunImageBatchResponse.FromString(reply).results_json
            assert [json.loads(r) for r in results] == [probe_saw(i) for i in batch]

        return "/tms.v1.ModelService/RunImageBatch", request.SerializeToString(), check_batch
    if which == "i2i":
        image = valid_image(draw)
        request = pb.RunImageToImageRequest(model="invert", images=[image.message])
        return (
            "/tms.v1.ModelService/RunImageToImage",
            request.SerializeToString(),
            lambda reply: check_inverted(reply, image),
        )
    if which == "text":
        text = draw(st.text())
        request = pb.RunTextRequest(model="upper", text=text, args_json=args_text)

        def check_text(reply: bytes) -> None:
            assert json.loads(pb.RunTextResponse.FromString(reply).result_json) == text.upper()

        return "/tms.v1.ModelService/RunText", request.SerializeToString(), check_text
    if which == "texts":
        texts = draw(st.lists(st.text(max_size=50), min_size=1, max_size=5))
        request = pb.RunTextBatchRequest(model="upper", texts=texts)

        def check_texts(reply: bytes) -> None:
            results = pb.RunTextBatchResponse.FromString(reply).results_json
            assert [json.loads(r) for r in results] == [t.upper() for t in texts]

        return "/tms.v1.ModelService/RunTextBatch", request.SerializeToString(), check_texts
    if which == "info":
        name = draw(st.sampled_from(NAMES))
        request = pb.GetModelInfoRequest(model=name)

        def check_info(reply: bytes) -> None:
            assert pb.GetModelInfoResponse.FromString(reply).info.name == name

        return "/tms.v1.ModelService/GetModelInfo", request.SerializeToString(), check_info
    h, w = draw(st.integers(1, 16)), draw(st.integers(1, 16))
    pixels = draw(st.binary(min_size=h * w * 3, max_size=h * w * 3))
    tensor = oip.ModelInferRequest.InferInputTensor(name="IMAGE", datatype="UINT8", shape=[h, w, 3])
    request = oip.ModelInferRequest(
        model_name="probe", inputs=[tensor], raw_input_contents=[pixels]
    )

    def check_infer(reply: bytes) -> None:
        answer = oip.ModelInferResponse.FromString(reply)
        assert answer.model_name == "probe"
        assert answer.outputs

    return "/inference.GRPCInferenceService/ModelInfer", request.SerializeToString(), check_infer


@st.composite
def random_requests(draw: st.DrawFn) -> tuple[str, bytes]:
    """Well-formed messages with random contents in every field."""
    method = draw(st.sampled_from(sorted(METHODS)))
    if method.endswith(("/RunImage", "/RunImageBatch", "/RunImageToImage")):
        shown = draw(st.lists(images(), min_size=0, max_size=3))
        cls = {
            "/RunImage": pb.RunImageRequest,
            "/RunImageBatch": pb.RunImageBatchRequest,
            "/RunImageToImage": pb.RunImageToImageRequest,
        }["/" + method.rsplit("/", 1)[1]]
        head = cls(model=draw(names), args_json=draw(args_json))
        if isinstance(head, pb.RunImageToImageRequest):
            head.output_encoding = image_pb2.Encoding.ValueType(draw(int32))
        if isinstance(head, pb.RunImageRequest):
            if shown:
                head.image.CopyFrom(shown[0])
        else:
            head.images.extend(shown)
        return method, head.SerializeToString()
    if method.endswith(("/RunText", "/GetModelInfo", "/ReloadModel")):
        model = draw(names)
        if method.endswith("/RunText"):
            message: Message = pb.RunTextRequest(
                model=model, text=draw(st.text(max_size=100)), args_json=draw(args_json)
            )
        elif method.endswith("/GetModelInfo"):
            message = pb.GetModelInfoRequest(model=model)
        else:
            message = admin_service_pb2.ReloadModelRequest(model=model)
        return method, message.SerializeToString()
    if method.endswith("/RunTextBatch"):
        texts = draw(st.lists(st.text(max_size=30), max_size=5))
        message = pb.RunTextBatchRequest(model=draw(names), texts=texts, args_json=draw(args_json))
        return method, message.SerializeToString()
    if method.endswith("/ModelInfer"):
        inputs = []
        for _ in range(draw(st.integers(0, 2))):
            inputs.append(
                oip.ModelInferRequest.InferInputTensor(
                    name=draw(st.sampled_from(["IMAGE", "TEXT", "X", ""])),
                    datatype=draw(st.sampled_from(["UINT8", "FP32", "BYTES", "INT64", "??"])),
                    shape=draw(st.lists(dims, max_size=5)),
                )
            )
        message = oip.ModelInferRequest(
            model_name=draw(names),
            model_version=draw(st.sampled_from(["", "1", "2", "x"])),
            inputs=inputs,
            raw_input_contents=draw(st.lists(st.binary(max_size=300), max_size=2)),
        )
        return method, message.SerializeToString()
    return method, draw(st.binary(max_size=64))


@st.composite
def mutated_requests(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid request with bytes flipped, inserted, deleted, or cut off."""
    method, request, _ = draw(valid_requests())
    data = bytearray(request)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        where = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "insert", "delete", "cut", "max"]))
        if action == "flip":
            data[where] ^= draw(st.integers(1, 255))
        elif action == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[where : where + draw(st.integers(1, 8))]
        elif action == "cut":
            del data[where:]
        else:  # a varint or length at its extreme
            data[where : where + 1] = b"\xff" * 9 + b"\x01"
    return method, bytes(data)


# -- the properties -----------------------------------------------------------------------------


@FUZZ
@given(request=valid_requests())
def test_valid_requests_succeed(channel: grpc.Channel, request: tuple[str, bytes, Check]) -> None:
    method, data, check = request
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
    check(call(data, timeout=30))


@FUZZ
@given(request=random_requests())
def test_random_requests_get_a_response_or_an_expected_status(
    channel: grpc.Channel, request: tuple[str, bytes]
) -> None:
    send(channel, *request)


@FUZZ
@given(request=mutated_requests())
def test_mutated_requests_get_a_response_or_an_expected_status(
    channel: grpc.Channel, request: tuple[str, bytes]
) -> None:
    send(channel, *request)


@FUZZ
@given(method=st.sampled_from(sorted(METHODS)), data=st.binary(max_size=2048))
def test_random_bytes_get_a_response_or_an_expected_status(
    channel: grpc.Channel, method: str, data: bytes
) -> None:
    send(channel, method, data)


def test_the_server_serves_after_the_fuzzing(
    server: InProcessServer, channel: grpc.Channel
) -> None:
    normal(channel)
    assert server.running.parts.load.in_flight <= 1
