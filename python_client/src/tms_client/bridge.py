"""The event loop ``ModelClient`` runs its calls on: one a process, in a thread of its own.

``ModelClient`` is ``AsyncModelClient`` run on this loop: a calling thread hands a coroutine to
the loop and waits for its result. One loop serves every caller, writing and reading every
call's messages itself, so calls from many threads cost about what they cost on asyncio, where
grpcio's thread API would hand each call to threads of its own (benchmarks/RESULTS.md). The
loop is uvloop's where it is installed. A child made by ``fork`` starts a loop of its own when
it first needs one.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import sys
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

__all__ = ["LOOP", "READERS", "Loop", "Running", "usable"]

T = TypeVar("T")
#: Threads of the loop's default executor, made as needed: each stream of ModelClient reads
#: its frames in one while it reads a frame (a camera's read blocks for a frame's time).
READERS = 128


class Loop:
    """An event loop running in a daemon thread, started when first needed."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start afresh (in a child made by fork: the thread running the loop stayed behind)."""
        self._starting = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def get(self) -> asyncio.AbstractEventLoop:
        """The running loop (started now if there is none in this process)."""
        loop = self._loop
        if loop is not None:
            return loop
        with self._starting:
            if self._loop is None:
                loop = _new_loop()
                self._thread = threading.Thread(
                    target=loop.run_forever, name="tms-client", daemon=True
                )
                self._thread.start()
                self._loop = loop
            return self._loop

    def start(self, function: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> Running[T]:
        """``function(*args)`` started on the loop as a task, in the caller's context (its
        OpenTelemetry span, say)."""
        loop = self.get()
        context = contextvars.copy_context()
        running: Running[T] = Running(loop)

        def begin() -> None:
            running.task = loop.create_task(function(*args), context=context)
            running.task.add_done_callback(running.finished)

        loop.call_soon_threadsafe(begin)
        return running

    def run(self, function: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """``function(*args)`` run on the loop (see start); its result, or its error raised
        here. A caller interrupted while it waits (KeyboardInterrupt) cancels it."""
        if threading.current_thread() is self._thread:
            raise RuntimeError(
                "a ModelClient call was made on the client's own event loop (from a balancer, "
                "say), where it would wait for itself forever: use AsyncModelClient there"
            )
        running = self.start(function, *args)
        try:
            running.done.acquire()
        except BaseException:
            running.cancel()
            raise
        return running.task.result()


class Running(Generic[T]):
    """A task started on the loop by another thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.task: asyncio.Task[T]  # set on the loop, before any later callback runs there
        self.done = threading.Lock()  # released when the task is done
        self.done.acquire()
        self._loop = loop

    def finished(self, task: asyncio.Task[T]) -> None:
        self.done.release()

    def cancel(self) -> None:
        """Cancel the task (from any thread; nothing when it is done)."""
        self._loop.call_soon_threadsafe(self._cancel)

    def _cancel(self) -> None:
        self.task.cancel()  # read on the loop: set there


def usable() -> bool:
    """Whether a thread can run the loop: not where gevent has made threads greenlets
    (Locust does), as a loop would then hold every greenlet up."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is None or not monkey.is_module_patched("threading")


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # noqa: PLC0415 - optional: not on Windows
    except ImportError:
        loop = asyncio.new_event_loop()
    else:
        loop = uvloop.new_event_loop()
    loop.set_default_executor(ThreadPoolExecutor(READERS, thread_name_prefix="tms-client"))
    return loop


#: The loop of this process.
LOOP = Loop()
os.register_at_fork(after_in_child=LOOP.reset)
