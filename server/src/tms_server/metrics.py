"""The Prometheus metrics one worker process records (``--metrics-port``).

Workers write their metrics with prometheus_client's multiprocess mode: each process keeps its
values in memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR``, and the supervisor sums the
files of every worker, the dead ones' included, when /metrics is scraped
(tms_server.exporter, which also holds the supervisor's own two metrics). prometheus_client
picks that mode when it is first imported, from the environment variable the supervisor sets
before it forks: so this module imports it only inside ``WorkerMetrics``, made only when
metrics are on. With metrics off nothing is imported, nothing is written, and a call costs
one ``is None`` test.

On the call path: the labelled children of a call's (rpc, model, code) are resolved once and
kept; a call then costs a few writes into the process's mapped files, no system call. A model
name the worker does not serve counts as ``UNKNOWN_MODEL``, so callers inventing names cannot
grow the series without bound.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import grpc

from tms_server.callinfo import CallInfo

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram

__all__ = ["BATCH_BUCKETS", "CALL_BUCKETS", "UNKNOWN_MODEL", "WorkerMetrics"]

#: The model label of calls naming a model this worker has not loaded (it cannot be a name).
UNKNOWN_MODEL = "(unknown)"
#: Seconds: a call of a small model takes well under a millisecond, a large one seconds.
CALL_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    float("inf"),
)
#: Calls in a dynamic batch: at most the worker's threads.
BATCH_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, float("inf"))


M = TypeVar("M", "Counter", "Histogram")


def _of_model(children: dict[str, M], family: M, model: str) -> M:
    """The child of ``family`` labelled ``model``: made once, then kept in ``children``."""
    child = children.get(model)
    if child is None:
        child = children[model] = family.labels(model)
    return child


class WorkerMetrics:
    """The metrics of worker ``worker`` (its index) on ``device``: what ``finished`` counts for
    each call, the load gauges ``sample`` sets, and the model loads ``model_loaded`` notes.

    The gauges are per worker, labelled with its index, in the ``livemax`` multiprocess mode:
    one series per worker, dropped when its process dies and taken over by its successor."""

    def __init__(self, worker: int, device: str = "cpu") -> None:
        # Imported here, after the supervisor set PROMETHEUS_MULTIPROC_DIR (see the docstring).
        from prometheus_client import Counter, Gauge, Histogram  # noqa: PLC0415

        self._index = index = str(worker)
        # Set once: which device each worker runs on (1 per live worker).
        Gauge(
            "tms_worker_info",
            "The device each worker runs on (always 1).",
            ["worker", "device"],
            multiprocess_mode="livemax",
            registry=None,
        ).labels(index, device).set(1)
        self._calls_total = Counter(
            "tms_calls", "Calls finished.", ["model", "rpc", "code"], registry=None
        )
        self._call_seconds = Histogram(
            "tms_call_seconds",
            "Time in the server for a call, from its handler starting to its answer ready.",
            ["model", "rpc"],
            buckets=CALL_BUCKETS,
            registry=None,
        )
        self._model_seconds = Histogram(
            "tms_model_seconds",
            "Time inside the model's methods (run, run_batch, run_image_to_image).",
            ["model"],
            buckets=CALL_BUCKETS,
            registry=None,
        )
        self._batch_size = Histogram(
            "tms_batch_size",
            "Calls gathered into each dynamic batch of a model (once a batch).",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=None,
        )
        self._image_bytes = Counter(
            "tms_image_bytes", "Image bytes received in requests.", ["model"], registry=None
        )
        self._load_seconds = Gauge(
            "tms_model_load_seconds",
            "Seconds the last load of a model took in each worker.",
            ["model", "worker"],
            multiprocess_mode="livemax",
            registry=None,
        )
        self._load_failures = Counter(
            "tms_model_load_failures",
            "Model loads that failed, counted in each worker.",
            ["model"],
            registry=None,
        )
        in_flight = Gauge(
            "tms_in_flight",
            "Calls running in each worker.",
            ["worker"],
            multiprocess_mode="livemax",
            registry=None,
        )
        queued = Gauge(
            "tms_queued",
            "Calls waiting for a thread in each worker.",
            ["worker"],
            multiprocess_mode="livemax",
            registry=None,
        )
        self._in_flight, self._queued = in_flight.labels(index), queued.labels(index)
        self._in_flight.set(0)
        self._queued.set(0)
        self._sampled = (0, 0)
        self._models: set[str] = set()  # the names this worker loaded or failed to load
        self._by_call: dict[tuple[str, str, grpc.StatusCode], tuple[Counter, Histogram, str]] = {}
        self._model_time: dict[str, Histogram] = {}
        self._batched: dict[str, Histogram] = {}
        self._received: dict[str, Counter] = {}

    def __repr__(self) -> str:
        return f"<WorkerMetrics models={sorted(self._models)} series={len(self._by_call)}>"

    def finished(self, call: CallInfo, code: grpc.StatusCode, seconds: float) -> None:
        """Count a call that is over: ``seconds`` in the server, ending with ``code``."""
        children = self._by_call.get((call.rpc, call.model, code))
        if children is None:
            children = self._children(call.rpc, call.model, code)
        total, timing, model = children
        total.inc()
        timing.observe(seconds)
        if call.model_seconds is not None:
            _of_model(self._model_time, self._model_seconds, model).observe(call.model_seconds)
        if call.image_bytes:
            _of_model(self._received, self._image_bytes, model).inc(call.image_bytes)

    def batched(self, model: str, size: int) -> None:
        """Count a dynamic batch of ``size`` calls that model ``model`` runs."""
        _of_model(self._batched, self._batch_size, model).observe(size)

    def _children(
        self, rpc: str, model: str, code: grpc.StatusCode
    ) -> tuple[Counter, Histogram, str]:
        """The children of a call's labels, kept for the next call of a model the worker has
        (a name it has not is looked up each time, and kept once as UNKNOWN_MODEL)."""
        label = model if not model or model in self._models else UNKNOWN_MODEL
        key = (rpc, label, code)
        children = self._by_call.get(key)
        if children is None:
            total = self._calls_total.labels(label, rpc, code.name)
            timing = self._call_seconds.labels(label, rpc)
            children = self._by_call[key] = (total, timing, label)
        return children

    def sample(self, in_flight: int, queued: int) -> None:
        """Set the load gauges (the worker's monitor samples its load a few times a second,
        rather than each call writing them twice)."""
        if (in_flight, queued) != self._sampled:
            self._sampled = (in_flight, queued)
            self._in_flight.set(in_flight)
            self._queued.set(queued)

    def model_loaded(self, name: str, seconds: float | None) -> None:
        """Note a load of model ``name`` (at start or a reload): it took ``seconds``, or it
        failed (None)."""
        self._models.add(name)
        failures = self._load_failures.labels(name)  # 0 from the first load on
        if seconds is None:
            failures.inc()
        else:
            self._load_seconds.labels(name, self._index).set(seconds)
