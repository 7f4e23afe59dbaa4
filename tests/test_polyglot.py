"""The proto as a contract for every language: the Go and TypeScript clients (built from
clients/go and clients/ts) and ``buf curl`` (reflection only, no proto) against a live server,
agreeing with the Python client."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.toolchains import (
    GO_MODULE,
    build_go_client,
    build_ts_client,
    find_buf,
    find_go,
    run,
)
from tms_client import ModelClient

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def photo_png(tmp_path_factory, astronaut_bgr) -> Path:
    """The astronaut photo as a PNG file (RGB, lossless: the same pixels as astronaut_bgr)."""
    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(np.ascontiguousarray(astronaut_bgr[:, :, ::-1])).save(path)
    return path


@pytest.fixture(scope="module")
def python_answers(example_server, astronaut_bgr) -> dict[str, object]:
    """What the Python client gets: the reference the other languages must match."""
    with ModelClient("face", example_server.target) as face:
        faces = face.run_image(astronaut_bgr)
        models = [info.name for info in face.list_models()]
    with ModelClient("edges", example_server.target) as edges:
        edge_image = edges.run_image_to_image(astronaut_bgr).image
    assert faces["faces"], "the photo has a face"
    assert edge_image.dtype == np.uint8
    return {"faces": faces, "models": models, "edges": edge_image}


@pytest.fixture(scope="module")
def go_client(tmp_path_factory) -> list[str]:
    return [str(build_go_client(tmp_path_factory.mktemp("go")))]


@pytest.fixture(scope="module")
def ts_client() -> list[str]:
    return ["node", str(build_ts_client())]


def call(command: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=60, check=False
    )


def ok(command: list[str], *args: str) -> str:
    result = call(command, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("language", ["go", "ts"])
def test_client_agrees_with_python(
    language, request, example_server, photo_png, python_answers, tmp_path
):
    client = request.getfixturevalue(f"{language}_client")
    addr = ["--addr", example_server.target]

    assert ok(client, *addr, "models").split() == python_answers["models"]

    faces = json.loads(ok(client, *addr, "run", "face", str(photo_png)))
    assert faces == python_answers["faces"]

    edges_file = tmp_path / "edges.raw"
    described = json.loads(ok(client, *addr, "i2i", "edges", str(photo_png), str(edges_file)))
    expected = python_answers["edges"]
    assert described["dtype"] == "D_TYPE_UINT8"
    assert described["shape"] == list(expected.shape)
    assert described["color"] == "COLOR_ORDER_GRAY"
    assert edges_file.read_bytes() == expected.tobytes()  # byte for byte


@pytest.mark.parametrize("language", ["go", "ts"])
def test_client_reports_status_codes(language, request, example_server, photo_png):
    client = request.getfixturevalue(f"{language}_client")
    result = call(client, "--addr", example_server.target, "run", "no_such_model", str(photo_png))
    assert result.returncode == 1
    code = {"go": "NotFound", "ts": "NOT_FOUND"}[language]
    assert result.stderr.startswith(f"error: {code}: "), result.stderr
    assert "no model named 'no_such_model'" in result.stderr


def test_go_client_sends_pixels_decoded_in_go(go_client, example_server, photo_png, python_answers):
    """-decode: the PNG decoded by Go's image package and sent as raw RGB pixels."""
    output = ok(go_client, "-addr", example_server.target, "-decode", "run", "face", str(photo_png))
    assert json.loads(output) == python_answers["faces"]


def test_go_code_is_formatted_and_vetted():
    go = find_go()
    assert run([str(Path(go).with_name("gofmt")), "-l", "."], cwd=GO_MODULE, timeout=60) == ""
    run([go, "vet", "./..."], cwd=GO_MODULE, timeout=300)


def buf_curl(target: str, path: str, *options: str) -> subprocess.CompletedProcess[str]:
    """``buf curl`` over plaintext HTTP/2 at ``http://target/path``; schemas from reflection."""
    command = [find_buf(), "curl", "--protocol", "grpc", "--http2-prior-knowledge", *options]
    return subprocess.run(
        [*command, f"http://{target}/{path}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_buf_curl_needs_only_reflection(example_server):
    listed = buf_curl(example_server.target, "", "--list-services")
    assert listed.returncode == 0, listed.stderr
    assert {
        "tms.v1.ModelService",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
    } <= set(listed.stdout.split())

    models = buf_curl(example_server.target, "tms.v1.ModelService/ListModels")
    assert models.returncode == 0, models.stderr
    names = [model["name"] for model in json.loads(models.stdout)["models"]]
    assert {"face", "edges"} <= set(names)

    missing = buf_curl(
        example_server.target, "tms.v1.ModelService/GetModelInfo", "-d", '{"model": "nope"}'
    )
    assert missing.returncode != 0
    assert '"code": "not_found"' in missing.stdout + missing.stderr
