"""Dynamic batching: RunImage calls to one model that reach a worker at about the same time
run as one call of the model's ``run_batch``, and each caller gets its own result.

A model declares ``max_batch_delay`` (and ``max_batch_size``); the server's flags may set
both per model (``BatchSettings``). The model's ``Batcher`` then gathers its calls:

- the first call to find no batch gathering opens one and leads it; the calls that come while
  it gathers join it, until it holds ``max_size`` calls or ``delay`` has passed;
- the leader then waits for the model to be free (one batch runs at a time in a worker, so
  calls that come while a batch runs gather in the next), closes the batch and runs it with
  one ``run_batch`` on its own thread; the others wait in theirs for their result, in order;
- calls join only calls of the same key, the text of their args, since one ``run_batch``
  takes one ``args``.

Every call waits in a thread of the worker, so a batch holds at most ``--threads`` calls: a
batch that holds as many is full. A leader waits for company only where company is likely:
while another call to the model is in the batcher (running, or waiting its turn), or when
the last batch held more than one call. So calls that come one at a time run at once, and a
lone call pays the delay only the first time, or after a burst; never one on the event loop
(a call proven quick), where waiting would hold up every other call of the worker.

If ``run_batch`` raises for a batch of several inputs, each input runs again alone, in its
own caller's context (logs name that call), so that a bad input fails only its own call and
the others get their results; a model that fails on every input fails every call. The time
a batch takes in the model counts for each call in it (tms_model_seconds); the number of calls
in it is told to ``observe`` once per batch as it runs (tms_batch_size), whatever became of
the call that leads it (a caller that left does not stop its batch).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from tms_server.callinfo import CURRENT

__all__ = ["MAX_BATCH_DELAY", "BatchSettings", "Batcher"]

T = TypeVar("T")
#: The longest ``max_batch_delay`` a model or the server may set, in seconds.
MAX_BATCH_DELAY = 1.0


@dataclass(frozen=True)
class BatchSettings:
    """What the server's flags say of dynamic batching: per-model delays (seconds; None
    turns batching off) and batch sizes, over what the models declare, and the worker's
    threads (a batch holds at most that many calls; None: no such bound); and ``observe``,
    told a model's name and the size of each batch it runs (the worker's metrics)."""

    delays: Mapping[str, float | None] = field(default_factory=dict)
    sizes: Mapping[str, int] = field(default_factory=dict)
    threads: int | None = None
    observe: Callable[[str, int], None] | None = field(default=None, compare=False)


class _Batch(Generic[T]):
    """Calls gathered to run together; ``outcomes`` are theirs once ``done`` is set."""

    __slots__ = ("contexts", "done", "full", "items", "key", "outcomes", "seconds")

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.items: list[T] = []
        self.contexts: list[contextvars.Context] = []
        self.full = threading.Event()
        self.done = threading.Event()
        self.outcomes: list[tuple[Any, Exception | None]] = []
        self.seconds = 0.0


class Batcher:
    """Gathers the calls of one model instance into batches: see the module docstring."""

    def __init__(
        self, *, max_size: int, delay: float, observe: Callable[[int], None] | None = None
    ) -> None:
        """``observe`` is told the size of each batch as it runs."""
        self.max_size = max_size
        self.delay = delay
        self._observe = observe
        self._lock = threading.Lock()  # guards _gathering and the batches in it
        self._turn = threading.Lock()  # held by the batch that runs
        self._gathering: dict[Hashable, _Batch[Any]] = {}
        self._active = 0  # calls in run(), under _lock
        self._last_size = 0  # calls in the batch that ran last (0: none ran yet)

    def __repr__(self) -> str:
        return (
            f"<Batcher max_size={self.max_size} delay={self.delay * 1000:g}ms "
            f"gathering={sum(len(b.items) for b in list(self._gathering.values()))}>"
        )

    def run(self, item: T, key: Hashable, run_batch: Callable[[list[T]], Sequence[Any]]) -> Any:
        """The result of ``item`` once its batch has run through ``run_batch`` (the leader's:
        it runs the batch), which returns one result per item, in order; raises what running
        the item raised."""
        with self._lock:
            self._active += 1
            batch = self._gathering.get(key)
            leader = batch is None
            if batch is None:
                batch = self._gathering[key] = _Batch(key)
            index = len(batch.items)
            batch.items.append(item)
            batch.contexts.append(contextvars.copy_context())
            if len(batch.items) >= self.max_size:
                del self._gathering[key]  # the next call opens another
                batch.full.set()
        try:
            if leader:
                self._lead(batch, run_batch)
            else:
                batch.done.wait()
                call = CURRENT.get()
                if call is not None:
                    call.ran_model(batch.seconds)
        finally:
            with self._lock:
                self._active -= 1
        if index >= len(batch.outcomes):  # the leader ended without running it
            raise RuntimeError("the batch this call was in did not run")
        result, error = batch.outcomes[index]
        if error is not None:
            raise error
        return result

    def _lead(self, batch: _Batch[T], run_batch: Callable[[list[T]], Sequence[Any]]) -> None:
        try:
            with self._lock:
                company = self._active > 1 or self._last_size != 1
            if company and not _on_event_loop():
                batch.full.wait(self.delay)
            with self._turn:
                with self._lock:  # closed: what it holds now runs
                    if self._gathering.get(batch.key) is batch:
                        del self._gathering[batch.key]
                    self._last_size = len(batch.items)
                if self._observe is not None:
                    self._observe(len(batch.items))
                began = time.perf_counter()
                batch.outcomes = _outcomes(batch, run_batch)
                batch.seconds = time.perf_counter() - began
        finally:
            batch.done.set()


def _on_event_loop() -> bool:
    """Whether this is the worker's event loop (a call proven quick runs there): no call can
    join a batch while the loop waits, since calls reach the batcher through it."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _outcomes(
    batch: _Batch[T], run_batch: Callable[[list[T]], Sequence[Any]]
) -> list[tuple[Any, Exception | None]]:
    """(result, None) or (None, error) for each item of ``batch``: run together, or each
    alone in its caller's context if together they failed."""
    try:
        return [(result, None) for result in run_batch(batch.items)]
    except Exception as exc:
        if len(batch.items) == 1:
            return [(None, exc)]
    outcomes: list[tuple[Any, Exception | None]] = []
    for item, context in zip(batch.items, batch.contexts, strict=True):
        try:
            outcomes.append((context.run(run_batch, [item])[0], None))
        except Exception as exc:
            outcomes.append((None, exc))
    return outcomes
