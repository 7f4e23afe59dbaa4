"""The image rules tms.v1.Image documents for callers in every language, checked against a real
server over raw gRPC: the cast table (read from image.proto itself), values never rescaled,
colour conversion, EXIF orientation left unapplied, and the trailers model_service.proto names."""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image as PILImage

from tests.support import ROOT, InProcessServer, start_in_process, write_models
from tms.v1 import image_pb2, model_service_pb2, model_service_pb2_grpc
from tms_client.protocol.load import decode_orca

DTYPES: tuple[str, ...] = ("BOOL", "UINT8", "INT8", "UINT16", "INT16", "INT32", "INT64")
DTYPES += ("FLOAT16", "FLOAT32", "FLOAT64")

TAKES = """
    import tms_server

    class Model(tms_server.Model):
        dtype = {dtype!r}
        thread_safe = True

        def run(self, image, args):
            return {{"dtype": str(image.dtype), "values": image.ravel().tolist()}}
"""
PLAIN = """
    import tms_server

    class Model(tms_server.Model):
        color = {color!r}
        thread_safe = True

        def run(self, image, args):
            return {{"shape": list(image.shape), "values": image.ravel().tolist()}}
"""


def documented_casts() -> dict[str, set[str]]:
    """The 'sent / may become' table of image.proto's Image comment."""
    text = (ROOT / "proto" / "tms" / "v1" / "image.proto").read_text()
    table = text.split("// sent      may become\n", 1)[1].split("//\n", 1)[0]
    casts = {}
    for line in table.splitlines():
        sent, *targets = line.removeprefix("//").split()
        casts[sent] = {target for target in targets if re.fullmatch(r"[A-Z0-9]+", target)}
    return casts


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    sources = {f"takes_{d.lower()}": TAKES.format(dtype=d.lower()) for d in DTYPES}
    sources |= {f"wants_{c}": PLAIN.format(color=c) for c in ("rgb", "gray", "bgra")}
    sources["as_sent"] = PLAIN.format(color=None)
    running = start_in_process(write_models(tmp_path_factory.mktemp("models"), sources))
    yield running
    running.running.stop(None)


@pytest.fixture(scope="module")
def stub(server: InProcessServer) -> Iterator[model_service_pb2_grpc.ModelServiceStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield model_service_pb2_grpc.ModelServiceStub(channel)


def run(stub, model: str, image: image_pb2.Image) -> dict[str, Any]:
    request = model_service_pb2.RunImageRequest(model=model, image=image)
    return json.loads(stub.RunImage(request, timeout=30).result_json)


def raw(array: np.ndarray, color: str = "GRAY") -> image_pb2.Image:
    name = "BOOL" if array.dtype == np.bool_ else str(array.dtype).upper()
    return image_pb2.Image(
        dtype=image_pb2.DType.Value(f"D_TYPE_{name}"),
        shape=list(array.shape),
        data=array.astype(array.dtype.newbyteorder("<")).tobytes(),
        color_order=image_pb2.ColorOrder.Value(f"COLOR_ORDER_{color}"),
        encoding=image_pb2.ENCODING_RAW,
    )


def test_the_table_names_every_dtype():
    assert set(documented_casts()) == set(DTYPES)


@pytest.mark.parametrize("sent", DTYPES)
def test_the_server_casts_exactly_as_documented(stub, sent):
    casts = documented_casts()
    pixels = np.array([[0, 1]]).astype(np.dtype("bool" if sent == "BOOL" else sent.lower()))
    for target in DTYPES:
        model = f"takes_{target.lower()}"
        if target == sent or target in casts[sent]:
            answer = run(stub, model, raw(pixels))
            assert answer["dtype"] == ("bool" if target == "BOOL" else target.lower())
            assert answer["values"] == [0, 1], (sent, target)
            continue
        with pytest.raises(grpc.RpcError) as info:
            run(stub, model, raw(pixels))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (sent, target)
        assert "cannot be converted to it without loss" in info.value.details()


def test_values_are_never_rescaled(stub):
    answer = run(stub, "takes_float32", raw(np.array([[0, 128, 255]], dtype=np.uint8)))
    assert answer == {"dtype": "float32", "values": [0.0, 128.0, 255.0]}
    answer = run(stub, "takes_float64", raw(np.array([[65535]], dtype=np.uint16)))
    assert answer["values"] == [65535.0]


def test_colour_conversions(stub):
    bgr = np.array([[[10, 20, 30]]], dtype=np.uint8)
    assert run(stub, "wants_rgb", raw(bgr, "BGR"))["values"] == [30, 20, 10]
    # BT.601: 0.299 R + 0.587 G + 0.114 B, rounded: 0.299*30 + 0.587*20 + 0.114*10 = 22.01
    assert run(stub, "wants_gray", raw(bgr, "BGR")) == {"shape": [1, 1], "values": [22]}
    gray = np.array([[7]], dtype=np.uint8)
    assert run(stub, "wants_rgb", raw(gray))["values"] == [7, 7, 7]
    assert run(stub, "wants_bgra", raw(bgr, "BGR"))["values"] == [10, 20, 30, 255]  # opaque
    # UNSPECIFIED with the model's channel count: taken as the model's order, as sent.
    assert run(stub, "wants_rgb", raw(bgr, "UNSPECIFIED"))["values"] == [10, 20, 30]
    with pytest.raises(grpc.RpcError) as info:
        run(stub, "wants_rgb", raw(np.zeros((1, 1, 4), np.uint8), "UNSPECIFIED"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "color_order" in info.value.details()
    # A model without a colour order gets the pixels as sent.
    assert run(stub, "as_sent", raw(bgr, "BGR"))["values"] == [10, 20, 30]


def test_exif_orientation_is_not_applied(stub):
    """A JPEG 4 wide and 2 high whose EXIF says 'rotate 90°' reaches the model 4 wide."""
    picture = PILImage.new("L", (4, 2), color=200)
    exif = PILImage.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    with PILImage.open(io.BytesIO(buffer.getvalue())) as reread:
        assert reread.getexif()[0x0112] == 6
    image = image_pb2.Image(data=buffer.getvalue(), encoding=image_pb2.ENCODING_JPEG)
    assert run(stub, "as_sent", image)["shape"] == [2, 4]


def test_every_response_ends_with_the_documented_trailers(stub):
    """model_service.proto's Metadata section: x-request-id, tms-worker, tms-load-bin."""
    request = model_service_pb2.RunImageRequest(
        model="as_sent", image=raw(np.zeros((1, 1), np.uint8))
    )
    _, call = stub.RunImage.with_call(request, metadata=[("x-request-id", "rules-1")], timeout=30)
    trailers = dict(call.trailing_metadata())
    worker = stub.GetWorkerInfo(model_service_pb2.GetWorkerInfoRequest(), timeout=30)
    assert trailers["x-request-id"] == "rules-1"
    assert trailers["tms-worker"] == f"{worker.instance_id}/{os.getpid()}"
    report = decode_orca(trailers["tms-load-bin"])
    assert set(report) == {"in_flight", "queued"}
    assert report["in_flight"] >= 1
