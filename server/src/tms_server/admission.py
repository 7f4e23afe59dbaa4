"""Admission: how many calls a worker runs and holds, and how many pixels it works on at once.

A call takes one of the worker's ``--threads`` threads to run; up to ``--max-queued-calls`` more
wait for one, and beyond that calls are refused (RESOURCE_EXHAUSTED). Calls that carry images
also wait, on the event loop and without a thread, until the pixels they declare fit in the
worker's ``--max-pixels-in-flight``: a burst of large images is decoded a few at a time, not
all at once. After calls of many pixels the worker hands the freed memory back to the system
once it is idle and such calls have stopped coming.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
import ctypes.util
import functools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tms_server.errors import ResourceExhausted
from tms_server.load import WorkerLoad

__all__ = ["CallRunner", "PixelBudget", "QuickCalls", "limit_arenas", "release_memory"]

T = TypeVar("T")


class PixelBudget:
    """At most ``limit`` pixels in calls at once; ``acquire(n)`` waits (on the event loop) until
    ``n`` fit, first come first served. A call of more than ``limit`` pixels runs alone."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    def __repr__(self) -> str:
        return f"<PixelBudget used={self.used}/{self.limit} waiting={len(self._waiting)}>"

    async def acquire(self, pixels: int) -> int:
        """Wait until ``pixels`` (at most the limit) fit; returns what was taken."""
        pixels = min(pixels, self.limit)
        if not self._waiting and self.used + pixels <= self.limit:
            self.used += pixels
            return pixels
        turn = asyncio.get_running_loop().create_future()
        entry = (pixels, turn)
        self._waiting.append(entry)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # given, then cancelled: give back
                self.release(pixels)
            elif entry in self._waiting:
                self._waiting.remove(entry)
                self._wake()
            raise
        return pixels

    def release(self, pixels: int) -> None:
        self.used -= pixels
        self._wake()

    def _wake(self) -> None:
        while self._waiting and self.used + self._waiting[0][0] <= self.limit:
            pixels, turn = self._waiting.popleft()
            if not turn.cancelled():  # a caller that left takes nothing
                self.used += pixels
                turn.set_result(None)


@dataclass
class _Speed:
    """How long the recent calls of one kind to one model with images of about one size took."""

    calls: int = 0
    slowest: float = 0.0  # seconds; decays as faster calls come

    @property
    def quick(self) -> bool:
        return self.calls >= PROVEN_AFTER and self.slowest < QUICK_SECONDS


def _size(pixels: int) -> int:
    """The size class of a call's ``pixels``: calls within a factor of two share it."""
    return pixels.bit_length()


#: What QuickCalls times calls by: what is called (an RPC, a stream's frames) and the model.
Key = tuple[str, str]


class QuickCalls:
    """Which calls may run on the event loop itself, skipping the hand-over to a thread and
    back (two thread switches, as costly as a small model call): calls of a model whose last
    ``PROVEN_AFTER`` successful calls or more of the same kind with images of about the same
    size all took under ``QUICK_SECONDS``, while no work of that model runs (a call of any
    kind, or a stream's hooks: its lock, if it has one, is free) and no call waits for a
    thread. One slow call sends its model's calls of that kind and size back to the threads
    until fast calls have made it forgotten; a call that fails never proves anything fast
    (input refused at once says nothing of what the model costs). A model that hangs on the
    loop stops the worker's heartbeat, and the supervisor replaces the worker
    (--worker-timeout-seconds).
    """

    def __init__(self) -> None:
        self._speeds: dict[tuple[Key, int], _Speed] = {}  # by key and size class
        self._running: dict[str, int] = {}  # by model; only models with work running
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        quick = {key[1] for (key, _), speed in self._speeds.items() if speed.quick}
        running = sum(self._running.values())
        return f"<QuickCalls quick={sorted(quick)} running={running}>"

    def allows(self, key: Key, pixels: int = 0) -> bool:
        if key[1] in self._running:
            return False
        speed = self._speeds.get((key, _size(pixels)))
        return speed is not None and speed.quick

    def started(self, model: str) -> None:
        """Work of ``model`` begins (a call, or work that is not timed, holding its lock)."""
        with self._lock:
            self._running[model] = self._running.get(model, 0) + 1

    def finished(
        self, key: Key, seconds: float | None, pixels: int = 0, *, ok: bool = True
    ) -> None:
        """Work of ``key``'s model that began is over; a call of ``key`` that took ``seconds``
        (None: not timed) and succeeded, unless not ``ok``."""
        with self._lock:
            model = key[1]
            left = self._running.get(model, 0) - 1
            if left > 0:
                self._running[model] = left
            else:
                self._running.pop(model, None)
            if seconds is None:
                return
            speed = self._speeds.get((key, _size(pixels)))
            if speed is None:
                if not ok and seconds < QUICK_SECONDS:
                    return  # fast failures (of a model that may not exist) teach nothing
                if len(self._speeds) >= _MAX_SPEEDS:
                    self._speeds.clear()  # names callers made up; the real ones come back
                speed = self._speeds[key, _size(pixels)] = _Speed()
            if ok:
                speed.calls += 1
                speed.slowest = max(seconds, speed.slowest * _FORGET)
            else:  # slow, perhaps; never proof of fast
                speed.slowest = max(seconds, speed.slowest)


