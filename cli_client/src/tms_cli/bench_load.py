"""The load generator of ``tms bench``: threads that each make one call at a time until the
deadline, and what their calls did (counts, latency, errors), shown live as they go."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.live import Live

from tms_cli.bench_live import Rate, show
from tms_cli.bench_payload import Payload
from tms_cli.connection import describe_error
from tms_cli.latency import LatencyHistogram
from tms_client import CallError, ModelClient, TMSError, WorkerInfo

__all__ = ["Run", "Stats", "generate_load"]

_REDRAW = 0.25  # seconds between redraws of the live view


class Stats:
    """What the calls of a run did; shared by the threads that make them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ok = 0
        self.received = 0  # bytes of output images
        self.latency = LatencyHistogram()
        self.errors: Counter[str] = Counter()
        self.first_error: dict[str, str] = {}
        self.crash: BaseException | None = None  # a bug in a load thread, re-raised at the end
        self.last_end = 0.0  # when the last call ended (time.monotonic)

    @property
    def done(self) -> int:
        return self.ok + sum(self.errors.values())

    def success(self, seconds: float, received: int) -> None:
        with self._lock:
            self.ok += 1
            self.received += received
            self.latency.add(seconds)

    def failure(self, code: str, message: str) -> None:
        with self._lock:
            self.errors[code] += 1
            self.first_error.setdefault(code, message)

    def ended(self, when: float) -> None:
        with self._lock:
            self.last_end = max(self.last_end, when)

    def live(self) -> tuple[int, int, float, float]:
        """Calls done, calls failed, p50 and p99 latency (seconds) so far."""
        with self._lock:
            failed = sum(self.errors.values())
            p50, p99 = self.latency.percentile(50), self.latency.percentile(99)
            return self.ok + failed, failed, p50, p99


@dataclass
class Run:
    """One benchmark run: what it sends, how, and what came of it."""

    model: str
    target: str
    call: str
    payload: Payload
    concurrency: int
    duration: float
    balancer: str
    stats: Stats = field(default_factory=Stats)
    elapsed: float = 0.0
    interrupted: bool = False
    workers: list[tuple[WorkerInfo, int]] = field(default_factory=list)  # (worker, its calls)


def generate_load(
    client: ModelClient, call: Callable[[], int], run: Run, live: Live | None
) -> None:
    """Make the calls of ``run``, showing them on ``live`` if any, and fill in its results."""
    stats, stop = run.stats, threading.Event()
    before = {(w.instance_id, w.pid): w.calls for w in client.workers()}
    started = time.monotonic()
    deadline = started + run.duration
    threads = [
        threading.Thread(
            target=_keep_calling,
            args=(call, stats, stop, deadline),
            name=f"tms-bench-{i}",
            daemon=True,  # a call stuck past Ctrl-C must not keep the process alive
        )
        for i in range(run.concurrency)
    ]
    for thread in threads:
        thread.start()
    rate = Rate(started)
    try:
        with live or contextlib.nullcontext():  # the view is removed at the end
            while any(thread.is_alive() for thread in threads):
                stop.wait(_REDRAW)
                if live is not None:
                    show(live, _live_lines(run, client, before, rate, time.monotonic() - started))
                if stop.is_set():  # a load thread crashed
                    break
    except KeyboardInterrupt:
        run.interrupted = True
    finally:
        stop.set()
        for thread in threads:  # calls end within their timeout; after Ctrl-C wait briefly
            thread.join(timeout=1.0 if run.interrupted else None)
    # The last call's end, not this loop's (it only looks every _REDRAW seconds).
    run.elapsed = (time.monotonic() if run.interrupted else stats.last_end or started) - started
    run.workers = [(w, w.calls - before.get((w.instance_id, w.pid), 0)) for w in client.workers()]


def _keep_calling(
    call: Callable[[], int], stats: Stats, stop: threading.Event, deadline: float
) -> None:
    # Stop is set before the deadline only on Ctrl-C (or a crash): calls ending after that
    # were cut short, or end after the summary was taken, and are not counted.
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                received = call()
            except CallError as exc:
                if not stop.is_set():
                    stats.failure(exc.code.name, exc.details)
            except (TMSError, ValueError, OSError) as exc:  # failed before it got a status
                if not stop.is_set():
                    stats.failure(type(exc).__name__, describe_error(exc))
            else:
                if not stop.is_set():
                    stats.success(time.monotonic() - started, received)
    except BaseException as exc:  # a bug: stop the run and show it
        stats.crash = exc
        stop.set()
    finally:
        stats.ended(time.monotonic())


def _live_lines(
    run: Run, client: ModelClient, before: dict[tuple[str, int], int], rate: Rate, elapsed: float
) -> list[str]:
    """The live view: progress and totals, then one line per worker."""
    done, failed, p50, p99 = run.stats.live()
    elapsed = min(elapsed, run.duration)
    filled = int(10 * elapsed / run.duration)
    lines = [
        f"[{'#' * filled}{'.' * (10 - filled)}] {elapsed:.1f}/{run.duration:g} s  "
        f"{done} calls  {rate.update(time.monotonic(), done):.0f}/s  "
        f"p50 {_ms(p50)}  p99 {_ms(p99)}  {failed} failed"
    ]
    for w in client.workers():
        calls = w.calls - before.get((w.instance_id, w.pid), 0)
        line = (
            f"  {w.index}/{w.count} pid {w.pid} {w.address}: {calls} calls, {w.in_flight} in flight"
        )
        if w.reported_in_flight is not None:
            line += f", reports {w.reported_in_flight} running {w.reported_queued} queued"
        lines.append(line)
    return lines


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"
