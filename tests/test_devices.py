"""Devices, placement and thread counts in real server processes, on a machine without a GPU:
models that report their environment show what each worker was given."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support import wait_for, write_models
from tests.test_metrics import by_labels, metrics_url, scrape
from tms.v1 import model_service_pb2, model_service_pb2_grpc
from tms_cli.__main__ import main as tms
from tms_client import ModelClient, ModelNotReadyError, RetryPolicy, RoundRobin
from tms_server.board import SETTLED_SECONDS
from tms_server.cpus import THREAD_VARIABLES, available_cpus

pytestmark = pytest.mark.slow

REPORT = """
    import ctypes, os
    import tms_server

    def blas_threads():
        # numpy's OpenBLAS, loaded before the worker forked: told its threads since?
        for line in open("/proc/self/maps"):
            if "openblas" in line.lower():
                library = ctypes.CDLL(line.split()[-1])
                get = getattr(library, "scipy_openblas_get_num_threads64_", None)
                return get() if get is not None else None
        return None

    class Model(tms_server.Model):
        thread_safe = True
        PLACEMENT

        def __init__(self, device="(not passed)", worker_index=-1):
            self.given = {"device": device, "worker_index": worker_index}

        def run(self, image, args):
            return {
                "pid": os.getpid(),
                "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
                "worker_index": self.worker_index,
                "device": self.device,
                "threads": self.threads,
                "given": self.given,
                "blas": blas_threads(),
            }
