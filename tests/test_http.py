"""HTTP/JSON on --http-port: the Open Inference Protocol's REST form, TMS's /run, the page.

A real tms-server (supervisor and two workers) serves the example models on gRPC and HTTP;
requests go as curl would send them (urllib), and headless Chromium (Debian's, driven by
Playwright) uses the page.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import io
import json
import shutil
import socket
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from skimage import data

from tests.support import (
    EXAMPLE_MODELS,
    EXAMPLE_NAMES,
    MEET,
    ServerProcess,
    closed_by_peer,
    start_in_process,
    start_process,
    wait_for,
    write_models,
)
from tms_client import ConnectError, ModelClient

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
TOKEN = "http-test-token-0123456789"


class Reply:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


def http(
    url: str,
    body: bytes | dict[str, Any] | None = None,
    *,
    method: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One request, as curl sends it; errors are replies too."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return Reply(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        with error:
            return Reply(error.code, error.headers, error.read())


def http_base(server: ServerProcess) -> str:
    """The HTTP address the server printed: 'tms-server: HTTP on http://HOST:PORT/'."""
    for line in server.output:
        if line.startswith("tms-server: HTTP on "):
            return line.split()[3].rstrip("/")
    raise AssertionError("the server printed no HTTP address:\n" + server.logs())


@pytest.fixture(scope="module")
def server():
    started = start_process(EXAMPLE_MODELS, workers=2, args=("--http-port", "0"), timeout=120)
    try:
        yield started
    finally:
        assert started.stop() == 0, started.logs()


@pytest.fixture(scope="module")
def base(server):
    return http_base(server)


@pytest.fixture(scope="module")
def astronaut_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


@pytest.fixture(scope="module")
def grpc_faces(server, astronaut_bgr):
    """The boxes the gRPC client gets for the astronaut: what HTTP must answer too."""
    with ModelClient("face", server.target) as client:
        faces = client.run_image(astronaut_bgr)["faces"]
    assert len(faces) == 1
    return faces


def tensor(name: str, array: np.ndarray, **parameters: Any) -> dict[str, Any]:
    return {
        "name": name,
        "datatype": {"uint8": "UINT8", "float32": "FP32"}[array.dtype.name],
        "shape": list(array.shape),
        "data": array.reshape(-1).tolist(),
        **({"parameters": parameters} if parameters else {}),
    }


def result_of(reply: Reply) -> Any:
    """The model's result in an OIP reply: its RESULT output, JSON in a BYTES tensor."""
    assert reply.status == 200, reply.body
    (text,) = next(o for o in reply.json()["outputs"] if o["name"] == "RESULT")["data"]
    return json.loads(text)


# -- health and metadata ------------------------------------------------------------------------


def test_health(base):
    live = http(f"{base}/v2/health/live")
    assert (live.status, live.json()) == (200, {"live": True})
    ready = http(f"{base}/v2/health/ready")
    assert (ready.status, ready.json()) == (200, {"ready": True})
    assert http(f"{base}/v2/models/face/ready").status == 200
    assert http(f"{base}/v2/models/face/versions/1/ready").status == 200


def test_server_and_model_metadata(base):
    server = http(f"{base}/v2").json()
    assert server["name"] == "tms"
    assert "binary_tensor_data" in server["extensions"]
    face = http(f"{base}/v2/models/face").json()
    assert face["name"] == "face"
    assert face["versions"] == ["1"]
    assert face["inputs"] == [{"name": "IMAGE", "datatype": "UINT8", "shape": [-1, -1, -1, 3]}]
    assert face["outputs"] == [{"name": "RESULT", "datatype": "BYTES", "shape": [-1, 1]}]
    assert "RUN_IMAGE" in face["parameters"]["calls"]
    assert http(f"{base}/v2/models/face/versions/1").json() == face
    listed = http(f"{base}/v2/models").json()["models"]
    assert [m["name"] for m in listed] == EXAMPLE_NAMES
    assert listed[2] == face
    edges = http(f"{base}/v2/models/edges").json()
    assert [o["name"] for o in edges["outputs"]] == ["OUTPUT_IMAGE", "RESULT"]


def test_the_model_configuration_extension_v2_names_is_served(base):
    assert "model_configuration" in http(f"{base}/v2").json()["extensions"]
    face = http(f"{base}/v2/models/face/config")
    assert face.status == 200, face.body
    assert face.json() == {
        "name": "face",
        "platform": "tms",
        "backend": "python",
        "max_batch_size": 64,
        "input": [
            {
                "name": "IMAGE",
                "data_type": "TYPE_UINT8",
                "format": "FORMAT_NHWC",
                "dims": [-1, -1, 3],
            }
        ],
        "output": [{"name": "RESULT", "data_type": "TYPE_STRING", "dims": [1]}],
    }
    assert http(f"{base}/v2/models/face/versions/1/config").json() == face.json()
    text = http(f"{base}/v2/models/text_stats/config").json()
    assert text["input"] == [
        {"name": "TEXT", "data_type": "TYPE_STRING", "format": "FORMAT_NONE", "dims": [1]}
    ]
    assert http(f"{base}/v2/models/nope/config").status == 404
    assert http(f"{base}/v2/models/face/versions/2/config").status == 404


