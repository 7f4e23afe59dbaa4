"""Every RPC of tms.v1.ModelService against an in-process server with small test models."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.support import start_in_process, start_process, wait_for, write_models, write_plugin
from tms.v1 import image_pb2, model_service_pb2, model_service_pb2_grpc
from tms_client import (
    InvalidInputError,
    ModelClient,
    ModelFailedError,
    ModelNotFoundError,
    ModelNotReadyError,
    UnsupportedCallError,
)
from tms_client.protocol.codec import encode_array
from tms_server.worker import STOP_MARGIN_SECONDS

pb = model_service_pb2

MODELS = {
    "probe": '''
        import numpy as np
        import tms_server

        class Model(tms_server.Model):
            """Reports what it received.

            Second paragraph.
            """
            color = "rgb"
            thread_safe = True

            def run(self, image, args):
                return {
                    "shape": image.shape,
                    "dtype": str(image.dtype),
                    "first": image[0, 0].tolist(),
                    "writeable": bool(image.flags.writeable),
                    "args": args,
                    "numpy": np.float32(1.5),
                }
    ''',
    "gray_float": """
        import tms_server

        class Model(tms_server.Model):
            color = "gray"
            dtype = "float32"
            input_shape = (-1, -1)

            def run(self, image, args):
                return {"shape": image.shape, "dtype": str(image.dtype), "sum": float(image.sum())}
    """,
    "fixed": """
        import tms_server

        class Model(tms_server.Model):
            input_shape = (4, 4, 3)

            def run(self, image, args):
                return image.shape
    """,
    "invert": """
        import tms_server

        class Model(tms_server.Model):
            color = "rgb"
            output_color = "rgb"
            dtype = "uint8"

            def run_image_to_image(self, images, args):
                return [255 - image for image in images], {"count": len(images)}
    """,
    "upper": """
        import tms_server

        class Model(tms_server.Model):
            inputs = "text"

            def run(self, text, args):
                return {"text": text.upper() * args.get("times", 1)}
    """,
    "boom": """
        import tms_server

        class Model(tms_server.Model):
            def run(self, image, args):
                raise RuntimeError("the model broke")
    """,
    "rejects": """
        import tms_server

        class Model(tms_server.Model):
            def run(self, image, args):
                raise tms_server.InvalidInput("this model wants a cat")
    """,
    "bad_result": """
        import tms_server

        class Model(tms_server.Model):
            def run(self, image, args):
                return {"value": object()} if args.get("object") else float("nan")

            def run_image_to_image(self, images, args):
                return "not an image"
    """,
    "short_batch": """
        import tms_server

        class Model(tms_server.Model):
            def run(self, image, args):
                return 1

            def run_batch(self, images, args):
                return [1]
    """,
    "serial": """
        import threading, time
        import tms_server

        class Model(tms_server.Model):
            thread_safe = False

            def __init__(self):
                self.lock = threading.Lock()
                self.active = 0
                self.most = 0

            def run(self, image, args):
                with self.lock:
                    self.active += 1
                    self.most = max(self.most, self.active)
                time.sleep(0.02)
                with self.lock:
                    self.active -= 1
                return self.most
    """,
    "broken": """
        import tms_server

        class Model(tms_server.Model):
            def __init__(self):
                raise OSError("weights.bin not found")
    """,
    "syntax_error": "def (:\n",
    "no_class": "VALUE = 1\n",
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models(tmp_path_factory.mktemp("models"), MODELS)


@pytest.fixture
def server(in_process_server, models):
    return in_process_server(models, threads=8)


@pytest.fixture
def stub(server):
    with grpc.insecure_channel(server.target) as channel:
        yield model_service_pb2_grpc.ModelServiceStub(channel)


def client(server, model: str) -> ModelClient:
    return ModelClient(model, server.target, connect_timeout=5)


def expect_status(code: grpc.StatusCode, call, *args) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call(*args)
    assert info.value.code() == code, info.value.details()
    return str(info.value.details())


def test_list_models_leaves_out_models_that_failed(stub):
    names = [m.name for m in stub.ListModels(pb.ListModelsRequest()).models]
    loaded = ["probe", "gray_float", "fixed", "invert", "upper", "boom", "rejects"]
    assert names == sorted([*loaded, "bad_result", "short_batch", "serial"])


def test_model_info(server):
    with client(server, "gray_float") as c:
        info = c.info()
    assert info.input_shape == (None, None)
    assert info.dtype == "float32"
    assert info.color == "gray"
    assert info.calls == {"run_image", "run_images"}
    assert not info.thread_safe
    with client(server, "probe") as c:
        info = c.info()
    assert info.description == "Reports what it received.\n\nSecond paragraph."
    assert info.thread_safe
    with client(server, "invert") as c:
        assert c.info().calls == {"run_image_to_image"}
    with client(server, "upper") as c:
        assert c.info().calls == {"run_text", "run_texts"}


def test_run_image_converts_bgr_to_the_models_rgb(server):
    image = np.zeros((3, 5, 3), np.uint8)
    image[0, 0] = (10, 20, 30)  # B, G, R
    with client(server, "probe") as c:
        result = c.run_image(image, {"k": [1, 2]})
        assert result["first"] == [30, 20, 10]
        assert c.run_image(image, color="rgb")["first"] == [10, 20, 30]
    assert result["shape"] == [3, 5, 3]
    assert result["args"] == {"k": [1, 2]}
    assert result["numpy"] == 1.5
    # Raw pixels reach the model as a read-only view of the request bytes; a conversion copies.
    assert result["writeable"] is True
    with client(server, "probe") as c:
        assert c.run_image(image, color="rgb")["writeable"] is False


def test_gray_float_model_gets_converted_and_cast_pixels(server):
    image = np.zeros((2, 3, 3), np.uint8)
    image[..., 2] = 100  # pure red in BGR
    with client(server, "gray_float") as c:
        result = c.run_image(image)
        assert result["shape"] == [2, 3]
        assert result["dtype"] == "float32"
        # Cast first, then BT.601 luma in float: red 100 -> 29.9, unrounded.
        assert result["sum"] == pytest.approx(6 * 29.9, rel=1e-6)
        with pytest.raises(InvalidInputError, match="cannot be converted"):
            c.run_image(np.zeros((2, 3), np.float64))


def test_declared_input_shape_is_enforced(server):
    with client(server, "fixed") as c:
        assert c.run_image(np.zeros((4, 4, 3), np.uint8)) == [4, 4, 3]
        with pytest.raises(InvalidInputError, match=r"shape \[4, 4, 3\]"):
            c.run_image(np.zeros((5, 4, 3), np.uint8))


def test_encoded_images_are_decoded(server, tmp_path):
    rgb = np.zeros((6, 7, 3), np.uint8)
    rgb[0, 0] = (200, 100, 50)
    png = encode_array(rgb, image_pb2.COLOR_ORDER_RGB, encoding=image_pb2.ENCODING_PNG).data
    path = tmp_path / "a.png"
    path.write_bytes(png)
    with client(server, "probe") as c:
        assert c.run_image(png)["first"] == [200, 100, 50]
        assert c.run_image(path)["first"] == [200, 100, 50]
        assert c.run_image(str(path))["shape"] == [6, 7, 3]


def test_run_images_batch(server):
    images = [np.full((2, 2, 3), v, np.uint8) for v in (1, 2, 3)]
    with client(server, "probe") as c:
        results = c.run_images(images)
    assert [r["first"] for r in results] == [[1, 1, 1], [2, 2, 2], [3, 3, 3]]


def test_run_image_to_image(server):
    image = np.zeros((4, 4, 3), np.uint8)
    image[0, 0] = (0, 0, 255)  # red in BGR
    with client(server, "invert") as c:
        out = c.run_image_to_image([image, image], output_color="bgr")
        assert out.result == {"count": 2}
        assert len(out.images) == 2
        assert out.image.flags.writeable
        assert out.image[0, 0].tolist() == [255, 255, 0]
        assert out.image[1, 1].tolist() == [255, 255, 255]
        as_rgb = c.run_image_to_image(image).image
        assert as_rgb[0, 0].tolist() == [0, 255, 255]
        png = c.run_image_to_image(image, png=True, output_color="bgr").image
        assert np.array_equal(png, out.image)


def test_an_output_encoding_but_raw_or_png_is_invalid_argument(stub):
    image = raw(shape=(2, 2, 3), data=bytes(12))
    for encoding in (image_pb2.ENCODING_JPEG, 77):
        request = pb.RunImageToImageRequest(
            model="invert", images=[image], output_encoding=encoding
        )
        details = expect_status(grpc.StatusCode.INVALID_ARGUMENT, stub.RunImageToImage, request)
        assert "output_encoding must be RAW or PNG" in details
    request = pb.RunImageToImageRequest(
        model="invert", images=[image], output_encoding=image_pb2.ENCODING_PNG
    )
    [png] = stub.RunImageToImage(request).images
    assert png.encoding == image_pb2.ENCODING_PNG


def test_run_text_and_batch(server):
    with client(server, "upper") as c:
        assert c.run_text("abc", {"times": 2}) == {"text": "ABCABC"}
        assert c.run_texts(["a", "b"]) == [{"text": "A"}, {"text": "B"}]


def test_worker_info(server, stub):
    info = stub.GetWorkerInfo(pb.GetWorkerInfoRequest())
    assert info.instance_id == server.identity.instance_id
    assert info.pid > 0
    assert (info.worker_index, info.worker_count) == (0, 1)
    assert info.server_version


def test_unknown_model_is_not_found(server, stub):
    with client(server, "nope") as c, pytest.raises(ModelNotFoundError, match="probe"):
        c.run_image(np.zeros((2, 2), np.uint8))
    expect_status(grpc.StatusCode.NOT_FOUND, stub.GetModelInfo, pb.GetModelInfoRequest(model="x"))


@pytest.mark.parametrize("name", ["", "../probe", "/etc/passwd", "models.probe", "a" * 65])
def test_invalid_model_names_are_invalid_argument(stub, name):
    request = pb.RunImageRequest(model=name, image=encode_array(np.zeros((2, 2), np.uint8)))
    expect_status(grpc.StatusCode.INVALID_ARGUMENT, stub.RunImage, request)


def test_model_that_failed_to_load(server, stub):
    with client(server, "broken") as c, pytest.raises(ModelNotReadyError, match=r"weights\.bin"):
        c.run_image(np.zeros((2, 2), np.uint8))
    for name in ("syntax_error", "no_class"):
        request = pb.GetModelInfoRequest(model=name)
        expect_status(grpc.StatusCode.FAILED_PRECONDITION, stub.GetModelInfo, request)


def test_call_the_model_does_not_support(server):
    with client(server, "upper") as c, pytest.raises(UnsupportedCallError, match="RunText"):
        c.run_image(np.zeros((2, 2), np.uint8))
    with client(server, "probe") as c, pytest.raises(UnsupportedCallError):
        c.run_image_to_image(np.zeros((2, 2), np.uint8))


def test_model_exceptions_are_internal_and_the_worker_keeps_serving(server):
    with client(server, "boom") as c, pytest.raises(ModelFailedError, match="the model broke"):
        c.run_image(np.zeros((2, 2), np.uint8))
    with client(server, "rejects") as c, pytest.raises(InvalidInputError, match="wants a cat"):
        c.run_image(np.zeros((2, 2), np.uint8))
    with client(server, "bad_result") as c:
        with pytest.raises(ModelFailedError, match="JSON"):
            c.run_image(np.zeros((2, 2), np.uint8))
        with pytest.raises(ModelFailedError, match="JSON"):
            c.run_image(np.zeros((2, 2), np.uint8), {"object": True})
        with pytest.raises(ModelFailedError, match="numpy array"):
            c.run_image_to_image(np.zeros((2, 2), np.uint8))
    with client(server, "short_batch") as c, pytest.raises(ModelFailedError, match="1 results"):
        c.run_images([np.zeros((2, 2), np.uint8)] * 2)
    with client(server, "probe") as c:
        assert c.run_image(np.zeros((2, 2, 3), np.uint8))["shape"] == [2, 2, 3]


def raw(dtype=image_pb2.D_TYPE_UINT8, shape=(2, 2), data=b"\0" * 4, **fields):
    return image_pb2.Image(dtype=dtype, shape=shape, data=data, **fields)


BAD_IMAGES = {
    "length mismatch": raw(data=b"\0" * 5),
    "zero dimension": raw(shape=(0, 2), data=b""),
    "negative dimension": raw(shape=(-2, -2)),
    "four dimensions": raw(shape=(1, 2, 2, 1)),
    "one dimension": raw(shape=(4,)),
    "unknown dtype": raw(dtype=99),
    "unspecified dtype": raw(dtype=0),
    "unknown colour order": raw(color_order=77),
    "channels contradict colour": raw(shape=(2, 2, 1), color_order=image_pb2.COLOR_ORDER_RGB),
    "unknown encoding": raw(encoding=9),
    "not a png": image_pb2.Image(data=b"hello", encoding=image_pb2.ENCODING_PNG),
    "truncated jpeg": image_pb2.Image(
        data=b"\xff\xd8\xff\xe0\0\x10JFIF", encoding=image_pb2.ENCODING_JPEG
    ),
}


@pytest.mark.parametrize("image", BAD_IMAGES.values(), ids=BAD_IMAGES.keys())
def test_malformed_images_are_invalid_argument(stub, image):
    details = expect_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.RunImage,
        pb.RunImageRequest(model="probe", image=image),
    )
    assert details
    ok = stub.RunImage(
        pb.RunImageRequest(model="probe", image=raw(shape=(2, 2, 1), data=b"\1" * 4))
    )
    assert json.loads(ok.result_json)["first"] == [1, 1, 1]


@pytest.mark.parametrize("args_json", ["[1, 2]", "not json", "3", '"text"', "{" * 100_000])
def test_bad_args_are_invalid_argument(stub, args_json):
    request = pb.RunImageRequest(model="probe", image=raw(), args_json=args_json)
    assert "args_json" in expect_status(grpc.StatusCode.INVALID_ARGUMENT, stub.RunImage, request)


def test_missing_images_are_invalid_argument(stub):
    expect_status(
        grpc.StatusCode.INVALID_ARGUMENT, stub.RunImage, pb.RunImageRequest(model="probe")
    )
    request = pb.RunImageBatchRequest(model="probe")
    expect_status(grpc.StatusCode.INVALID_ARGUMENT, stub.RunImageBatch, request)
    request = pb.RunTextBatchRequest(model="upper")
    expect_status(grpc.StatusCode.INVALID_ARGUMENT, stub.RunTextBatch, request)


def test_image_above_pixel_limit(in_process_server, models):
    server = in_process_server(models, max_pixels=100)
    with client(server, "probe") as c, pytest.raises(InvalidInputError, match="limit of 100"):
        c.run_image(np.zeros((11, 10, 3), np.uint8))


def test_model_not_thread_safe_runs_one_call_at_a_time(server):
    with client(server, "serial") as c, ThreadPoolExecutor(8) as pool:
        most = list(pool.map(lambda _: c.run_image(np.zeros((2, 2), np.uint8)), range(16)))
    assert max(most) == 1


def test_thread_safe_model_runs_calls_concurrently(tmp_path, in_process_server):
    # Each call waits inside the model until all four are there: they can only all return
    # if the worker runs them at the same time (run one at a time, the first times out).
    source = """
        import threading
        import tms_server

        class Model(tms_server.Model):
            thread_safe = True

            def __init__(self):
                self.together = threading.Barrier(4, timeout=60)

            def run(self, image, args):
                return self.together.wait()
    """
    server = in_process_server(write_models(tmp_path, {"parallel": source}), threads=8)
    with client(server, "parallel") as c, ThreadPoolExecutor(4) as pool:
        arrivals = pool.map(lambda _: c.run_image(np.zeros((2, 2), np.uint8)), range(4))
        assert sorted(arrivals) == [0, 1, 2, 3]


def test_health_per_model(server, stub):
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        def status(service):
            return health.Check(health_pb2.HealthCheckRequest(service=service)).status

        # Some models failed to load: the server is not ready, its model service answers.
        assert status("") == health_pb2.HealthCheckResponse.NOT_SERVING
        assert status("tms.v1.ModelService") == health_pb2.HealthCheckResponse.SERVING
        assert status("probe") == health_pb2.HealthCheckResponse.SERVING
        assert status("broken") == health_pb2.HealthCheckResponse.NOT_SERVING
    with client(server, "probe") as c:
        assert c.health() == "SERVING"
        assert c.health("broken") == "NOT_SERVING"
        assert c.health("unknown") == "SERVICE_UNKNOWN"


def test_reflection_lists_the_services(server):
    with grpc.insecure_channel(server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        response = next(stub.ServerReflectionInfo(iter([request])))
    names = {s.name for s in response.list_services_response.service}
    assert {"tms.v1.ModelService", "grpc.health.v1.Health"} <= names


def test_models_from_entry_points(tmp_path, monkeypatch, in_process_server):
    monkeypatch.syspath_prepend(str(write_plugin(tmp_path)))
    server = in_process_server(tmp_path / "no-such-folder", entry_points=True)
    with client(server, "reverse") as c:
        assert c.run_text("abc") == "cba"
        assert [m.name for m in c.list_models()] == ["reverse"]


@pytest.mark.parametrize("payload", [b"\x12\x80", b"\x0a\x05ab", b"\x0b", b"\x0a\x02\xff\xfe"])
def test_malformed_request_bytes_are_invalid_argument(server, payload):
    with grpc.insecure_channel(server.target) as channel:
        for method in ("RunImage", "RunImageBatch", "RunImageToImage"):
            call = channel.unary_unary(f"/tms.v1.ModelService/{method}")
            details = expect_status(grpc.StatusCode.INVALID_ARGUMENT, call, payload)
            assert details.startswith("malformed Run")
    with client(server, "probe") as c:
        assert c.run_image(np.zeros((2, 2, 3), np.uint8))["shape"] == [2, 2, 3]


GATED = """
    import pathlib
    import time
    import tms_server

    class Model(tms_server.Model):
        thread_safe = True

        def run(self, image, args):
            if "gate" not in args:
                return "quick"
            pathlib.Path(args["started"]).touch()
            gate = pathlib.Path(args["gate"])
            for _ in range(3000):  # until the test opens the gate (60 s at most)
                if gate.exists():
                    return "done"
                time.sleep(0.02)
            return "the gate never opened"
