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


M = ("RunImage", "m")  # a kind of call to model m


def _call(quick: QuickCalls, key: tuple[str, str], seconds: float, pixels: int = 0) -> None:
    quick.started(key[1])
    quick.finished(key, seconds, pixels)


def test_a_model_is_quick_once_proven_and_slow_again_after_one_slow_call() -> None:
    quick = QuickCalls()
    for _ in range(PROVEN_AFTER - 1):
        _call(quick, M, QUICK_SECONDS / 10)
    assert not quick.allows(M)  # not yet proven
    _call(quick, M, QUICK_SECONDS / 10)
    assert quick.allows(M)
    quick.started("m")
    assert not quick.allows(M)  # one of its calls runs (on a thread, holding its lock)
    quick.finished(M, 0.5)
    assert not quick.allows(M)  # one slow call is remembered...
    for _ in range(200):
        _call(quick, M, QUICK_SECONDS / 10)
    assert quick.allows(M)  # ...until many fast ones make it forgotten
    assert not quick.allows(("RunImage", "unknown"))


def test_calls_are_proven_quick_by_the_size_of_their_images() -> None:
    quick = QuickCalls()
    for _ in range(PROVEN_AFTER):
        _call(quick, M, QUICK_SECONDS / 10, 50_000)
    assert quick.allows(M, 50_000)
    assert quick.allows(M, 60_000)  # within a factor of two: the same size
    assert not quick.allows(M, 2_000_000)  # never seen
    for _ in range(PROVEN_AFTER):
        _call(quick, M, 0.5, 2_000_000)
    assert not quick.allows(M, 2_000_000)  # slow at that size...
    assert quick.allows(M, 50_000)  # ...quick still at the other
    quick.started("m")
    assert not quick.allows(M, 50_000)  # but not while a call of any size runs
    assert repr(quick) == "<QuickCalls quick=['m'] running=1>"


def test_work_of_any_kind_on_a_model_keeps_its_calls_off_the_loop() -> None:
    # A stream's frames and a RunImage of the same model share its lock: while one runs on a
    # thread, a call of the other kind on the loop would wait for it there.
    quick = QuickCalls()
    frames = ("RunImageStream", "m")
    for _ in range(PROVEN_AFTER):
        _call(quick, frames, QUICK_SECONDS / 10)
    assert quick.allows(frames)
    assert not quick.allows(M)  # each kind is proven on its own
    quick.started("m")  # a RunImage, or a stream's open_stream (not timed)
    assert not quick.allows(frames)
    quick.finished(M, None)
    assert quick.allows(frames)
    assert quick.allows(("RunImageStream", "other")) is False


def test_calls_that_fail_never_prove_a_model_quick() -> None:
    # Input refused at once (a frame declaring 2000x2000 pixels, carrying one byte) costs
    # nothing; the next real image of that size may take seconds.
    quick = QuickCalls()
    for _ in range(10 * PROVEN_AFTER):
        quick.started("m")
        quick.finished(M, QUICK_SECONDS / 10, 4_000_000, ok=False)
    assert not quick.allows(M, 4_000_000)
    for _ in range(PROVEN_AFTER):
        _call(quick, M, QUICK_SECONDS / 10)
    quick.started("m")
    quick.finished(M, 0.5, ok=False)  # slow, and it failed: still slow
    assert not quick.allows(M)
    for _ in range(10 * PROVEN_AFTER):
        quick.started("m")
        quick.finished(M, QUICK_SECONDS / 10, ok=False)
    assert not quick.allows(M)  # fast failures do not make the slow call forgotten


def test_made_up_model_names_cannot_grow_the_table_without_bound() -> None:
    quick = QuickCalls()
    for i in range(10_000):
        key = ("RunImage", f"made-up-{i}")
        quick.started(key[1])
        quick.finished(key, 1.0, ok=False)  # no such model (on a slow machine)
    assert len(quick._speeds) <= 1024
    assert quick._running == {}