# -- inference: JSON tensors --------------------------------------------------------------------


def test_infer_json_on_mean(base):
    image = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    body = {"id": "call-1", "inputs": [tensor("IMAGE", image)]}
    reply = http(f"{base}/v2/models/mean/infer", body)
    assert reply.headers["Content-Type"].startswith("application/json")
    answer = reply.json()
    assert answer["model_name"] == "mean"
    assert answer["model_version"] == "1"
    assert answer["id"] == "call-1"
    assert result_of(reply) == {"mean": pytest.approx(float(image.mean()))}
    # Nested data (row-major) is the same tensor.
    nested = {"inputs": [{**tensor("IMAGE", image), "data": image.tolist()}]}
    assert result_of(http(f"{base}/v2/models/mean/versions/1/infer", nested)) == result_of(reply)


def test_infer_json_on_face_finds_what_grpc_finds(base, grpc_faces):
    rgb = data.astronaut()
    body = {"inputs": [tensor("IMAGE", rgb, color_order="rgb")]}
    assert result_of(http(f"{base}/v2/models/face/infer", body)) == {"faces": grpc_faces}
    # Args go as the 'args' parameter: a JSON object, or its text.
    body["parameters"] = {"args": {"min_size": 400}}
    assert result_of(http(f"{base}/v2/models/face/infer", body)) == {"faces": []}
    body["parameters"] = {"args": '{"min_size": 400}'}
    assert result_of(http(f"{base}/v2/models/face/infer", body)) == {"faces": []}


def test_infer_json_on_text(base):
    body = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [2], "data": ["a b", "c"]}]}
    reply = http(f"{base}/v2/models/text_stats/infer", body)
    assert reply.status == 200, reply.body
    (result,) = reply.json()["outputs"]
    assert [json.loads(text)["words"] for text in result["data"]] == [2, 1]


def test_image_to_image_as_grpc_gives_it(server, base):
    gray = np.zeros((32, 48), np.uint8)
    gray[:, 24:] = 255
    with ModelClient("edges", server.target) as client:
        expected = client.run_image_to_image(gray).image
    reply = http(f"{base}/v2/models/edges/infer", {"inputs": [tensor("IMAGE", gray)]})
    assert reply.status == 200, reply.body
    image, result = reply.json()["outputs"]
    assert (image["name"], image["datatype"], image["shape"]) == ("OUTPUT_IMAGE", "UINT8", [32, 48])
    np.testing.assert_array_equal(np.array(image["data"], np.uint8).reshape(32, 48), expected)
    assert result["data"] == ["null"]
    assert expected.max() == 255  # there are edges to compare


# -- inference: the binary tensor data extension ------------------------------------------------


