"""The load of one worker process: calls in flight and queued, reported with every response.

Each response carries the report in its trailing metadata (see tms_client.protocol.load for
the keys), so clients can send their next calls to the least loaded worker.
"""

from __future__ import annotations

import functools
import threading
import time

from tms_client.protocol.load import LOAD_KEY, WORKER_KEY, encode_orca

__all__ = ["WorkerLoad"]


class WorkerLoad:
    """Counts a worker's calls; ``draining`` is set when the worker is shutting down.

    It also notes when each call in flight began (by thread), so the worker's monitor can
    tell a call that has run past the call time limit.
    """

    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.in_flight = 0
        self.queued = 0
        self.answered = 0
        self.draining = False
        self.pulse = time.monotonic()  # set by the event loop while it runs (worker.pulse)
        self.large_call_ended = 0.0  # time.monotonic() when the last large call ended
        self.reload = 0  # the server's last reload this worker has done (GetWorkerInfo.reload)
        self._lock = threading.Lock()
        self._began: dict[int, float] = {}

    def __repr__(self) -> str:
        return f"<WorkerLoad {self.identity} in_flight={self.in_flight} queued={self.queued}>"

    def begin(self) -> None:
        with self._lock:
            self.in_flight += 1
            self._began[threading.get_ident()] = time.monotonic()

    def end(self) -> None:
        with self._lock:
            self.in_flight -= 1
            self.answered += 1
            self._began.pop(threading.get_ident(), None)

    def longest_call(self) -> float:
        """Seconds the oldest call in flight has been running (0 with none)."""
        with self._lock:
            oldest = min(self._began.values(), default=None)
        return 0.0 if oldest is None else time.monotonic() - oldest

    def running_for(self, seconds: float) -> list[int]:
        """The threads whose call in flight has run ``seconds`` or more."""
        since = time.monotonic() - seconds
        with self._lock:
            return [thread for thread, began in self._began.items() if began <= since]

    def submitted(self) -> None:
        with self._lock:
            self.queued += 1

    def started(self) -> None:
        with self._lock:
            self.queued -= 1

    def trailers(self) -> tuple[tuple[str, str | bytes], ...]:
        """Trailing metadata reporting the load now, and the last reload the worker has done,
        once there has been one (then clients ask which models it serves)."""
        report = _report(self.in_flight, self.queued, self.reload)
        return ((LOAD_KEY, report), (WORKER_KEY, self.identity))


@functools.lru_cache(maxsize=1024)
def _report(in_flight: int, queued: int, reload: int) -> bytes:
    # The same few (in flight, queued) pairs recur call after call: encode each once.
    metrics = {"in_flight": float(in_flight), "queued": float(queued)}
    if reload:
        metrics["reload"] = float(reload)
    return encode_orca(metrics)
