"""``AsyncWorkerPool``: the pool core (tms_client.core) carried out with asyncio.

The same core as ``WorkerPool``, so the same decisions; here only the awaits. The event loop
runs one task at a time, so the core needs no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterable
from typing import Any, TypeVar

from tms_client import shm
from tms_client.core import (
    Action,
    Open,
    Plan,
    PoolCore,
    Probe,
    Relay,
    Resolve,
    Search,
    Send,
    Sleep,
    Wait,
)
from tms_client.exceptions import CallError, ClientClosedError
from tms_client.options import ClientOptions
from tms_client.protocol.wire import ImageMessage
from tms_client.targets import resolve
from tms_client.transport import AioTransport, AsyncChannel, AsyncTransport, More, Request
from tms_client.workers import WorkerInfo

__all__ = ["AsyncWorkerPool"]

R = TypeVar("R")


class AsyncWorkerPool:
    """The asyncio twin of tms_client.pool.WorkerPool."""

    def __init__(self, options: ClientOptions, transport: AsyncTransport | None = None) -> None:
        self.options = options
        self.core = PoolCore(options)
        self.transport = transport or AioTransport(
            options.tls, options.max_message_bytes, carry=options.call_streams
        )
        self._discovering = asyncio.Lock()
        self._wake = asyncio.Event()
        self._healer: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<AsyncWorkerPool {self.core!r}>"

    async def start(self) -> None:
        """Wait for the servers, find their workers, and start healing in the background."""
        timeout = self.options.connect_timeout
        await asyncio.gather(
            *(self.run(self.core.find(a, timeout, wait=True)) for a in await self._resolve())
        )
        error = self.core.found_none()
        if error is not None:
            raise error
        self._healer = asyncio.create_task(self.run(self.core.heal()), name="tms-pool-healer")

    async def call(self, request: Request, model: str = "") -> bytes:
        """Send ``request`` to a worker that has ``model``, retrying as the policy says
        (``request.timeout`` bounds all attempts); the reply. See WorkerPool.call."""
        attempt = self.core.first(request, model)
        if attempt is None:
            return await self.run(self.core.call(request, model))
        try:
            reply = await attempt.worker.channel.unary(attempt.request)
        except CallError as error:
            return await self.run(self.core.retry(request, model, attempt, error))
        except BaseException as exc:
            self.core.abandoned(attempt)
            await self._settle(*self.core.pending())
            if self._closed_under(exc):
                raise ClientClosedError() from None
            raise
        data = self.core.answered(attempt, reply)
        closing, wake = self.core.pending()
        if closing or wake:
            await self._settle(closing, wake)
        return data

    async def stream(
        self,
        request: Request,
        more: More | AsyncIterable[bytes | ImageMessage],
        model: str = "",
    ) -> AsyncGenerator[bytes, None]:
        """See WorkerPool.stream; ``more`` may be an async iterable (read on the loop)."""
        plan = self.core.stream(request, model)
        step = self.core.advance(plan)
        while True:
            await self._settle(step.closing, step.wake)
            if step.action is None:
                step.result()
                return
            try:
                if isinstance(step.action, Relay):
                    replies = step.action.channel.stream(step.action.request, more)
                    async with contextlib.aclosing(aiter(replies)) as relayed:
                        async for reply in relayed:
                            yield reply
                    outcome = await replies.trailers()
                else:
                    outcome = await self._carry_out(step.action)
            except BaseException as exc:  # thrown into the plan (GeneratorExit too)
                step = self.core.advance(plan, error=self._ended(exc))
            else:
                step = self.core.advance(plan, outcome)

    async def run(self, plan: Plan[R]) -> R:
        """Carry out ``plan`` to its end; what it returns (or raises)."""
        step = self.core.advance(plan)
        while True:
            await self._settle(step.closing, step.wake)
            if step.action is None:
                return step.result()  # type: ignore[no-any-return]
            try:
                outcome = await self._carry_out(step.action)
            except BaseException as exc:  # thrown into the plan
                step = self.core.advance(plan, error=self._ended(exc))
            else:
                step = self.core.advance(plan, outcome)

    def _closed_under(self, error: BaseException) -> bool:
        """Whether ``error`` is how gRPC ends a call whose channel ``close`` closed: a
        CancelledError in a task that no one cancelled."""
        task = asyncio.current_task()
        return (
            isinstance(error, asyncio.CancelledError)
            and self.core.closed
            and (task is None or not task.cancelling())
        )

    def _ended(self, error: BaseException) -> BaseException:
        """``error``, or ClientClosedError for a call ``close`` ended (see _closed_under)."""
        return ClientClosedError() if self._closed_under(error) else error

    async def _carry_out(self, action: Action) -> Any:
        match action:
            case Send(channel, request):
                return await channel.unary(request)
            case Open(address):
                return self._open(address)
            case Probe(address, timeout):
                return await self.transport.refuses(address, timeout)
            case Sleep(seconds):
                await asyncio.sleep(seconds)
            case Resolve():
                return await self._resolve()
            case Search(timeout):
                # As in WorkerPool: a call waits for a search under way no longer than it may.
                try:
                    async with asyncio.timeout(timeout):
                        await self._discovering.acquire()
                except TimeoutError:
                    return None
                try:
                    await self.run(self.core.discover(timeout))
                finally:
                    self._discovering.release()
            case Wait(seconds):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), seconds)
                self._wake.clear()
        return None

    def _open(self, address: str) -> AsyncChannel:
        channel = self.transport.open(address)
        if not (self.options.shared_memory and shm.available()):
            return channel
        return shm.AsyncSharedMemoryChannel(
            channel, max_bytes=self.options.max_message_bytes, metadata=self.options.metadata
        )

    async def _resolve(self) -> list[str]:
        # A dns:/// name is looked up in a thread, away from the event loop.
        if any(t.startswith("dns:///") for t in self.options.targets):
            return await asyncio.to_thread(resolve, self.options.targets)
        return resolve(self.options.targets)

    async def _settle(self, closing: list[Any], wake: bool) -> None:
        """Close ``closing``, and wake the background search if ``wake``."""
        for channel in closing:
            await channel.close()
        if wake:
            self._wake.set()

    def worker_infos(self) -> list[WorkerInfo]:
        return self.core.worker_infos()

    async def close(self) -> None:
        closing = self.core.close()
        self._wake.set()
        if self._healer is not None:
            self._healer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._healer
        for channel in closing:
            await channel.close()
