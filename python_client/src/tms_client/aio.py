"""``AsyncModelClient``: the ModelClient API for asyncio services, on ``grpc.aio``.

It shares everything but the waiting with the sync client: the calls (tms_client.calls), the
pool's bookkeeping (WorkerSet), balancers, retry policy and load reports. Only the I/O of the
pool is written again here, with ``await``.

    async with AsyncModelClient("face", "localhost:50051") as face:
        result = await face.run_image(image)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio

from tms.v1 import model_service_pb2
from tms_client import calls
from tms_client.balancers import Balancer
from tms_client.calls import ImageToImageResult, ModelInfo, WorkerInfo
from tms_client.exceptions import (
    CallError,
    ConnectError,
    ModelNotFoundError,
    UnavailableError,
    from_rpc_error,
)
from tms_client.images import ImageInput
from tms_client.pool import EMPTY_RETRY_GAP, REFUSED, HealLog, Metadata, PoolOptions
from tms_client.protocol.load import read_trailers
from tms_client.protocol.methods import method_path
from tms_client.retry import Attempts, RetryPolicy
from tms_client.targets import resolve
from tms_client.tls import TLS
from tms_client.workers import Worker, WorkerSet

__all__ = ["AsyncModelClient", "AsyncWorkerPool"]

log = logging.getLogger("tms_client")

R = TypeVar("R")
_WORKER_INFO = method_path("GetWorkerInfo")
_IDENTIFY_TIMEOUT = 5.0


class AsyncWorkerPool:
    """The asyncio twin of tms_client.pool.WorkerPool (see there for what it does)."""

    def __init__(self, options: PoolOptions) -> None:
        self.options = options
        self._set = WorkerSet()
        self._discovering = asyncio.Lock()
        self._wake = asyncio.Event()
        self._closed = False
        self._healer: asyncio.Task[None] | None = None
        self._search_after = 0.0

    def __repr__(self) -> str:
        return f"<AsyncWorkerPool targets={list(self.options.targets)} {self._set!r}>"

    async def start(self) -> None:
        """Wait for the servers, find their workers, and start healing in the background."""
        addresses = resolve(self.options.targets)
        timeout = self.options.connect_timeout
        await asyncio.gather(
            *(self._discover(address, timeout, wait=True) for address in addresses)
        )
        if not len(self._set):
            raise ConnectError(self.options.no_server_message())
        self._healer = asyncio.create_task(self._heal(), name="tms-pool-healer")

    async def _identify(self, address: str, timeout: float, wait: bool) -> Worker | None:
        channel = self.options.open_aio_channel(address)
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, Any] = channel.unary_unary(
            _WORKER_INFO,
            request_serializer=None,
            response_deserializer=model_service_pb2.GetWorkerInfoResponse.FromString,
        )
        try:
            info = await call(
                b"", timeout=timeout, wait_for_ready=wait, metadata=self.options.metadata
            )
        except grpc.RpcError as exc:
            await channel.close()
            if from_rpc_error(exc).code in REFUSED:
                raise from_rpc_error(exc) from exc
            log.debug("no worker identified at %s: %s", address, exc)
            return None
        return Worker.from_info(address, info, channel)

    async def _discover(self, address: str, timeout: float, *, wait: bool = False) -> None:
        opened = 0
        while opened < self.options.attempts_for(self._set.expected(address) or 1):
            if self._set.complete(address) or self._closed:
                return
            worker = await self._identify(address, timeout, wait)
            opened += 1
            if worker is None:
                return
            wait = False
            for old in self._set.add(worker):
                await self._retire(old)
        log.debug("found only some workers at %s after %d connections", address, opened)

    async def discover(self, timeout: float | None = None) -> None:
        """Look for missing workers at every address now (one task at a time)."""
        timeout = _IDENTIFY_TIMEOUT if timeout is None else max(0.1, timeout)
        async with self._discovering:
            for address in self._set.missing(resolve(self.options.targets)):
                await self._discover(address, timeout)

    async def _heal(self) -> None:
        trouble = HealLog()
        while True:
            complete = not self._set.missing(resolve(self.options.targets))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.options.heal_interval(complete))
            self._wake.clear()
            if self._closed:
                return
            try:
                await self.discover()
            except Exception as exc:  # keep healing whatever one round ran into
                trouble.failed(exc)
            else:
                trouble.succeeded()

    async def _drop(self, worker: Worker, reason: str) -> None:
        if self._set.remove(worker):
            log.info("dropping worker pid %s at %s: %s", worker.pid, worker.address, reason)
            self._wake.set()
        await self._retire(worker)

    async def _retire(self, worker: Worker) -> None:
        worker.retired = True
        if worker.in_flight == 0:
            await worker.channel.close()

    async def _pick(self, attempts: Attempts) -> Worker:
        candidates = self._set.candidates(attempts.tried)
        if not candidates:
            if time.monotonic() >= self._search_after:  # see WorkerPool._pick
                await self.discover(attempts.remaining())
                candidates = self._set.candidates(attempts.tried)
            if not candidates:
                self._search_after = time.monotonic() + EMPTY_RETRY_GAP
                raise UnavailableError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"no TMS worker reachable at {', '.join(self.options.targets)}",
                )
        worker = self.options.balancer.pick(candidates)
        worker.in_flight += 1
        worker.calls += 1
        attempts.tried.add(worker.key)
        return worker

    async def _observe(self, worker: Worker, trailers: Any) -> None:
        identity, report = read_trailers(trailers)
        if report is not None:
            worker.load = report
        if identity is not None and identity != worker.identity:
            await self._drop(worker, f"its connection now reaches {identity}")

    async def _attempt(
        self, worker: Worker, path: str, request: bytes, attempts: Attempts, metadata: Metadata
    ) -> bytes:
        started = time.monotonic()
        try:
            method = worker.methods.get(path)
            if method is None:
                method = worker.methods.setdefault(path, worker.channel.unary_unary(path))
            call = method(request, timeout=attempts.timeout(), metadata=metadata)
            reply = await call
            worker.record_latency(time.monotonic() - started, time.monotonic())
            trailers = await call.trailing_metadata()
        except grpc.RpcError as exc:
            worker.record_latency(time.monotonic() - started, time.monotonic())
            error = from_rpc_error(exc)
            if isinstance(exc, grpc.aio.AioRpcError):
                await self._observe(worker, exc.trailing_metadata())
            if error.code == grpc.StatusCode.UNAVAILABLE:
                await self._drop(worker, error.details)
            raise error from exc
        finally:
            worker.in_flight -= 1
            if worker.retired and worker.in_flight == 0:
                await worker.channel.close()
        await self._observe(worker, trailers)
        return bytes(reply)

    async def call(
        self, path: str, request: bytes, *, timeout: float | None, metadata: Metadata = ()
    ) -> bytes:
        """Send ``request`` to ``path`` on a worker, retrying as the policy says; the reply."""
        attempts = Attempts(self.options.retry, timeout)
        metadata = self.options.metadata + metadata
        while True:
            try:
                attempts.begin()
                worker = await self._pick(attempts)
                return await self._attempt(worker, path, request, attempts, metadata)
            except CallError as error:
                await asyncio.sleep(attempts.delay_after(error))

    def worker_infos(self) -> list[WorkerInfo]:
        return [w.info() for w in self._set.workers()]

    async def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._healer is not None:
            self._healer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._healer
        for worker in self._set.workers():
            self._set.remove(worker)
            await worker.channel.close()


class AsyncModelClient:
    """ModelClient for asyncio: the same options and methods, each awaited.

    Connecting waits for the servers, so it happens in ``await client.start()`` or
    ``async with AsyncModelClient(...)``; the first call starts a client not started yet.
    """

    def __init__(
        self,
        model: str,
        target: str | Sequence[str],
        *,
        connect_timeout: float = 10.0,
        timeout: float | None = 60.0,
        balancer: Balancer | None = None,
        retry: RetryPolicy | None = None,
        max_message_mb: int = 64,
        discovery_attempts: int | None = None,
        refresh_interval: float = 2.0,
        tls: TLS | None = None,
        token: str | None = None,
    ) -> None:
        self.model = model
        self.timeout = timeout
        self._options = PoolOptions(
            target,
            connect_timeout=connect_timeout,
            balancer=balancer,
            retry=retry,
            max_message_bytes=max_message_mb * 1024 * 1024,
            discovery_attempts=discovery_attempts,
            refresh_interval=refresh_interval,
            tls=tls,
            token=token,
        )
        self._pool: AsyncWorkerPool | None = None

    def __repr__(self) -> str:
        return f"<AsyncModelClient model={self.model!r} pool={self._pool!r}>"

    @property
    def target(self) -> str:
        return ", ".join(self._options.targets)

    async def start(self) -> None:
        """Wait for the servers and connect to their workers (ConnectError after the timeout)."""
        if self._pool is None:
            pool = AsyncWorkerPool(self._options)
            await pool.start()
            self._pool = pool

    async def __aenter__(self) -> AsyncModelClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every connection and stop looking for workers."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _send(self, call: calls.Call[R]) -> R:
        await self.start()
        assert self._pool is not None
        return call.parse(await self._pool.call(call.path, call.request, timeout=self.timeout))

    async def run_image(
        self, image: ImageInput, args: Mapping[str, Any] | None = None, *, color: str | None = "bgr"
    ) -> Any:
        """See ModelClient.run_image."""
        return await self._send(calls.run_image(self.model, image, args, color))

    async def run_images(
        self,
        images: Sequence[ImageInput],
        args: Mapping[str, Any] | None = None,
        *,
        color: str | None = "bgr",
    ) -> list[Any]:
        """See ModelClient.run_images."""
        return await self._send(calls.run_images(self.model, images, args, color))

    async def run_image_to_image(
        self,
        images: ImageInput | Sequence[ImageInput],
        args: Mapping[str, Any] | None = None,
        *,
        color: str | None = "bgr",
        output_color: str | None = None,
        png: bool = False,
    ) -> ImageToImageResult:
        """See ModelClient.run_image_to_image."""
        return await self._send(
            calls.run_image_to_image(
                self.model, images, args, color=color, output_color=output_color, png=png
            )
        )

    async def run_text(self, text: str, args: Mapping[str, Any] | None = None) -> Any:
        """See ModelClient.run_text."""
        return await self._send(calls.run_text(self.model, text, args))

    async def run_texts(
        self, texts: Sequence[str], args: Mapping[str, Any] | None = None
    ) -> list[Any]:
        """See ModelClient.run_texts."""
        return await self._send(calls.run_texts(self.model, texts, args))

    async def info(self) -> ModelInfo:
        """See ModelClient.info."""
        return await self._send(calls.info(self.model))

    async def list_models(self) -> list[ModelInfo]:
        """See ModelClient.list_models."""
        return await self._send(calls.list_models())

    async def health(self, service: str | None = None) -> str:
        """See ModelClient.health."""
        try:
            return await self._send(calls.health(self.model if service is None else service))
        except ModelNotFoundError:
            return "SERVICE_UNKNOWN"

    def workers(self) -> list[WorkerInfo]:
        """See ModelClient.workers."""
        return [] if self._pool is None else self._pool.worker_infos()
