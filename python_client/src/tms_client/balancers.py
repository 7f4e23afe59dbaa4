"""Balancers: which worker gets the next call.

A balancer is any object with ``pick(workers) -> worker``; ``workers`` is never empty. Pass
one to ``ModelClient(..., balancer=...)``.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from typing import Protocol, TypeVar

__all__ = ["Balancer", "RandomBalancer", "RoundRobin"]

W = TypeVar("W")


class Balancer(Protocol):
    """Picks the worker for the next call."""

    def pick(self, workers: Sequence[W]) -> W: ...


class RoundRobin:
    """Each worker in turn (the default)."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    def __repr__(self) -> str:
        return "RoundRobin()"

    def pick(self, workers: Sequence[W]) -> W:
        # next() on itertools.count is atomic under the GIL, so threads share it safely.
        return workers[next(self._counter) % len(workers)]


class RandomBalancer:
    """A worker chosen uniformly at random."""

    def __init__(self, seed: int | None = None) -> None:
        self._random = random.Random(seed)  # noqa: S311 - load spreading, not security

    def __repr__(self) -> str:
        return "RandomBalancer()"

    def pick(self, workers: Sequence[W]) -> W:
        return self._random.choice(workers)
