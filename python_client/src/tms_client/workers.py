"""What the pool knows about workers, kept apart from how it talks to them.

``WorkerSet`` is pure bookkeeping (no I/O, no locks): which workers are known at which
address, how many each server said it runs, which addresses still lack workers. The sync and
asyncio pools both drive one, so they find, count and drop workers the same way.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from tms.v1 import model_service_pb2
from tms_client.balancers import faded
from tms_client.protocol.load import LoadReport

__all__ = ["Key", "Worker", "WorkerInfo", "WorkerSet"]

Key = tuple[str, int]
#: The most models whose candidates WorkerSet keeps at once (health checks name any service).
_MODELS_KEPT = 64


@dataclass(frozen=True)
class WorkerInfo:
    """One worker process the client is connected to, and its load."""

    address: str  # where the client found it
    instance_id: str
    pid: int
    index: int
    count: int  # how many workers its server runs
    calls: int  # calls this client sent it
    in_flight: int  # this client's calls on it now
    reported_in_flight: int | None  # calls running on it, as it last reported
    reported_queued: int | None  # calls waiting for a thread on it, as it last reported
    device: str = ""  # what its models run on: "cpu", "cuda:0"... ("" from older servers)
    models: frozenset[str] = frozenset()  # the models it has (empty: every model)


@dataclass(eq=False)
class Worker:
    """One worker process and the transport's channel connected to it (sync or asyncio)."""

    address: str
    instance_id: str
    pid: int
    index: int
    count: int
    channel: Any = field(repr=False)
    device: str = ""
    models: frozenset[str] = frozenset()  # the models it has; empty: every model
    reload: int = 0  # the server's last reload it had done when it said ``models``
    in_flight: int = 0
    calls: int = 0
    load: LoadReport | None = None
    latency: float = 0.0  # peak-sensitive moving average of call latency, seconds
    latency_at: float = 0.0  # when ``latency`` was last updated (time.monotonic)
    retired: bool = False  # dropped from the pool; its channel closes when its calls end

    def record_latency(self, seconds: float, now: float) -> None:
        """Fold one call's latency in: a slower call counts at once, faster ones pull the
        average down with a time constant of a second (Finagle's "peak EWMA"), from what it
        has faded to since the last (balancers.faded)."""
        current = faded(self.latency, now - self.latency_at)
        if seconds >= current:
            self.latency = seconds
        else:
            weight = 1.0 - math.exp(self.latency_at - now)
            self.latency = current + (seconds - current) * weight
        self.latency_at = now

    @classmethod
    def from_info(
        cls, address: str, info: model_service_pb2.GetWorkerInfoResponse, channel: Any
    ) -> Worker:
        return cls(
            address,
            info.instance_id,
            info.pid,
            info.worker_index,
            info.worker_count,
            channel,
            info.device,
            frozenset(info.models),
            info.reload,
        )

    def has(self, model: str) -> bool:
        """Whether this worker has ``model`` ("" for calls about the whole server)."""
        return not model or not self.models or model in self.models

    @functools.cached_property
    def key(self) -> Key:
        """What tells workers apart, across hosts too: (server instance id, pid)."""
        return (self.instance_id, self.pid)

    @functools.cached_property
    def identity(self) -> str:
        """How the worker names itself in trailing metadata (read after every call)."""
        return f"{self.instance_id}/{self.pid}"

    def info(self) -> WorkerInfo:
        """What the client may show of this worker: its fields of the same names, and what
        it last reported."""
        report = self.load
        mine = {f.name: getattr(self, f.name) for f in fields(WorkerInfo) if hasattr(self, f.name)}
        return WorkerInfo(
            **mine,
            reported_in_flight=None if report is None else report.in_flight,
            reported_queued=None if report is None else report.queued,
        )


class WorkerSet:
    """The known workers, by key, and what each address's server said about itself."""

    def __init__(self) -> None:
        self._workers: dict[Key, Worker] = {}
        # address -> (instance id, worker count) of the server last seen there
        self._servers: dict[str, tuple[str, int]] = {}
        # model -> the workers a call for it may go to; cleared whenever workers change
        self._for_model: dict[str, tuple[Worker, ...]] = {}

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{w.address} pid {w.pid}: {w.in_flight} in flight, {w.calls} calls"
            for w in self.workers()
        )
        return f"<WorkerSet [{shown}]>"

    def __len__(self) -> int:
        return len(self._workers)

    def workers(self) -> list[Worker]:
        return sorted(self._workers.values(), key=lambda w: (w.address, w.index, w.pid))

    def add(self, worker: Worker) -> list[Worker]:
        """Take ``worker`` in; returns the workers to close: ``worker`` itself when it is
        known already, or the workers of a server that restarted at its address."""
        if worker.key in self._workers:
            return [worker]
        stale: list[Worker] = []
        seen = self._servers.get(worker.address)
        if seen is not None and seen[0] != worker.instance_id:
            stale = [w for w in self._workers.values() if w.address == worker.address]
            for old in stale:
                del self._workers[old.key]
        self._servers[worker.address] = (worker.instance_id, worker.count)
        self._workers[worker.key] = worker
        self._for_model.clear()
        return stale

    def follow(self, worker: Worker, info: model_service_pb2.GetWorkerInfoResponse) -> None:
        """Take in the models ``worker`` serves now."""
        worker.models = frozenset(info.models)
        worker.reload = info.reload
        self._for_model.clear()

    def remove(self, worker: Worker) -> bool:
        """Forget ``worker`` (if this very object is known); whether it was."""
        if self._workers.get(worker.key) is worker:
            del self._workers[worker.key]
            self._for_model.clear()
            return True
        return False

    def complete(self, address: str) -> bool:
        """Whether every worker of the server at ``address`` is known."""
        seen = self._servers.get(address)
        if seen is None:
            return False
        instance_id, count = seen
        found = sum(
            1
            for w in self._workers.values()
            if w.address == address and w.instance_id == instance_id
        )
        return found >= count

    def missing(self, addresses: Collection[str]) -> list[str]:
        """The addresses whose server's workers are not all known."""
        return [address for address in addresses if not self.complete(address)]

    def expected(self, address: str) -> int | None:
        """How many workers the server at ``address`` said it runs (None: not seen yet)."""
        seen = self._servers.get(address)
        return None if seen is None else seen[1]

    def candidates(self, exclude: Collection[Key] = (), model: str = "") -> Sequence[Worker]:
        """Workers a call for ``model`` may go to: those that have it (all, when none has it:
        any worker then says it has no such model), without those in ``exclude`` unless
        that leaves none."""
        workers = self._for_model.get(model)
        if workers is None:
            if len(self._for_model) >= _MODELS_KEPT:
                self._for_model.clear()
            workers = self._for_model[model] = self._with_model(model)
        if not exclude:
            return workers
        return [w for w in workers if w.key not in exclude] or list(workers)

    def _with_model(self, model: str) -> tuple[Worker, ...]:
        """The workers that have ``model``, or all when none has it (see ``candidates``)."""
        workers = tuple(self._workers.values())
        if model:
            workers = tuple(w for w in workers if w.has(model)) or workers
        return workers
