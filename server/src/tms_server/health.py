"""The standard ``grpc.health.v1.Health`` service of one worker, on its event loop.

``Check`` answers anyone (load balancers and Kubernetes probe without credentials). ``Watch``
streams stay open, so they are bounded: at most ``max_watches`` at once per worker (more get
RESOURCE_EXHAUSTED), and a name nobody watches any more leaves nothing behind. With
``--tokens-file`` a Watch needs a token like any other call (see security.TokenInterceptor).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeAlias

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["SERVICE_NAME", "HealthServicer"]

SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
Status: TypeAlias = int  # a HealthCheckResponse.ServingStatus value
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthServicer(health_pb2_grpc.HealthServicer):
    """Serving status by service name; ``set`` and ``enter_graceful_shutdown`` may be called
    from any thread once ``loop`` is the worker's running event loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        max_watches: int,
        held: Callable[[], bool] | None = None,
    ) -> None:
        self._loop = loop
        # Whether the server as a whole ("") is held NOT_SERVING by what other workers say
        # (a model that failed to load there), asked whenever "" is read.
        self._held = held or (lambda: False)
        self._was_held = False  # as refresh last found it
        self._unseen = False  # a watch found otherwise since: refresh wakes them all
        self._status: dict[str, Status] = {}
        self._watches: dict[str, set[asyncio.Event]] = {}
        self._max_watches = max_watches
        self._lock = threading.Lock()
        self._shutting_down = False

    def __repr__(self) -> str:
        watches = sum(len(events) for events in self._watches.values())
        return f"<HealthServicer services={len(self._status)} watches={watches}>"

    def set(self, service: str, status: Status) -> None:
        """Set the status of ``service``; ignored once shutting down."""
        with self._lock:
            if not self._shutting_down:
                self._set(service, status)

    def serving(self, service: str = "") -> bool:
        """Whether ``service`` ("" for the server as a whole) is SERVING now."""
        return self._current(service) == health_pb2.HealthCheckResponse.SERVING

    def refresh(self) -> None:
        """Tell the watches of "" to look again when what other workers say has changed since
        the last refresh, or a watch found it otherwise than that refresh (called from one
        thread, the worker's monitor)."""
        held = self._held()
        if held == self._was_held and not self._unseen:
            return
        self._was_held, self._unseen = held, False
        for event in tuple(self._watches.get("", ())):
            self._loop.call_soon_threadsafe(event.set)

    def _current(self, service: str, *, watched: bool = False) -> Status | None:
        status = self._status.get(service)
        if service != "" or status != health_pb2.HealthCheckResponse.SERVING:
            return status
        held = self._held()
        if watched and held != self._was_held:
            # A failure that came and went between two refreshes would leave this watch
            # telling of it: the next refresh wakes it, whatever it finds.
            self._unseen = True
        return _NOT_SERVING if held else status

    def enter_graceful_shutdown(self) -> None:
        """Report every service NOT_SERVING from now on, for good."""
        with self._lock:
            self._shutting_down = True
            for service in self._status:
                self._set(service, _NOT_SERVING)

    def _set(self, service: str, status: Status) -> None:
        self._status[service] = status
        for event in tuple(self._watches.get(service, ())):
            self._loop.call_soon_threadsafe(event.set)

    async def Check(  # noqa: N802 - named after the RPC
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        status = self._current(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(  # noqa: N802
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        if sum(len(events) for events in self._watches.values()) >= self._max_watches:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this worker has {self._max_watches} health watches open, its most; use Check",
            )
        name, event = request.service, asyncio.Event()
        self._watches.setdefault(name, set()).add(event)
        try:
            last = None
            while True:
                event.clear()
                status = self._current(name, watched=True)
                status = _UNKNOWN if status is None else status
                if status != last:
                    await context.write(health_pb2.HealthCheckResponse(status=status))
                    last = status
                await event.wait()
        finally:
            events = self._watches[name]
            events.discard(event)
            if not events:
                del self._watches[name]