def binary_body(header: dict[str, Any], *blobs: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    headers = {
        "Inference-Header-Content-Length": str(len(head)),
        "Content-Type": "application/octet-stream",
    }
    return head + b"".join(blobs), headers


def test_binary_inputs_and_outputs(base, grpc_faces):
    rgb = data.astronaut()
    header = {
        "inputs": [
            {
                "name": "IMAGE",
                "datatype": "UINT8",
                "shape": list(rgb.shape),
                "parameters": {"binary_data_size": rgb.nbytes, "color_order": "rgb"},
            }
        ],
        "outputs": [{"name": "RESULT", "parameters": {"binary_data": True}}],
    }
    body, headers = binary_body(header, rgb.tobytes())
    reply = http(f"{base}/v2/models/face/infer", body, headers=headers)
    assert reply.status == 200, reply.body
    length = int(reply.headers["Inference-Header-Content-Length"])
    answer = json.loads(reply.body[:length])
    (output,) = answer["outputs"]
    assert "data" not in output
    blob = reply.body[length:]
    assert output["parameters"]["binary_data_size"] == len(blob)
    (size,) = struct.unpack_from("<I", blob)  # BYTES elements are length-prefixed
    assert json.loads(blob[4 : 4 + size]) == {"faces": grpc_faces}


def test_binary_output_image(base):
    gray = np.tile(np.array([0, 255], np.uint8).repeat(8), (16, 1))
    body = {
        "inputs": [tensor("IMAGE", gray)],
        "outputs": [{"name": "OUTPUT_IMAGE"}],
        "parameters": {"binary_data_output": True},
    }
    reply = http(f"{base}/v2/models/edges/infer", body)
    assert reply.status == 200, reply.body
    length = int(reply.headers["Inference-Header-Content-Length"])
    (output,) = json.loads(reply.body[:length])["outputs"]
    assert output["name"] == "OUTPUT_IMAGE"
    edges = np.frombuffer(reply.body[length:], np.uint8).reshape(output["shape"])
    assert edges.shape == (16, 16)
    assert edges[:, 8].max() == 255 or edges[:, 7].max() == 255


def test_an_output_asked_for_as_json_stays_json_when_the_rest_go_binary(base):
    gray = np.tile(np.array([0, 255], np.uint8).repeat(8), (16, 1))
    body = {
        "inputs": [tensor("IMAGE", gray)],
        "outputs": [
            {"name": "OUTPUT_IMAGE"},
            {"name": "RESULT", "parameters": {"binary_data": False}},
        ],
        "parameters": {"binary_data_output": True},
    }
    reply = http(f"{base}/v2/models/edges/infer", body)
    assert reply.status == 200, reply.body
    length = int(reply.headers["Inference-Header-Content-Length"])
    image, result = json.loads(reply.body[:length])["outputs"]
    assert image["parameters"]["binary_data_size"] == len(reply.body) - length == 16 * 16
    assert result["data"] == ["null"]  # JSON, as its own binary_data says


# -- TMS's /run: a file in, JSON out ------------------------------------------------------------


def test_run_an_image_file(base, astronaut_png, grpc_faces):
    png = astronaut_png.read_bytes()
    headers = {"Content-Type": "image/png", "X-Request-Id": "page-call-1"}
    reply = http(f"{base}/v2/models/face/run", png, headers=headers)
    assert reply.status == 200, reply.body
    assert reply.headers["X-Request-Id"] == "page-call-1"
    assert reply.json() == {
        "model_name": "face",
        "model_version": "1.0",
        "result": {"faces": grpc_faces},
    }
    jpeg = io.BytesIO()
    Image.fromarray(data.astronaut()).save(jpeg, format="JPEG", quality=95)
    args = "?args=" + urllib.request.quote('{"min_size": 400}')
    reply = http(f"{base}/v2/models/face/run{args}", jpeg.getvalue())
    assert reply.json()["result"] == {"faces": []}


def test_run_image_to_image_answers_png(base, server):
    gray = np.zeros((40, 40), np.uint8)
    gray[10:30, 10:30] = 200
    file = io.BytesIO()
    Image.fromarray(gray).save(file, format="PNG")
    reply = http(f"{base}/v2/models/edges/run", file.getvalue())
    assert reply.status == 200, reply.body
    (image,) = reply.json()["images"]
    edges = np.asarray(Image.open(io.BytesIO(base64.b64decode(image["png"]))))
    with ModelClient("edges", server.target) as client:
        np.testing.assert_array_equal(edges, client.run_image_to_image(gray).image)


def test_run_a_text(base):
    reply = http(
        f"{base}/v2/models/text_stats/run", b"one two three", headers={"Content-Type": "text/plain"}
    )
    assert reply.status == 200, reply.body
    assert reply.json()["result"]["words"] == 3


# -- errors -------------------------------------------------------------------------------------


def assert_error(reply: Reply, status: int, *words: str) -> None:
    assert reply.status == status, (reply.status, reply.body)
    assert reply.headers["Content-Type"].startswith("application/json")
    document = reply.json()
    message = document["error"]
    for word in words:
        assert word in message, message
    assert document["reason"], document  # every error names its reason, as README says


def test_errors_are_http_statuses_with_a_message(base):
    infer = f"{base}/v2/models/mean/infer"
    good = {"inputs": [tensor("IMAGE", np.zeros((2, 2), np.uint8))]}
    assert_error(http(f"{base}/v2/models/nope/infer", good), 404, "no model named 'nope'")
    assert http(f"{base}/v2/models/nope/infer", good).json()["reason"] == "MODEL_NOT_FOUND"
    assert_error(http(f"{base}/v2/models/nope"), 404, "nope")
    assert_error(http(f"{base}/v2/models/nope/ready"), 404, "nope")
    assert_error(http(f"{base}/v2/models/face/versions/2"), 404, "version")
    assert_error(http(f"{base}/v2/models/face/versions/2/ready"), 404, "no version '2'")
    assert_error(http(f"{base}/v2/models/nope/run", b"x"), 404, "nope")
    assert_error(http(infer, b"{not json"), 400, "not valid JSON")
    nan = json.dumps(good).replace("[0, 0, 0, 0]", "[0, NaN, 0, 0]").encode()
    assert_error(http(infer, nan), 400, "NaN is not a JSON value")
    huge = {"inputs": [{**good["inputs"][0], "datatype": "FP32", "data": [1e39, 0, 0, 0]}]}
    assert_error(http(infer, huge), 400, "out of range for FP32")
    assert_error(http(infer, b"[1, 2]"), 400, "JSON object")
    assert_error(http(infer, {"inputs": []}), 400, "inputs")
    wrong_count = {"inputs": [{**good["inputs"][0], "data": [1, 2, 3]}]}
    assert_error(http(infer, wrong_count), 400, "3 elements", "needs 4")
    wrong_type = {"inputs": [{**good["inputs"][0], "datatype": "NOPE"}]}
    assert_error(http(infer, wrong_type), 400, "NOPE")
    strings = {"inputs": [{**good["inputs"][0], "data": ["a", "b", "c", "d"]}]}
    assert_error(http(infer, strings), 400, "integers")
    empty = {"inputs": [{**good["inputs"][0], "shape": [0, 0], "data": []}]}
    assert_error(http(infer, empty), 400, "shape [0, 0]", "not positive")  # not "integers"
    wrong_name = {"inputs": [{**good["inputs"][0], "name": "PIXELS"}]}
    assert_error(http(infer, wrong_name), 400, "IMAGE")
    assert_error(http(infer, {**good, "outputs": [{"name": "NOPE"}]}), 400, "no output 'NOPE'")
    # Refused before their tensors are read, which holds the worker's event loop (the GIL):
    many = {"inputs": [{**good["inputs"][0], "data": [1, 2, 3]}] * 100_000}
    assert_error(http(infer, many), 400, "takes one input", "lists 100000 in 'inputs'")
    outputs = {**good, "outputs": [{"name": "RESULT"}] * 3}
    assert_error(http(infer, outputs), 400, "OUTPUT_IMAGE", "lists 3 in 'outputs'")
    bad_args = {**good, "parameters": {"args": {"min_size": "big"}}}
    assert_error(http(f"{base}/v2/models/face/infer", bad_args), 400)
    body, headers = binary_body({"inputs": [{**good["inputs"][0], "data": None}]}, b"1234")
    assert_error(http(infer, body, headers=headers), 400)
    headers["Inference-Header-Content-Length"] = "999999"
    assert_error(http(infer, body, headers=headers), 400, "Inference-Header-Content-Length")
    assert_error(http(f"{base}/v2/models/face/run", b"not an image"), 400, "decode")
    png = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png, format="PNG")
    one_frame = http(f"{base}/v2/models/optical_flow/run", png.getvalue())
    assert_error(one_frame, 400, "2 frames")  # the model raised InvalidInput: its reason
    assert one_frame.json()["reason"] == "INVALID_INPUT"
    assert_error(http(f"{base}/v2/no/such/path"), 404)
    assert_error(http(f"{base}/v2/models/face", method="DELETE"), 405)


