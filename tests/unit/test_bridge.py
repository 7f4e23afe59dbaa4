"""tms_client.bridge: the event loop ModelClient runs its calls on, from the threads that
call it."""

from __future__ import annotations

import asyncio
import contextvars
import os
import signal
import threading

import pytest

from tms_client.bridge import LOOP

WHO = contextvars.ContextVar("WHO", default="nobody")


async def where() -> tuple[str, str]:
    await asyncio.sleep(0)
    return WHO.get(), threading.current_thread().name


def test_a_call_runs_on_the_loop_in_the_callers_context() -> None:
    WHO.set("caller")
    assert LOOP.run(where) == ("caller", "tms-client")

    def other_thread(results: list[tuple[str, str]]) -> None:
        WHO.set("another thread")
        results.append(LOOP.run(where))

    results: list[tuple[str, str]] = []
    threads = [threading.Thread(target=other_thread, args=(results,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == [("another thread", "tms-client")] * 8
    assert WHO.get() == "caller"  # the loop's tasks set nothing here


def test_its_error_is_raised_in_the_caller() -> None:
    async def fails() -> None:
        raise ValueError("from the loop")

    with pytest.raises(ValueError, match="from the loop"):
        LOOP.run(fails)
    assert LOOP.run(where)[1] == "tms-client"  # the loop goes on


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