def test_fast_failures_of_made_up_model_names_do_not_make_a_proven_model_forgotten() -> None:
    # Calls naming models that do not exist fail at once; were each remembered, a caller
    # making names up would fill the table, and its clearing would send every proven model
    # back to the threads.
    quick = QuickCalls()
    for _ in range(PROVEN_AFTER):
        _call(quick, M, QUICK_SECONDS / 10)
    for i in range(2000):
        key = ("RunImage", f"made-up-{i}")
        quick.started(key[1])
        quick.finished(key, QUICK_SECONDS / 10, ok=False)
    assert quick.allows(M)


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
            assert await runner.run(threading.get_ident, key=M) != loop_thread
        assert await runner.run(threading.get_ident, key=M) == loop_thread
        assert await runner.run(threading.get_ident, key=M, pixels=2_000_000) != loop_thread
        for _ in range(PROVEN_AFTER):
            await runner.run(threading.get_ident, key=M, pixels=2_000_000)
        assert await runner.run(threading.get_ident, key=M, pixels=2_000_000) == loop_thread
        for _ in range(PROVEN_AFTER):
            await runner.run(threading.get_ident, key=M, pixels=QUICK_PIXELS + 1)
        got = await runner.run(threading.get_ident, key=M, pixels=QUICK_PIXELS + 1)
        assert got != loop_thread  # too large to run on the loop, however quick

    try:
        asyncio.run(scenario())
    finally:
        runner.shutdown()
    assert (load.in_flight, load.queued) == (0, 0)


def test_the_runner_runs_no_call_of_a_model_on_the_loop_while_other_work_of_it_runs() -> None:
    load = WorkerLoad("test/1")
    runner = CallRunner(load, threads=2, max_queued=4, max_pixels=100)
    gate = threading.Event()
    other = ("RunImage", "n")

    def fail() -> None:
        raise ValueError("refused at once")

    async def scenario() -> None:
        loop_thread = threading.get_ident()
        for _ in range(PROVEN_AFTER):
            await runner.run(threading.get_ident, key=M)
        assert await runner.run(threading.get_ident, key=M) == loop_thread
        hook = asyncio.create_task(
            runner.run(gate.wait, 10, key=("RunImageStream", "m"), timed=False)
        )
        await asyncio.sleep(0.05)
        assert await runner.run(threading.get_ident, key=M) != loop_thread  # the hook runs
        gate.set()
        assert await hook is True
        assert await runner.run(threading.get_ident, key=M) == loop_thread
        for _ in range(4 * PROVEN_AFTER):
            with pytest.raises(ValueError, match="refused at once"):
                await runner.run(fail, key=other)
        assert await runner.run(threading.get_ident, key=other) != loop_thread

    try:
        asyncio.run(scenario())
    finally:
        runner.shutdown()
    assert (load.in_flight, load.queued) == (0, 0)
    assert runner.quick._running == {}


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


def test_calls_that_leave_while_waiting_for_pixels_give_their_place_in_the_queue_back() -> None:
    # Else each caller that gave up waiting would hold a place for ever, and the worker would
    # end up refusing every call as busy.
    load = WorkerLoad("test/1")
    runner = CallRunner(load, threads=1, max_queued=1, max_pixels=100)

    async def scenario() -> None:
        for _ in range(3):
            gate = threading.Event()
            holder = asyncio.create_task(runner.run(gate.wait, 10, pixels=100))
            await asyncio.sleep(0.05)
            waiting = asyncio.create_task(runner.run(len, "waits", pixels=100))
            await asyncio.sleep(0.05)
            assert (load.in_flight, load.queued) == (1, 1)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            gate.set()
            assert await holder is True
        assert await runner.run(len, "runs", pixels=100) == 4

    try:
        asyncio.run(scenario())
    finally:
        runner.shutdown()
    assert (load.in_flight, load.queued) == (0, 0)