def test_bad_input_never_breaks_the_worker(base):
    garbage = [b"", b"\x00" * 100, b'{"inputs": [{"name": "IMAGE"' * 1000, b"[" * 100_000]
    for body in garbage:
        for path in ("mean/infer", "face/run", "edges/run"):
            reply = http(f"{base}/v2/models/{path}", body)
            assert 400 <= reply.status < 500, (path, body[:20], reply.status, reply.body)
    assert http(f"{base}/v2/health/ready").status == 200
    good = {"inputs": [tensor("IMAGE", np.full((2, 2), 7, np.uint8))]}
    assert result_of(http(f"{base}/v2/models/mean/infer", good)) == {"mean": 7.0}


def test_compressed_bodies_are_refused_unread(base):
    # aiohttp would inflate them on the worker's event loop, which every call needs, before
    # any size limit applies: 256 KiB of gzip here is 256 MiB of zeros.
    good = json.dumps({"inputs": [tensor("IMAGE", np.full((2, 2), 7, np.uint8))]}).encode()
    bomb = zlib.compressobj(wbits=31)  # gzip
    chunks = [bomb.compress(bytes(1 << 20)) for _ in range(256)]
    bodies = {"gzip": gzip.compress(good), "deflate": zlib.compress(good)}
    bodies["gzip bomb"] = b"".join(chunks) + bomb.flush()
    for name, body in bodies.items():
        encoding = name.split()[0]
        reply = http(f"{base}/v2/models/mean/infer", body, headers={"Content-Encoding": encoding})
        assert_error(reply, 415, f"not with Content-Encoding {encoding}")
    assert result_of(http(f"{base}/v2/models/mean/infer", good)) == {"mean": 7.0}


def test_malformed_requests_get_400_and_no_traceback_in_the_log(server, base):
    # Callers on a network send such things all day: each was an ERROR with a traceback.
    address = urllib.parse.urlsplit(base)
    for request in (
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /v2/models/mean/infer HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 10_000 + b"\r\n\r\n",
    ):
        with socket.create_connection((address.hostname, address.port), timeout=10) as caller:
            caller.sendall(request)
            assert caller.recv(1024).startswith(b"HTTP/1.0 400 Bad Request"), request[:20]
    assert http(f"{base}/v2/health/ready").status == 200
    assert "Error handling request" not in server.logs()


def test_a_caller_that_leaves_mid_body_leaves_no_traceback(server, base):
    # A reset in the middle of a request body was an ERROR "http failed" with a traceback.
    address = urllib.parse.urlsplit(base)
    head = b"POST /v2/models/mean/infer HTTP/1.1\r\nHost: tms\r\nContent-Length: 100000\r\n\r\n"
    for _ in range(3):
        caller = socket.create_connection((address.hostname, address.port), timeout=10)
        caller.sendall(head + b"{" * 1000)
        time.sleep(0.1)
        caller.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset
        caller.close()
    assert http(f"{base}/v2/health/ready").status == 200
    time.sleep(0.5)
    assert "http failed" not in server.logs()
    assert "Traceback" not in server.logs()


