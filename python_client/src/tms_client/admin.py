"""``AdminClient``: the operator's calls of a TMS server (``tms.v1.AdminService``).

    with AdminClient("localhost:50051", token=admin_token) as admin:
        admin.list_workers()          # every worker process: pid, load, uptime
        admin.reload_model("face")    # load it again from disk in every worker

The server must have been started with ``--admin-tokens-file``, and ``token`` must be one of
its admin tokens (call tokens are not); otherwise each call raises PermissionDeniedError.
Any worker answers for all of them, so one connection is enough. A call a worker shutting
down refuses (UNAVAILABLE, DRAINING) is sent again on a new connection, within the call's
timeout, and so is a ``list_workers`` cut off because its worker died; a reload cut off is
not, as it may have begun.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.message import Message

from tms.v1 import admin_service_pb2
from tms_client.exceptions import UnavailableError
from tms_client.options import ClientOptions
from tms_client.transport import GrpcTransport, Request

__all__ = ["AdminClient", "ReloadOutcome", "WorkerStatus"]

pb = admin_service_pb2
_SERVICE = pb.DESCRIPTOR.services_by_name["AdminService"].full_name
#: A call a worker refused because it is shutting down (UNAVAILABLE, DRAINING), or a read cut
#: off (UNAVAILABLE), is sent again on a new connection, waiting this many seconds more each
#: time (1 s at most), within its timeout and this many attempts in all.
_BACKOFF = 0.2
_ATTEMPTS = 20
M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class WorkerStatus:
    """One worker process of a server, as the server reports it."""

    index: int
    pid: int
    in_flight: int  # calls running now
    queued: int  # calls waiting for a thread
    calls: int  # calls answered since the worker started
    uptime: float  # seconds
    serving: bool  # False while it starts, drains or is being replaced


@dataclass(frozen=True)
class ReloadOutcome:
    """How reloading a model went in one worker process."""

    index: int
    pid: int
    reloaded: bool
    error: str  # why not, when not reloaded


class AdminClient:
    """Calls AdminService on the server at ``target`` with the admin ``token``.

    Settings as for ModelClient (``ClientOptions``: ``options=`` and keyword arguments);
    ``timeout`` (120 s unless given) bounds each call, as a reload waits for every worker to
    load the model, and the first call waits for the server to be up.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        options: ClientOptions | None = None,
        **overrides: Any,
    ) -> None:
        if options is None:
            overrides = {"timeout": 120.0, **overrides}
        self.options = ClientOptions.of(target, options, overrides)
        if len(self.options.targets) != 1:
            raise ValueError("AdminClient talks to one server: give one target")
        if self.options.token is None:
            raise ValueError("AdminClient needs an admin token (token=...)")
        self.target = self.options.targets[0]
        self._transport = GrpcTransport(self.options.tls, self.options.max_message_bytes)
        self._address = self.target.removeprefix("dns:///")
        self._channel = self._transport.open(self._address)

    def __repr__(self) -> str:
        return f"<AdminClient target={self.target!r}>"

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(
        self, method: str, request: Message, response_class: type[M], *, read_only: bool = False
    ) -> M:
        """Send ``request`` to ``method``; sent again (within ``timeout``) on a new connection,
        which may reach another worker, when a worker shutting down refused it or, for a
        ``read_only`` call, when its connection failed."""
        path, data = f"/{_SERVICE}/{method}", request.SerializeToString()
        timeout, metadata = self.options.timeout, self.options.metadata
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 1
        while True:
            left = None if deadline is None else max(0.001, deadline - time.monotonic())
            call = Request(path, data, left, metadata, wait_for_ready=True)
            try:
                return response_class.FromString(self._channel.unary(call).data)
            except UnavailableError as error:
                # A worker's refusal while it shuts down, before it did anything, or a read: a
                # change cut off (the worker died during a reload, say) may have been made.
                pause = min(_BACKOFF * attempt, 1.0)
                if not (read_only or error.reason == "DRAINING") or attempt == _ATTEMPTS:
                    raise
                if deadline is not None and time.monotonic() + pause >= deadline:
                    raise
            self._channel.close()
            time.sleep(pause)
            self._channel = self._transport.open(self._address)
            attempt += 1

    def list_workers(self) -> list[WorkerStatus]:
        """Every worker process of the server, with its pid and load."""
        response = self._call(
            "ListWorkers", pb.ListWorkersRequest(), pb.ListWorkersResponse, read_only=True
        )
        return [
            WorkerStatus(
                index=w.worker_index,
                pid=w.pid,
                in_flight=w.in_flight,
                queued=w.queued,
                calls=w.calls,
                uptime=w.uptime_seconds,
                serving=w.serving,
            )
            for w in response.workers
        ]

    def reload_model(self, model: str) -> list[ReloadOutcome]:
        """Load ``model`` again from disk in every worker; one outcome per worker. A worker
        whose reload failed keeps the model it had (see each outcome's ``error``)."""
        request = pb.ReloadModelRequest(model=model)
        response = self._call("ReloadModel", request, pb.ReloadModelResponse)
        return [
            ReloadOutcome(index=w.worker_index, pid=w.pid, reloaded=w.reloaded, error=w.error)
            for w in response.workers
        ]
