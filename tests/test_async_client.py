"""AsyncModelClient beyond run_image and health: batches, image to image, texts, model info,
the model list, a server that never answers (ConnectError) and call timeouts, against a real
server in this process."""

from __future__ import annotations

import asyncio
import math
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from tests.support import InProcessServer, write_models
from tms_client import (
    AsyncModelClient,
    ClientClosedError,
    ConnectError,
    DeadlineExceededError,
    ModelClient,
    ModelNotFoundError,
    RetryPolicy,
    TMSError,
)

MODELS = {
    "probe": '''
        import time
        import tms_server

        class Model(tms_server.Model):
            """Reports the shape it was given."""
            color = "rgb"
            thread_safe = True

            def run(self, image, args):
                time.sleep(min(float(args.get("sleep", 0)), 10))
                return {"shape": image.shape, "sum": int(image.sum()), "args": args}
    ''',
    "invert": """
        import tms_server

        class Model(tms_server.Model):
            thread_safe = True

            def run_image_to_image(self, images, args):
                return [255 - image for image in images], {"count": len(images)}
    """,
    "upper": """
        import time
        import tms_server

        class Model(tms_server.Model):
            inputs = "text"
            thread_safe = True

            def run(self, text, args):
                time.sleep(min(float(args.get("sleep", 0)), 10))
                return text.upper()
    """,
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models(tmp_path_factory.mktemp("async"), MODELS)


@pytest.fixture
def server(in_process_server, models) -> InProcessServer:
    return in_process_server(models, threads=4)


def test_batches_image_to_image_and_texts(server):
    images = [np.full((2, 3, 3), value, np.uint8) for value in (1, 2, 3)]

    async def main() -> None:
        async with AsyncModelClient("probe", server.target) as probe:
            results = await probe.run_images(images, {"k": 1})
            assert results == [
                {"shape": [2, 3, 3], "sum": 18 * value, "args": {"k": 1}} for value in (1, 2, 3)
            ]
        async with AsyncModelClient("invert", server.target) as invert:
            gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
            answer = await invert.run_image_to_image(gray)
            assert np.array_equal(answer.image, 255 - gray)
            assert answer.result == {"count": 1}
        async with AsyncModelClient("upper", server.target) as upper:
            assert await upper.run_texts(["a", "bc", ""]) == ["A", "BC", ""]

    asyncio.run(main())


def test_info_and_the_model_list(server):
    async def main() -> None:
        async with AsyncModelClient("probe", server.target) as probe:
            info = await probe.info()
            assert info.name == "probe"
            assert info.description.startswith("Reports the shape")
            assert info.color == "rgb"
            assert "run_image" in info.calls
            assert info.thread_safe
            listed = await probe.list_models()
            assert sorted(m.name for m in listed) == ["invert", "probe", "upper"]
            assert {m.name: m for m in listed}["probe"] == info
        async with AsyncModelClient("nope", server.target) as nope:
            with pytest.raises(ModelNotFoundError, match="probe"):  # the message lists them
                await nope.info()

    asyncio.run(main())


def test_a_server_that_never_answers_is_a_connect_error():
    # A socket that accepts connections and says nothing: no HTTP/2, no gRPC.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        target = f"127.0.0.1:{silent.getsockname()[1]}"

        async def main() -> None:
            async with AsyncModelClient("probe", target, connect_timeout=0.5):
                pass

        with pytest.raises(ConnectError, match=target):
            asyncio.run(main())


def test_a_call_past_its_timeout_and_the_next_call_with_a_longer_one(server):
    async def main() -> None:
        async with AsyncModelClient(
            "upper", server.target, timeout=0.3, retry=RetryPolicy.never()
        ) as upper:
            started = time.monotonic()
            with pytest.raises(DeadlineExceededError):
                await upper.run_text("zzz", {"sleep": 5})
            assert time.monotonic() - started < 4  # the deadline ended it, not the model
            upper.timeout = 20
            assert await upper.run_text("awake") == "AWAKE"

    asyncio.run(main())


@pytest.mark.parametrize("timeout", [1e10, math.inf])
def test_a_timeout_too_long_for_grpc_means_no_deadline(server, timeout):
    # gRPC fails at once a call whose deadline is a few decades off: such a timeout, and
    # math.inf, mean none, in both clients, whether given as an option or set later.
    image = np.full((2, 3, 3), 1, np.uint8)
    with ModelClient("probe", server.target, timeout=timeout) as client:
        assert client.timeout is None
        assert client.run_image(image)["sum"] == 18
        assert [r.result["sum"] for r in client.run_image_stream([image], timeout=timeout)] == [18]
        client.timeout = 5
        client.timeout = timeout
        assert client.run_image(image)["sum"] == 18
        with pytest.raises(ValueError, match="timeout must be positive"):
            client.timeout = math.nan

    async def main() -> None:
        async with AsyncModelClient("probe", server.target, timeout=timeout) as probe:
            assert (await probe.run_image(image))["sum"] == 18
        async with AsyncModelClient(
            "probe", server.target, retry=RetryPolicy(deadline=timeout)
        ) as probe:
            assert (await probe.run_image(image))["sum"] == 18

    asyncio.run(main())


def test_calls_that_start_a_client_at_once_share_one_pool(server):
    # Ten first calls at once on a client not started: one start, one pool, one background
    # search; closing the client leaves no task of it running.
    image = np.full((2, 3, 3), 1, np.uint8)

    async def main() -> None:
        before = set(asyncio.all_tasks())
        probe = AsyncModelClient("probe", server.target)
        results = await asyncio.gather(*(probe.run_image(image) for _ in range(10)))
        assert [r["sum"] for r in results] == [18] * 10
        # this one, and the one pool's search (grpc.aio has a task of its own for each of the
        # streams the calls were carried on, which stay open for the next calls)
        started = {task for task in asyncio.all_tasks() - before if not grpc_task(task)}
        assert len(started) == 2
        await probe.close()
        await asyncio.sleep(0.1)
        assert set(asyncio.all_tasks()) - before - {asyncio.current_task()} == set()

    asyncio.run(main())


def grpc_task(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` is one of grpc.aio's own (a call's)."""
    return "grpc" in repr(task)


def test_a_closed_client_says_so(server):
    # Not a retry for 0.6 s then "no TMS worker reachable" (threads), nor a new pool made
    # behind the caller's back (asyncio): the client is closed, and the call says that.
    image = np.full((2, 3, 3), 1, np.uint8)
    client = ModelClient("probe", server.target)
    client.close()
    began = time.monotonic()
    with pytest.raises(ClientClosedError, match="client is closed") as raised:
        client.run_image(image)
    assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert time.monotonic() - began < 0.5
    with pytest.raises(ClientClosedError):
        client.workers()  # not [] as if it had lost them all
    with pytest.raises(ClientClosedError), client:
        pass

    async def main() -> None:
        async with AsyncModelClient("probe", server.target) as probe:
            assert (await probe.run_image(image))["sum"] == 18
        with pytest.raises(ClientClosedError, match="client is closed"):
            await probe.run_image(image)
        with pytest.raises(ClientClosedError):
            await anext(aiter(probe.run_image_stream([image])))
        with pytest.raises(ClientClosedError):
            await probe.workers()
        with pytest.raises(ClientClosedError):
            async with probe:
                pass

    asyncio.run(main())


def test_close_ends_the_calls_in_flight_saying_so(server):
    """Calls and streams in flight when their client closes end at once (the model would
    answer in 3 s) with ClientClosedError, in both clients; not with asyncio.CancelledError
    in a task no one cancelled, nor with CANCELLED."""
    image = np.full((2, 3, 3), 1, np.uint8)
    slow = {"sleep": 3}
    with ModelClient("probe", server.target, timeout=30) as client:
        assert client.run_image(image)["sum"] == 18
        ended: list[tuple[BaseException | None, float]] = []

        def run(call: Callable[[], object]) -> None:
            began = time.monotonic()
            try:
                call()
            except BaseException as error:
                ended.append((error, time.monotonic() - began))
            else:
                ended.append((None, time.monotonic() - began))

        callers = [
            threading.Thread(target=run, args=(lambda: client.run_image(image, slow),)),
            threading.Thread(
                target=run, args=(lambda: list(client.run_image_stream([image, image], slow)),)
            ),
        ]
        for caller in callers:
            caller.start()
        time.sleep(0.5)
        client.close()
        for caller in callers:
            caller.join(10)
    assert len(ended) == 2
    for error, seconds in ended:
        assert isinstance(error, ClientClosedError), repr(error)
        assert error.code == grpc.StatusCode.FAILED_PRECONDITION
        assert seconds < 2, seconds

    async def main() -> None:
        probe = AsyncModelClient("probe", server.target, timeout=30)
        assert (await probe.run_image(image))["sum"] == 18

        async def stream() -> None:
            async for _ in probe.run_image_stream([image, image], slow):
                pass

        tasks = [
            asyncio.ensure_future(probe.run_image(image, slow)),
            asyncio.ensure_future(stream()),
        ]
        await asyncio.sleep(0.5)
        began = time.monotonic()
        await probe.close()
        for task in tasks:
            with pytest.raises(ClientClosedError, match="client is closed"):
                await task
        assert time.monotonic() - began < 2

    asyncio.run(main())


def test_a_client_used_in_a_second_event_loop_says_so(server):
    # gRPC's asyncio channels belong to the event loop that made them: a client kept from one
    # asyncio.run() to the next cannot call, and says why (not "Event loop is closed").
    image = np.full((2, 3, 3), 1, np.uint8)
    probe = AsyncModelClient("probe", server.target)

    async def call() -> int:
        return int((await probe.run_image(image))["sum"])

    assert asyncio.run(call()) == 18
    with pytest.raises(TMSError, match="another event loop") as caught:
        asyncio.run(call())
    assert "make one client per event loop" in str(caught.value)
    with pytest.raises(TMSError, match="another event loop"):
        asyncio.run(probe.start())
    asyncio.run(probe.close())  # still closes, from any loop
    fresh = AsyncModelClient("probe", server.target)

    async def call_fresh() -> int:
        async with fresh:
            return int((await fresh.run_image(image))["sum"])

    assert asyncio.run(call_fresh()) == 18
