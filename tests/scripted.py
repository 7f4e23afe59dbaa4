"""A scripted transport: TMS servers and their worker processes as plain objects, for the
pool's unit tests (tests/unit/test_pool_core.py).

It behaves as the real transport does where the pool can tell: a new connection lands on
the server's workers in turn (as the kernel spreads SO_REUSEPORT connections), a call on it
is answered by that worker with its identity in the trailers, and a connection to a worker
that is gone fails with UNAVAILABLE, unless it reconnects to another worker, as gRPC does.
Tests change the world between calls: kill, slow or stall a worker, restart or stop a server,
refuse the token.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import grpc

from tms.v1 import model_service_pb2
from tms_client.exceptions import CallError, from_code
from tms_client.protocol.load import WORKER_KEY
from tms_client.protocol.methods import method_path
from tms_client.transport import AsyncStream, Reply, Request, Stream

WORKER_INFO = method_path("GetWorkerInfo")
_pids = itertools.count(1000)


@dataclass(eq=False)
class FakeWorker:
    server: FakeServer
    index: int
    pid: int = field(default_factory=lambda: next(_pids))
    alive: bool = True
    delay: float = 0.0  # seconds each model call takes
    fail: grpc.StatusCode | None = None  # every model call ends with this code
    doomed: bool = False  # dies (and is replaced) during its next model call
    stalled: bool = False  # answers nothing: every call on it waits out its deadline
    models: tuple[str, ...] = ()  # the models it says it has (empty: all)
    calls: int = 0  # model calls answered

    @property
    def identity(self) -> str:
        return f"{self.server.instance}/{self.pid}"


class FakeServer:
    """One server at ``address`` with ``count`` workers."""

    def __init__(self, address: str, count: int = 2) -> None:
        self.address = address
        self.count = count
        self.instance = ""
        self.up = True
        self.refuse = False  # answer every call UNAUTHENTICATED
        self.reconnect = False  # a connection to a dead worker reconnects to another
        self.workers: list[FakeWorker] = []
        self.lands: list[int] = []  # the workers (indices) the next connections land on
        self._instances = itertools.count(1)
        self._turn = itertools.count()
        self.restart()

    def restart(self) -> None:
        """A new server process: new instance id, new workers; old connections fail."""
        for worker in self.workers:
            worker.alive = False
        self.instance = f"{self.address}#{next(self._instances)}"
        self.workers = [FakeWorker(self, i) for i in range(self.count)]
        self.up = True

    def stop(self) -> None:
        for worker in self.workers:
            worker.alive = False
        self.up = False

    def replace(self, worker: FakeWorker) -> FakeWorker:
        """The supervisor replaces a dead worker: same index, a new pid."""
        worker.alive = False
        new = FakeWorker(self, worker.index)
        self.workers[worker.index] = new
        return new

    def accept(self) -> FakeWorker | None:
        """The worker a new connection lands on (None: nothing listens)."""
        live = [w for w in self.workers if w.alive]
        if not self.up or not live:
            return None
        if self.lands:
            return self.workers[self.lands.pop(0)]
        return live[next(self._turn) % len(live)]

    def answer(self, worker: FakeWorker, request: Request) -> Reply:
        trailers = ((WORKER_KEY, worker.identity),)
        if request.path == WORKER_INFO:
            info = model_service_pb2.GetWorkerInfoResponse(
                instance_id=self.instance, pid=worker.pid, worker_index=worker.index
            )
            info.worker_count = self.count
            info.models.extend(worker.models)
            return Reply(info.SerializeToString(), trailers)
        worker.calls += 1
        if worker.fail is not None:
            raise from_code(worker.fail, "scripted failure", trailers)
        return Reply(request.payload(), trailers)


def _unavailable(details: str) -> CallError:
    return from_code(grpc.StatusCode.UNAVAILABLE, details, ())


class _Connection:
    """What one scripted channel is connected to; shared by the sync and asyncio forms."""

    def __init__(self, world: ScriptedTransport, address: str) -> None:
        self.world = world
        self.server = world.servers.get(address)
        self.worker = None if self.server is None else self.server.accept()
        self.closed = False

    def start(self, request: Request) -> tuple[FakeWorker, float]:
        """The worker that will answer ``request`` (reconnecting if need be), and its delay."""
        if self.closed:
            raise ValueError("call on a closed channel")
        self.world.requests.append(request)
        server = self.server
        if server is None:
            raise _unavailable("no server at this address")
        if server.refuse:
            raise from_code(grpc.StatusCode.UNAUTHENTICATED, "wrong token", ())
        worker = self.worker
        if (worker is None or not worker.alive) and server.reconnect:
            worker = self.worker = server.accept()
        if worker is None or not worker.alive:
            raise _unavailable("connection refused")
        if worker.stalled:
            return worker, request.timeout or 60.0
        return worker, 0.0 if request.path == WORKER_INFO else worker.delay

    def finish(self, worker: FakeWorker, request: Request) -> Reply:
        assert self.server is not None
        if worker.stalled:
            raise from_code(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", ())
        if worker.doomed and request.path != WORKER_INFO:
            self.server.replace(worker)
        if not worker.alive:  # it died while the call ran
            raise _unavailable("connection reset")
        return self.server.answer(worker, request)


class ScriptedChannel(_Connection):
    def unary(self, request: Request) -> Reply:
        worker, delay = self.start(request)
        if delay:
            time.sleep(delay)
        return self.finish(worker, request)

    def stream(self, request: Request, more: Iterable[Any] = ()) -> Stream:
        return ScriptedStream(self, request, more)

    def close(self) -> None:
        self.closed = True


class AsyncScriptedChannel(_Connection):
    async def unary(self, request: Request) -> Reply:
        worker, delay = self.start(request)
        if delay:
            await asyncio.sleep(delay)
        return self.finish(worker, request)

    def stream(self, request: Request, more: Any = ()) -> AsyncStream:
        return AsyncScriptedStream(ScriptedStream(self, request, more))

    async def close(self) -> None:
        self.closed = True


class ScriptedStream:
    """A streaming call: the worker that took it answers each message (its bytes echoed) as
    a model call; it fails as a unary call would, at the message where it fails."""

    def __init__(self, connection: _Connection, request: Request, more: Iterable[Any]) -> None:
        self.connection = connection
        self.request = request
        self.more = more
        self.worker: FakeWorker | None = None

    def __iter__(self) -> Iterator[bytes]:
        connection, request = self.connection, self.request
        worker, _ = connection.start(request)
        self.worker = worker
        for message in itertools.chain((request.data,), self.more):
            data = message if isinstance(message, bytes) else message.join()
            yield connection.finish(worker, replace(request, data=data)).data

    def trailers(self) -> tuple[tuple[str, str | bytes], ...]:
        assert self.worker is not None
        return ((WORKER_KEY, self.worker.identity),)


class AsyncScriptedStream:
    def __init__(self, stream: ScriptedStream) -> None:
        self.stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for reply in self.stream:
            yield reply
            await asyncio.sleep(0)

    async def trailers(self) -> tuple[tuple[str, str | bytes], ...]:
        return self.stream.trailers()


class ScriptedTransport:
    """Opens scripted channels to ``servers``; records every connection and request."""

    def __init__(self, *servers: FakeServer) -> None:
        self.servers = {s.address: s for s in servers}
        self.opened: list[tuple[float, str]] = []  # (time.monotonic(), address)
        self.requests: list[Request] = []
        self._lock = threading.Lock()

    def open(self, address: str) -> ScriptedChannel:
        with self._lock:
            self.opened.append((time.monotonic(), address))
            return ScriptedChannel(self, address)

    def open_async(self, address: str) -> AsyncScriptedChannel:
        with self._lock:
            self.opened.append((time.monotonic(), address))
            return AsyncScriptedChannel(self, address)

    def refuses(self, address: str, timeout: float) -> bool:
        """Nothing listens at an address without a server, or whose server is stopped."""
        server = self.servers.get(address)
        return server is None or not server.up


class AsyncScripted:
    """The asyncio face of a ScriptedTransport (the same world)."""

    def __init__(self, world: ScriptedTransport) -> None:
        self.world = world

    def open(self, address: str) -> AsyncScriptedChannel:
        return self.world.open_async(address)

    async def refuses(self, address: str, timeout: float) -> bool:
        return self.world.refuses(address, timeout)
