"""Dynamic batching: RunImage calls to a model with ``max_batch_delay`` gathered into batches."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
import pytest

from tests.support import EXAMPLE_MODELS, digit_scans, start_process, write_models
from tms.v1 import model_service_pb2, model_service_pb2_grpc
from tms_cli.__main__ import main as cli_main
from tms_client import InvalidInputError, ModelClient, ModelFailedError
from tms_server.batching import Batcher
from tms_server.callinfo import CURRENT, CallInfo
from tms_server.registry import describe
from tms_server.settings import parse_settings

pb = model_service_pb2

# Each model answers with what it saw: the value of the image (its first pixel) and the size
# of the batch it came in. A batch is full at 4 calls, so 4 calls at once run as one batch
# long before the delay (1 s) has passed, however busy the machine.
RECORDER = '''
    import tms_server

    class Model(tms_server.Model):
        """Records the batches it runs."""
        max_batch_size = 4
        max_batch_delay = 1.0
        FAIL = None  # the value that makes run_batch raise, and what it raises

        def run(self, image, args):
            raise AssertionError("a batched model's RunImage calls go to run_batch")

        def run_batch(self, images, args):
            values = [int(image[0, 0]) for image in images]
            if self.FAIL is not None and self.FAIL[0] in values:
                raise self.FAIL[1]
            return [{"value": v, "batch": len(values), "args": args} for v in values]
'''
MODELS = {
    "recorder": RECORDER,
    "picky": RECORDER.replace(
        "FAIL = None", "FAIL = (13, tms_server.InvalidInput('13 is unlucky'))"
    ),
    "fragile": RECORDER.replace("FAIL = None", "FAIL = (13, RuntimeError('13 broke it'))"),
    "short": RECORDER.replace("for v in values]", "for v in values][1:]"),
    "plain": """
        import tms_server

        class Model(tms_server.Model):
            def run(self, image, args):
                return {"value": int(image[0, 0])}
    """,
}
SLOW = """
    import tms_server

    class Model(tms_server.Model):
        max_batch_delay = 0.2

        def run_batch(self, images, args):
            return [len(images) for _ in images]

        def run(self, image, args):
            return -1
