"""tms_client.bridge: the event loop ModelClient runs its calls on, from the threads that
call it."""

from __future__ import annotations

import asyncio
import contextvars
import os
import signal
import threading
import time

import pytest

from tms_client.bridge import LOOP

WHO = contextvars.ContextVar("WHO", default="nobody")


async def where() -> tuple[str, str]:
    await asyncio.sleep(0)
    return WHO.get(), threading.current_thread().name


def alone_runs_the_loop_itself() -> None:
    """A caller alone runs the loop in its own thread (once the loop's thread has left it:
    it runs the loop for a moment once every bridge.TICK)."""
    deadline = time.monotonic() + 5
    while LOOP.run(where)[1] != threading.current_thread().name:
        assert time.monotonic() < deadline


def test_a_call_runs_on_the_loop_in_the_callers_context() -> None:
    WHO.set("caller")
    assert LOOP.run(where)[0] == "caller"
    alone_runs_the_loop_itself()

    def other_thread(results: list[tuple[str, str]]) -> None:
        WHO.set("another thread")
        results.append(LOOP.run(where))

    results: list[tuple[str, str]] = []
    threads = [
        threading.Thread(target=other_thread, args=(results,), name=f"caller-{n}") for n in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(results) == 8
    for who, ran_in in results:
        assert who == "another thread"
        assert ran_in == "tms-client" or ran_in.startswith("caller-")
    assert WHO.get() == "caller"  # the loop's tasks set nothing here


def test_a_call_goes_to_the_loops_thread_while_another_runs_there() -> None:
    release = threading.Event()

    async def held() -> None:
        while not release.is_set():
            await asyncio.sleep(0.01)

    running = LOOP.start(held)  # handed to the loop's own thread, which runs it meanwhile
    try:
        assert LOOP.run(where)[1] == "tms-client"
    finally:
        release.set()
    assert running.done.acquire(timeout=5)
    # Once nothing handed to it is left, the loop's thread leaves the loop to callers again.
    alone_runs_the_loop_itself()


def test_the_loop_does_its_background_work_between_calls() -> None:
    """What a call leaves running on the loop (a pool's healer, say) goes on after it, with
    no call being made and nothing handed to the loop."""
    done = threading.Event()

    async def later() -> None:
        await asyncio.sleep(0.2)
        done.set()

    async def leaves_a_task() -> None:
        tasks.append(asyncio.get_running_loop().create_task(later()))

    tasks: list[asyncio.Task[None]] = []
    LOOP.run(leaves_a_task)
    assert done.wait(5)


def test_its_error_is_raised_in_the_caller() -> None:
    async def fails() -> None:
        raise ValueError("from the loop")

    with pytest.raises(ValueError, match="from the loop"):
        LOOP.run(fails)
    alone_runs_the_loop_itself()  # the loop goes on


def test_an_interrupted_caller_cancels_its_call() -> None:
    assert threading.current_thread() is threading.main_thread()
    cancelled = threading.Event()

    async def waits() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            LOOP.run(waits)
    finally:
        timer.cancel()
    assert cancelled.wait(5)


def test_a_call_made_on_the_loop_itself_is_refused() -> None:
    async def calls_back() -> tuple[str, str]:
        return LOOP.run(where)

    with pytest.raises(RuntimeError, match="own event loop"):
        LOOP.run(calls_back)


def test_a_child_made_by_fork_runs_a_loop_of_its_own() -> None:
    async def pid() -> int:
        return os.getpid()

    assert LOOP.run(pid) == os.getpid()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: its answer through the pipe, then leave at once
        code = 1
        try:
            os.write(write, str(LOOP.run(pid)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(child, 0)
    with os.fdopen(read) as answer:
        assert answer.read() == str(child)
    assert os.waitstatus_to_exitcode(status) == 0
    assert LOOP.run(pid) == os.getpid()