def test_grpc_keeps_working_alongside(server, base, astronaut_bgr, grpc_faces):
    good = {"inputs": [tensor("IMAGE", np.full((8, 8), 3, np.uint8))]}
    failures: list[str] = []

    def over_http() -> None:
        for _ in range(20):
            reply = http(f"{base}/v2/models/mean/infer", good)
            if reply.status != 200:
                failures.append(reply.body.decode())

    threads = [threading.Thread(target=over_http) for _ in range(4)]
    for thread in threads:
        thread.start()
    with ModelClient("face", server.target) as client:
        for _ in range(5):
            assert client.run_image(astronaut_bgr)["faces"] == grpc_faces
    for thread in threads:
        thread.join()
    assert failures == []


# -- limits and tokens: a server of its own -----------------------------------------------------

SLOW = """
import time
import tms_server

class Model(tms_server.Model):
    thread_safe = True

    def run(self, image, args):
        time.sleep(1.0)
        return {"slept": 1.0}
"""


BIG = """
import tms_server

class Model(tms_server.Model):
    inputs = "text"
    thread_safe = True

    def run(self, text, args):
        return {"text": text * args["times"]}
"""


NOISE = """
import numpy as np
import tms_server

class Model(tms_server.Model):
    output_color = "bgr"
    thread_safe = True

    def run_image_to_image(self, images, args):
        side = args["side"]
        return [np.random.default_rng(0).integers(0, 256, (side, side, 3), np.uint8)]
"""

FIELD = NOISE.replace('"bgr"', "None").replace(
    "integers(0, 256, (side, side, 3), np.uint8)", "random((side, side, 2), np.float32)"
)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """One worker of one thread and no queue, tokens required, messages of at most 1 MiB,
    callers given 2 s to send a request."""
    folder = tmp_path_factory.mktemp("guarded")
    models = write_models(
        folder / "models", {"slow": SLOW, "big": BIG, "noise": NOISE, "field": FIELD}
    )
    shutil.copytree(EXAMPLE_MODELS / "mean", models / "mean")
    shutil.copytree(EXAMPLE_MODELS / "edges", models / "edges")
    tokens = folder / "tokens"
    tokens.write_text(TOKEN + "\n")
    args = ("--http-port", "0", "--tokens-file", str(tokens), "--threads", "1")
    args += ("--max-queued-calls", "0", "--max-message-mb", "1", "--slow-client-seconds", "2")
    started = start_process(models, workers=1, args=args)
    try:
        yield started, http_base(started)
    finally:
        started.stop()


BEARER = {"Authorization": f"Bearer {TOKEN}"}


def test_tokens_as_for_grpc(guarded):
    server, base = guarded
    good = {"inputs": [tensor("IMAGE", np.full((2, 2), 5, np.uint8))]}
    missing = http(f"{base}/v2/models/mean/infer", good)
    assert_error(missing, 401, "Authorization: Bearer")
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    wrong = {"Authorization": "Bearer not-the-token"}
    assert_error(http(f"{base}/v2/models/mean/infer", good, headers=wrong), 401, "not valid")
    assert_error(http(f"{base}/v2"), 401)
    assert_error(http(f"{base}/v2/models"), 401)
    assert_error(http(f"{base}/v2/models/mean"), 401)
    assert_error(http(f"{base}/v2/models/mean/ready"), 401)
    png = io.BytesIO()
    Image.fromarray(np.full((2, 2), 5, np.uint8)).save(png, format="PNG")
    assert_error(http(f"{base}/v2/models/mean/run", png.getvalue()), 401)
    assert_error(http(f"{base}/v2/models/mean/run", png.getvalue(), headers=wrong), 401)
    ran = http(f"{base}/v2/models/mean/run", png.getvalue(), headers=BEARER)
    assert (ran.status, ran.json()["result"]) == (200, {"mean": 5.0})
    assert result_of(http(f"{base}/v2/models/mean/infer", good, headers=BEARER)) == {"mean": 5.0}
    assert http(f"{base}/v2/models", headers=BEARER).status == 200
    # Probes and the page need none; gRPC takes the same token.
    assert http(f"{base}/v2/health/ready").status == 200
    assert http(f"{base}/v2/health/live").status == 200
    assert http(f"{base}/").status == 200
    with ModelClient("mean", server.target, token=TOKEN) as client:
        assert client.run_image(np.full((2, 2), 5, np.uint8)) == {"mean": 5.0}


def test_too_large_is_413(guarded):
    _, base = guarded
    big = np.zeros((420, 1024), np.uint8)  # "0, " a pixel: a little over 1 MiB of JSON
    reply = http(f"{base}/v2/models/mean/infer", {"inputs": [tensor("IMAGE", big)]}, headers=BEARER)
    assert_error(reply, 413, "--max-message-mb")
    png = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png, format="PNG")
    padded = png.getvalue().ljust(1 << 20, b"\0")  # 1 MiB exactly: within the limit
    reply = http(f"{base}/v2/models/mean/run", padded, headers=BEARER)
    assert (reply.status, reply.json()["result"]) == (200, {"mean": 0.0}), reply.body
    assert http(f"{base}/v2/models/mean/run", padded + b"\0", headers=BEARER).status == 413


