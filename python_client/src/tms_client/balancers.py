"""Balancers: which worker gets the next call.

A balancer is any object with ``pick(workers) -> worker``; ``workers`` is never empty. Each
worker has ``in_flight`` (this client's calls on it now) and ``load`` (the last LoadReport it
sent, or None). Pass one to ``ModelClient(..., balancer=...)``.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Sequence
from typing import Protocol, TypeVar

from tms_client.protocol.load import LoadReport

__all__ = [
    "LATENCY_FADE",
    "Balancer",
    "LeastLoaded",
    "LoadedWorker",
    "RandomBalancer",
    "RoundRobin",
    "faded",
]

#: Seconds over which a worker's recent latency fades (by a factor e) while no call on it ends,
#: as Finagle's peak EWMA fades when read: a worker that was slow once, or stopped and then
#: resumed, is tried again in time, where a latency kept as it was would keep it out for good.
LATENCY_FADE = 10.0


def faded(latency: float, since: float) -> float:
    """A latency recorded ``since`` seconds ago, as it counts now."""
    return latency * math.exp(-since / LATENCY_FADE) if since > 0 else latency


class LoadedWorker(Protocol):
    """What a balancer may read of a worker."""

    @property
    def in_flight(self) -> int: ...

    @property
    def load(self) -> LoadReport | None: ...

    @property
    def latency(self) -> float: ...

    @property
    def latency_at(self) -> float: ...  # when ``latency`` was recorded (time.monotonic)


W = TypeVar("W", bound=LoadedWorker)
T = TypeVar("T")  # RoundRobin and RandomBalancer can pick from anything


class Balancer(Protocol):
    """Picks the worker for the next call."""

    def pick(self, workers: Sequence[W]) -> W: ...


class RoundRobin:
    """Each worker in turn."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    def __repr__(self) -> str:
        return "RoundRobin()"

    def pick(self, workers: Sequence[T]) -> T:
        # next() on itertools.count is atomic under the GIL, so threads share it safely.
        return workers[next(self._counter) % len(workers)]


class RandomBalancer:
    """A worker chosen uniformly at random."""

    def __init__(self, seed: int | None = None) -> None:
        self._random = random.Random(seed)  # noqa: S311 - load spreading, not security

    def __repr__(self) -> str:
        return "RandomBalancer()"

    def pick(self, workers: Sequence[T]) -> T:
        return self._random.choice(workers)


class LeastLoaded:
    """The less loaded of two workers chosen at random ("power of two choices"); the default.

    A worker's load is the larger of this client's calls in flight on it and the calls in
    flight and queued that the worker last reported (reports older than ``max_report_age``
    seconds are ignored): the first is exact for this client, the second also sees other
    clients. The load is weighed by the worker's recent latency (a moving average that jumps
    up at once and decays over a second), so one slow call on a worker steers the next calls
    away from it before a queue builds behind it; without calls, a latency fades over about
    ``LATENCY_FADE`` seconds, so that a worker once slow (or stopped) is tried again.
    Sampling two workers instead of taking the least loaded keeps many clients from all
    piling onto the same idle worker.
    """

    def __init__(self, seed: int | None = None, *, max_report_age: float = 1.0) -> None:
        self._random = random.Random(seed)  # noqa: S311 - load spreading, not security
        self.max_report_age = max_report_age

    def __repr__(self) -> str:
        return f"LeastLoaded(max_report_age={self.max_report_age})"

    def score(self, worker: LoadedWorker, now: float) -> float:
        """Expected cost of one more call on ``worker``: (calls ahead + 1) x latency, where a
        worker that has answered no call yet counts a latency of one second."""
        latency = faded(worker.latency, now - worker.latency_at)
        return self._score(worker, now, latency or 1.0)

    def _score(self, worker: LoadedWorker, now: float, latency: float) -> float:
        """(calls ahead + 1) x ``latency``: the calls are this client's on ``worker``, or as
        many as its fresh report says."""
        calls = worker.in_flight
        report = worker.load
        if report is not None and now - report.received <= self.max_report_age:
            calls = max(calls, report.in_flight + report.queued)
        return (calls + 1) * latency

    def pick(self, workers: Sequence[W]) -> W:
        n = len(workers)
        if n == 1:
            return workers[0]
        # Two distinct workers, uniformly: one draw among the n * (n - 1) ordered pairs (what
        # random.sample does, at a fraction of its cost: this runs on every call).
        first, second = divmod(int(self._random.random() * n * (n - 1)), n - 1)
        a, b = workers[first], workers[second + (second >= first)]
        now = time.monotonic()
        # A worker with no latency yet counts as the other: compared by calls alone, so one
        # that is stuck before its first answer does not draw every call. Each latency is
        # faded once.
        latency_a = faded(a.latency, now - a.latency_at)
        latency_b = faded(b.latency, now - b.latency_at)
        unknown = max(latency_a, latency_b) or 1.0
        score_b = self._score(b, now, latency_b or unknown)
        return b if score_b < self._score(a, now, latency_a or unknown) else a