#: How long a caller refused by a full queue is told to wait (RetryInfo): a call's time, about.
QUEUE_FULL_RETRY_SECONDS = 0.1
#: A model's calls run on the event loop once this many in a row took under QUICK_SECONDS.
PROVEN_AFTER = 16
#: A call this long counts as slow. Timed on a busy machine, a fast model's call is now and
#: then stretched by preemption or a wait for the GIL (a thread may hold it 5 ms): at 1 ms
#: such stretches kept sending fast models to the threads, about half their calls under load.
QUICK_SECONDS = 0.005
_FORGET = 0.95  # each call shrinks the memory of the slowest one by this factor
_MAX_SPEEDS = 1024  # kinds of call x models x sizes


class CallRunner:
    """Runs servicer methods on the worker's threads, admitting at most ``threads +
    max_queued`` calls at once (running, or waiting for a thread or for pixels), and counting
    them in ``load``; calls proven quick run on the event loop (see QuickCalls).

    The threads are daemons that take calls from one queue and hand each result to the event
    loop (fewer steps than ``loop.run_in_executor``); a thread stuck in a model never keeps
    the process from exiting.
    """

    def __init__(self, load: WorkerLoad, *, threads: int, max_queued: int, max_pixels: int) -> None:
        self.load = load
        self.threads = threads
        self.max_queued = max_queued
        self.pixels = PixelBudget(max_pixels)
        self.quick = QuickCalls()
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._running: dict[int, _Call] = {}  # by thread: the call it runs
        for number in range(threads):
            name = f"tms-call-{number}"
            threading.Thread(target=self._serve, name=name, daemon=True).start()

    def __repr__(self) -> str:
        return (
            f"<CallRunner threads={self.threads} max_queued={self.max_queued} "
            f"{self.load!r} {self.pixels!r}>"
        )

    async def run(
        self,
        function: Callable[..., T],
        *args: Any,
        pixels: int = 0,
        key: Key | None = None,
        timed: bool = True,
    ) -> T:
        """``function(*args)`` on a thread, once admitted and once ``pixels`` fit; on the event
        loop if calls of ``key`` (a kind of call to a model) are proven quick and the call is
        small. Work of a model that is not ``timed`` (a stream's hooks) never runs on the loop,
        but keeps the model's other calls off it while it runs."""
        load = self.load
        if load.in_flight + load.queued >= self.threads + self.max_queued:
            raise ResourceExhausted(
                f"this worker is busy: {load.in_flight} calls running and {load.queued} "
                f"waiting (--threads {self.threads}, --max-queued-calls {self.max_queued}); "
                "try again later",
                retry_after=QUEUE_FULL_RETRY_SECONDS,
            )
        if (
            key is not None
            and timed
            and pixels <= QUICK_PIXELS
            and not load.queued
            and self.quick.allows(key, pixels)
        ):
            self.quick.started(key[1])
            return _timed(load, self.quick, function, args, key=key, pixels=pixels, timed=True)
        load.submitted()
        taken = 0
        try:
            taken = await self.pixels.acquire(pixels) if pixels else 0
        except asyncio.CancelledError:
            load.started()  # it leaves the queue without running
            raise
        loop = asyncio.get_running_loop()
        result: asyncio.Future[T] = loop.create_future()
        # The thread gives the pixels back when the call is over, even if its caller left;
        # it runs the call in the call's context, which its logs read (tms_server.callinfo).
        context = contextvars.copy_context()
        call = _Call(loop, result, function, args, pixels, taken, key, timed, context)
        self._calls.put(call)
        return await result  # a call cancelled while queued is skipped by its thread

    def end_calls_running_for(self, seconds: float, error: Exception) -> int:
        """End the calls that have run on a thread for ``seconds`` or more with ``error``, at
        once for their callers (a thread cannot be stopped: it goes on with its call);
        how many. Safe from any thread."""
        ended = 0
        for thread in self.load.running_for(seconds):
            call = self._running.get(thread)  # None: a quick call, on the event loop itself
            if call is not None:
                with contextlib.suppress(RuntimeError):  # the loop has closed
                    call.loop.call_soon_threadsafe(_fail, call, error)
                    ended += 1
        return ended

    def shutdown(self) -> None:
        """Let the threads end once idle (a thread in a model call ends after it)."""
        for _ in range(self.threads):
            self._calls.put(None)

    def _serve(self) -> None:
        load, quick, running = self.load, self.quick, self._running
        thread = threading.get_ident()
        while (call := self._calls.get()) is not None:
            if call.key is not None:  # before it leaves the queue: see QuickCalls.allows
                quick.started(call.key[1])
            load.started()
            outcome: tuple[Any, BaseException | None] = (None, None)
            if not call.result.cancelled():
                running[thread] = call
                outcome = self._run(call, load, quick)
                del running[thread]
            elif call.key is not None:
                quick.finished(call.key, None)
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                call.loop.call_soon_threadsafe(_settle, call, self.pixels, *outcome)

    @staticmethod
    def _run(call: _Call, load: WorkerLoad, quick: QuickCalls) -> tuple[Any, BaseException | None]:
        try:
            result = call.context.run(
                _timed,
                load,
                quick,
                call.function,
                call.args,
                key=call.key,
                pixels=call.pixels,
                timed=call.timed,
            )
            return result, None
        except BaseException as exc:  # handed to the caller, whatever it is
            return None, exc
        finally:
            if call.pixels >= RELEASE_AFTER_PIXELS:
                load.large_call_ended = time.monotonic()  # see WorkerMonitor.tick


