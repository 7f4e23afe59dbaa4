"""One traceback for a failure that repeats, not one a call.

A model that raises on every call (or a server bug a caller can reach at will) would otherwise
log a traceback per call: a caller could grow the log as fast as it calls, and the first
traceback, the one that says what broke, would be buried under its copies. A failure is the
same when it has the same source (the model, or the server's method), exception type and place
it was raised (file and line of its innermost frame). Its first occurrence is logged with its
traceback; repeats within ``window`` seconds after it are only counted, and one line says how
many there were once the window is over: at the worker's next tick (``flush``, about once a
second), at the failure's next occurrence (which is logged in full again, opening a new
window), or when the worker stops (``flush(everything=True)``).

At most ``size`` failures are kept, the oldest dropped first (its count logged). ``FAILURES``
is the worker's one record, as the log it guards is one a process.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["FAILURES", "MAX_FAILURES", "WINDOW_SECONDS", "RepeatedFailures"]

log = logging.getLogger("tms_server")

#: Seconds after a traceback in which the same failure is counted, not logged.
WINDOW_SECONDS = 60.0
#: Distinct failures kept at once (a few hundred bytes each).
MAX_FAILURES = 256


@dataclass(slots=True)
class _Failure:
    what: str  # "model 'face' raised ValueError at /models/face/__init__.py:12"
    fields: dict[str, str]  # what its summary line names in place of a call (rpc, model)
    since: float  # when its traceback was logged
    repeats: int = 0


class RepeatedFailures:
    """Which failures to log with their traceback (``first``), and the count of the others."""

    def __init__(
        self,
        window: float = WINDOW_SECONDS,
        size: int = MAX_FAILURES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.size = size
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[tuple[str, str, str, int], _Failure] = {}

    def first(self, exc: BaseException, source: str, **fields: str) -> bool:
        """Whether ``exc``, raised by ``source`` (e.g. "model 'face'"), is to be logged with its
        traceback: not if the same failure was logged less than ``window`` seconds ago (it is
        counted instead). ``fields`` (rpc, model) go into the line that gives the count."""
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        file, line = (tb.tb_frame.f_code.co_filename, tb.tb_lineno) if tb else ("?", 0)
        kind = type(exc)
        key = (source, f"{kind.__module__}.{kind.__qualname__}", file, line)
        now = self._clock()
        with self._lock:
            failure = self._failures.get(key)
            if failure is not None and now - failure.since < self.window:
                failure.repeats += 1
                return False
            over = [failure] if failure is not None else []
            self._failures.pop(key, None)
            what = f"{source} raised {kind.__name__} at {file}:{line}"
            self._failures[key] = _Failure(what, fields, now)
            if len(self._failures) > self.size:
                over.append(self._failures.pop(next(iter(self._failures))))
        self._summarise(over)
        return True

    def flush(self, *, everything: bool = False) -> None:
        """Log the count of each failure whose window is over (of every one, if
        ``everything``), and forget it: its next occurrence is logged in full."""
        now = self._clock()
        with self._lock:
            over = [
                key
                for key, failure in self._failures.items()
                if everything or now - failure.since >= self.window
            ]
            ended = [self._failures.pop(key) for key in over]
        self._summarise(ended)

    def _summarise(self, failures: list[_Failure]) -> None:
        for failure in failures:
            if failure.repeats:
                # Outside the call that happens to be running: this line is about others.
                contextvars.Context().run(
                    log.error,
                    "%s %d more time%s in the %.0f s after its traceback above",
                    failure.what,
                    failure.repeats,
                    "" if failure.repeats == 1 else "s",
                    self.window,
                    extra=failure.fields,
                )


#: The worker's record of the failures it logged.
FAILURES = RepeatedFailures()