"""


def gated_call(stub, tmp_path: Path) -> tuple[threading.Thread, dict[str, object]]:
    """A call to the gated model, in a thread, that has reached the model when this returns;
    it finishes once ``tmp_path / "gate"`` exists."""
    started, gate = tmp_path / "started", tmp_path / "gate"
    args = json.dumps({"gate": str(gate), "started": str(started)})
    request = pb.RunImageRequest(model="gated", image=raw(), args_json=args)
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["reply"] = stub.RunImage(request, timeout=60)
        except grpc.RpcError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    assert wait_for(started.exists, 30)
    return thread, outcome


def test_drain_reports_not_serving_refuses_new_calls_and_finishes_in_flight(tmp_path):
    server = start_in_process(write_models(tmp_path / "models", {"gated": GATED}))
    with grpc.insecure_channel(server.target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        slow, outcome = gated_call(stub, tmp_path)
        try:
            server.running.drain()
            status = health.Check(health_pb2.HealthCheckRequest(service="gated")).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            quick = pb.RunImageRequest(model="gated", image=raw())
            details = expect_status(grpc.StatusCode.UNAVAILABLE, stub.RunImage, quick)
            assert "shutting down" in details
            assert slow.is_alive()  # the call in flight goes on
        finally:
            (tmp_path / "gate").touch()
            slow.join(30)
            server.running.stop(5)
    assert json.loads(outcome["reply"].result_json) == "done"


def test_a_stop_that_gives_up_on_a_call_stops_grpc_before_its_loop(tmp_path):
    """A stop with no grace period waits for the calls in flight, but only a margin long: one
    that gives up on a call cuts it off, so that gRPC's server stops (its port closes) before
    its event loop is closed. Left running, it would later try to stop itself on that closed
    loop ("Event loop is closed", when collected)."""
    server = start_in_process(write_models(tmp_path / "models", {"gated": GATED}))
    port = server.running.port
    with grpc.insecure_channel(server.target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        slow, outcome = gated_call(stub, tmp_path)
        try:
            started = time.monotonic()
            server.running.stop(None)  # the gated call never ends by itself
            assert time.monotonic() - started < STOP_MARGIN_SECONDS + 3
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
            slow.join(10)
            assert isinstance(outcome.get("error"), grpc.RpcError), outcome  # cut off
        finally:
            (tmp_path / "gate").touch()
            slow.join(30)


@pytest.mark.slow
def test_sigterm_drains_the_worker_and_finishes_the_call_in_flight(tmp_path):
    # Through the signal, as Kubernetes stops a pod: health watchers hear NOT_SERVING, new
    # calls are refused, and the call in flight still gets its answer before the exit.
    server = start_process(
        write_models(tmp_path / "models", {"gated": GATED}),
        workers=1,
        args=("--grace-seconds", "60"),
    )
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="gated"), timeout=120
            )
            statuses: list[int] = []

            def listen() -> None:
                with contextlib.suppress(grpc.RpcError):  # the stream ends with the worker
                    statuses.extend(reply.status for reply in watch)

            watcher = threading.Thread(target=listen, daemon=True)
            watcher.start()
            assert wait_for(lambda: statuses, 30)
            assert statuses == [health_pb2.HealthCheckResponse.SERVING]
            slow, outcome = gated_call(stub, tmp_path)
            try:
                server.process.send_signal(signal.SIGTERM)
                assert wait_for(lambda: len(statuses) > 1, 30), statuses
                assert statuses[1] == health_pb2.HealthCheckResponse.NOT_SERVING
                quick = pb.RunImageRequest(model="gated", image=raw())
                with pytest.raises(grpc.RpcError) as refused:  # refused: clients retry it
                    stub.RunImage(quick, timeout=30)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "shutting down" in refused.value.details()
                health = health_pb2_grpc.HealthStub(channel)
                checked = health.Check(health_pb2.HealthCheckRequest(), timeout=30)
                assert checked.status == health_pb2.HealthCheckResponse.NOT_SERVING
                assert slow.is_alive()
                assert server.process.poll() is None
            finally:
                (tmp_path / "gate").touch()
                slow.join(30)
            watch.cancel()
        assert json.loads(outcome["reply"].result_json) == "done"
        assert server.stop() == 0
    finally:
        server.stop(signal.SIGKILL)
    assert "worker 0 stopping; in-flight calls have 60s" in server.logs()


def test_every_answer_reports_the_workers_load(server):
    with client(server, "probe") as c:
        c.run_image(np.zeros((2, 2, 3), np.uint8))
        (worker,) = c.workers()
    assert worker.reported_in_flight == 1  # the call that carried the report
    assert worker.reported_queued == 0
    with grpc.insecure_channel(server.target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        _, call = stub.ListModels.with_call(pb.ListModelsRequest())
        trailers = dict(call.trailing_metadata())
    assert trailers["tms-worker"] == server.running.parts.load.identity
    assert "tms-load-bin" in trailers
