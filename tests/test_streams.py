"""RunImageStream end to end: real servers, real models, both clients."""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

from tests.support import (
    InProcessServer,
    ServerProcess,
    early_ending_server,
    wait_for,
    write_models,
)
from tms.v1 import model_service_pb2
from tms_client import (
    AsyncModelClient,
    CallError,
    ClientOptions,
    DeadlineExceededError,
    FrameResult,
    InvalidInputError,
    ModelClient,
    ModelFailedError,
    ModelNotFoundError,
    ResourceExhaustedError,
    UnavailableError,
    UnsupportedCallError,
)
from tms_client.images import to_parts
from tms_client.protocol.methods import method_path

pb = model_service_pb2

MODELS = {
    # Keeps a count per stream (the tracker's state) and notes, in the folder the stream's
    # args name, when a stream closes and how many of its frames ever ran at once.
    "tracker": """
        import os
        import threading
        import time
        from pathlib import Path

        import tms_server

        class Tracker:
            def __init__(self, args):
                self.name = args.get("name", "")
                self.notes = Path(args["notes"]) if "notes" in args else None
                self.count = 0
                self.running = 0
                self.most = 0
                self.lock = threading.Lock()

            def run(self, image, args):
                with self.lock:
                    self.running += 1
                    self.most = max(self.most, self.running)
                try:
                    if args.get("fail"):
                        raise tms_server.InvalidInput(f"frame refused: {args['fail']}")
                    time.sleep(args.get("sleep", 0))
                    self.count += 1
                    return {
                        "name": self.name,
                        "count": self.count,
                        "pid": os.getpid(),
                        "mean": float(image.mean()),
                        "most": self.most,
                    }
                finally:
                    with self.lock:
                        self.running -= 1

            def close(self):
                if self.notes is not None:
                    (self.notes / f"closed-{self.name}").write_text(str(self.count))

        class Model(tms_server.Model):
            color = "bgr"
            thread_safe = True
            dtype = "uint8"

            def open_stream(self, args):
                if args.get("refuse"):
                    raise tms_server.InvalidInput("this stream is refused")
                time.sleep(args.get("open_sleep", 0))
                return Tracker(args)

            def run(self, image, args):
                return {"mean": float(image.mean()), "pid": os.getpid()}
    """,
    # Not thread-safe (one call at a time, under its lock); says which thread ran it, and
    # when asked, holds its lock until a file exists (noting that it holds it).
    "where": """
        import threading
        import time
        from pathlib import Path

        import tms_server

        class Model(tms_server.Model):
            def run(self, image, args):
                if "hold" in args:
                    Path(args["hold"], "holding").touch()
                    deadline = time.monotonic() + 10
                    while not Path(args["hold"], "release").exists():
                        if time.monotonic() > deadline:
                            break
                        time.sleep(0.01)
                return {"thread": threading.current_thread().name}
    """,
    # open_stream returns an object without run (only close, noting that it ran).
    "no_run": """
        from pathlib import Path

        import tms_server

        class Camera:
            def __init__(self, notes):
                self.notes = notes

            def close(self):
                Path(self.notes, "closed").touch()

        class Model(tms_server.Model):
            def open_stream(self, args):
                return Camera(args["notes"])

            def run(self, image, args):
                return {}
    """,
    # Image to image alone: no run for a stream's frames.
    "flip": """
        import tms_server

        class Model(tms_server.Model):
            def run_image_to_image(self, images, args):
                return [image[::-1] for image in images]
    """,
    # No stream hook: each frame goes to run.
    "plain": """
        import tms_server

        class Model(tms_server.Model):
            def run(self, image, args):
                return {"mean": float(image.mean())}
    """,
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models(tmp_path_factory.mktemp("models"), MODELS)


@pytest.fixture
def server(models: Path, in_process_server: Callable[..., InProcessServer]) -> InProcessServer:
    return in_process_server(models)


def frame(value: int) -> np.ndarray:
    return np.full((8, 8, 3), value, np.uint8)


def test_results_come_in_order_with_their_frame_ids(server: InProcessServer) -> None:
    with ModelClient("tracker", server.target) as client:
        results = list(client.run_image_stream(frame(i) for i in range(20)))
    assert [r.frame_id for r in results] == list(range(20))
    assert [r.result["mean"] for r in results] == [float(i) for i in range(20)]
    assert [r.result["count"] for r in results] == list(range(1, 21))  # one tracker
    assert all(r.error is None for r in results)
    assert all(r.result["most"] == 1 for r in results)  # one frame of a stream at a time


def test_a_model_without_a_stream_hook_runs_each_frame(server: InProcessServer) -> None:
    with ModelClient("plain", server.target) as client:
        results = list(client.run_image_stream([frame(3), frame(5)], window=1))
    assert results == [FrameResult(0, {"mean": 3.0}), FrameResult(1, {"mean": 5.0})]
    with ModelClient("plain", server.target) as client:
        assert list(client.run_image_stream([])) == []


def test_a_stream_open_when_its_worker_drains_ends_unavailable_at_its_next_frame(
    server: InProcessServer,
) -> None:
    # A draining worker takes no more work: its streams end, for their callers to open them
    # again on another worker, and no new one opens.
    frames: queue.Queue[np.ndarray | None] = queue.Queue()

    def produce() -> Iterator[np.ndarray]:
        while (next_frame := frames.get(timeout=30)) is not None:
            yield next_frame

    with ModelClient("plain", server.target) as client:
        results = client.run_image_stream(produce(), window=1)
        try:
            frames.put(frame(3))
            assert next(results) == FrameResult(0, {"mean": 3.0})
            server.running.drain()
            frames.put(frame(5))
            with pytest.raises(UnavailableError, match="open the stream again"):
                next(results)
        finally:
            frames.put(None)
    with pytest.raises(grpc.RpcError) as caught:
        raw_stream(server.target, [pb.RunImageStreamRequest(model="plain", image=image(1))])
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in (caught.value.details() or "")


def raw_stream(target: str, requests: list[pb.RunImageStreamRequest]) -> Any:
    """The answers of a RunImageStream sent with plain grpcio, and its call."""
    with grpc.insecure_channel(target) as channel:
        method = channel.stream_stream(
            method_path("RunImageStream"),
            request_serializer=pb.RunImageStreamRequest.SerializeToString,
            response_deserializer=pb.RunImageStreamResponse.FromString,
        )
        call = method(iter(requests), timeout=30)
        return list(call), call


def image(value: int, dtype: Any = np.uint8) -> Any:
    return to_parts(np.full((4, 4, 3), value, dtype), color="bgr").to_message()


def test_a_bad_frame_is_answered_with_its_error_and_the_stream_goes_on(
    server: InProcessServer,
) -> None:
    requests = [
        pb.RunImageStreamRequest(model="tracker", image=image(1), frame_id=10),
        pb.RunImageStreamRequest(image=image(2), frame_id=11, args_json='{"fail": "no"}'),
        pb.RunImageStreamRequest(image=image(3, np.float32), frame_id=12),  # not uint8
        pb.RunImageStreamRequest(image=image(4), frame_id=13),
    ]
    answers, call = raw_stream(server.target, requests)
    assert call.code() == grpc.StatusCode.OK
    assert [a.frame_id for a in answers] == [10, 11, 12, 13]
    assert [bool(a.error_status) for a in answers] == [False, True, True, False]
    assert json.loads(answers[3].result_json)["count"] == 2
    reasons = []
    for answer in answers[1:3]:
        status = status_pb2.Status.FromString(answer.error_status)
        assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        info = error_details_pb2.ErrorInfo()
        assert status.details[0].Unpack(info)
        assert info.domain == "tms"
        assert info.metadata["model"] == "tracker"
        reasons.append(info.reason)
    assert reasons == ["INVALID_INPUT", "INVALID_IMAGE"]
    assert "frame refused: no" in status_pb2.Status.FromString(answers[1].error_status).message


def test_the_client_raises_a_failed_frame_or_yields_it(server: InProcessServer) -> None:
    frames = [frame(1), np.zeros((4, 4, 3), np.float32), frame(3)]  # not uint8
    with ModelClient("tracker", server.target) as client:
        results = list(client.run_image_stream(frames, errors="yield"))
        assert [r.frame_id for r in results] == [0, 1, 2]
        failed = results[1]
        assert failed.result is None
        assert isinstance(failed.error, InvalidInputError)
        assert failed.error.reason == "INVALID_IMAGE"
        assert failed.error.field_violations[0][0] == "image.dtype"
        assert results[2].result["count"] == 2
        stream = client.run_image_stream(frames)
        assert next(stream).frame_id == 0
        with pytest.raises(InvalidInputError) as raised:
            next(stream)
        assert raised.value.reason == "INVALID_IMAGE"


def test_stream_errors_end_the_stream_with_their_status(server: InProcessServer) -> None:
    with ModelClient("nope", server.target) as client, pytest.raises(ModelNotFoundError) as nf:
        list(client.run_image_stream([frame(1), frame(2)]))
    assert nf.value.reason == "MODEL_NOT_FOUND"
    with ModelClient("tracker", server.target) as client:
        with pytest.raises(InvalidInputError) as refused:
            list(client.run_image_stream([frame(1)], {"refuse": True}))
        assert refused.value.reason == "INVALID_INPUT"
        assert "refused" in refused.value.details
        with pytest.raises(ModelFailedError) as failed:  # open_stream raised TypeError
            list(client.run_image_stream([frame(1)], {"notes": 5}))
        assert failed.value.reason == "MODEL_FAILED"


def test_a_stream_to_a_model_without_run_image_says_so_and_what_it_supports(
    server: InProcessServer,
) -> None:
    """It said "does not support RunImage": a call the caller never made."""
    with ModelClient("flip", server.target) as client, pytest.raises(UnsupportedCallError) as err:
        list(client.run_image_stream([frame(1)]))
    assert err.value.reason == "UNSUPPORTED_CALL"
    assert err.value.details == (
        "model 'flip' does not support RunImageStream (each frame a RunImage call); "
        "it supports RunImageToImage"
    )


def test_an_open_stream_object_without_run_fails_the_stream_saying_so(
    server: InProcessServer, tmp_path: Path
) -> None:
    """Not "internal error in .../RunImageStream: AttributeError": the model's mistake,
    named, and the object's close() still called."""
    with ModelClient("no_run", server.target) as client, pytest.raises(ModelFailedError) as failed:
        list(client.run_image_stream([frame(1), frame(2)], {"notes": str(tmp_path)}))
    assert failed.value.reason == "MODEL_FAILED"
    assert failed.value.details == (
        "model 'no_run': open_stream returned Camera, which has no run(image, args) method; "
        "return None (the frames go to the model's run) or an object whose run takes each "
        "frame"
    )
    assert wait_for((tmp_path / "closed").exists, timeout=10)


class Counted:
    """``count`` frames, counting those the client has read so far (``pulled``)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.pulled = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(self.count):
            self.pulled += 1
            yield frame(i)

    def ahead(self, result: FrameResult) -> int:
        """Frames read beyond ``result``'s."""
        return self.pulled - (result.frame_id + 1)


def test_at_most_window_frames_are_in_flight(server: InProcessServer) -> None:
    frames = Counted(12)
    window = 3
    most_ahead = 0
    with ModelClient("tracker", server.target) as client:
        stream = client.run_image_stream(frames, {"sleep": 0.02}, window=window)
        for result in stream:
            assert frames.ahead(result) <= window, (result.frame_id, frames.pulled)
            most_ahead = max(most_ahead, frames.ahead(result))
            assert result.result["most"] == 1
    assert most_ahead >= 1  # the window was used: frames were sent ahead of their answers


def test_a_slow_reader_holds_the_frames_back(server: InProcessServer) -> None:
    """The thread client hands each answer to its reader and reads on once it is taken: a
    reader slower than the model keeps the frames read ahead within the window (and the one
    answer waiting for it), not the whole video."""
    frames = Counted(16)
    window = 2
    with ModelClient("tracker", server.target) as client:
        for result in client.run_image_stream(frames, window=window):
            time.sleep(0.03)  # slower than the model
            assert frames.ahead(result) <= window + 1, (result.frame_id, frames.pulled)
    assert frames.pulled == 16


def test_streams_keep_their_own_state_and_close(server: InProcessServer, tmp_path: Path) -> None:
    def run(name: str, count: int) -> list[Any]:
        with ModelClient("tracker", server.target) as client:
            args = {"name": name, "notes": str(tmp_path), "sleep": 0.005}
            stream = client.run_image_stream((frame(i) for i in range(count)), args)
            return [(r.result["name"], r.result["count"]) for r in stream]

    with_threads: dict[str, list[Any]] = {}
    threads = [
        threading.Thread(target=lambda n=n, c=c: with_threads.__setitem__(n, run(n, c)))
        for n, c in (("a", 15), ("b", 9))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert with_threads["a"] == [("a", i) for i in range(1, 16)]
    assert with_threads["b"] == [("b", i) for i in range(1, 10)]
    assert (tmp_path / "closed-a").read_text() == "15"
    assert (tmp_path / "closed-b").read_text() == "9"


def test_close_is_called_when_the_caller_leaves(server: InProcessServer, tmp_path: Path) -> None:
    def endless() -> Iterator[np.ndarray]:
        while True:
            yield frame(1)

    with ModelClient("tracker", server.target) as client:
        stream = client.run_image_stream(endless(), {"name": "left", "notes": str(tmp_path)})
        for result in stream:
            if result.frame_id == 5:
                break
        stream.close()  # type: ignore[attr-defined]
    closed = tmp_path / "closed-left"
    assert wait_for(lambda: closed.exists() and closed.read_text(), timeout=10)
    assert int(closed.read_text()) >= 6


def test_a_stream_stays_on_one_worker(
    models: Path, server_process: Callable[..., ServerProcess]
) -> None:
    served = server_process(models, workers=2)
    with ModelClient("tracker", served.target) as client:
        assert len(client.workers()) == 2
        pids = []
        for _ in range(4):
            results = list(client.run_image_stream(frame(i) for i in range(10)))
            assert [r.result["count"] for r in results] == list(range(1, 11))
            assert len({r.result["pid"] for r in results}) == 1
            pids.append(results[0].result["pid"])
        # two streams at once go to the two workers (each counts as a call in flight)
        barrier = threading.Barrier(2)

        def slow() -> Iterator[np.ndarray]:
            barrier.wait(10)
            for i in range(5):
                time.sleep(0.05)
                yield frame(i)

        first = client.run_image_stream(slow(), window=1)
        second = client.run_image_stream(slow(), window=1)
        both: list[int] = []
        threads = [
            threading.Thread(target=lambda s=s: both.extend({r.result["pid"] for r in s}))
            for s in (first, second)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(set(both)) == 2


@pytest.mark.parametrize("shared_memory", [False, True], ids=["bytes", "same-host default"])
def test_frames_larger_than_a_message_go_as_png(
    server: InProcessServer, shared_memory: bool
) -> None:
    # As a unary call's image does: a raw frame over the client's max_message_mb is sent as
    # PNG (lossless), so the stream goes on; a frame that cannot fit even so fails the stream
    # with what to do.
    ramp = np.arange(600 * 600 * 3, dtype=np.uint32).reshape(600, 600, 3)
    big = (ramp // 7 % 256).astype(np.uint8)  # 1.08 MB raw, over 1 MiB; small as PNG
    noise = np.random.default_rng(7).integers(0, 256, (600, 600, 3), np.uint8)
    options = ClientOptions(target=server.target, max_message_mb=1, shared_memory=shared_memory)
    with ModelClient("plain", options=options) as client:
        results = list(client.run_image_stream([frame(3), big, frame(5)], color="rgb"))
        assert [r.result["mean"] for r in results] == [3.0, float(big.mean()), 5.0]
        with pytest.raises(ResourceExhaustedError, match="raise the limit on both sides"):
            list(client.run_image_stream([frame(3), noise], color="rgb"))

    async def from_asyncio() -> list[float]:
        async with AsyncModelClient("plain", options=options) as client:
            return [r.result["mean"] async for r in client.run_image_stream([big], color="rgb")]

    assert asyncio.run(from_asyncio()) == [float(big.mean())]


def test_the_asyncio_client_streams_too(server: InProcessServer, tmp_path: Path) -> None:
    async def frames() -> Any:
        for i in range(10):
            await asyncio.sleep(0)
            yield frame(i)

    async def main() -> tuple[list[FrameResult], list[FrameResult]]:
        async with AsyncModelClient("tracker", server.target) as client:
            args = {"name": "aio", "notes": str(tmp_path)}
            from_async = [r async for r in client.run_image_stream(frames(), args, window=2)]
            from_sync = [
                r
                async for r in client.run_image_stream(
                    [frame(1), frame(2), np.zeros((4, 4, 3), np.float32)], errors="yield"
                )
            ]
            async with AsyncModelClient("nope", server.target) as missing:
                with pytest.raises(ModelNotFoundError):
                    await anext(missing.run_image_stream([frame(1)]))
            return from_async, from_sync

    from_async, from_sync = asyncio.run(main())
    assert [(r.frame_id, r.result["count"]) for r in from_async] == [(i, i + 1) for i in range(10)]
    assert [r.frame_id for r in from_sync] == [0, 1, 2]
    assert isinstance(from_sync[2].error, InvalidInputError)
    assert (tmp_path / "closed-aio").read_text() == "10"


def test_the_asyncio_client_raises_what_the_frames_raise_and_keeps_to_its_timeout(
    server: InProcessServer,
) -> None:
    """Frames that raise (a camera unplugged, or something no image) end an asyncio stream
    with that error after the frames sent are answered, as with threads, not with
    asyncio.CancelledError in a task no one cancelled; and a stream whose blocking frames
    outlast its timeout ends DEADLINE_EXCEEDED, not INTERNAL."""

    def unplugged() -> Iterator[np.ndarray]:
        yield frame(1)
        yield frame(2)
        raise RuntimeError("camera unplugged")

    def slow() -> Iterator[np.ndarray]:  # a camera paced on the event loop
        for i in range(6):
            time.sleep(0.4)
            yield frame(i)

    async def drain(results: Any, answered: list[float]) -> None:
        async for result in results:
            answered.append(result.result["mean"])

    def drain_sync(results: Any, answered: list[float]) -> None:
        answered.extend(result.result["mean"] for result in results)

    async def main() -> None:
        async with AsyncModelClient("plain", server.target) as client:
            answered: list[float] = []
            with pytest.raises(RuntimeError, match="camera unplugged"):
                await drain(client.run_image_stream(unplugged(), window=1), answered)
            assert answered == [1.0, 2.0]
            no_image: Any = 123
            with pytest.raises(TypeError, match="cannot send int as an image"):
                await drain(client.run_image_stream([frame(1), no_image]), [])
            for _ in range(2):
                with pytest.raises(DeadlineExceededError):
                    await drain(client.run_image_stream(slow(), timeout=1), [])
            assert [r.result async for r in client.run_image_stream([frame(4)])] == [{"mean": 4.0}]

    asyncio.run(main())
    with ModelClient("plain", server.target) as client:  # the thread client, alike
        answered: list[float] = []
        with pytest.raises(RuntimeError, match="camera unplugged"):
            drain_sync(client.run_image_stream(unplugged(), window=1), answered)
        assert answered == [1.0, 2.0]


@pytest.fixture
def early_ender() -> Iterator[str]:
    with early_ending_server() as target:
        yield target


def test_a_stream_ended_with_a_frame_unanswered_fails_internal(early_ender: str) -> None:
    frames = [frame(0), frame(1)]
    with ModelClient("any", early_ender, shared_memory=False) as client:
        answers = client.run_image_stream(frames)
        assert next(answers).frame_id == 0
        with pytest.raises(CallError, match="ended before frame 1 was answered") as raised:
            next(answers)
        assert raised.value.code == grpc.StatusCode.INTERNAL

    async def main() -> None:
        async with AsyncModelClient("any", early_ender, shared_memory=False) as client:
            answers = client.run_image_stream(frames)
            assert (await anext(answers)).frame_id == 0
            with pytest.raises(CallError, match="ended before frame 1 was answered"):
                await anext(answers)

    asyncio.run(main())


def bogus(value: int) -> pb.RunImageStreamRequest:
    """A frame whose image declares 64x64x3 pixels and carries one byte: refused at once."""
    message = image(value)
    message.ClearField("shape")
    message.shape.extend([64, 64, 3])
    return pb.RunImageStreamRequest(frame_id=value, image=message)


def test_frames_refused_at_once_never_send_a_model_to_the_event_loop(
    server: InProcessServer,
) -> None:
    # Else a caller could have the worker's event loop, which every call needs, run the next
    # real frame of that size: every other call of the worker would wait for it.
    requests = [bogus(i) for i in range(1, 41)]
    requests[0].model = "where"
    real = to_parts(np.zeros((64, 64, 3), np.uint8), color="bgr").to_message()
    requests.append(pb.RunImageStreamRequest(frame_id=41, image=real))
    answers, _ = raw_stream(server.target, requests)
    assert [bool(a.error_status) for a in answers] == [True] * 40 + [False]
    assert json.loads(answers[-1].result_json)["thread"].startswith("tms-call-")


def test_no_frame_waits_on_the_event_loop_for_a_model_busy_on_a_thread(
    server: InProcessServer, tmp_path: Path
) -> None:
    # A model that is not thread-safe runs one call at a time: a frame proven quick must not
    # wait for its lock on the event loop while a RunImage of it runs on a thread.
    holding = tmp_path / "holding"
    loop_thread: list[str] = []
    load = server.running.runner.load

    def release() -> None:  # once the frame runs too (waiting for the lock, on a thread)
        wait_for(lambda: load.in_flight == 2, timeout=30)
        (tmp_path / "release").touch()

    def frames() -> Iterator[np.ndarray]:
        yield from (frame(i) for i in range(40))  # proven quick: the last run on the loop
        assert wait_for(holding.exists, timeout=30)
        threading.Thread(target=release, daemon=True).start()
        yield frame(40)

    with ModelClient("where", server.target) as client:
        held = threading.Thread(
            target=lambda: client.run_image(frame(0), {"hold": str(tmp_path)}), daemon=True
        )
        results = []
        for result in client.run_image_stream(frames(), window=1):
            results.append(result.result["thread"])
            if len(results) == 40:
                loop_thread.append(result.result["thread"])
                held.start()
        held.join(30)
    assert not loop_thread[0].startswith("tms-call-")  # frames ran on the loop...
    assert results[-1].startswith("tms-call-")  # ...but not while the model was busy


def test_a_request_naming_its_model_out_of_place_is_refused(server: InProcessServer) -> None:
    # Admission reads the model from a request's first field, to keep that model's other
    # calls off the event loop while this one runs. Protobuf reads the last one, anywhere: a
    # request naming another model there would have the model's calls wait on the loop.
    def parts(**fields: Any) -> bytes:
        return pb.RunImageRequest(**fields).SerializeToString()

    later = parts(image=image(1)) + parts(model="where")
    twice = parts(model="plain") + parts(model="where", image=image(1))
    stream_later = [
        pb.RunImageStreamRequest(image=image(1)).SerializeToString()
        + pb.RunImageStreamRequest(model="where").SerializeToString()
    ]
    with grpc.insecure_channel(server.target) as channel:
        run_image: grpc.UnaryUnaryMultiCallable[bytes, bytes]
        run_image = channel.unary_unary(method_path("RunImage"))
        for request in (later, twice):
            with pytest.raises(grpc.RpcError) as caught:
                run_image(request, timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "first and once" in (caught.value.details() or "")
        stream: grpc.StreamStreamMultiCallable[bytes, bytes]
        stream = channel.stream_stream(method_path("RunImageStream"))
        with pytest.raises(grpc.RpcError) as caught:
            list(stream(iter(stream_later), timeout=10))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "first and once" in (caught.value.details() or "")
        # As protobuf encoders write it, the model field first:
        answer = pb.RunImageResponse.FromString(run_image(parts(model="where", image=image(1))))
        assert "thread" in json.loads(answer.result_json)


def test_close_runs_for_a_stream_left_while_open_stream_ran(
    server: InProcessServer, tmp_path: Path
) -> None:
    with grpc.insecure_channel(server.target) as channel:
        method = channel.stream_stream(
            method_path("RunImageStream"),
            request_serializer=pb.RunImageStreamRequest.SerializeToString,
            response_deserializer=pb.RunImageStreamResponse.FromString,
        )
        args = {"name": "left-early", "notes": str(tmp_path), "open_sleep": 0.5}
        first = pb.RunImageStreamRequest(model="tracker", args_json=json.dumps(args))
        call = method(iter([first]), timeout=30)
        time.sleep(0.2)  # open_stream sleeps 0.5 s
        call.cancel()
    closed = tmp_path / "closed-left-early"
    assert wait_for(lambda: closed.exists() and closed.read_text(), timeout=10)  # written
    assert closed.read_text() == "0"  # no frame ran


def test_a_worker_holds_at_most_max_streams_open(
    models: Path, in_process_server: Callable[..., InProcessServer]
) -> None:
    # An open stream may idle for as long as its caller likes (a paused video), holding its
    # model's state: a worker takes no more than --max-streams of them at once.
    server = in_process_server(models, max_streams=3)
    ended = threading.Event()

    def one_frame() -> Iterator[pb.RunImageStreamRequest]:
        yield pb.RunImageStreamRequest(model="tracker", frame_id=1, image=image(5))
        ended.wait(30)

    with grpc.insecure_channel(server.target) as channel:
        method = channel.stream_stream(
            method_path("RunImageStream"),
            request_serializer=pb.RunImageStreamRequest.SerializeToString,
            response_deserializer=pb.RunImageStreamResponse.FromString,
        )
        try:
            idle = [method(one_frame(), timeout=30) for _ in range(3)]
            assert [next(call).frame_id for call in idle] == [1, 1, 1]
            refused = method(one_frame(), timeout=30)
            with pytest.raises(grpc.RpcError) as caught:
                next(refused)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "3 streams open, its most (--max-streams)" in (caught.value.details() or "")
            with ModelClient("tracker", server.target) as client:  # calls go on
                assert client.run_image(frame(2))["mean"] == 2.0
            idle.pop().cancel()
            opened: list[Any] = []

            def opens() -> bool:
                call = method(one_frame(), timeout=30)
                try:
                    next(call)
                except grpc.RpcError:
                    return False
                opened.append(call)
                return True

            assert wait_for(opens, timeout=10)  # once the worker has seen the cancel
            assert not opens()
            idle += opened
        finally:
            ended.set()
