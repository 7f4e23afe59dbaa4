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
import time

import grpc

from tms.v1 import admin_service_pb2, admin_service_pb2_grpc
from tms_server.errors import PermissionDenied, Reason, Unavailable
from tms_server.parts import WorkerParts
from tms_server.rpc import aside, quick
from tms_server.security import TokenFile, bearer_token

__all__ = ["SERVICE", "SERVICE_NAME", "AdminServicer"]

log = logging.getLogger("tms_server")
pb = admin_service_pb2
SERVICE = pb.DESCRIPTOR.services_by_name["AdminService"]
#: Full name of the service, for reflection.
SERVICE_NAME = SERVICE.full_name

#: How long ReloadModel waits for the other workers when the call has no deadline.
_RELOAD_WAIT = 600.0
_POLL = 0.05


class AdminServicer(admin_service_pb2_grpc.AdminServiceServicer):
    """The AdminService of one worker process; it sees every worker through the board."""

    def __init__(self, parts: WorkerParts, *, admin_tokens: TokenFile | None) -> None:
        self.parts = parts
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
        load = self.parts.load
        workers = []
        for row in self.parts.board.rows():
            if row.index == self.parts.index:  # this worker: the live numbers
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

    @aside
    def ReloadModel(  # noqa: N802
        self, request: pb.ReloadModelRequest, context: grpc.ServicerContext
    ) -> pb.ReloadModelResponse:
        # On a thread of its own: it waits for every worker's reload, which may take as long
        # as loading the model does, and is no model call (--call-time-limit, --threads).
        self._authorize(context)
        name = request.model
        board = self.parts.board
        self.parts.registry.source(name)  # INVALID_ARGUMENT or NOT_FOUND before anything happens
        remaining = context.time_remaining()
        wait = _RELOAD_WAIT if remaining is None else max(0.0, min(remaining, _RELOAD_WAIT))
        deadline = time.monotonic() + wait
        if not board.reload_lock.acquire(timeout=wait):
            raise Unavailable(
                "another reload is still running; try again later",
                reason=Reason.RELOAD_IN_PROGRESS,
            )
        try:
            seq = board.announce_reload(name)
            log.info("reloading model %r in every worker (reload %d)", name, seq)
            rows = board.rows()
            while time.monotonic() < deadline:  # each follows it in its monitor thread
                rows = board.rows()
                if all(row.reload_done >= seq or not (row.fresh or row.reloading) for row in rows):
                    break
                time.sleep(_POLL)
        finally:
            board.reload_lock.release()
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