def test_an_answer_too_large_for_json_is_413_and_fits_as_binary(guarded):
    # 1000x1000 values are 2 MB of JSON at least, over the 1 MiB limit (and many times that
    # in memory on the way): refused before it is made, with what to do instead.
    _, base = guarded
    gray = np.zeros((1000, 1000), np.uint8)
    image = {"name": "IMAGE", "datatype": "UINT8", "shape": [1000, 1000]}
    image["parameters"] = {"binary_data_size": gray.nbytes}
    body, headers = binary_body({"inputs": [image]}, gray.tobytes())
    reply = http(f"{base}/v2/models/edges/infer", body, headers={**headers, **BEARER})
    assert_error(reply, 413, "2000000 bytes or more as JSON, over the 1 MiB", "binary_data")
    header = {"inputs": [image], "parameters": {"binary_data_output": True}}
    body, headers = binary_body(header, gray.tobytes())
    reply = http(f"{base}/v2/models/edges/infer", body, headers={**headers, **BEARER})
    assert reply.status == 200, reply.body
    assert len(reply.body) - int(reply.headers["Inference-Header-Content-Length"]) >= 10**6


@pytest.mark.parametrize(("model", "side"), [("noise", 600), ("field", 600)])
def test_a_run_answer_too_large_for_json_is_413(guarded, model, side):
    # A 600x600 picture of noise is over 1 MiB as PNG, and more in base64; a 600x600x2 field
    # is 720000 values, 1.4 MB of JSON at least: over the 1 MiB limit, refused unmade.
    _, base = guarded
    file = io.BytesIO()
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(file, format="PNG")
    url = f"{base}/v2/models/{model}/run?args=" + urllib.parse.quote(json.dumps({"side": side}))
    reply = http(url, file.getvalue(), headers=BEARER)
    assert_error(reply, 413, "images[0] takes", "over the 1 MiB", "RunImageToImage over gRPC")
    url = f"{base}/v2/models/{model}/run?args=" + urllib.parse.quote(json.dumps({"side": 40}))
    small = http(url, file.getvalue(), headers=BEARER)
    assert small.status == 200, small.body
    assert small.json()["images"][0]["shape"][:2] == [40, 40]


def test_a_full_worker_says_429(guarded):
    _, base = guarded
    good = {"inputs": [tensor("IMAGE", np.zeros((2, 2), np.uint8))]}
    replies: list[Reply] = []

    def call() -> None:
        replies.append(http(f"{base}/v2/models/slow/infer", good, headers=BEARER))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(reply.status for reply in replies)
    assert statuses[0] == 200
    assert 429 in statuses, [reply.body for reply in replies]
    busy = next(reply for reply in replies if reply.status == 429)
    assert_error(busy, 429, "busy")
    assert int(busy.headers["Retry-After"]) >= 1


def test_a_request_trickled_in_holds_its_connection_no_longer_than_slow_client_seconds(guarded):
    # Slowloris: headers sent a line at a time and never finished, or nothing sent at all.
    # Past --slow-client-seconds (2 here) the worker closes both connections; meanwhile, and
    # after, it serves other callers.
    _, base = guarded
    address = urllib.parse.urlsplit(base)
    began = time.monotonic()
    with (
        socket.create_connection((address.hostname, address.port), timeout=30) as trickling,
        socket.create_connection((address.hostname, address.port), timeout=30) as silent,
    ):
        trickling.sendall(b"POST /v2/models/mean/infer HTTP/1.1\r\nHost: tms\r\n")
        for line in range(3):
            time.sleep(0.4)
            trickling.sendall(b"X-Line-%d: more to come\r\n" % line)
        assert http(f"{base}/v2/health/ready").status == 200
        assert closed_by_peer(trickling)
        assert closed_by_peer(silent)
    assert time.monotonic() - began < 15
    assert http(f"{base}/v2/health/ready").status == 200


def test_an_answer_not_taken_holds_its_connection_no_longer_than_slow_client_seconds(guarded):
    # A caller that never reads kept the connection, and the answer's memory, for good.
    server, base = guarded
    address = urllib.parse.urlsplit(base)
    args = urllib.parse.quote(json.dumps({"times": 20_000_000}))  # a 20 MB answer
    request = (
        f"POST /v2/models/big/run?args={args} HTTP/1.1\r\nHost: tms\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: 1\r\n\r\nx"
    )
    with socket.socket() as caller:
        caller.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        caller.connect((address.hostname, address.port))
        caller.sendall(request.encode())
        time.sleep(5)  # past the 2 s, taking nothing
        caller.settimeout(30)
        taken = 0
        with contextlib.suppress(ConnectionResetError):
            while chunk := caller.recv(1 << 20):
                taken += len(chunk)
    assert taken < 20_000_000  # cut off
    assert http(f"{base}/v2/health/ready").status == 200
    assert "caller took no answer for 2s" in server.logs()
    assert "Traceback" not in server.logs()


