"""Retry policy: which failed calls are tried again, how often, and how long to wait between.

A policy is an immutable value; ``with_*`` methods return a changed copy::

    RetryPolicy().with_attempts(10).with_deadline(30)
    RetryPolicy.never()

Model calls are idempotent (the same input gives the same answer), so a call that failed with
UNAVAILABLE (the worker or server went away) is safe to send again, to another worker. So is
one that failed with CANCELLED: the client never cancels a call itself, so that code means the
server gave the call up (a stopping server cancels the calls it has not started). The codes
a policy names are retried; by default these two.

A failure whose status carries ``google.rpc.RetryInfo`` (``CallError.retry_delay``) is
retried too, whatever its code, unless the policy says ``with_retry_info(False)``: the
server sends it only where the same call may succeed later (a full queue, QUEUE_FULL, on
RESOURCE_EXHAUSTED; a draining worker, DRAINING, on UNAVAILABLE), never for a request that
cannot succeed (one too large, say). Such a retry waits at least the delay the server asked
for: ``max(retry_delay, backoff)``. No wait runs past the deadline: a retry that would start
after it is not made, and the failure is raised instead.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import grpc

from tms_client.exceptions import CallError, DeadlineExceededError

__all__ = ["LONGEST_TIMEOUT", "Attempts", "RetryPolicy", "no_deadline_past"]


#: The longest deadline a call is given, in seconds (over three years): gRPC fails a call
#: whose deadline is further off at once, so a longer timeout (math.inf too) means none.
LONGEST_TIMEOUT = 1e8


def no_deadline_past(seconds: float | None, what: str = "timeout") -> float | None:
    """``seconds``, or None (no deadline) from LONGEST_TIMEOUT on; ValueError unless it is
    positive (NaN is not)."""
    if seconds is not None and not seconds > 0:
        raise ValueError(f"{what} must be positive (or None, or math.inf: no deadline)")
    return None if seconds is None or seconds >= LONGEST_TIMEOUT else seconds


@dataclass(frozen=True)
class RetryPolicy:
    """How calls are retried.

    ``attempts`` counts the first try; ``deadline`` (seconds) bounds all attempts and the
    waits between them together (None: only the call's own timeout bounds them). The wait
    before retry n is ``initial_backoff * multiplier ** (n - 1)``, at most ``max_backoff``,
    then scaled by a random factor in ``[1 - jitter, 1 + jitter]`` so clients spread out.
    ``retry_info``: a failure carrying the server's RetryInfo is retried whatever its code,
    after at least the delay it gives.
    """

    attempts: int = 5
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.5
    deadline: float | None = None
    codes: frozenset[grpc.StatusCode] = field(
        default=frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
    )
    retry_info: bool = True

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must be >= 0 and the multiplier >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")
        object.__setattr__(self, "deadline", no_deadline_past(self.deadline, "deadline"))

    @classmethod
    def never(cls) -> RetryPolicy:
        """A policy that tries each call once."""
        return cls(attempts=1)

    def with_attempts(self, attempts: int) -> RetryPolicy:
        return dataclasses.replace(self, attempts=attempts)

    def with_backoff(
        self, initial: float, maximum: float, multiplier: float | None = None
    ) -> RetryPolicy:
        multiplier = self.multiplier if multiplier is None else multiplier
        return dataclasses.replace(
            self, initial_backoff=initial, max_backoff=maximum, multiplier=multiplier
        )

    def with_jitter(self, jitter: float) -> RetryPolicy:
        return dataclasses.replace(self, jitter=jitter)

    def with_deadline(self, deadline: float | None) -> RetryPolicy:
        return dataclasses.replace(self, deadline=deadline)

    def with_codes(self, codes: Iterable[grpc.StatusCode]) -> RetryPolicy:
        return dataclasses.replace(self, codes=frozenset(codes))

    def with_retry_info(self, honour: bool) -> RetryPolicy:
        return dataclasses.replace(self, retry_info=honour)

    def retries(self, code: grpc.StatusCode, retry_delay: float | None = None) -> bool:
        """Whether a call that failed with ``code`` (and the server's ``retry_delay``, if its
        status had RetryInfo) may be tried again."""
        return code in self.codes or (self.retry_info and retry_delay is not None)

    def backoff(self, retry: int, uniform: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        delay = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        return delay * (1 - self.jitter + 2 * self.jitter * uniform())


class Attempts:
    """The attempts of one call under a policy and a timeout; shared by the sync and asyncio
    clients, which only differ in how they wait."""

    def __init__(
        self,
        policy: RetryPolicy,
        timeout: float | None,
        clock: Callable[[], float] = time.monotonic,
        started: float | None = None,
    ) -> None:
        """``started``: when the call began, on ``clock`` (None: now)."""
        self.policy = policy
        self.number = 0
        self.tried: set[tuple[str, int]] = set()
        self._clock = clock
        limit = self.limit(policy, timeout)
        if limit is None:
            self.deadline = None
        else:
            self.deadline = (clock() if started is None else started) + limit

    @staticmethod
    def limit(policy: RetryPolicy, timeout: float | None) -> float | None:
        """Seconds a call may take, all attempts together: the smaller of its ``timeout``
        and the policy's deadline (None: no limit)."""
        if policy.deadline is None:
            return timeout
        return policy.deadline if timeout is None else min(timeout, policy.deadline)

    def __repr__(self) -> str:
        return f"<Attempts number={self.number} tried={len(self.tried)}>"

    def remaining(self) -> float | None:
        """Seconds left for this call (None: no limit)."""
        return None if self.deadline is None else self.deadline - self._clock()

    def begin(self) -> None:
        """Start the next attempt; raises DeadlineExceededError when no time is left."""
        self.number += 1
        self.timeout()

    def timeout(self) -> float | None:
        """The timeout for a call sent now: the time left (None: no limit)."""
        remaining = self.remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceededError(
                grpc.StatusCode.DEADLINE_EXCEEDED, "the call's deadline passed before an attempt"
            )
        return remaining

    def delay_after(self, error: CallError) -> float:
        """After a failed attempt: seconds to wait before the next one (at least the delay
        the server asked for, if the policy honours it); raises ``error`` when the policy
        does not retry it, attempts are used up or the deadline would pass."""
        policy, asked = self.policy, error.retry_delay
        if not policy.retries(error.code, asked) or self.number >= policy.attempts:
            raise error
        delay = policy.backoff(self.number)
        if policy.retry_info and asked is not None:
            delay = max(asked, delay)
        remaining = self.remaining()
        if remaining is not None and remaining <= delay:
            raise error
        return delay