"""


def pixel(value: int) -> np.ndarray:
    return np.full((2, 2), value, np.uint8)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models(tmp_path_factory.mktemp("models"), MODELS)


@pytest.fixture
def server(in_process_server, models):
    return in_process_server(models, threads=8)


def run_at_once(
    target: str, model: str, values: list[int], args: dict[str, Any] | None = None
) -> list[Any]:
    """RunImage of each value, all at once from threads of their own: results or errors."""
    with ModelClient(model, target, connect_timeout=5) as client:
        client.workers()  # connected before the calls start

        def call(value: int) -> object:
            try:
                return client.run_image(pixel(value), args or {})
            except Exception as exc:
                return exc

        with ThreadPoolExecutor(len(values)) as pool:
            return list(pool.map(call, values))


def model_info(target: str, model: str) -> pb.ModelInfo:
    with grpc.insecure_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        return stub.GetModelInfo(pb.GetModelInfoRequest(model=model), timeout=10).info


# --- the batcher alone


def test_batcher_runs_calls_together_and_gives_each_its_own_result():
    sizes: list[int] = []
    batcher = Batcher(max_size=4, delay=1.0, observe=sizes.append)
    seen: list[list[int]] = []
    infos = [CallInfo("RunImage", f"call-{i}") for i in range(4)]
    results: list[object] = [None] * 4

    def run_batch(items: list[int]) -> list[int]:
        seen.append(list(items))
        return [item * 10 for item in items]

    def caller(index: int) -> None:
        CURRENT.set(infos[index])
        results[index] = batcher.run(index, "", run_batch)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [0, 10, 20, 30]
    assert len(seen) == 1
    assert sorted(seen[0]) == [0, 1, 2, 3]
    # The calls that waited for the leader count the batch's time in the model as theirs.
    assert sum(info.model_seconds is not None for info in infos) >= 3
    # The batch's size is told once, as it runs (tms_batch_size).
    assert sizes == [4]
    assert "gathering=0" in repr(batcher)


def test_a_batch_is_counted_whatever_became_of_the_call_that_leads_it():
    """The size of a batch is told by the batcher as the batch runs, not through the leading
    call's record, which a caller that left (cancelled) has already closed; here no call
    record exists at all."""
    sizes: list[int] = []
    batcher = Batcher(max_size=3, delay=1.0, observe=sizes.append)
    results: list[object] = [None] * 3

    def caller(index: int) -> None:
        CURRENT.set(None)
        results[index] = batcher.run(index, "", lambda items: [item + 1 for item in items])

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [1, 2, 3]
    assert sizes == [3]


def test_batcher_keeps_calls_of_different_keys_apart():
    batcher = Batcher(max_size=2, delay=1.0)
    seen: list[list[str]] = []

    def run_batch(items: list[str]) -> list[str]:
        seen.append(list(items))
        return [item.upper() for item in items]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda item: batcher.run(item, item[0], run_batch), "aabb"))
    assert results == ["A", "A", "B", "B"]
    assert sorted(seen) == [["a", "a"], ["b", "b"]]


# --- through the server


def test_concurrent_calls_run_as_one_batch_each_with_its_own_result(server):
    results = run_at_once(server.target, "recorder", [1, 2, 3, 4])
    assert [r["value"] for r in results] == [1, 2, 3, 4]
    assert [r["batch"] for r in results] == [4, 4, 4, 4]


def test_a_batch_holds_at_most_max_batch_size_calls(server):
    results = run_at_once(server.target, "recorder", list(range(1, 9)))
    assert [r["value"] for r in results] == list(range(1, 9))
    assert max(r["batch"] for r in results) <= 4


def test_the_args_reach_the_batch(server):
    results = run_at_once(server.target, "recorder", [1, 2], {"k": 1})
    assert [r["args"] for r in results] == [{"k": 1}, {"k": 1}]


def test_an_input_the_model_rejects_fails_only_its_own_call(server):
    results = run_at_once(server.target, "picky", [1, 13, 3, 4])
    assert isinstance(results[1], InvalidInputError)
    assert "13 is unlucky" in str(results[1])
    # The others ran again, each alone, once the batch had failed.
    others = [results[i] for i in (0, 2, 3)]
    assert [(r["value"], r["batch"]) for r in others] == [(1, 1), (3, 1), (4, 1)]


def test_an_input_the_model_fails_on_fails_only_its_own_call(server):
    results = run_at_once(server.target, "fragile", [13, 2, 3, 4])
    assert isinstance(results[0], ModelFailedError)
    assert "13 broke it" in str(results[0])
    assert [r["value"] for r in results[1:]] == [2, 3, 4]


def test_a_model_that_returns_too_few_results_fails_the_calls(server):
    results = run_at_once(server.target, "short", [1, 2, 3, 4])
    assert all(isinstance(r, ModelFailedError) for r in results), results
    assert all("returned 0 results for 1 inputs" in str(r) for r in results)


def test_a_bad_image_fails_alone_before_it_reaches_a_batch(server):
    images = [pixel(1), b"\xff\xd8 a broken JPEG", pixel(3)]
    with ModelClient("recorder", server.target, connect_timeout=5) as client:
        client.workers()
        with ThreadPoolExecutor(len(images)) as pool:
            futures = [pool.submit(client.run_image, image) for image in images]
        with pytest.raises(InvalidInputError, match="image"):
            futures[1].result()
        good = [futures[0].result(), futures[2].result()]
    assert [r["value"] for r in good] == [1, 3]
    assert all(r["batch"] <= 2 for r in good)


def test_a_first_call_waits_for_company_and_calls_one_at_a_time_do_not(in_process_server, tmp_path):
    server = in_process_server(write_models(tmp_path, {"slow": SLOW}))
    with ModelClient("slow", server.target, connect_timeout=5) as client:
        began = time.perf_counter()
        assert client.run_image(pixel(1)) == 1  # a batch of one, through run_batch
        assert time.perf_counter() - began > 0.15  # it waited (0.2 s) for others


def test_a_lone_call_after_lone_calls_runs_at_once():
    batcher = Batcher(max_size=4, delay=60.0)  # a wait would outlast the test
    batcher._last_size = 1  # the last batch held one call
    done = threading.Event()

    def caller() -> None:
        assert batcher.run(7, "", lambda items: [i * 2 for i in items]) == 14
        done.set()

    threading.Thread(target=caller, daemon=True).start()
    assert done.wait(30)


def test_a_call_on_the_event_loop_never_waits_for_company():
    # A call proven quick runs on the worker's event loop, through which every other call
    # comes: none can join while it waits, and every other call of the worker would wait too.
    batcher = Batcher(max_size=4, delay=60.0)  # a wait would outlast the test
    batcher._last_size = 3  # after a burst: a call on a thread would wait for company

    async def on_the_loop() -> int:
        return batcher.run(7, "", lambda items: [i * 2 for i in items])

    done = threading.Event()

    def caller() -> None:
        assert asyncio.run(on_the_loop()) == 14
        done.set()

    threading.Thread(target=caller, daemon=True).start()
    assert done.wait(30)


def test_model_info_reports_the_batch_settings(server):
    info = model_info(server.target, "recorder")
    assert info.max_batch_delay.ToMilliseconds() == 1000
    assert info.max_batch_size == 4
    assert not model_info(server.target, "plain").HasField("max_batch_delay")
    # The Python client's ModelInfo, and the CLI's `tms info`, say the same.
    with ModelClient("recorder", server.target) as client:
        described = client.info()
    assert (described.max_batch_delay, described.max_batch_size) == (1.0, 4)
    with ModelClient("plain", server.target) as client:
        assert client.info().max_batch_delay is None


def test_tms_info_shows_the_batching(server, capsys):
    assert cli_main(["--target", server.target, "info", "recorder"]) == 0
    assert "batching:     calls within 1000 ms run as one batch\n" in capsys.readouterr().out
    assert cli_main(["--target", server.target, "--json", "info", "recorder"]) == 0
    assert json.loads(capsys.readouterr().out)["max_batch_delay"] == 1.0


def test_flags_override_the_models_batch_settings(in_process_server, models):
    settings = parse_settings(
        [
            "--model-max-batch-delay-ms",
            "recorder=off,plain=0.5",
            "--model-max-batch-size",
            "plain=3",
        ],
        {},
    )
    server = in_process_server(
        models,
        model_max_batch_delay_ms=settings.model_max_batch_delay_ms,
        model_max_batch_size=settings.model_max_batch_size,
    )
    recorder, plain = model_info(server.target, "recorder"), model_info(server.target, "plain")
    assert not recorder.HasField("max_batch_delay")
    assert plain.max_batch_delay.ToMicroseconds() == 500
    assert plain.max_batch_size == 3
    (error,) = run_at_once(server.target, "recorder", [1])  # run, not batched
    assert isinstance(error, ModelFailedError)
    assert "go to run_batch" in str(error)
    # plain has only run: the default run_batch calls it for each image of a batch.
    assert run_at_once(server.target, "plain", [5, 6, 7]) == [{"value": v} for v in (5, 6, 7)]


def test_environment_sets_the_batch_settings():
    environ = {"TMS_MODEL_MAX_BATCH_DELAY_MS": "a=5, b=off", "TMS_MODEL_MAX_BATCH_SIZE": "a=8"}
    batching = parse_settings([], environ).batching
    assert batching.delays == {"a": 0.005, "b": None}
    assert batching.sizes == {"a": 8}
    flags = ["--model-max-batch-delay-ms", "a=1", "--threads", "6"]
    batching = parse_settings(flags, environ).batching
    assert batching.delays == {"a": 0.001}
    assert batching.threads == 6


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--model-max-batch-delay-ms", "a=1001", "MS from 0 to 1000"),
        ("--model-max-batch-delay-ms", "a=-1", "MS from 0 to 1000"),
        ("--model-max-batch-delay-ms", "a=soon", "MS from 0 to 1000"),
        ("--model-max-batch-delay-ms", "a=nan", "MS from 0 to 1000"),
        ("--model-max-batch-delay-ms", "5", "expected MODEL=MS"),
        ("--model-max-batch-delay-ms", "=5", "expected MODEL=MS"),
        ("--model-max-batch-size", "a=0", "N from 1 to 64"),
        ("--model-max-batch-size", "a=2.5", "N from 1 to 64"),
        # Over --max-batch-size (64 by default): no batch of the model could be that large.
        ("--model-max-batch-size", "a=65", "N from 1 to 64 (--max-batch-size)"),
    ],
)
def test_bad_batch_settings_stop_the_server_naming_the_setting(capsys, flag, value, expected):
    with pytest.raises(SystemExit):
        parse_settings([flag, value], {})
    error = capsys.readouterr().err
    variable = "TMS_" + flag.removeprefix("--").replace("-", "_").upper()
    assert f"{flag} ({variable}): {value!r} is not valid" in error
    assert expected in error
    with pytest.raises(SystemExit):
        parse_settings([], {"TMS_" + flag.removeprefix("--").replace("-", "_").upper(): value})


@pytest.mark.parametrize("delay", [-0.1, 1.5, "fast", True])
def test_a_bad_max_batch_delay_makes_the_model_fail_to_load(delay):
    model_class = type("Model", (), {"max_batch_delay": delay, "run": lambda self, i, a: 0})
    with pytest.raises(TypeError, match="max_batch_delay"):
        describe("bad", model_class, model_class())


def test_the_environment_reaches_the_worker_of_a_real_server(tmp_path):
    models = write_models(tmp_path, {"recorder": RECORDER})
    server = start_process(models, workers=1, env={"TMS_MODEL_MAX_BATCH_DELAY_MS": "recorder=250"})
    try:
        assert model_info(server.target, "recorder").max_batch_delay.ToMilliseconds() == 250
        results = run_at_once(server.target, "recorder", [1, 2, 3, 4])
        assert [r["value"] for r in results] == [1, 2, 3, 4]
    finally:
        server.stop()


# --- the example model


def text_line(text: str) -> np.ndarray:
    line = np.full((32, 12 * len(text) + 16, 3), 255, np.uint8)
    cv2.putText(line, text, (6, 23), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 2)
    return line


def test_upright_gives_the_same_results_batched_as_one_at_a_time(in_process_server, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "upright").symlink_to(EXAMPLE_MODELS / "upright", target_is_directory=True)
    lines = [text_line(t) for t in ("Tiny Model Server", "batching", "ONNX Runtime 1.2")]
    images = [*lines, *(line[::-1, ::-1] for line in lines)]
    server = in_process_server(models)
    assert model_info(server.target, "upright").HasField("max_batch_delay")
    off = in_process_server(models, model_max_batch_delay_ms=("upright=off",))
    with ModelClient("upright", off.target, connect_timeout=5) as client:
        alone = [client.run_image(image) for image in images]
    with (
        ModelClient("upright", server.target, connect_timeout=5) as client,
        ThreadPoolExecutor(len(images)) as pool,
    ):
        batched = list(pool.map(client.run_image, images))
    assert [r["angle"] for r in alone] == [0, 0, 0, 180, 180, 180]
    assert [r["angle"] for r in batched] == [r["angle"] for r in alone]
    assert [r["score"] for r in batched] == pytest.approx([r["score"] for r in alone], abs=1e-5)


def test_digits_gives_the_same_results_batched_as_one_at_a_time(in_process_server, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "digits").symlink_to(EXAMPLE_MODELS / "digits", target_is_directory=True)
    scans, truth = digit_scans()
    images = scans[:48]
    server = in_process_server(models)
    assert model_info(server.target, "digits").max_batch_size == 16
    off = in_process_server(models, model_max_batch_delay_ms=("digits=off",))
    with ModelClient("digits", off.target, connect_timeout=5) as client:
        alone = [client.run_image(image) for image in images]
    with (
        ModelClient("digits", server.target, connect_timeout=5) as client,
        ThreadPoolExecutor(16) as pool,
    ):
        batched = list(pool.map(client.run_image, images))
    assert [r["digit"] for r in alone] == list(truth[:48])
    assert batched == alone