def test_a_caller_that_leaves_mid_answer_costs_no_traceback(guarded):
    server, base = guarded
    address = urllib.parse.urlsplit(base)
    args = urllib.parse.quote(json.dumps({"times": 20_000_000}))
    request = (
        f"POST /v2/models/big/run?args={args} HTTP/1.1\r\nHost: tms\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: 1\r\n\r\nx"
    )
    for _ in range(3):
        with socket.create_connection((address.hostname, address.port), timeout=30) as caller:
            caller.sendall(request.encode())
            assert caller.recv(100).startswith(b"HTTP/1.1 200")
            caller.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert http(f"{base}/v2/health/ready").status == 200  # closed with a reset, above
    assert "Traceback" not in server.logs()


def answers(url: str) -> bool:
    """Whether a GET of ``url`` gets 200 (False when the connection is closed on it)."""
    try:
        return http(url).status == 200
    except OSError:
        return False


def test_a_worker_holds_at_most_max_connections(tmp_path):
    # As on the gRPC port: past --max-connections a new connection is closed as it arrives,
    # and once one closes another is taken.
    models = write_models(tmp_path / "models", {})
    shutil.copytree(EXAMPLE_MODELS / "mean", models / "mean")
    args = ("--http-port", "0", "--max-connections", "3")
    server = start_process(models, workers=1, args=args)
    try:
        base = http_base(server)
        address = urllib.parse.urlsplit(base)
        where = (address.hostname, address.port)
        with contextlib.ExitStack() as stack:
            held = [stack.enter_context(socket.create_connection(where, timeout=30)) for _ in "abc"]
            for connection in held:  # answered, and kept open (HTTP/1.1 keep-alive)
                connection.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: tms\r\n\r\n")
                assert connection.recv(1024).startswith(b"HTTP/1.1 200")
            with socket.create_connection(where, timeout=30) as extra:
                assert closed_by_peer(extra)
            held.pop().close()
            assert wait_for(lambda: answers(f"{base}/v2/health/live"), 10)
        with ModelClient("mean", server.target) as client:  # gRPC counts its own
            assert client.run_image(np.full((2, 2), 5, np.uint8)) == {"mean": 5.0}
    finally:
        assert server.stop() == 0, server.logs()


def test_bodies_that_never_finish_hold_no_more_than_max_untaken_mb(tmp_path):
    # Callers that send much of a large body and then nothing would each hold it for
    # --slow-client-seconds; past --max-untaken-mb in all, the largest are cut off at once.
    models = write_models(tmp_path / "models", {})
    shutil.copytree(EXAMPLE_MODELS / "mean", models / "mean")
    args = ("--http-port", "0", "--max-untaken-mb", "4", "--max-message-mb", "16")
    server = start_process(models, workers=1, args=(*args, "--slow-client-seconds", "60"))
    try:
        base = http_base(server)
        address = urllib.parse.urlsplit(base)
        where = (address.hostname, address.port)
        head = b"POST /v2/models/mean/infer HTTP/1.1\r\nHost: tms\r\nContent-Length: %d\r\n\r\n"
        with contextlib.ExitStack() as stack:
            held = [stack.enter_context(socket.create_connection(where, timeout=30)) for _ in "abc"]
            for connection in held:  # 3 x 2 MiB arrived, of 10 MiB each
                connection.sendall(head % (10 << 20) + b" " * (2 << 20))
            closed = sum(closed_by_peer(connection, timeout=5) for connection in held)
            assert closed >= 1, server.logs()
            assert "(--max-untaken-mb)" in server.logs()
            good = {"inputs": [tensor("IMAGE", np.full((2, 2), 7, np.uint8))]}
            assert result_of(http(f"{base}/v2/models/mean/infer", good)) == {"mean": 7.0}
    finally:
        assert server.stop() == 0, server.logs()


# -- the page -----------------------------------------------------------------------------------


def test_the_page_is_served(base):
    reply = http(f"{base}/")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/html")
    assert "Content-Security-Policy" in reply.headers
    assert b'type="file"' in reply.body


