"""The monitor of one worker process: a thread that keeps the worker's row on the board,
starts the reloads posted there (tms_server.board) on a thread of their own, and bounds calls
that hang, and reloads.

Python cannot stop a thread, so a model call that never returns cannot be cut short: the
client's deadline ends the call for the client (DEADLINE_EXCEEDED), but the worker's thread
stays busy. When a call has run longer than ``--call-time-limit``, the monitor says so in the
log, ends that call at once for its caller with INTERNAL (MODEL_FAILED, which clients do not
retry: the same input would hang the next worker), and calls ``on_hung``; the worker process
then stops taking calls (NOT_SERVING, new calls UNAVAILABLE so clients go to other workers),
gives its other calls in flight the grace period, and exits, and the supervisor starts a
fresh one. So a hung model costs one thread for at most the time limit plus the grace
period, never forever.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from tms_server.admission import RELEASE_AFTER_SECONDS, CallRunner, release_memory
from tms_server.errors import Internal, Reason
from tms_server.metrics import WorkerMetrics
from tms_server.parts import WorkerParts

__all__ = ["WorkerMonitor"]

log = logging.getLogger("tms_server")

#: An event loop that has not run for this long is stuck: the worker stops sending heartbeats
#: (and the supervisor replaces it after --worker-timeout-seconds).
LOOP_SILENT_SECONDS = 5.0

#: A reload still running after this long is hung: the worker is replaced (and its
#: successor loads the model's files as they are), as when loading at start takes longer.
RELOAD_TIME_LIMIT = 600.0


class WorkerMonitor:
    """Runs every ``interval`` seconds in a daemon thread until ``stop``."""

    def __init__(
        self,
        parts: WorkerParts,
        *,
        call_time_limit: float,
        on_hung: Callable[[], None],
        runner: CallRunner | None = None,
        interval: float = 0.2,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.parts = parts
        self.metrics = metrics
        self.hung = False
        self._limit = call_time_limit
        self._on_hung = on_hung
        self._runner = runner
        self._interval = interval
        self._released = 0.0  # the end of the last large call memory was given back after
        self._reload: threading.Thread | None = None  # the reload running, if any
        self._reload_began = 0.0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tms-monitor", daemon=True)

    def __repr__(self) -> str:
        return f"<WorkerMonitor index={self.parts.index} limit={self._limit:g}s hung={self.hung}>"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                self.tick()
            except Exception:  # keep monitoring whatever one round ran into
                log.exception("worker monitor failed")

    def tick(self) -> None:
        """One round: post the load (the worker's heartbeat, sent only while its event loop
        runs) and sample it for the metrics, give memory back after large calls once idle,
        start a reload posted (on a thread of its own, so that the heartbeat, the samples
        and the call time limit go on meanwhile), look for a hung call or reload."""
        load, board, index = self.parts.load, self.parts.board, self.parts.index
        if time.monotonic() - load.pulse < LOOP_SILENT_SECONDS:
            board.post(
                index,
                in_flight=load.in_flight,
                queued=load.queued,
                calls=load.answered,
                serving=not load.draining,
            )
        board.post_failures(index, self.parts.registry.failed)
        self.parts.health.refresh()  # other workers' models may have failed, or loaded since
        if self.metrics is not None:
            self.metrics.sample(load.in_flight, load.queued)
        ended = load.large_call_ended  # set by the calls' threads, read here only
        if (
            ended != self._released
            and not load.in_flight
            and time.monotonic() - ended >= RELEASE_AFTER_SECONDS
        ):
            self._released = ended
            release_memory()
        if self._reload is None or not self._reload.is_alive():
            pending = board.pending_reload(index)  # one at a time; a later one waits its turn
            if pending is not None:
                self._reload_began = time.monotonic()
                self._reload = threading.Thread(
                    target=self._reload_model, args=pending, name="tms-reload", daemon=True
                )
                self._reload.start()
        elif not self.hung and time.monotonic() - self._reload_began > RELOAD_TIME_LIMIT:
            self.hung = True
            log.error(
                "a reload has run for %.0fs, past %gs; this worker stops taking calls and will "
                "be replaced",
                time.monotonic() - self._reload_began,
                RELOAD_TIME_LIMIT,
            )
            self._on_hung()
        if self._limit and not self.hung:
            longest = load.longest_call()
            if longest > self._limit:
                self.hung = True
                log.error(
                    "a call has run for %.0fs, past the call time limit of %gs "
                    "(--call-time-limit); this worker stops taking calls and will be replaced",
                    longest,
                    self._limit,
                )
                if self._runner is not None:  # its caller hears why; not retried elsewhere
                    self._runner.end_calls_running_for(self._limit, _past_limit(self._limit))
                self._on_hung()

    def _reload_model(self, seq: int, name: str) -> None:
        """Reload number ``seq`` (of model ``name``) in this worker, its outcome posted."""
        log.info("reloading model %r (reload %d)", name, seq)
        error = self.parts.reloader.reload(name)
        # Before the reload is reported done: the workers' readiness is right when it is.
        self.parts.board.post_failures(self.parts.index, self.parts.registry.failed)
        self.parts.board.finish_reload(self.parts.index, seq, error)
        self.parts.load.reload = seq  # answers from now on say so: clients ask for the models


def _past_limit(limit: float) -> Internal:
    """What a call that ran past the time limit ends with: INTERNAL (MODEL_FAILED), which
    clients do not retry; sent again, the same input would hang another worker."""
    return Internal(
        f"the model ran past the call time limit of {limit:g}s (--call-time-limit); "
        "its worker is being replaced",
        reason=Reason.MODEL_FAILED,
    )
