"""The event loop ``ModelClient`` runs its calls on: one a process.

``ModelClient`` is ``AsyncModelClient`` run on this loop. A calling thread that finds the loop
free runs it itself until its call is done; while another thread runs it, the caller hands
its coroutine to the loop and waits for the result. The loop's own daemon thread runs it for
what is handed to it (and for a moment after, so that calls from many threads stay with it),
and once every TICK (IDLE_TICK once no call has come for a while) for the work calls leave
behind (finding workers, healing). One loop serves every caller, writing and reading every
call's messages itself, so calls from many threads cost about what they cost on asyncio,
where grpcio's thread API would hand each call to threads of its own, and a call alone costs
no thread hand-off (benchmarks/RESULTS.md). The loop is uvloop's where it is installed. A
child made by ``fork`` starts a loop of its own when it first needs one.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

__all__ = ["LOOP", "READERS", "Loop", "Running", "usable"]

T = TypeVar("T")
#: Threads of the loop's default executor, made as needed: each stream of ModelClient reads
#: its frames in one while it reads a frame (a camera's read blocks for a frame's time).
READERS = 128


#: Seconds between the loop's runs for its background work (finding workers, healing, streams
#: the server ended) while no call is made: calls and streams run it as they need it. Once no
#: call has been made for IDLE_AFTER seconds, the runs come every IDLE_TICK seconds.
TICK = 0.05
IDLE_AFTER = 5.0
IDLE_TICK = 0.5
#: Seconds the loop's own thread goes on running the loop once no task handed to it is left:
#: calls from several threads at once come back within it, and so do not make the next caller
#: run the loop itself while the others hand theirs over.
LINGER = 0.002


class Loop:
    """An event loop that the thread of a call runs while it waits, when no other thread
    runs it; otherwise its own daemon thread runs it, started when first needed."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start afresh (in a child made by fork: the thread running the loop stayed behind)."""
        self._starting = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._state = threading.Condition(threading.Lock())  # guards the two below
        self._runner: int | None = None  # the thread running the loop now, if any
        self._handed = 0  # tasks handed to the loop (start) and not done yet
        self._idle: asyncio.Future[None]  # done: the loop's own thread stops running it
        self._called = time.monotonic()  # when a call was last made (run, start)

    def get(self) -> asyncio.AbstractEventLoop:
        """The loop (made, and its thread started, if there is none in this process)."""
        loop = self._loop
        if loop is not None:
            return loop
        with self._starting:
            if self._loop is None:
                self._loop = _new_loop()
                self._thread = threading.Thread(target=self._serve, name="tms-client", daemon=True)
                self._thread.start()
            return self._loop

    def _serve(self) -> None:
        """The loop's own thread: it runs the loop while tasks handed to it are not done and
        no caller runs it, and for one pass once a TICK, for its background work. It runs
        the loop until a future is done, never stopping it: a stop left pending would end the
        next caller's run before its call is done."""
        assert self._loop is not None
        loop, me, state = self._loop, threading.get_ident(), self._state
        while True:
            with state:
                while not (self._runner is None and self._handed):
                    idle = time.monotonic() - self._called > IDLE_AFTER
                    if not state.wait(IDLE_TICK if idle else TICK) and self._runner is None:
                        break  # a tick, nothing handed
                self._runner = me
                self._idle = loop.create_future()
                if not self._handed:
                    self._idle.set_result(None)  # one pass over what is ready
            try:
                loop.run_until_complete(self._idle)
            finally:
                with state:
                    self._runner = None

    def _finished(self) -> None:
        """A handed task is done (on the loop): once none is left for LINGER seconds, the
        loop's own thread stops running it, so that the next caller can run it itself."""
        with self._state:
            self._handed -= 1
            if not self._handed and self._runs_itself():
                self.get().call_later(LINGER, self._linger_over)

    def _linger_over(self) -> None:
        with self._state:
            if not self._handed and self._runs_itself() and not self._idle.done():
                self._idle.set_result(None)

    def _runs_itself(self) -> bool:
        """Whether the loop's own thread runs the loop now (under ``_state``)."""
        return self._thread is not None and self._runner == self._thread.ident

    def start(self, function: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> Running[T]:
        """``function(*args)`` started on the loop as a task, in the caller's context (its
        OpenTelemetry span, say)."""
        loop = self.get()
        context = contextvars.copy_context()
        running: Running[T] = Running(loop)

        def begin() -> None:
            running.task = loop.create_task(function(*args), context=context)
            running.task.add_done_callback(running.finished)
            running.task.add_done_callback(lambda _: self._finished())

        with self._state:
            self._handed += 1
            self._called = time.monotonic()
            self._state.notify()
        loop.call_soon_threadsafe(begin)
        return running

    def run(self, function: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """``function(*args)`` run on the loop (see start); its result, or its error raised
        here. A caller interrupted while it waits (KeyboardInterrupt) cancels it. A caller
        that finds the loop free runs it itself, sparing two thread hand-offs."""
        loop = self.get()
        running_here = asyncio._get_running_loop()
        if running_here is loop:
            raise RuntimeError(
                "a ModelClient call was made on the client's own event loop (from a balancer, "
                "say), where it would wait for itself forever: use AsyncModelClient there"
            )
        if running_here is None:
            with self._state:
                alone = self._runner is None and not self._handed
                if alone:
                    self._runner = threading.get_ident()
                    self._called = time.monotonic()
            if alone:
                return self._run_here(loop, function, *args)
        running = self.start(function, *args)
        try:
            running.done.acquire()
        except BaseException:
            running.cancel()
            raise
        return running.task.result()

    def _run_here(
        self,
        loop: asyncio.AbstractEventLoop,
        function: Callable[..., Coroutine[Any, Any, T]],
        *args: Any,
    ) -> T:
        """``function(*args)`` on the loop, run by this thread until it is done."""
        task = loop.create_task(function(*args), context=contextvars.copy_context())
        try:
            return loop.run_until_complete(task)
        except BaseException:
            if not task.done():  # interrupted: its cancellation is handed to the loop
                with self._state:
                    self._handed += 1
                task.add_done_callback(lambda _: self._finished())
                task.cancel()
            raise
        finally:
            with self._state:
                self._runner = None
                if self._handed:
                    self._state.notify()


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
