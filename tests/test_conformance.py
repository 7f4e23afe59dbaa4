"""One conformance suite for every client: the Python, Go, TypeScript and Java runners make the
calls of tests/conformance/vectors.json against one live two-worker server, and each must print
every vector's expected outcome, the same lines in all four languages (tests/conformance/README.md
defines the vectors and the lines). Each runner also starts, again and again, against a server with
a stalled worker."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conformance.run_python import digest, generate
from tests.support import ROOT, ServerProcess, start_process, stopped, wait_for
from tests.toolchains import GO_MODULE, build_java_client, build_ts_client, find_go, run
from tms_client import ModelClient

pytestmark = pytest.mark.slow

CONFORMANCE = ROOT / "tests" / "conformance"
VECTORS = CONFORMANCE / "vectors.json"
DOCUMENT = json.loads(VECTORS.read_text())
LANGUAGES = ("python", "go", "typescript", "java")


def build_runner(language: str, out: Path) -> list[str]:
    """Build one language's runner; the command that runs it, less its arguments."""
    if language == "python":
        return [sys.executable, str(CONFORMANCE / "run_python.py")]
    if language == "go":
        binary = out / "tms-conformance"
        run(
            [find_go(), "build", "-o", str(binary), "./cmd/tms-conformance"],
            cwd=GO_MODULE,
            timeout=300,
        )
        return [str(binary)]
    if language == "typescript":
        return ["node", str(build_ts_client().with_name("conformance.js"))]
    return ["java", "-cp", build_java_client(), "io.tinymodelserver.tms.client.Conformance"]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    settings = DOCUMENT["server"]
    started = start_process(
        CONFORMANCE / "models", workers=settings["workers"], args=tuple(settings["args"])
    )
    yield started
    started.stop()


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], list[str]]:
    """The command that runs a language's runner, less its arguments; each is built once."""
    built: dict[str, list[str]] = {}

    def of(language: str) -> list[str]:
        if language not in built:
            built[language] = build_runner(language, tmp_path_factory.mktemp(language))
        return built[language]

    return of


