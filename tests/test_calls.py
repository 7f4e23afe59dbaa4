"""ModelService.Calls: unary calls carried over one stream, as the server answers them (plain
grpcio, real servers, real models), and as both clients use it."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import queue
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

from tests.support import (
    InProcessServer,
    NonReadingCaller,
    ServerProcess,
    alive,
    stopped,
    wait_for,
    write_models,
)
from tms.v1 import model_service_pb2
from tms_client import (
    AsyncModelClient,
    DeadlineExceededError,
    ModelClient,
    RetryPolicy,
    RoundRobin,
)
from tms_client.images import to_parts
from tms_client.protocol.methods import method_path
from tms_server import carrier
from tms_server.errors import Unimplemented

pb = model_service_pb2

MODELS = {
    "mean": """
        import tms_server

        class Model(tms_server.Model):
            thread_safe = True

            def run(self, image, args):
                return {"mean": float(image.mean())}
    """,
    "slow": """
        import time

        import tms_server

        class Model(tms_server.Model):
            thread_safe = True
            args_schema = {"type": "object"}

            def run(self, image, args):
                time.sleep(args.get("sleep", 0))
                return {"slept": args.get("sleep", 0)}
    """,
    "invert": """
        import tms_server

        class Model(tms_server.Model):
            thread_safe = True
            calls = ("run_image_to_image",)

            def run_image_to_image(self, images, args):
                return [255 - image for image in images]
    """,
    "reverse": """
        import tms_server

        class Model(tms_server.Model):
            inputs = "text"

            def run(self, text, args):
                return text[::-1]
    """,
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models(tmp_path_factory.mktemp("models"), MODELS)


@pytest.fixture
def server(models: Path, in_process_server: Callable[..., InProcessServer]) -> InProcessServer:
    return in_process_server(models)


def image(value: int = 7) -> Any:
    return to_parts(np.full((4, 4, 3), value, np.uint8), color="bgr").to_message()


def carried(
    name: str, request: Any, metadata: tuple[tuple[str, str], ...] = (), timeout: float = 0
) -> pb.CallsRequest:
    return pb.CallsRequest(
        method=method_path(name),
        request=request.SerializeToString(),
        metadata=[pb.MetadataEntry(key=k, value=v.encode()) for k, v in metadata],
        timeout_us=int(timeout * 1e6),
    )


class Stream:
    """A Calls stream of plain grpcio: ``call`` sends one message and reads its answer."""

    def __init__(self, target: str, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.channel = grpc.insecure_channel(target)
        method = self.channel.stream_stream(
            method_path("Calls"),
            request_serializer=pb.CallsRequest.SerializeToString,
            response_deserializer=pb.CallsResponse.FromString,
        )
        self._sent: queue.SimpleQueue[pb.CallsRequest | None] = queue.SimpleQueue()
        self.answers = method(iter(self._sent.get, None), metadata=metadata, timeout=60)

    def call(self, message: pb.CallsRequest) -> pb.CallsResponse:
        self._sent.put(message)
        answer: pb.CallsResponse = next(self.answers)
        return answer

    def close(self) -> None:
        self._sent.put(None)
        self.channel.close()


@pytest.fixture
def stream(server: InProcessServer) -> Iterator[Stream]:
    opened = Stream(server.target)
    yield opened
    opened.close()


def trailers(answer: pb.CallsResponse) -> dict[str, bytes]:
    return {entry.key: entry.value for entry in answer.trailers}


def error(answer: pb.CallsResponse) -> tuple[grpc.StatusCode, str, str]:
    """The code, message and ErrorInfo reason of a failed answer."""
    status = status_pb2.Status.FromString(answer.error_status)
    reasons = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reasons.append(info.reason)
    code = next(code for code in grpc.StatusCode if code.value[0] == status.code)
    return code, status.message, "".join(reasons)


def test_each_message_is_answered_as_its_call_alone_would_be(
    server: InProcessServer, stream: Stream
) -> None:
    with grpc.insecure_channel(server.target) as channel:
        unary: dict[str, grpc.UnaryUnaryMultiCallable[bytes, bytes]] = {
            name: channel.unary_unary(method_path(name))
            for name in ("RunImage", "RunImageToImage", "RunText", "RunImageBatch")
        }
        requests = {
            "RunImage": pb.RunImageRequest(model="mean", image=image(7)),
            "RunImageToImage": pb.RunImageToImageRequest(model="invert", images=[image(10)]),
            "RunText": pb.RunTextRequest(model="reverse", text="carried"),
            "RunImageBatch": pb.RunImageBatchRequest(model="mean", images=[image(1), image(2)]),
        }
        for name, request in requests.items():
            answer = stream.call(carried(name, request))
            assert not answer.error_status, error(answer)
            alone = unary[name](request.SerializeToString(), timeout=30)
            assert answer.response == alone, name
            assert "tms-load-bin" in trailers(answer)
            assert len(trailers(answer)["x-request-id"]) == 32
    assert json.loads(
        pb.RunImageResponse.FromString(
            stream.call(carried("RunImage", requests["RunImage"])).response
        ).result_json
    ) == {"mean": 7.0}


def test_a_failed_call_is_answered_with_its_status_and_the_stream_goes_on(stream: Stream) -> None:
    missing = stream.call(carried("RunImage", pb.RunImageRequest(model="nope", image=image())))
    assert error(missing)[0] == grpc.StatusCode.NOT_FOUND
    assert error(missing)[2] == "MODEL_NOT_FOUND"
    assert "no model named 'nope'" in error(missing)[1]
    assert "tms-load-bin" in trailers(missing)
    short = pb.RunImageRequest(model="mean", image=image())
    short.image.data = b"12"  # fewer bytes than its shape says
    code, message, reason = error(stream.call(carried("RunImage", short)))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_IMAGE"), message
    good = stream.call(carried("RunImage", pb.RunImageRequest(model="mean", image=image(3))))
    assert json.loads(pb.RunImageResponse.FromString(good.response).result_json) == {"mean": 3.0}


def test_only_the_model_calls_are_carried(stream: Stream) -> None:
    answer = stream.call(carried("ListModels", pb.ListModelsRequest()))
    code, message, reason = error(answer)
    assert code == grpc.StatusCode.UNIMPLEMENTED
    assert "cannot be carried by Calls" in message
    assert "call any other method on its own" in message
    assert reason == "UNSUPPORTED_CALL"
    good = stream.call(carried("RunText", pb.RunTextRequest(model="reverse", text="ab")))
    assert json.loads(pb.RunTextResponse.FromString(good.response).result_json) == "ba"


def test_a_malformed_call_fails_alone_and_a_malformed_message_ends_the_stream(
    server: InProcessServer, stream: Stream
) -> None:
    malformed = pb.CallsRequest(method=method_path("RunText"), request=b"\xff\xff")
    code, message, _ = error(stream.call(malformed))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed RunTextRequest" in message
    with grpc.insecure_channel(server.target) as channel:
        method: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(
            method_path("Calls")
        )
        with pytest.raises(grpc.RpcError) as ended:
            list(method(iter([b"\xff\xff"]), timeout=30))
    assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed CallsRequest" in (ended.value.details() or "")


def test_a_call_keeps_to_its_own_timeout(stream: Stream) -> None:
    slow = pb.RunImageRequest(model="slow", image=image(), args_json='{"sleep": 3}')
    began = time.monotonic()
    answer = stream.call(carried("RunImage", slow, timeout=0.3))
    took = time.monotonic() - began
    assert error(answer)[0] == grpc.StatusCode.DEADLINE_EXCEEDED
    assert took < 2.5, took
    quick = pb.RunImageRequest(model="slow", image=image(), args_json='{"sleep": 0}')
    assert json.loads(
        pb.RunImageResponse.FromString(stream.call(carried("RunImage", quick)).response).result_json
    ) == {"slept": 0}


def test_each_call_has_its_own_request_id_and_log_line(
    models: Path, server_process: Callable[..., ServerProcess]
) -> None:
    server = server_process(models, workers=1, args=("--log-requests",))
    opened = Stream(server.target)
    try:
        for name in ("first", "second"):
            answer = opened.call(
                carried(
                    "RunImage",
                    pb.RunImageRequest(model="mean", image=image()),
                    metadata=(("x-request-id", f"carried-{name}"),),
                )
            )
            assert trailers(answer)["x-request-id"] == f"carried-{name}".encode()
        missing = opened.call(
            carried(
                "RunImage",
                pb.RunImageRequest(model="nope", image=image()),
                metadata=(("x-request-id", "carried-third"),),
            )
        )
        assert trailers(missing)["x-request-id"] == b"carried-third"
    finally:
        opened.close()
    # The stream's own request id (of the call that opened it, say) is no later call's.
    stream_id = Stream(server.target, metadata=(("x-request-id", "the-stream"),))
    try:
        answer = stream_id.call(
            carried("RunImage", pb.RunImageRequest(model="mean", image=image()))
        )
        assert len(trailers(answer)["x-request-id"]) == 32
    finally:
        stream_id.close()
    server.stop()
    lines = [line for line in server.logs().splitlines() if "tms_server.access" in line]
    assert any("RunImage mean OK" in line and "carried-first" in line for line in lines), lines
    assert any("RunImage mean OK" in line and "carried-second" in line for line in lines), lines
    assert any("RunImage nope NOT_FOUND" in line and "carried-third" in line for line in lines)
    assert all(line.endswith("via=Calls)") for line in lines), lines


def test_an_idle_stream_does_not_hold_a_stopping_worker(
    models: Path, server_process: Callable[..., ServerProcess]
) -> None:
    """A client keeps its Calls streams open between calls: a worker that stops ends them
    at once (UNAVAILABLE) instead of waiting its grace period for them."""
    server = server_process(models, workers=1, args=("--grace-seconds", "30"))
    opened = Stream(server.target)
    try:
        answer = opened.call(carried("RunImage", pb.RunImageRequest(model="mean", image=image())))
        assert not answer.error_status
        began = time.monotonic()
        assert server.stop(signal.SIGTERM, timeout=60) == 0
        assert time.monotonic() - began < 15
        with pytest.raises(grpc.RpcError) as ended:
            next(opened.answers)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        opened.close()


def test_a_stream_needs_a_call_token_and_each_call_runs_with_it(
    models: Path, in_process_server: Callable[..., InProcessServer], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret\n")
    server = in_process_server(models, tokens_file=tokens)
    request = carried("RunImage", pb.RunImageRequest(model="mean", image=image(5)))
    anonymous = Stream(server.target)
    try:
        with pytest.raises(grpc.RpcError) as refused:
            anonymous.call(request)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        anonymous.close()
    holder = Stream(server.target, metadata=(("authorization", "Bearer s3cret"),))
    try:
        answer = holder.call(request)
        assert json.loads(pb.RunImageResponse.FromString(answer.response).result_json) == {
            "mean": 5.0
        }
        tokens.write_text("other\n")
        with pytest.raises(grpc.RpcError) as revoked:
            calls_until_refused(holder, request)
        assert revoked.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        holder.close()


def calls_until_refused(stream: Stream, request: pb.CallsRequest) -> None:
    """Call until the stream fails (the tokens file is read again at most once a second)."""
    for _ in range(100):
        stream.call(request)
        time.sleep(0.05)


# -- the clients -------------------------------------------------------------------------------


def carried_lines(server: ServerProcess, model: str) -> tuple[int, int]:
    """The access lines of ``model``'s calls: those carried by a Calls stream, the others."""
    lines = [line for line in server.logs().splitlines() if f"RunImage {model} OK" in line]
    carried = sum("via=Calls" in line for line in lines)
    return carried, len(lines) - carried


