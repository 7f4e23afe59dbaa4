"""What the parts of one worker process share.

A worker's AdminService (tms_server.admin), its monitor thread (tms_server.monitor) and its
running server (tms_server.worker) all work with the same few objects: the worker's index on
the board, its models, its load, the board shared with the other workers, its health and its
Reloader. tms_server.worker makes them once, as one WorkerParts, and hands that to each part.

The Reloader lives here, not in tms_server.admin, because two parts use it: the AdminService
of the worker that receives ReloadModel, and the monitor of every other worker.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from grpc_health.v1 import health_pb2

from tms_server.board import WorkerBoard
from tms_server.errors import ServiceError
from tms_server.health import HealthServicer
from tms_server.load import WorkerLoad
from tms_server.registry import MODEL_ERRORS, ModelRegistry, load_error

__all__ = ["Reloader", "WorkerParts"]

log = logging.getLogger("tms_server")
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Reloader:
    """Reloads models of one worker process, one at a time, and keeps its health in step."""

    def __init__(self, registry: ModelRegistry, health_servicer: HealthServicer) -> None:
        self._registry = registry
        self._health = health_servicer
        self._lock = threading.Lock()

    def reload(self, name: str) -> str | None:
        """Reload model ``name``; None when done, else why not (the old model stays)."""
        with self._lock:
            try:
                self._registry.reload(name)
            except ServiceError as exc:
                return str(exc)
            except MODEL_ERRORS as exc:
                # As when a start fails to load it: the reason at ERROR, and the traceback
                # (one per worker) at DEBUG.
                reason = load_error(exc)
                log.error("model %r failed to reload: %s", name, reason)
                log.debug("model %r failed to reload", name, exc_info=True)
                return reason
        # NOT_SERVING if its placement now leaves this worker out (see report_serving).
        here = name in self._registry.models
        status = health_pb2.HealthCheckResponse.SERVING if here else _NOT_SERVING
        self._health.set(name, status)
        # A reload adds no failure (a model that fails to reload keeps serving its old
        # instance), but it may end the last: the server is ready again (report_serving).
        if not self._registry.failed:
            self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        return None


@dataclass(frozen=True)
class WorkerParts:
    """What the AdminService, the monitor and the running server of one worker share."""

    index: int  # this worker's row on the board
    registry: ModelRegistry
    load: WorkerLoad
    health: HealthServicer
    board: WorkerBoard = field(repr=False)  # shared with the other workers
    reloader: Reloader = field(repr=False)