@pytest.fixture(scope="module")
def outcomes(
    server: ServerProcess, runner: Callable[[str], list[str]]
) -> Callable[[str], list[dict[str, Any]]]:
    """A language's printed lines, parsed; each runner is run once."""
    printed: dict[str, list[dict[str, Any]]] = {}

    def of(language: str) -> list[dict[str, Any]]:
        if language not in printed:
            result = subprocess.run(
                [*runner(language), "--target", server.target, "--vectors", str(VECTORS)],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert result.returncode == 0, f"{language} runner failed:\n{result.stderr}"
            printed[language] = [json.loads(line) for line in result.stdout.splitlines()]
        return printed[language]

    return of


@pytest.mark.parametrize("language", LANGUAGES)
def test_each_client_meets_every_vector(outcomes, language):
    lines = outcomes(language)
    vectors = DOCUMENT["vectors"]
    assert [line["name"] for line in lines] == [vector["name"] for vector in vectors]
    wrong = {
        vector["name"]: {"expected": vector["expect"], "printed": line["outcome"]}
        for vector, line in zip(vectors, lines, strict=True)
        if line["outcome"] != vector["expect"]
    }
    assert not wrong, json.dumps(wrong, indent=1, ensure_ascii=False)


def test_every_client_prints_the_same_lines(outcomes):
    python = outcomes("python")
    for language in LANGUAGES[1:]:
        assert outcomes(language) == python, language


@pytest.fixture(scope="module")
def stalled_server() -> Iterator[ServerProcess]:
    """The conformance server with one of its two workers stopped (SIGSTOP; a wedged process
    in real life) and not replaced meanwhile: the kernel still hands it new connections, and
    nothing answers on them."""
    settings = DOCUMENT["server"]
    args = (*settings["args"], "--worker-timeout-seconds", "600")
    started = start_process(CONFORMANCE / "models", workers=2, args=args)
    try:
        with ModelClient("describe", started.target) as client:
            assert wait_for(lambda: len(client.workers()) == 2, timeout=30)
            victim = client.workers()[0].pid
        with stopped(victim):
            yield started
    finally:
        started.stop()


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_stalled_worker_neither_fails_nor_holds_up_a_start(
    stalled_server: ServerProcess,
    runner: Callable[[str], list[str]],
    language: str,
    tmp_path: Path,
) -> None:
    # Each run starts a client. A connection that lands on the stopped worker is given up
    # after a second (while half the connect timeout would be left): while no worker is known
    # the start opens another, once one is the start ends there. Before, such a connection
    # held a start for its whole connect timeout, and failed it when it came first. With a 30 s
    # connect timeout a start would fail only if 16 connections in a row landed on the
    # stopped worker (one start in 65,536).
    [vector] = [v for v in DOCUMENT["vectors"] if v["call"] == "ListModels"]
    vectors = tmp_path / "vectors.json"
    vectors.write_text(json.dumps({"server": DOCUMENT["server"], "vectors": [vector]}))
    command = [*runner(language), "--target", stalled_server.target, "--vectors", str(vectors)]
    command += ["--connect-timeout", "30"]
    took = []
    for _ in range(5):
        started = time.monotonic()
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        took.append(time.monotonic() - started)
        assert result.returncode == 0, f"{language} runner failed:\n{result.stderr}"
        [line] = [json.loads(line) for line in result.stdout.splitlines()]
        assert line["outcome"] == vector["expect"]
    assert statistics.median(took) < 10, took  # a third of the connect timeout


# -- the vectors themselves -----------------------------------------------------------------------


def test_the_pixel_formulas_are_the_readme_table():
    # Values worked out by hand from README.md's table, independent of run_python's code.
    assert generate("uint8", [4]).tolist() == [0, 1, 2, 3]
    assert generate("uint8", [252])[-1] == 0  # 251 mod 251
    assert generate("int8", [2]).tolist() == [-125, -124]
    assert generate("uint16", [3]).tolist() == [0, 257, 514]
    assert generate("int16", [2]).tolist() == [-32768, -32511]
    assert generate("int32", [2]).tolist() == [-1000000, -934463]
    assert generate("int64", [2]).tolist() == [-1099511627776, -1095216660465]
    assert generate("float16", [3]).tobytes() == bytes.fromhex("00c8c0c780c7")  # -8, -7.75, -7.5
    assert generate("float32", [2]).tolist() == [-8.0, -7.75]
    assert generate("float64", [2]).tolist() == [-16.0, -15.875]
    assert generate("bool", [4]).tolist() == [True, False, False, True]
    assert generate("uint16", [2, 2]).tobytes() == bytes.fromhex("0000010102020303")


def test_every_described_image_expects_the_digest_of_its_pixels():
    """A vector sending generated pixels to `describe` must expect the digest they have (so an
    edit to the file cannot leave it expecting something no client could print)."""
    checked = 0
    for vector in DOCUMENT["vectors"]:
        if (vector["call"], vector.get("model")) != ("RunImage", "describe"):
            continue
        if "result" not in vector["expect"]:
            continue
        [image] = vector["images"]
        if "generate" in image:
            pixels = generate(**image["generate"])
        else:
            pixels = np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000  # gray16_3x4.png
        expected = vector["expect"]["result"]
        assert (expected["dtype"], expected["shape"]) == (str(pixels.dtype), list(pixels.shape))
        assert expected["sha256"] == digest(pixels), vector["name"]
        checked += 1
    assert checked >= 12


def test_the_vectors_cover_every_call_and_dtype():
    vectors = DOCUMENT["vectors"]
    assert {vector["call"] for vector in vectors} == {
        "ListModels",
        "GetModelInfo",
        "Health",
        "RunImage",
        "RunImageBatch",
        "RunImageToImage",
        "RunImageStream",
        "RunText",
        "RunTextBatch",
    }
    sent = {
        image["generate"]["dtype"]
        for vector in vectors
        for image in vector.get("images", [])
        if "generate" in image
    }
    assert sent == {"uint8", "int8", "uint16", "int16", "int32", "int64"} | {
        "float16",
        "float32",
        "float64",
        "bool",
    }
    reasons = {
        vector["expect"]["error"]["reason"] for vector in vectors if "error" in vector["expect"]
    }
    assert len(reasons) >= 8