def test_both_clients_carry_their_model_calls_unless_told_not_to(
    models: Path, server_process: Callable[..., ServerProcess]
) -> None:
    server = server_process(models, workers=2, args=("--log-requests",))
    with ModelClient("mean", server.target) as client:
        results = [client.run_image(np.full((4, 4, 3), i, np.uint8)) for i in range(6)]
        assert client.info().name == "mean"  # not a model call: a call of its own
    assert results == [{"mean": float(i)} for i in range(6)]

    async def asyncio_calls() -> list[Any]:
        async with AsyncModelClient("mean", server.target) as client:
            return [await client.run_image(np.full((4, 4, 3), 9, np.uint8)) for _ in range(4)]

    assert asyncio.run(asyncio_calls()) == [{"mean": 9.0}] * 4
    with ModelClient("mean", server.target, call_streams=False) as client:
        assert client.run_image(np.full((4, 4, 3), 1, np.uint8)) == {"mean": 1.0}
    assert wait_for(lambda: sum(carried_lines(server, "mean")) == 11, timeout=10)
    assert carried_lines(server, "mean") == (10, 1), server.logs()
    assert "GetModelInfo" in server.logs()
    assert not any(
        "via=Calls" in line for line in server.logs().splitlines() if "GetModelInfo" in line
    )