@pytest.fixture
def browser_page(base):
    """The page, open in headless Chromium (Debian's, as scripts/check.sh installs it)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium), "
            "as scripts/check.sh does"
        )
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 - only these tests

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            page = browser.new_page()
            page.goto(f"{base}/")
            page.wait_for_selector("#model option[value=face]", state="attached")
            yield page
        finally:
            browser.close()


def shown_result(page) -> tuple[str, Any]:
    """Wait for the page to show its answer: the status line and the JSON shown."""
    page.wait_for_selector("#result:not(:empty)", timeout=30_000)  # JSON, or an error
    return page.inner_text("#status"), json.loads(page.inner_text("#result"))


def test_page_in_chromium_finds_the_face(browser_page, astronaut_png, grpc_faces):
    """Pick the astronaut photo for `face` with the file input: the JSON shows the box the
    gRPC client gets, and the box is drawn over the photo."""
    page = browser_page
    page.select_option("#model", "face")
    page.set_input_files("#file", str(astronaut_png))
    status, shown = shown_result(page)
    assert status == "done: face", shown
    assert shown["result"] == {"faces": grpc_faces}
    assert page.get_attribute("#input-image", "data-boxes") == "1"


def test_page_in_chromium_takes_a_dropped_image(browser_page, astronaut_png):
    """Drop the photo on the page for `edges`: it shows the output image."""
    page = browser_page
    page.select_option("#model", "edges")
    png = base64.b64encode(astronaut_png.read_bytes()).decode()
    page.evaluate(
        """(png) => {
            const bytes = Uint8Array.from(atob(png), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "astronaut.png", { type: "image/png" }));
            const drop = document.getElementById("drop");
            drop.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true }));
        }""",
        png,
    )
    status, shown = shown_result(page)
    assert status == "done: edges", shown
    assert shown["images"][0]["shape"] == [512, 512]
    size = page.locator("img.output-image").evaluate(
        "(image) => image.decode().then(() => image.naturalWidth)"
    )
    assert size == 512


def test_infer_bodies_count_against_the_pixels_in_flight(tmp_path):
    # As over gRPC (test_oip.py): two calls whose images fit --max-pixels-in-flight side by
    # side run together, two larger than it one at a time. A binary body weighs the image its
    # JSON header declares; a body all JSON, half its length.
    models = write_models(tmp_path / "models", {"meet": MEET})
    server = start_in_process(
        models, http_port=0, host="127.0.0.1", threads=4, max_pixels_in_flight=1000
    )
    try:
        assert server.running.http is not None
        url = f"http://127.0.0.1:{server.running.http.port}/v2/models/meet/infer"

        def together(phase: str, side: int, binary: bool) -> list[bool]:
            image = np.zeros((side, side), np.uint8)
            params = {"args": {"phase": phase}}
            if binary:
                header = {
                    "inputs": [
                        {
                            "name": "IMAGE",
                            "datatype": "UINT8",
                            "shape": list(image.shape),
                            "parameters": {"binary_data_size": image.nbytes},
                        }
                    ],
                    "parameters": params,
                }
                body, headers = binary_body(header, image.tobytes())
            else:
                document = {"inputs": [tensor("IMAGE", image)], "parameters": params}
                body, headers = json.dumps(document).encode(), {}
            with ThreadPoolExecutor(2) as pool:
                replies = list(
                    pool.map(lambda _: http(url, body, method="POST", headers=headers), range(2))
                )
            return [result_of(reply)["together"] for reply in replies]

        assert together("binary small", 10, binary=True) == [True, True]  # 100 pixels each
        assert together("binary large", 40, binary=True) == [False, False]  # 1600 each
        assert together("json small", 10, binary=False) == [True, True]  # about 200 bytes
        assert together("json large", 40, binary=False) == [False, False]  # about 3200 bytes
    finally:
        server.running.stop(None)


def test_a_model_that_failed_to_load_is_not_ready(tmp_path):
    # 503 {"ready": false}, as for a model placed on other workers and as gRPC's ModelReady
    # says: not the error its calls get. No such model is still 404.
    broken = "raise RuntimeError('weights.bin not found')"
    models = write_models(tmp_path / "models", {"meet": MEET, "broken": broken})
    args = ("--http-port", "0", "--entry-points", "false", "--allow-failed-models")
    server = start_process(models, workers=1, args=args)
    try:
        base = http_base(server)
        for path in ("broken/ready", "broken/versions/1/ready"):
            ready = http(f"{base}/v2/models/{path}")
            assert (ready.status, ready.json()) == (503, {"ready": False}), ready.body
        assert http(f"{base}/v2/models/meet/ready").status == 200
        assert http(f"{base}/v2/models/nope/ready").status == 404
    finally:
        assert server.stop() == 0, server.logs()


def test_a_worker_in_process_serves_http_until_it_stops(tmp_path):
    """``build_server`` (what run_worker and tests call) starts HTTP with gRPC, and its stop
    ends both."""
    models = tmp_path / "models"
    shutil.copytree(EXAMPLE_MODELS / "mean", models / "mean")
    server = start_in_process(models, http_port=0, host="127.0.0.1")
    try:
        assert server.running.http is not None
        base = f"http://127.0.0.1:{server.running.http.port}"
        good = {"inputs": [tensor("IMAGE", np.full((2, 2), 9, np.uint8))]}
        assert result_of(http(f"{base}/v2/models/mean/infer", good)) == {"mean": 9.0}
        with ModelClient("mean", server.target) as client:
            assert client.run_image(np.full((2, 2), 9, np.uint8)) == {"mean": 9.0}
    finally:
        server.running.stop(None)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{base}/v2/health/live", timeout=5)


def test_a_client_sent_to_the_http_port_says_which_port_it_needs(base):
    # Triton users know HTTP on 8000 and gRPC on 8001: a client given the HTTP port finds no
    # gRPC server there, and the error says which port it wants.
    with pytest.raises(ConnectError, match=r"its gRPC port \(not its --http-port\)"):
        ModelClient("mean", base.removeprefix("http://"), connect_timeout=1).workers()
