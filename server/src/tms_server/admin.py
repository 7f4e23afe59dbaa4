"""tms.v1.AdminService: reload a model from disk in every worker, list the workers.

Off unless the server has admin tokens (``--admin-tokens-file``); then each call must bear
one of them (``authorization: Bearer <admin token>``), and any other call gets
PERMISSION_DENIED, as does every call while it is off. The call tokens of ``--tokens-file``
are not admin tokens. Nothing here stops the server.

The worker that receives ReloadModel reloads the model itself and posts the reload on the
worker board (tms_server.board); every other worker's monitor picks it up within a fraction
of a second, reloads, and posts its outcome, which the first worker gathers into the answer.
"""

from __future__ import annotations

import logging
import threading
import time

import grpc
from grpc_health.v1 import health_pb2

from tms.v1 import admin_service_pb2, admin_service_pb2_grpc
from tms_server.board import WorkerBoard
from tms_server.errors import PermissionDenied, ServiceError, Unavailable
from tms_server.health import HealthServicer
from tms_server.load import WorkerLoad
from tms_server.registry import ModelRegistry
from tms_server.rpc import quick
from tms_server.security import TokenFile, bearer_token

__all__ = ["SERVICE", "SERVICE_NAME", "AdminServicer", "Reloader"]

log = logging.getLogger("tms_server")
pb = admin_service_pb2
SERVICE = pb.DESCRIPTOR.services_by_name["AdminService"]
#: Full name of the service, for reflection.
SERVICE_NAME = SERVICE.full_name

#: How long ReloadModel waits for the other workers when the call has no deadline.
_RELOAD_WAIT = 600.0
_POLL = 0.05


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
            except Exception as exc:
                log.exception("model %r failed to reload", name)
                return f"{type(exc).__name__}: {exc}"
        self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return None


class AdminServicer(admin_service_pb2_grpc.AdminServiceServicer):
    """The AdminService of one worker process; it sees every worker through the board."""

    def __init__(
        self,
        *,
        registry: ModelRegistry,
        reloader: Reloader,
        board: WorkerBoard,
        index: int,
        load: WorkerLoad,
        admin_tokens: TokenFile | None,
    ) -> None:
        self.load = load
        self._registry = registry
        self._reloader = reloader
        self._board = board
        self._index = index
        self._tokens = admin_tokens

    def _authorize(self, context: grpc.ServicerContext) -> None:
        if self._tokens is None:
            raise PermissionDenied(
                "admin operations are off on this server; start it with --admin-tokens-file "
                "to turn them on"
            )
        if not self._tokens.accepts(bearer_token(context.invocation_metadata())):
            raise PermissionDenied(
                "AdminService calls need an admin token ('authorization: Bearer <admin token>'); "
                "call tokens are not admin tokens"
            )

    @quick
    def ListWorkers(  # noqa: N802 - named after the RPC
        self, request: pb.ListWorkersRequest, context: grpc.ServicerContext
    ) -> pb.ListWorkersResponse:
        self._authorize(context)
        workers = []
        for row in self._board.rows():
            load = self.load
            if row.index == self._index:  # this worker: the live numbers
                in_flight, queued, calls = load.in_flight, load.queued, load.answered
                serving = not load.draining
            else:
                in_flight, queued, calls = row.in_flight, row.queued, row.calls
                serving = row.serving and row.fresh
            workers.append(
                pb.WorkerStatus(
                    worker_index=row.index,
                    pid=row.pid,
                    in_flight=in_flight,
                    queued=queued,
                    calls=calls,
                    uptime_seconds=row.uptime,
                    serving=serving,
                )
            )
        return pb.ListWorkersResponse(workers=workers)

    def ReloadModel(  # noqa: N802
        self, request: pb.ReloadModelRequest, context: grpc.ServicerContext
    ) -> pb.ReloadModelResponse:
        self._authorize(context)
        name = request.model
        self._registry.source(name)  # INVALID_ARGUMENT or NOT_FOUND before anything happens
        remaining = context.time_remaining()
        wait = _RELOAD_WAIT if remaining is None else max(0.0, min(remaining, _RELOAD_WAIT))
        deadline = time.monotonic() + wait
        if not self._board.reload_lock.acquire(timeout=wait):
            raise Unavailable("another reload is still running; try again later")
        try:
            seq = self._board.announce_reload(self._index, name)
            log.info("reloading model %r in every worker (reload %d)", name, seq)
            self._board.finish_reload(self._index, seq, self._reloader.reload(name))
            rows = self._board.rows()
            while time.monotonic() < deadline:
                rows = self._board.rows()
                if all(row.reload_done >= seq or not row.fresh for row in rows):
                    break
                time.sleep(_POLL)
        finally:
            self._board.reload_lock.release()
        outcomes = []
        for row in rows:
            if row.reload_done >= seq:
                reloaded, error = row.reload_ok, row.reload_error
            else:
                reloaded, error = False, "the worker did not finish the reload in time"
            outcomes.append(
                pb.WorkerReload(worker_index=row.index, pid=row.pid, reloaded=reloaded, error=error)
            )
        return pb.ReloadModelResponse(workers=outcomes)