def test_the_thread_client_carries_the_calls_of_many_threads_at_once(
    models: Path, server_process: Callable[..., ServerProcess]
) -> None:
    """ModelClient's calls run on its event loop, which carries them whatever thread makes
    them: eight threads calling at once send no call of its own."""
    server = server_process(models, workers=2, args=("--log-requests",))
    images = [np.full((4, 4, 3), i, np.uint8) for i in range(48)]
    with ModelClient("mean", server.target) as client, ThreadPoolExecutor(8) as threads:
        results = list(threads.map(client.run_image, images))
    assert results == [{"mean": float(i)} for i in range(48)]
    assert wait_for(lambda: sum(carried_lines(server, "mean")) == 48, timeout=10)
    assert carried_lines(server, "mean") == (48, 0), server.logs()


def test_a_thread_client_dropped_unclosed_closes_its_connections(
    models: Path, in_process_server: Callable[..., InProcessServer]
) -> None:
    """Its pool's tasks on the loop would keep its channels open: collecting the client
    closes them, as grpcio closes a channel it collects."""
    server = in_process_server(models)

    def sockets() -> int:
        return sum(
            os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
            for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")
        )

    with ModelClient("mean", server.target) as client:  # the loop and gRPC's own, started
        client.run_image(np.zeros((4, 4, 3), np.uint8))
    before = sockets()
    # Held until all six are connected: a client dropped at once could be collected (and
    # its connections closed) at any moment, by a collection of the garbage along the way.
    clients = [ModelClient("mean", server.target) for _ in range(6)]
    for each in clients:
        assert each.run_image(np.full((4, 4, 3), 5, np.uint8)) == {"mean": 5.0}
    assert sockets() >= before + 6
    del clients, each
    gc.collect()
    assert wait_for(lambda: sockets() <= before, timeout=10), (sockets(), before)