def _timed(
    load: WorkerLoad,
    quick: QuickCalls,
    function: Callable[..., T],
    args: tuple[Any, ...],
    *,
    key: Key | None,
    pixels: int,
    timed: bool,
) -> T:
    """``function(*args)``, counted in ``load`` and, for a model's work (counted as started
    in ``quick`` already), over in ``quick``, timed when ``timed``."""
    load.begin()
    began = time.perf_counter()
    ok = False
    try:
        result = function(*args)
        ok = True
        return result
    finally:
        if key is not None:
            quick.finished(key, time.perf_counter() - began if timed else None, pixels, ok=ok)
        load.end()


@dataclass(slots=True)
class _Call:
    """A call handed to a thread: what to run, and where to answer."""

    loop: asyncio.AbstractEventLoop
    result: asyncio.Future[Any]
    function: Callable[..., Any]
    args: tuple[Any, ...]
    pixels: int  # as the request declares them
    taken: int  # from the pixel budget, given back when the call is over
    key: Key | None  # its kind and model, for QuickCalls
    timed: bool  # for QuickCalls
    context: contextvars.Context  # the call's context variables


def _fail(call: _Call, error: Exception) -> None:
    if not call.result.done():
        call.result.set_exception(error)


def _settle(call: _Call, budget: PixelBudget, value: Any, error: BaseException | None) -> None:
    if call.taken:
        budget.release(call.taken)
    if call.result.done():  # cancelled meanwhile
        return
    if error is not None:
        call.result.set_exception(error)
    else:
        call.result.set_result(value)


#: Calls of more pixels than this always go to a thread: such images take much memory, given
#: back once the worker is idle (RELEASE_AFTER_PIXELS), and their calls are rarely quick.
QUICK_PIXELS = 4_000_000
#: After a call of at least this many pixels the worker gives memory back to the system, once
#: it is idle and has had no such call for RELEASE_AFTER_SECONDS (the worker's monitor does it:
#: not on the call's time). A steady run of large images keeps its pages and reuses them: given
#: back after every call, each next call would fault them in again (a 3840x2160 frame a call
#: took a third longer).
RELEASE_AFTER_PIXELS = 4_000_000
RELEASE_AFTER_SECONDS = 2.0


#: glibc malloc arenas the threads of a worker share (see limit_arenas).
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter number in glibc's malloc.h


@functools.cache
def _libc() -> Any:
    """glibc, or None elsewhere (musl, macOS): its malloc tuning is then left alone."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.malloc_trim  # noqa: B018 - glibc has it, other C libraries do not
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def limit_arenas(count: int = MALLOC_ARENAS) -> None:
    """Let the worker's threads share ``count`` glibc malloc arenas instead of one each (up to
    8 per core): memory one call frees is then reused by the next call on any thread, rather
    than kept by the thread that freed it, so a run of large images does not hold one
    image's worth of memory per thread."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_ARENA_MAX, count)


def release_memory() -> None:
    """Hand memory the process has freed back to the system (glibc's ``malloc_trim``): after a
    large image, freed pages would otherwise stay in the process's heap, and its RSS high."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
