"""Hostile and broken input: each case gets its status code and a clear message, the worker
keeps serving, and other clients' calls in flight at the same time succeed.

In-process cases, every row of the README's error table among them, run against one server
while a bystander client calls it in a loop; the cases that need real processes (a call past
the time limit, the memory limit, a worker that dies) start ``tms-server``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image as PILImage

from tests.support import (
    InProcessServer,
    memory_mb,
    start_in_process,
    wait_for,
    write_models,
)
from tms.v1 import image_pb2, model_service_pb2
from tms_client import (
    DeadlineExceededError,
    ModelClient,
    ModelFailedError,
    RetryPolicy,
    UnavailableError,
)
from tms_server.limits import MAX_ARGS_BYTES, MAX_ARGS_DEPTH

pb = model_service_pb2
CODE = grpc.StatusCode

MODELS = {
    "probe": """
        import tms_server

        class Model(tms_server.Model):
            thread_safe = True

            def run(self, image, args):
                return {"shape": image.shape}
    """,
    "boom": """
        import tms_server

        class Model(tms_server.Model):
            def run(self, image, args):
                raise RuntimeError("the model broke")
    """,
    "bad_result": """
        import numpy as np
        import tms_server

        class Model(tms_server.Model):
            thread_safe = True

            def run(self, image, args):
                return {"value": object()} if args.get("object") else float("nan")

            def run_image_to_image(self, images, args):
                kind = args.get("kind")
                if kind == "complex":
                    return np.zeros((2, 2), np.complex128)
                if kind == "4d":
                    return np.zeros((1, 2, 2, 3), np.uint8)
                return "not an image"
    """,
    "sleepy": """
        import time
        import tms_server

        class Model(tms_server.Model):
            inputs = "text"
            thread_safe = True

            def run(self, text, args):
                time.sleep(min(float(args.get("seconds", 0)), 30))
                return text
    """,
    "gated": """
        import pathlib
        import time
        import tms_server

        class Model(tms_server.Model):
            inputs = "text"
            thread_safe = True

            def run(self, text, args):
                gate = pathlib.Path(args["gate"])
                for _ in range(3000):  # until the test opens the gate (60 s at most)
                    if gate.exists():
                        return "opened"
                    time.sleep(0.02)
                return "never opened"
    """,
    "broken": """
        import tms_server

        class Model(tms_server.Model):
            def __init__(self):
                raise OSError("weights.bin not found")
    """,
    "strict": """
        import tms_server

        class Model(tms_server.Model):
            dtype = "uint8"
            input_shape = (2, 2)
            thread_safe = True

            def run(self, image, args):
                return 1
    """,
    "short": """
        import tms_server

        class Model(tms_server.Model):
            thread_safe = True

            def run(self, image, args):
                return 1

            def run_batch(self, images, args):  # one result short
                return [1] * (len(images) - 1)
    """,
    "shred": """
        import numpy as np
        import tms_server

        class Model(tms_server.Model):
            keep = []

            def run(self, image, args):
                # 256 MB in 64 kB pieces, as decoders and native libraries allocate, then one
                # piece kept: freeing the others leaves a hole the heap cannot shrink past.
                pieces = [np.ones(64 * 1024, np.uint8) for _ in range(4096)]
                self.keep.append(np.ones(64 * 1024, np.uint8))
                return {"bytes": sum(piece.nbytes for piece in pieces)}
    """,
    "hog": """
        import os
        import resource
        import numpy as np
        import tms_server

        class Model(tms_server.Model):
            inputs = "text"
            thread_safe = True

            def run(self, text, args):
                if text == "huge":
                    return int(np.ones(1 << 50, np.uint8).sum())  # a petabyte
                if text == "limit":  # the address-space limit this process runs under
                    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
                    return {"limit": soft}
                if text == "grow":  # 2.5 GiB, 64 MiB at a time, every page written
                    hoard = [np.ones(64 << 20, np.uint8) for _ in range(40)]
                    return {"bytes": sum(piece.nbytes for piece in hoard)}
                if text == "die":  # as the kernel's OOM killer would
                    os.kill(os.getpid(), 9)
                return {"pid": os.getpid()}
    """,
}

MAX_PIXELS = 1_000_000


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models(tmp_path_factory.mktemp("hostile"), MODELS)


@pytest.fixture(scope="module")
def server(models) -> Iterator[InProcessServer]:
    running = start_in_process(models, max_pixels=MAX_PIXELS, max_message_mb=2, threads=8)
    yield running
    running.running.stop(None)


class Bystander:
    """Another client calling the server in a loop; every one of its calls must succeed."""

    def __init__(self, target: str, **client_options) -> None:
        self.client = ModelClient("probe", target, connect_timeout=10, **client_options)
        self.ok = 0
        self.failures: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        image = np.zeros((8, 8, 3), np.uint8)
        while not self._stop.is_set():
            try:
                assert self.client.run_image(image)["shape"] == [8, 8, 3]
                self.ok += 1
            except BaseException as exc:
                self.failures.append(exc)
            time.sleep(0.005)

    def finish(self, least: int = 1) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.client.close()
        assert not self.failures, self.failures[:3]
        assert self.ok >= least


@pytest.fixture
def bystander(server) -> Iterator[Bystander]:
    others = Bystander(server.target)
    while others.ok == 0 and not others.failures:  # calling before the hostile case starts
        time.sleep(0.01)
    yield others
    others.finish()


def call(target: str, method: str, request: bytes, timeout: float = 10) -> grpc.RpcError:
    with grpc.insecure_channel(target) as channel:
        send: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            f"/tms.v1.ModelService/{method}"
        )
        with pytest.raises(grpc.RpcError) as info:
            send(request, timeout=timeout)
    return info.value


# -- images -------------------------------------------------------------------------------------


def raw(dtype=image_pb2.D_TYPE_UINT8, shape=(2, 2), data=b"\0" * 4, **fields) -> image_pb2.Image:
    return image_pb2.Image(dtype=dtype, shape=shape, data=data, **fields)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, format="JPEG")
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A PNG of a few hundred bytes declaring width x height RGB pixels, all zero."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\0" * (1 << 20), 9)  # the first of many rows of zeros
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", pixels)
        + _chunk(b"IEND", b"")
    )


def jpeg_bomb(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) is patched to declare width x height."""
    data = bytearray(jpeg(np.zeros((8, 8, 3), np.uint8)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def corrupt(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0x5A for b in data[middle : middle + 16]) + data[middle + 16 :]


def encoded(data: bytes, encoding=image_pb2.ENCODING_PNG) -> image_pb2.Image:
    return image_pb2.Image(data=data, encoding=encoding)


_PHOTO = (np.arange(64 * 64 * 3) % 251).astype(np.uint8).reshape(64, 64, 3)
JPEG = image_pb2.ENCODING_JPEG

BAD_IMAGES = {
    "shape and bytes disagree": (raw(data=b"\0" * 5), "needs 4"),
    "zero dimension": (raw(shape=(0, 2), data=b""), "not positive"),
    "negative dimension": (raw(shape=(-2, -2)), "not positive"),
    "four dimensions": (raw(shape=(1, 2, 2, 1)), "(H, W) or (H, W, C)"),
    "unknown dtype": (raw(dtype=99), "unknown dtype"),
    "unknown colour order": (raw(color_order=77), "unknown color_order"),
    "channels contradict colour order": (
        raw(shape=(2, 2, 1), color_order=image_pb2.COLOR_ORDER_RGB),
        "needs 3 channel",
    ),
    "unknown encoding": (raw(encoding=9), "unknown encoding"),
    "raw above the pixel limit": (
        raw(shape=(1001, 1000), data=b"\0" * 1_001_000),
        "exceeds the limit",
    ),
    "png above the pixel limit": (encoded(png(np.zeros((1001, 1000), np.uint8))), "exceeds"),
    "png decompression bomb": (encoded(png_bomb(50_000, 50_000)), "exceeds the limit"),
    "jpeg decompression bomb": (encoded(jpeg_bomb(60_000, 60_000), JPEG), "exceeds the limit"),
    "truncated png": (encoded(png(_PHOTO)[:300]), "cannot decode"),
    "corrupt png": (encoded(corrupt(png(_PHOTO))), "cannot decode"),
    "truncated jpeg": (encoded(jpeg(_PHOTO)[:200], JPEG), "cannot decode"),
    "corrupt jpeg header": (encoded(b"\xff\xd8\xff\xe0" + os.urandom(64), JPEG), "cannot decode"),
    "no image at all": (encoded(b"GIF89a is not welcome here"), "cannot decode"),
    "random bytes": (encoded(bytes(range(256)) * 4, JPEG), "cannot decode"),
}


@pytest.mark.parametrize(("image", "message"), BAD_IMAGES.values(), ids=BAD_IMAGES.keys())
def test_bad_images_are_invalid_argument(server, bystander, image, message):
    request = pb.RunImageRequest(model="probe", image=image).SerializeToString()
    error = call(server.target, "RunImage", request)
    assert error.code() == CODE.INVALID_ARGUMENT, error.details()
    assert message in error.details()


def test_a_message_above_the_limit_is_resource_exhausted(server, bystander):
    image = raw(shape=(1500, 1500), data=b"\0" * 2_250_000)
    request = pb.RunImageRequest(model="probe", image=image).SerializeToString()
    assert len(request) > 2 * 1024 * 1024
    error = call(server.target, "RunImage", request)
    assert error.code() == CODE.RESOURCE_EXHAUSTED
    assert "larger than max" in error.details()


@pytest.mark.parametrize("count", [65, 1_000_000])
def test_image_batches_past_the_cap_are_invalid_argument(in_process_server, models, count):
    # A million 1x1 images fit in 11 MB: refused when the 65th is seen, before any decoding.
    server = in_process_server(models, max_batch_size=64)
    image = raw(shape=(1, 1), data=b"\0")
    one = pb.RunImageBatchRequest(model="probe", images=[image]).SerializeToString()
    head, occurrence = pb.RunImageBatchRequest(model="probe").SerializeToString(), one[7:]
    assert pb.RunImageBatchRequest.FromString(head + occurrence).images[0] == image
    error = call(server.target, "RunImageBatch", head + occurrence * count, timeout=30)
    assert error.code() == CODE.INVALID_ARGUMENT
    assert "at most 64 images (--max-batch-size)" in error.details()
    with ModelClient("probe", server.target) as client:
        assert len(client.run_images([np.zeros((2, 2), np.uint8)] * 64)) == 64


@pytest.mark.parametrize("count", [65, 1_000_000])
def test_text_batches_past_the_cap_are_invalid_argument(in_process_server, models, count):
    server = in_process_server(models, max_batch_size=64)
    request = pb.RunTextBatchRequest(model="sleepy", texts=[""] * count)
    error = call(server.target, "RunTextBatch", request.SerializeToString(), timeout=30)
    assert error.code() == CODE.INVALID_ARGUMENT
    assert "at most 64 texts (--max-batch-size)" in error.details()


# -- args ---------------------------------------------------------------------------------------

BAD_ARGS = {
    "a list": ("[1, 2]", "must be a JSON object"),
    "a string": ('"text"', "must be a JSON object"),
    "a number": ("1e999", "must be a JSON object"),
    "not JSON": ("{'single': 'quotes'}", "not valid JSON"),
    "unbalanced": ('{"a": [1, 2}', "not valid JSON"),
    "NaN": ('{"a": NaN}', "NaN is not a JSON value"),
    "Infinity": ('{"a": [-Infinity]}', "-Infinity is not a JSON value"),
    "deeply nested": ("[" * 100_000 + "]" * 100_000, f"the limit is {MAX_ARGS_DEPTH}"),
    "nested one too deep": (
        '{"a": ' * MAX_ARGS_DEPTH + "{}" + "}" * MAX_ARGS_DEPTH,
        f"the limit is {MAX_ARGS_DEPTH}",
    ),
    "unterminated nesting": ("{" * 100_000, f"the limit is {MAX_ARGS_DEPTH}"),
    "huge": (json.dumps({"blob": "x" * MAX_ARGS_BYTES}), f"the limit is {MAX_ARGS_BYTES}"),
}


@pytest.mark.parametrize(("args_json", "message"), BAD_ARGS.values(), ids=BAD_ARGS.keys())
def test_bad_args_are_invalid_argument(server, bystander, args_json, message):
    request = pb.RunImageRequest(model="probe", image=raw(), args_json=args_json)
    error = call(server.target, "RunImage", request.SerializeToString())
    assert error.code() == CODE.INVALID_ARGUMENT
    assert "args_json" in error.details()
    assert message in error.details()


def test_args_at_the_limits_are_accepted(server):
    deep = '{"a": ' * (MAX_ARGS_DEPTH - 1) + "{}" + "}" * (MAX_ARGS_DEPTH - 1)
    brackets_in_strings = json.dumps({"pattern": "[[[{{{" * 1000})
    big = json.dumps({"blob": "x" * (MAX_ARGS_BYTES - 20)})
    with ModelClient("probe", server.target) as client:
        for args_json in (deep, brackets_in_strings, big):
            assert client.run_image(np.zeros((2, 2), np.uint8), json.loads(args_json))


# -- model names --------------------------------------------------------------------------------

BAD_NAMES = [
    "../probe",
    "../../etc/passwd",
    "/etc/passwd",
    "models.other",
    "tms_models.probe",
    "",
    "a" * 65,
    "a" * 100_000,
    "pro be",
    "probe\x00",
    "probe/",
    "\u00e9t\u00e9",
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=lambda n: repr(n[:20]))
def test_model_names_that_try_paths_are_invalid_argument(server, bystander, name):
    request = pb.RunImageRequest(model=name, image=raw()).SerializeToString()
    error = call(server.target, "RunImage", request)
    assert error.code() == CODE.INVALID_ARGUMENT
    assert "invalid model name" in error.details()
    assert len(error.details()) < 200  # a long name is not echoed back whole


# -- the rest of the error table ----------------------------------------------------------------


def float_image() -> image_pb2.Image:
    return raw(dtype=image_pb2.D_TYPE_FLOAT32, data=b"\0" * 16)


def run_image(model: str, image: image_pb2.Image | None = None) -> bytes:
    request = pb.RunImageRequest(model=model)
    if image is not None:
        request.image.CopyFrom(image)
    return request.SerializeToString()


TABLE_CASES = {
    "unknown model": (
        "RunImage",
        run_image("nope", raw()),
        CODE.NOT_FOUND,
        "no model named 'nope'",
    ),
    "call the model lacks": (
        "RunText",
        pb.RunTextRequest(model="probe", text="x").SerializeToString(),
        CODE.UNIMPLEMENTED,
        "does not support",
    ),
    "model failed to load": (
        "RunImage",
        run_image("broken", raw()),
        CODE.FAILED_PRECONDITION,
        "weights.bin not found",
    ),
    "no image": ("RunImage", run_image("probe"), CODE.INVALID_ARGUMENT, "no image"),
    "lossy cast": (
        "RunImage",
        run_image("strict", float_image()),
        CODE.INVALID_ARGUMENT,
        "cannot be converted to it without loss",
    ),
    "wrong shape": (
        "RunImage",
        run_image("strict", raw(shape=(1, 4))),
        CODE.INVALID_ARGUMENT,
        "takes images of shape [2, 2]",
    ),
    "short batch result": (
        "RunImageBatch",
        pb.RunImageBatchRequest(model="short", images=[raw(), raw()]).SerializeToString(),
        CODE.INTERNAL,
        "returned 1 results for 2 inputs",
    ),
    "malformed request bytes": ("RunImage", b"\x12\x80", CODE.INVALID_ARGUMENT, "malformed"),
}


@pytest.mark.parametrize(
    ("method", "request_bytes", "code", "message"), TABLE_CASES.values(), ids=TABLE_CASES.keys()
)
def test_the_rest_of_the_error_table(server, bystander, method, request_bytes, code, message):
    error = call(server.target, method, request_bytes)
    assert error.code() == code, error.details()
    assert message in error.details()


def test_missing_wrong_and_non_admin_tokens(in_process_server, models, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("call-token-0123456789\n")
    server = in_process_server(models, tokens_file=tokens)
    others = Bystander(server.target, token="call-token-0123456789")
    try:
        assert wait_for(lambda: others.ok > 0 or others.failures, 10)
        for metadata in ((), (("authorization", "Bearer wrong-token-000000"),)):
            with grpc.insecure_channel(server.target) as channel:
                send = channel.unary_unary("/tms.v1.ModelService/RunImage")
                with pytest.raises(grpc.RpcError) as refused:
                    send(run_image("probe", raw()), timeout=10, metadata=metadata)
            assert refused.value.code() == CODE.UNAUTHENTICATED
        with grpc.insecure_channel(server.target) as channel:  # a call token is no admin's
            send = channel.unary_unary("/tms.v1.AdminService/ListWorkers")
            with pytest.raises(grpc.RpcError) as denied:
                send(b"", timeout=10, metadata=(("authorization", "Bearer call-token-0123456789"),))
        assert denied.value.code() == CODE.PERMISSION_DENIED
    finally:
        others.finish()


# -- models that misbehave ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "method", "args", "message"),
    [
        ("boom", "RunImage", {}, "raised RuntimeError: the model broke"),
        ("bad_result", "RunImage", {"object": True}, "JSON cannot hold"),
        ("bad_result", "RunImage", {}, "JSON cannot hold"),  # NaN
        ("bad_result", "RunImageToImage", {}, "where an image (numpy array) was expected"),
        ("bad_result", "RunImageToImage", {"kind": "complex"}, "invalid image"),
        ("bad_result", "RunImageToImage", {"kind": "4d"}, "invalid image"),
    ],
)
def test_models_that_raise_or_return_garbage_are_internal(
    server, bystander, model, method, args, message
):
    message_class = pb.RunImageRequest if method == "RunImage" else pb.RunImageToImageRequest
    field = {"image": raw()} if method == "RunImage" else {"images": [raw()]}
    request = message_class(model=model, args_json=json.dumps(args), **field)
    error = call(server.target, method, request.SerializeToString())
    assert error.code() == CODE.INTERNAL
    assert message in error.details()


def test_a_model_past_the_clients_deadline(server, bystander):
    with ModelClient("sleepy", server.target, timeout=10, retry=RetryPolicy.never()) as client:
        assert client.run_text("awake") == "awake"
        client.timeout = 0.3  # set between calls: the next keeps to it
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            client.run_text("zzz", {"seconds": 10})
        assert time.monotonic() - started < 8  # the deadline ended it, not the model
        client.timeout = 10
        assert client.run_text("awake") == "awake"


def test_a_model_asking_for_too_much_memory_gets_memory_error(server, bystander):
    with ModelClient("hog", server.target) as client:
        with pytest.raises(ModelFailedError, match="MemoryError"):
            client.run_text("huge")
        assert client.run_text("fine")["pid"] == os.getpid()


# -- load and connections -----------------------------------------------------------------------


def test_a_burst_beyond_capacity_is_queued_then_resource_exhausted(
    in_process_server, models, tmp_path
):
    # Every admitted call waits for a gate the test opens only once the others are refused,
    # so the count does not depend on how fast the machine runs the calls.
    server = in_process_server(models, threads=2, max_queued_calls=2)
    gate = tmp_path / "gate"
    request = pb.RunTextRequest(model="gated", text="x", args_json=json.dumps({"gate": str(gate)}))
    with grpc.insecure_channel(server.target) as channel:
        method = channel.unary_unary(
            "/tms.v1.ModelService/RunText", response_deserializer=pb.RunTextResponse.FromString
        )
        futures = [method.future(request.SerializeToString(), timeout=60) for _ in range(12)]
        try:
            assert wait_for(lambda: sum(f.done() for f in futures) >= 8, 30)
            waiting = [f for f in futures if not f.done()]
            refused = [f.exception() for f in futures if f.done()]
            assert len(waiting) == 4  # two running and two queued, waiting for the gate
        finally:
            gate.touch()
        answered = [f.result() for f in waiting]
    assert all(isinstance(e, grpc.RpcError) for e in refused)
    assert {e.code() for e in refused} == {CODE.RESOURCE_EXHAUSTED}
    assert "this worker is busy" in refused[0].details()
    assert "--threads 2, --max-queued-calls 2" in refused[0].details()
    assert [json.loads(reply.result_json) for reply in answered] == ["opened"] * 4
    with ModelClient("probe", server.target) as client:  # and then it serves again
        assert client.run_image(np.zeros((2, 2), np.uint8))


def test_silent_and_idle_connections_are_closed(in_process_server, models):
    server = in_process_server(models, handshake_timeout_seconds=1, max_connection_idle_seconds=1)
    others = Bystander(server.target)
    host, port = server.target.split(":")
    silent = [socket.create_connection((host, int(port)), timeout=10) for _ in range(50)]
    try:
        started = time.monotonic()
        for sock in silent:  # the server hangs up on every one of them
            with contextlib.suppress(ConnectionResetError):
                while sock.recv(1024):  # its HTTP/2 settings, then the end
                    pass
        assert time.monotonic() - started < 8
    finally:
        for sock in silent:
            sock.close()
    with grpc.insecure_channel(server.target) as channel:
        states: list[grpc.ChannelConnectivity] = []
        channel.subscribe(states.append, try_to_connect=True)
        grpc.channel_ready_future(channel).result(timeout=10)
        deadline = time.monotonic() + 10
        while (
            grpc.ChannelConnectivity.IDLE
            not in states[states.index(grpc.ChannelConnectivity.READY) :]
        ):
            assert time.monotonic() < deadline, states
            time.sleep(0.05)
        channel.unsubscribe(states.append)
    others.finish()


# -- real worker processes ----------------------------------------------------------------------


@pytest.mark.slow
def test_a_call_past_the_time_limit_recycles_its_worker(server_process, models, tmp_path):
    server = server_process(
        models, workers=2, args=("--call-time-limit", "1", "--grace-seconds", "1")
    )
    others = Bystander(server.target, retry=RetryPolicy().with_attempts(10))
    with ModelClient("hog", server.target) as client:
        before = {w.pid for w in client.workers()}
        hung = ModelClient("sleepy", server.target, timeout=0.5, retry=RetryPolicy.never())
        with hung, pytest.raises(DeadlineExceededError):
            hung.run_text("hang", {"seconds": 30})
        deadline = time.monotonic() + 20
        while client.run_text("fine")["pid"] in before:  # until the new worker answers
            assert time.monotonic() < deadline
            time.sleep(0.1)
    others.finish()
    server.stop()
    logs = server.logs()
    assert "past the call time limit of 1s" in logs
    assert "a call ran past --call-time-limit" in logs  # the supervisor, replacing it


@pytest.mark.slow
def test_a_call_past_the_time_limit_is_not_sent_on_to_hang_another_worker(server_process, models):
    # Its worker is replaced; sent again (UNAVAILABLE is retried), the same input would hang
    # the next worker, and the next, for as long as the caller's deadline allowed.
    server = server_process(
        models, workers=2, args=("--call-time-limit", "1", "--grace-seconds", "1")
    )
    with ModelClient("sleepy", server.target, timeout=30) as hung:
        began = time.monotonic()
        with pytest.raises(ModelFailedError, match=r"call time limit of 1s \(--call-time-limit\)"):
            hung.run_text("hang", {"seconds": 30})
        assert time.monotonic() - began < 15  # the limit, and what a busy machine adds
    server.stop()
    assert server.logs().count("past the call time limit of 1s") == 1  # one worker, not more


@pytest.mark.slow
def test_memory_limit_per_worker(server_process, models):
    # 2.5 GiB of written pages fits this machine but not a 2000 MiB address space: without
    # the limit the same call succeeds, so this fails if the worker is not limited.
    server = server_process(models, workers=1, args=("--worker-memory-mb", "2000"))
    with ModelClient("hog", server.target, retry=RetryPolicy.never(), timeout=60) as client:
        pid = client.run_text("fine")["pid"]
        assert client.run_text("limit") == {"limit": 2000 << 20}
        with pytest.raises(ModelFailedError, match="MemoryError"):
            client.run_text("grow")
        assert client.run_text("fine")["pid"] == pid  # the same worker, still serving


@pytest.mark.slow
def test_without_a_memory_limit_the_same_allocation_succeeds(server_process, models):
    # The control for the test above: the allocation it expects to fail is not impossible.
    server = server_process(models, workers=1)
    with ModelClient("hog", server.target, retry=RetryPolicy.never(), timeout=60) as client:
        assert client.run_text("limit") == {"limit": resource.RLIM_INFINITY}
        assert client.run_text("grow") == {"bytes": 40 * (64 << 20)}


@pytest.mark.slow
def test_a_worker_killed_mid_call_is_replaced(server_process, models):
    server = server_process(models, workers=1)
    with ModelClient("hog", server.target, retry=RetryPolicy.never()) as client:
        pid = client.run_text("fine")["pid"]
        with pytest.raises(UnavailableError):
            client.run_text("die")
    # The replacement may not listen yet: wait for it rather than fail at a refused connection.
    with ModelClient("hog", server.target, connect_timeout=30, wait_for_server=True) as client:
        deadline = time.monotonic() + 20
        while True:
            try:
                new_pid = client.run_text("fine")["pid"]
                break
            except UnavailableError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
    assert new_pid != pid
    assert "killed by SIGKILL" in server.logs()


@pytest.mark.slow
def test_large_images_are_decoded_a_few_at_a_time_and_memory_given_back(server_process, models):
    # Eight 4000x4000 JPEGs of 250 kB at once: each decodes to 48 MB (Pillow's buffer, then
    # the array), about 800 MB together. The worker decodes 16 million pixels at a time.
    server = server_process(
        models,
        workers=1,
        args=("--threads", "8", "--max-pixels", "20000000", "--max-pixels-in-flight", "16000000"),
    )
    big = jpeg(np.zeros((4000, 4000, 3), np.uint8))
    assert len(big) < 300_000
    with ModelClient("probe", server.target, timeout=120) as client:
        (worker,) = client.workers()
        assert client.run_image(np.zeros((2, 2), np.uint8)) == {"shape": [2, 2]}
        before = memory_mb(worker.pid, "VmRSS")
        with open(f"/proc/{worker.pid}/clear_refs", "w") as clear:
            clear.write("5")  # the peak (VmHWM) starts again from now
        threads = [
            threading.Thread(target=lambda: client.run_image(big), daemon=True) for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert client.run_image(big) == {"shape": [4000, 4000, 3]}
        peak = memory_mb(worker.pid, "VmHWM")
    assert peak - before < 400, (before, peak)  # one or two at a time, never all eight
    with ModelClient("shred", server.target, timeout=120) as client:
        before = memory_mb(worker.pid, "VmRSS")
        large = np.zeros((2000, 2000), np.uint8)  # 4 million pixels: a large call
        assert client.run_image(large) == {"bytes": 256 << 20}
        returned = time.monotonic()
        time.sleep(0.5)  # the worker's monitor looks every 0.2 s
        kept = memory_mb(worker.pid, "VmRSS")  # kept for a next large call, not given back yet
        assert kept - before >= 100, (before, kept, time.monotonic() - returned)
        deadline = time.monotonic() + 5  # given back once the worker has been idle 2 s
        while (after := memory_mb(worker.pid, "VmRSS")) - before >= 100:
            assert time.monotonic() < deadline, (before, after)  # the freed pages stayed
            time.sleep(0.05)
