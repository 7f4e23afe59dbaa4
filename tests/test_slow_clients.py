"""Callers that are slow or hostile at the transport level hold no thread and no memory past
the stated bounds, and the other callers' calls succeed meanwhile.

- callers that open calls and never send the request (grpc.aio with a request iterator that
  never yields), with and without tokens;
- a caller that never takes its answers (raw HTTP/2 with a flow-control window of 0);
- floods of health Watch streams.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support import NonReadingCaller, memory_mb, wait_for, write_models
from tms.v1 import image_pb2, model_service_pb2
from tms_client import ModelClient, RetryPolicy

pb = model_service_pb2
BIG_ANSWER = (2048, 2048, 4)  # 16 MiB of uint8

MODELS = {
    "echo": """
        import tms_server

        class Model(tms_server.Model):
            inputs = "text"
            thread_safe = True

            def run(self, text, args):
                return {"text": text}
    """,
    "big": f"""
        import numpy as np
        import tms_server

        class Model(tms_server.Model):
            thread_safe = True

            def run_image_to_image(self, images, args):
                return np.ones({BIG_ANSWER!r}, np.uint8)
    """,
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models(tmp_path_factory.mktemp("slow"), MODELS)


class StalledCallers:
    """``channels`` connections, each with ``calls`` calls to ``method`` whose request never
    comes, run by an event loop in a thread of their own."""

    def __init__(self, target: str, *, channels: int, calls: int, metadata: Any = ()) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.outcomes: list[grpc.StatusCode] = []
        self._open = asyncio.run_coroutine_threadsafe(
            self._start(target, channels, calls, metadata), self._loop
        ).result(10)

    async def _start(self, target: str, channels: int, calls: int, metadata: Any) -> Any:
        self._never = asyncio.Event()
        # A connection each (channels to one target share one by default).
        options = [("grpc.use_local_subchannel_pool", 1)]
        self._channels = [grpc.aio.insecure_channel(target, options) for _ in range(channels)]
        self._tasks = [
            asyncio.create_task(self._call(channel, metadata))
            for channel in self._channels
            for _ in range(calls)
        ]

    async def _requests(self) -> AsyncIterator[bytes]:
        await self._never.wait()
        yield b""

    async def _call(self, channel: grpc.aio.Channel, metadata: Any) -> None:
        call: Any = channel.stream_unary("/tms.v1.ModelService/RunText")
        try:
            await call(self._requests(), metadata=metadata)
            self.outcomes.append(grpc.StatusCode.OK)
        except grpc.aio.AioRpcError as exc:
            self.outcomes.append(exc.code())

    def close(self) -> None:
        async def stop() -> None:
            for channel in self._channels:
                await channel.close()
            # Every task of this loop, grpc's own request readers included.
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.mark.parametrize("tokens", [False, True], ids=["open", "tokens"])
def test_callers_that_never_send_their_request_stall_nothing(
    in_process_server, models, tmp_path, tokens
):
    overrides: dict[str, Any] = {"threads": 2, "max_queued_calls": 2, "slow_client_seconds": 2}
    metadata: Any = ()
    token = None
    if tokens:
        token = "t0ken"
        (tmp_path / "tokens").write_text(token + "\n")
        overrides["tokens_file"] = tmp_path / "tokens"
        metadata = (("authorization", f"Bearer {token}"),)
    server = in_process_server(models, **overrides)
    # 500 calls over 20 connections: far more than the worker's 2 threads and 2 queue places.
    stalled = StalledCallers(server.target, channels=20, calls=25, metadata=metadata)
    try:
        watch = server.running.watch
        assert wait_for(lambda: "waiting=500 " in repr(watch), 10), repr(watch)
        with ModelClient("echo", server.target, timeout=5, token=token) as echo:
            for i in range(10):
                assert echo.run_text(f"call {i}") == {"text": f"call {i}"}
        # Past --slow-client-seconds their connections are closed: every stalled call ends.
        assert wait_for(lambda: len(stalled.outcomes) == 500, 15), len(stalled.outcomes)
        assert set(stalled.outcomes) == {grpc.StatusCode.UNAVAILABLE}
        assert watch.closed == 20
    finally:
        stalled.close()


@pytest.mark.slow
def test_a_caller_that_never_takes_its_answers_is_cut_off(server_process, models):
    server = server_process(
        models,
        workers=1,
        # Two threads: at most two answers are being made at once besides those waiting.
        args=("--threads", "2", "--max-untaken-mb", "64", "--slow-client-seconds", "600"),
    )
    port = int(server.target.rsplit(":", 1)[1])
    with ModelClient("echo", server.target, timeout=10, retry=RetryPolicy.never()) as echo:
        (worker,) = echo.workers()
        pid = worker.pid
        assert echo.run_text("warm") == {"text": "warm"}
        before = memory_mb(pid)
        with open(f"/proc/{pid}/clear_refs", "w") as clear:
            clear.write("5")  # the peak (VmHWM) starts again from now
        image = image_pb2.Image(
            dtype=image_pb2.D_TYPE_UINT8, shape=[1, 1], encoding=image_pb2.ENCODING_RAW, data=b"x"
        )
        request = pb.RunImageToImageRequest(model="big", images=[image]).SerializeToString()
        caller = NonReadingCaller(port)
        try:
            for _ in range(40):  # 40 answers of 16 MiB that will never be taken: 640 MiB
                caller.call("/tms.v1.ModelService/RunImageToImage", request)
            closed = threading.Event()
            reader = threading.Thread(target=lambda: caller.closed_by_server(60) and closed.set())
            reader.start()
            while reader.is_alive():
                assert echo.run_text("bystander") == {"text": "bystander"}
                reader.join(0.05)
            assert closed.is_set(), "the server kept the connection of a caller taking nothing"
        finally:
            caller.close()
        # Untaken answers are held up to --max-untaken-mb (64 MiB counted; each is in memory
        # twice, in Python and in gRPC, until sent), besides the two being made: some 300 MiB
        # at the peak, never the 1.3 GB that 40 parked answers of 16 MiB take.
        peak = memory_mb(pid, "VmHWM")
        assert peak - before < 600, (before, peak)
        assert echo.run_text("after") == {"text": "after"}


def test_health_watch_streams_are_bounded_and_leave_nothing_behind(in_process_server, models):
    server = in_process_server(models, max_health_watches=50)
    health = server.running.parts.health

    async def flood() -> list[grpc.StatusCode | None]:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub: Any = health_pb2_grpc.HealthStub(channel)
            streams = [
                stub.Watch(health_pb2.HealthCheckRequest(service=f"fresh-{i}")) for i in range(80)
            ]
            outcomes: list[grpc.StatusCode | None] = []
            for stream in streams:
                try:
                    first = await asyncio.wait_for(stream.read(), 5)
                    assert first.status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
                    outcomes.append(None)
                except grpc.aio.AioRpcError as exc:
                    outcomes.append(exc.code())
            assert "watches=50>" in repr(health)
            for stream in streams:
                stream.cancel()
            return outcomes

    outcomes = asyncio.run(flood())
    assert outcomes.count(None) == 50
    assert outcomes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 30
    # Closed streams leave nothing: every watch and every name is gone.
    assert wait_for(lambda: "watches=0>" in repr(health), 5), repr(health)
    assert not health._watches


def test_health_watch_needs_a_token_when_tokens_are_on(in_process_server, models, tmp_path):
    (tmp_path / "tokens").write_text("s3cret\n")
    server = in_process_server(models, tokens_file=tmp_path / "tokens")
    with grpc.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        check = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as refused:
            next(stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        watch = stub.Watch(
            health_pb2.HealthCheckRequest(service=""),
            timeout=5,
            metadata=(("authorization", "Bearer s3cret"),),
        )
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()


def test_untaken_answers_are_counted_once_taken(in_process_server, models):
    server = in_process_server(models)
    with ModelClient("big", server.target, timeout=10) as big:
        out = big.run_image_to_image(np.zeros((1, 1), np.uint8))
        assert out.image.shape == BIG_ANSWER
    watch = server.running.watch
    assert wait_for(lambda: "untaken=0 " in repr(watch), 5), repr(watch)


def test_a_worker_whose_event_loop_is_stuck_stops_its_heartbeat(
    in_process_server, models, monkeypatch
):
    # The supervisor replaces a worker whose heartbeat stops (--worker-timeout-seconds); the
    # heartbeat comes from the monitor thread, but only while the event loop still runs.
    monkeypatch.setattr("tms_server.monitor.LOOP_SILENT_SECONDS", 0.5)
    server = in_process_server(models)
    board = server.running.parts.board
    assert board is not None
    assert wait_for(lambda: board.rows()[0].fresh, 5)
    server.running.loop.call_soon_threadsafe(time.sleep, 4.5)  # a loop that hangs
    assert wait_for(lambda: not board.rows()[0].fresh, 10), "a stuck loop kept beating"
    assert wait_for(lambda: board.rows()[0].fresh, 10), "the heartbeat did not come back"