"""
MODELS = {
    "env": REPORT.replace("PLACEMENT", "# on every worker"),
    "solo": REPORT.replace("PLACEMENT", "workers = 1"),
    "gpu_only": REPORT.replace("PLACEMENT", 'devices = ("cuda",)'),
}
PIXEL = np.zeros((1, 1), np.uint8)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models(tmp_path_factory.mktemp("models"), MODELS)


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No thread or GPU variables inherited from whoever runs the tests."""
    for name in (*THREAD_VARIABLES, "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)


def reports(client: ModelClient, calls: int) -> dict[int, dict[str, object]]:
    """What the model said in ``calls`` calls, by the worker index that answered."""
    return {r["worker_index"]: r for r in (client.run_image(PIXEL) for _ in range(calls))}


def test_two_gpus_one_worker_each(server_process, models, clean_environment):
    server = server_process(
        models,
        workers=None,
        args=("--devices", "cuda:0,cuda:1", "--workers-per-device", "1", "--metrics-port", "0"),
        env={"MKL_NUM_THREADS": "5"},  # set by whoever runs the server: kept
    )
    threads = max(1, available_cpus() // 2)
    with ModelClient("env", server.target, balancer=RoundRobin()) as env:
        workers = env.workers()
        assert [(w.index, w.count, w.device) for w in workers] == [
            (0, 2, "cuda:0"),
            (1, 2, "cuda:1"),
        ]
        assert [sorted(w.models) for w in workers] == [
            ["env", "gpu_only", "solo"],
            ["env", "gpu_only"],
        ]
        seen = reports(env, 6)
        # Each worker sees its own GPU alone, as cuda:0; the model is told so twice.
        for index in (0, 1):
            assert seen[index] == {
                "pid": workers[index].pid,
                "CUDA_VISIBLE_DEVICES": str(index),
                "OMP_NUM_THREADS": str(threads),
                "MKL_NUM_THREADS": "5",
                "worker_index": index,
                "device": "cuda:0",
                "threads": threads,
                "given": {"device": "cuda:0", "worker_index": index},
                "blas": threads,
            }
        # Every worker describes every model alike.
        names = [info.name for info in env.list_models()]
        assert names == ["env", "gpu_only", "solo"]

    # A model placed on one worker: all its calls go there, the client knows where.
    with ModelClient("solo", server.target) as solo:
        pids = {solo.run_image(PIXEL)["pid"] for _ in range(20)}
        assert pids == {workers[0].pid}
        assert solo.info().name == "solo"
    # Its health is asked of a worker that has it, whichever client asks (the tms command
    # asks with a client of the whole server).
    with ModelClient("", server.target) as whole:
        assert {whole.health("solo") for _ in range(20)} == {"SERVING"}
    for _ in range(6):  # tms health too, whichever worker its first connection reaches
        assert tms(["--target", server.target, "--json", "health"]) == 0

    with per_worker(server.target) as channels:
        assert set(channels) == {0, 1}
        for index, channel in channels.items():
            stub = models_of(channel)
            info = stub.GetWorkerInfo(model_service_pb2.GetWorkerInfoRequest())
            assert info.device == f"cuda:{index}"
            listed = stub.ListModels(model_service_pb2.ListModelsRequest())
            assert [m.name for m in listed.models] == ["env", "gpu_only", "solo"]
            request = model_service_pb2.GetModelInfoRequest(model="solo")
            assert stub.GetModelInfo(request).info.name == "solo"
        assert {i: health_of(c, "solo") for i, c in channels.items()} == {
            0: "SERVING",
            1: "NOT_SERVING",
        }
        # Sent to the worker without it anyway (the client never does): FAILED_PRECONDITION,
        # with no RetryInfo once worker 0 has served a while.
        time.sleep(SETTLED_SECONDS)
        request = model_service_pb2.RunImageRequest(model="solo")
        with pytest.raises(grpc.RpcError) as refused:
            models_of(channels[1]).RunImage(request)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.details() == (
        "model 'solo' is not loaded in worker 1 (cuda:1): it is placed on worker 0 (cuda:0); "
        "send its calls there (tms_client does)"
    )

    samples = scrape(metrics_url(server))
    assert by_labels(samples, "tms_worker_info", "worker", "device") == {
        ("0", "cuda:0"): 1.0,
        ("1", "cuda:1"): 1.0,
    }
    assert "workers on devices: 0 cuda:0, 1 cuda:1" in server.logs()
    assert "worker 1 on cuda:1 (CUDA_VISIBLE_DEVICES='1')" in server.logs()
    assert "model 'solo' is placed on worker 0 (cuda:0)" in server.logs()


def test_calls_for_a_model_on_one_worker_wait_out_its_restart(server_process, models):
    """While the one worker that has a model is replaced, the client knows no worker for it
    and asks the others, which say where it is and to try again (RetryInfo): the calls wait
    for the new worker instead of failing."""
    server = server_process(models, workers=2)
    failures: list[BaseException] = []
    answered: set[int] = set()
    stop = threading.Event()
    with ModelClient("solo", server.target, timeout=30) as solo:
        (holder,) = {w.pid for w in solo.workers() if "solo" in w.models}

        def call() -> None:
            while not stop.is_set():
                try:
                    answered.add(solo.run_image(PIXEL)["pid"])
                except Exception as exc:
                    failures.append(exc)

        callers = [threading.Thread(target=call) for _ in range(8)]
        for caller in callers:
            caller.start()
        try:
            for _ in range(2):  # the holder killed twice, calls going on all the while
                time.sleep(0.5)
                os.kill(holder, signal.SIGKILL)
                answered.clear()
                assert wait_for(lambda old=holder: answered - {old}, 30), "no new worker answered"
                (holder,) = answered - {holder}
            time.sleep(0.5)
        finally:
            stop.set()
            for caller in callers:
                caller.join(35)
    assert failures == []


def test_a_worker_that_has_no_model_gets_no_call(server_process, tmp_path):
    """The worker without the one model (placed on the other) says it serves none, not an
    empty list (which means every model, as older servers send): no call goes to it."""
    models = write_models(tmp_path / "models", {"solo": MODELS["solo"]})
    server = server_process(models, workers=2)
    with ModelClient(
        "solo", server.target, balancer=RoundRobin(), retry=RetryPolicy.never()
    ) as solo:
        assert len(solo.workers()) == 2
        answered = {solo.run_image(PIXEL)["pid"] for _ in range(10)}
        assert [w.pid for w in solo.workers() if "solo" in w.models] == list(answered)


def test_calls_for_a_model_that_failed_on_its_one_worker_fail_at_once(server_process, tmp_path):
    """Its worker serves (the other models), and has for a while: the others do not ask to
    try again, and a call fails at once wherever it lands, with no RetryInfo."""
    broken = """
        import tms_server

        class Model(tms_server.Model):
            workers = 1

            def __init__(self):
                raise RuntimeError("no weights")

            def run(self, image, args):
                return {}
    """
    models = write_models(tmp_path / "models", {"env": MODELS["env"], "broken": broken})
    server = server_process(models, workers=3, args=("--allow-failed-models",))
    time.sleep(SETTLED_SECONDS)  # until then, calls are asked to wait for a worker starting
    with ModelClient("broken", server.target, balancer=RoundRobin()) as client:
        for _ in range(6):
            began = time.monotonic()
            with pytest.raises(ModelNotReadyError) as caught:
                client.run_image(PIXEL)
            assert time.monotonic() - began < 0.5, caught.value
            assert caught.value.retry_delay is None
    assert "no weights" in server.logs()


def test_a_gpu_and_the_cpu_with_the_servers_own_gpu_list(server_process, models, clean_environment):
    server = server_process(
        models,
        workers=2,
        args=("--devices", "cuda:1,cpu", "--model-threads", "3"),
        env={"CUDA_VISIBLE_DEVICES": "5,7", "MKL_NUM_THREADS": "5"},
    )
    with ModelClient("env", server.target, balancer=RoundRobin()) as env:
        workers = env.workers()
        assert [(w.device, sorted(w.models)) for w in workers] == [
            ("cuda:1", ["env", "gpu_only", "solo"]),
            ("cpu", ["env"]),
        ]
        seen = reports(env, 6)
    # The server's cuda:1 is the second GPU it sees: GPU 7. The cpu worker sees none.
    assert [seen[i]["CUDA_VISIBLE_DEVICES"] for i in (0, 1)] == ["7", ""]
    assert [seen[i]["device"] for i in (0, 1)] == ["cuda:0", "cpu"]
    # --model-threads sets every variable, those inherited too.
    for index in (0, 1):
        assert seen[index]["threads"] == 3
        assert seen[index]["OMP_NUM_THREADS"] == seen[index]["MKL_NUM_THREADS"] == "3"
        assert seen[index]["blas"] == 3
    with ModelClient("gpu_only", server.target) as gpu_only:
        assert {gpu_only.run_image(PIXEL)["pid"] for _ in range(10)} == {workers[0].pid}
    with per_worker(server.target) as channels:
        health = {index: health_of(channel, "gpu_only") for index, channel in channels.items()}
    assert health == {0: "SERVING", 1: "NOT_SERVING"}


def test_a_model_no_worker_can_load_fails_on_every_worker(server_process, models):
    server = server_process(models, workers=2)  # on the cpu: gpu_only asks for a GPU
    with ModelClient("gpu_only", server.target) as gpu_only:
        assert all(w.device == "cpu" for w in gpu_only.workers())
        assert all("gpu_only" not in w.models for w in gpu_only.workers())  # none serves it
        with pytest.raises(ModelNotReadyError, match="no worker runs on cuda"):
            gpu_only.run_image(PIXEL)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--devices", "cuda:0,cuda:1", "--workers", "3", "--workers-per-device", "2"],
            "tms-server: error: workers=3 contradicts devices=cuda:0,cuda:1 with "
            "workers_per_device=2 (2 x 2 = 4 workers); set one of workers and workers_per_device",
        ),
        (
            ["--devices", "cuda:2"],
            "tms-server: error: device cuda:2 is not visible: the server's "
            "CUDA_VISIBLE_DEVICES='0,1' shows 2 GPU(s)",
        ),
    ],
)
def test_contradictions_stop_the_server_at_start(models, args, message):
    done = subprocess.run(
        [sys.executable, "-m", "tms_server", "--port", "0", "--models", str(models), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "0,1"},
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == message
    assert "serving on" not in done.stdout


# -- talking to each worker alone ---------------------------------------------------------------


@contextlib.contextmanager
def per_worker(target: str) -> Iterator[dict[int, grpc.Channel]]:
    """A channel to each worker: new connections land where the kernel puts them, so open
    some until every worker has answered (each channel its own connection)."""
    found: dict[int, grpc.Channel] = {}
    try:
        for _ in range(50):
            channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            info = stub.GetWorkerInfo(model_service_pb2.GetWorkerInfoRequest(), timeout=10)
            if info.worker_index in found:
                channel.close()
            else:
                found[info.worker_index] = channel
            if len(found) == info.worker_count:
                break
        yield found
    finally:
        for channel in found.values():
            channel.close()


def models_of(channel: grpc.Channel) -> model_service_pb2_grpc.ModelServiceStub:
    return model_service_pb2_grpc.ModelServiceStub(channel)


def health_of(channel: grpc.Channel, service: str) -> str:
    """The health of ``service`` on the worker at the other end of ``channel``."""
    stub: Any = health_pb2_grpc.HealthStub(channel)
    status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
    return health_pb2.HealthCheckResponse.ServingStatus.Name(status)
