"""Admission in a worker: the pixel budget, calls proven quick, and the call runner."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from tms_server.admission import (
    PROVEN_AFTER,
    QUICK_PIXELS,
    QUICK_SECONDS,
    CallRunner,
    PixelBudget,
    QuickCalls,
)
from tms_server.errors import ResourceExhausted
from tms_server.load import WorkerLoad


def test_pixel_budget_lets_calls_in_as_their_pixels_fit_first_come_first_served() -> None:
    async def scenario() -> list[str]:
        budget = PixelBudget(100)
        order: list[str] = []
        assert await budget.acquire(60) == 60
        waiting = [
            asyncio.create_task(_take(budget, name, pixels, order))
            for name, pixels in (("b", 50), ("c", 10))
        ]
        await asyncio.sleep(0.01)
        assert order == []  # c would fit, but b came first
        assert repr(budget) == "<PixelBudget used=60/100 waiting=2>"
        budget.release(60)
        await asyncio.gather(*waiting)
        assert budget.used == 60
        return order

    assert asyncio.run(scenario()) == ["b", "c"]


async def _take(budget: PixelBudget, name: str, pixels: int, order: list[str]) -> None:
    await budget.acquire(pixels)
    order.append(name)


def test_an_image_larger_than_the_budget_runs_alone() -> None:
    async def scenario() -> None:
        budget = PixelBudget(100)
        assert await budget.acquire(10**9) == 100
        later = asyncio.create_task(budget.acquire(1))
        await asyncio.sleep(0.01)
        assert not later.done()
        budget.release(100)
        assert await later == 1

    asyncio.run(scenario())


def test_a_call_that_leaves_while_waiting_gives_its_place_back() -> None:
    async def scenario() -> None:
        budget = PixelBudget(10)
        await budget.acquire(10)
        leaving = asyncio.create_task(budget.acquire(5))
        staying = asyncio.create_task(budget.acquire(5))
        await asyncio.sleep(0.01)
        leaving.cancel()
        budget.release(10)
        assert await staying == 5
        assert budget.used == 5
        assert repr(budget) == "<PixelBudget used=5/10 waiting=0>"

    asyncio.run(scenario())


def test_a_model_is_quick_once_proven_and_slow_again_after_one_slow_call() -> None:
    quick = QuickCalls()
    for _ in range(PROVEN_AFTER - 1):
        quick.started("m")
        quick.finished("m", QUICK_SECONDS / 10)
    assert not quick.allows("m")  # not yet proven
    quick.started("m")
    quick.finished("m", QUICK_SECONDS / 10)
    assert quick.allows("m")
    quick.started("m")
    assert not quick.allows("m")  # one of its calls runs (on a thread, holding its lock)
    quick.finished("m", 0.5)
    assert not quick.allows("m")  # one slow call is remembered...
    for _ in range(200):
        quick.started("m")
        quick.finished("m", QUICK_SECONDS / 10)
    assert quick.allows("m")  # ...until many fast ones make it forgotten
    assert not quick.allows("unknown")


def test_calls_are_proven_quick_by_the_size_of_their_images() -> None:
    quick = QuickCalls()
    for _ in range(PROVEN_AFTER):
        quick.started("m")
        quick.finished("m", QUICK_SECONDS / 10, 50_000)
    assert quick.allows("m", 50_000)
    assert quick.allows("m", 60_000)  # within a factor of two: the same size
    assert not quick.allows("m", 2_000_000)  # never seen
    for _ in range(PROVEN_AFTER):
        quick.started("m")
        quick.finished("m", 0.5, 2_000_000)
    assert not quick.allows("m", 2_000_000)  # slow at that size...
    assert quick.allows("m", 50_000)  # ...quick still at the other
    quick.started("m")
    assert not quick.allows("m", 50_000)  # but not while a call of any size runs
    assert repr(quick) == "<QuickCalls models=1 quick=1>"


def test_made_up_model_names_cannot_grow_the_table_without_bound() -> None:
    quick = QuickCalls()
    for i in range(10_000):
        quick.started(f"made-up-{i}")
        quick.finished(f"made-up-{i}", 0.0)
    assert len(quick._paces) <= 256


def test_the_runner_refuses_past_threads_and_queue_and_runs_proven_calls_on_the_loop() -> None:
    load = WorkerLoad("test/1")
    runner = CallRunner(load, threads=1, max_queued=1, max_pixels=100)
    gate = threading.Event()

    async def scenario() -> None:
        loop_thread = threading.get_ident()
        first = asyncio.create_task(runner.run(gate.wait, 10))
        second = asyncio.create_task(runner.run(threading.get_ident))
        await asyncio.sleep(0.05)
        assert (load.in_flight, load.queued) == (1, 1)
        with pytest.raises(ResourceExhausted, match="--threads 1, --max-queued-calls 1"):
            await runner.run(time.sleep, 0)
        gate.set()
        assert await first is True
        assert await second != loop_thread  # on the runner's thread
        for _ in range(PROVEN_AFTER):
            assert await runner.run(threading.get_ident, key="m") != loop_thread
        assert await runner.run(threading.get_ident, key="m") == loop_thread
        assert await runner.run(threading.get_ident, key="m", pixels=2_000_000) != loop_thread
        for _ in range(PROVEN_AFTER):
            await runner.run(threading.get_ident, key="m", pixels=2_000_000)
        assert await runner.run(threading.get_ident, key="m", pixels=2_000_000) == loop_thread
        for _ in range(PROVEN_AFTER):
            await runner.run(threading.get_ident, key="m", pixels=QUICK_PIXELS + 1)
        got = await runner.run(threading.get_ident, key="m", pixels=QUICK_PIXELS + 1)
        assert got != loop_thread  # too large to run on the loop, however quick

    try:
        asyncio.run(scenario())
    finally:
        runner.shutdown()
    assert (load.in_flight, load.queued) == (0, 0)


def test_a_call_cancelled_while_queued_never_runs() -> None:
    load = WorkerLoad("test/1")
    runner = CallRunner(load, threads=1, max_queued=4, max_pixels=100)
    gate = threading.Event()
    ran: list[str] = []

    async def scenario() -> None:
        blocker = asyncio.create_task(runner.run(gate.wait, 10))
        queued = asyncio.create_task(runner.run(ran.append, "queued"))
        await asyncio.sleep(0.05)
        queued.cancel()
        gate.set()
        await blocker
        await asyncio.sleep(0.05)

    try:
        asyncio.run(scenario())
    finally:
        runner.shutdown()
    assert ran == []
    assert (load.in_flight, load.queued) == (0, 0)


def test_pixels_stay_taken_until_the_thread_is_done_even_if_the_caller_left() -> None:
    # Else callers with short deadlines could have every thread decode a huge image at once.
    load = WorkerLoad("test/1")
    runner = CallRunner(load, threads=2, max_queued=4, max_pixels=100)
    gate = threading.Event()

    async def scenario() -> None:
        call = asyncio.create_task(runner.run(gate.wait, 10, pixels=100))
        await asyncio.sleep(0.05)
        call.cancel()
        await asyncio.sleep(0.05)
        assert runner.pixels.used == 100  # the thread still works on it
        gate.set()
        for _ in range(100):
            if runner.pixels.used == 0:
                break
            await asyncio.sleep(0.01)
        assert runner.pixels.used == 0

    try:
        asyncio.run(scenario())
    finally:
        runner.shutdown()