def test_a_server_without_calls_gets_calls_of_their_own(
    models: Path, in_process_server: Callable[..., InProcessServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older server answers Calls UNIMPLEMENTED: the clients send its calls on their own,
    without failing one."""

    async def unimplemented(*args: Any) -> None:
        raise Unimplemented("unknown method Calls")

    monkeypatch.setattr(carrier, "serve", unimplemented)
    server = in_process_server(models)
    with ModelClient("mean", server.target) as client:
        assert [client.run_image(np.full((4, 4, 3), i, np.uint8)) for i in range(3)] == [
            {"mean": 0.0},
            {"mean": 1.0},
            {"mean": 2.0},
        ]

    async def asyncio_calls() -> list[Any]:
        async with AsyncModelClient("mean", server.target) as client:
            return [await client.run_image(np.full((4, 4, 3), 4, np.uint8)) for _ in range(3)]

    assert asyncio.run(asyncio_calls()) == [{"mean": 4.0}] * 3


def test_a_carried_call_to_a_stopped_worker_keeps_to_its_timeout(
    models: Path, server_process: Callable[..., ServerProcess]
) -> None:
    """A worker that cannot answer (SIGSTOP: wedged) cannot end a call at its timeout: the
    client does, on the stream it holds open and on a new one."""
    server = server_process(models, workers=1)
    image = np.full((4, 4, 3), 2, np.uint8)
    retry = RetryPolicy.never()
    with (
        ModelClient("mean", server.target, timeout=1.0, retry=retry) as client,
        ModelClient("mean", server.target, timeout=1.0, retry=retry) as fresh,
    ):
        assert client.run_image(image) == {"mean": 2.0}  # its stream stays open
        (worker,) = client.workers()
        with stopped(worker.pid):
            for caller in (client, fresh, client):
                began = time.monotonic()
                with pytest.raises(DeadlineExceededError):
                    caller.run_image(image)
                assert 0.9 < time.monotonic() - began < 3.0
        assert client.run_image(image) == {"mean": 2.0}

    async def asyncio_calls() -> None:
        async with AsyncModelClient("mean", server.target, timeout=1.0, retry=retry) as client:
            assert await client.run_image(image) == {"mean": 2.0}
            with stopped(worker.pid):
                began = time.monotonic()
                with pytest.raises(DeadlineExceededError):
                    await client.run_image(image)
                assert 0.9 < time.monotonic() - began < 3.0
            assert await client.run_image(image) == {"mean": 2.0}

    asyncio.run(asyncio_calls())


def test_a_call_sent_on_a_stream_its_stopping_worker_ended_is_sent_again(
    models: Path, server_process: Callable[..., ServerProcess]
) -> None:
    """A stopping worker ends the streams it holds open: the next call on such a stream was
    not run, and the client sends it to a worker still serving."""
    server = server_process(models, workers=2)
    image = np.full((4, 4, 3), 3, np.uint8)
    with ModelClient("mean", server.target, balancer=RoundRobin()) as client:
        for _ in range(4):  # a stream open to each worker
            assert client.run_image(image) == {"mean": 3.0}
        first = client.workers()[0]
        os.kill(first.pid, signal.SIGTERM)
        assert wait_for(lambda: not alive(first.pid), timeout=30)
        assert [client.run_image(image) for _ in range(8)] == [{"mean": 3.0}] * 8


def test_a_worker_keeps_a_bounded_number_of_idle_streams(
    models: Path, in_process_server: Callable[..., InProcessServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond MAX_IDLE streams waiting for a call, the one waiting longest ends UNAVAILABLE;
    the clients open another when they need one, without failing a call."""
    monkeypatch.setattr(carrier, "MAX_IDLE", 2)
    server = in_process_server(models)
    request = carried("RunImage", pb.RunImageRequest(model="mean", image=image(6)))
    streams: list[Stream] = []
    try:
        for _ in range(3):  # each opened and answered, then waiting for its next call
            streams.append(Stream(server.target))
            assert not streams[-1].call(request).error_status
        with pytest.raises(grpc.RpcError) as ended:
            streams[0].call(request)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "at most 2 Calls streams waiting" in (ended.value.details() or "")
        for opened in streams[1:]:
            assert not opened.call(request).error_status
    finally:
        for opened in streams:
            opened.close()

    async def asyncio_calls() -> list[Any]:
        async with AsyncModelClient("mean", server.target) as client:
            calls = [client.run_image(np.full((4, 4, 3), 5, np.uint8)) for _ in range(6)]
            first = await asyncio.gather(*calls)  # six streams open at once, four ended
            return [*first, await client.run_image(np.full((4, 4, 3), 5, np.uint8))]

    assert asyncio.run(asyncio_calls()) == [{"mean": 5.0}] * 7


def test_a_stream_ended_before_its_answer_is_taken_leaves_no_call_timed(
    server: InProcessServer,
) -> None:
    """The StallWatch times a carried call until its caller takes the answer. A stream that
    ends meanwhile ends that timing: left, it would outlive the stream's gRPC call, which
    the watch would later ask for its peer."""
    frame = to_parts(np.full((40, 40, 3), 7, np.uint8), color="bgr").to_message()
    request = pb.RunImageToImageRequest(model="invert", images=[frame])
    watch = server.running.watch
    caller = NonReadingCaller(server.running.port)  # it takes nothing of any answer

    def handed() -> bool:  # the answer waits in gRPC; the caller answers the server's pings
        return not caller.closed_by_server(0.05) and watch.untaken >= 40 * 40 * 3

    try:
        caller.call(method_path("Calls"), carried("RunImageToImage", request).SerializeToString())
        assert wait_for(handed, 10), repr(watch)
    finally:
        caller.close()  # the stream ends with its answer untaken
    assert wait_for(lambda: watch.untaken == 0 and "waiting=0 " in repr(watch), 10), repr(watch)
    with ModelClient("invert", server.target) as client:  # the worker serves on
        assert (client.run_image_to_image(np.zeros((2, 2, 3), np.uint8)).image == 255).all()
