"""``WorkerPool``: the pool core (tms_client.core) carried out with threads.

It finds every worker process behind the targets, keeps one connection to each, heals in a
background thread and sends calls to the workers the core picks. What it decides is all in
the core; here are only the transport calls, a lock around the core, and the sleeps.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
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
from tms_client.exceptions import CallError
from tms_client.options import ClientOptions
from tms_client.targets import resolve
from tms_client.transport import Channel, GrpcTransport, More, Request, Transport
from tms_client.workers import WorkerInfo

__all__ = ["WorkerPool"]

R = TypeVar("R")


#: The most ``close`` waits for the background search to end.
CLOSE_WAIT = 1.0


class WorkerPool:
    """Finds the workers behind the targets, keeps them, and sends calls to them; safe to
    share between threads."""

    def __init__(self, options: ClientOptions, transport: Transport | None = None) -> None:
        self.options = options
        self.pid = os.getpid()  # the process that made it
        self.core = PoolCore(options)
        self.transport = transport or GrpcTransport(options.tls, options.max_message_bytes)
        self._lock = threading.Lock()  # guards the core
        self._discovering = threading.Lock()  # one search for workers at a time
        self._wake = threading.Event()
        self._healer: threading.Thread | None = None

    def __repr__(self) -> str:
        with self._lock:
            return f"<WorkerPool {self.core!r}>"

    def start(self) -> None:
        """Wait for the servers (up to the connect timeout), find their workers, and start
        healing in the background. Raises ConnectError when no server answers."""
        addresses = resolve(self.options.targets)
        timeout = self.options.connect_timeout
        with ThreadPoolExecutor(max(1, len(addresses))) as executor:
            finding = [self.core.find(a, timeout, wait=True) for a in addresses]
            list(executor.map(self.run, finding))
        with self._lock:
            error = self.core.found_none()
        if error is not None:
            raise error
        self._healer = threading.Thread(
            target=self.run, args=(self.core.heal(),), name="tms-pool-healer", daemon=True
        )
        self._healer.start()

    def call(self, request: Request, model: str = "") -> bytes:
        """Send ``request`` to a worker that has ``model``, retrying as the policy says
        (``request.timeout`` bounds all attempts); the reply.

        The first attempt is sent without a plan (see PoolCore.first); a plan takes over
        when it fails, or when there is no worker to send it to."""
        with self._lock:
            attempt = self.core.first(request, model)
        if attempt is None:
            return self.run(self.core.call(request, model))
        try:
            reply = attempt.worker.channel.unary(attempt.request)
        except CallError as error:
            return self.run(self.core.retry(request, model, attempt, error))
        except BaseException:
            with self._lock:
                self.core.abandoned(attempt)
                closing, wake = self.core.pending()
            self._settle(closing, wake)
            raise
        with self._lock:
            data = self.core.answered(attempt, reply)
            closing, wake = self.core.pending()
        self._settle(closing, wake)
        return data

    def stream(self, request: Request, more: More, model: str = "") -> Generator[bytes, None, None]:
        """Send ``request``, then each of ``more`` (read by a gRPC thread), to one worker that
        has ``model``; the replies as they come (see PoolCore.stream). Close the iterator to
        end the call early."""
        plan = self.core.stream(request, model)
        result: Any = None
        error: BaseException | None = None
        while True:
            with self._lock:
                step = self.core.advance(plan, result, error)
            self._settle(step.closing, step.wake)
            if step.action is None:
                step.result()
                return
            try:
                if isinstance(step.action, Relay):
                    replies = step.action.channel.stream(step.action.request, more)
                    yield from replies
                    result, error = replies.trailers(), None
                else:
                    result, error = self._carry_out(step.action), None
            except BaseException as exc:  # thrown into the plan (GeneratorExit too)
                result, error = None, exc

    def run(self, plan: Plan[R]) -> R:
        """Carry out ``plan`` to its end; what it returns (or raises)."""
        result: Any = None
        error: BaseException | None = None
        while True:
            with self._lock:
                step = self.core.advance(plan, result, error)
            self._settle(step.closing, step.wake)
            if step.action is None:
                return step.result()  # type: ignore[no-any-return]
            try:
                result, error = self._carry_out(step.action), None
            except BaseException as exc:  # thrown into the plan
                result, error = None, exc

    def _carry_out(self, action: Action) -> Any:
        match action:
            case Send(channel, request):
                return channel.unary(request)
            case Open(address):
                return self._open(address)
            case Probe(address, timeout):
                return self.transport.refuses(address, timeout)
            case Sleep(seconds):
                time.sleep(seconds)
            case Resolve():
                return resolve(self.options.targets)
            case Search(timeout):
                # A call's search waits for one under way (the background's) no longer than
                # the call may: then it finds what that one found, or gives up in time.
                if not self._discovering.acquire(
                    timeout=-1 if timeout is None else max(0, timeout)
                ):
                    return None
                try:
                    self.run(self.core.discover(timeout))
                finally:
                    self._discovering.release()
            case Wait(seconds):
                self._wake.wait(seconds)
                self._wake.clear()
        return None

    def _open(self, address: str) -> Channel:
        channel = self.transport.open(address)
        if not (self.options.shared_memory and shm.available()):
            return channel
        return shm.SharedMemoryChannel(
            channel, max_bytes=self.options.max_message_bytes, metadata=self.options.metadata
        )

    def _settle(self, closing: list[Any], wake: bool) -> None:
        """Close ``closing``, and wake the background search if ``wake``."""
        for channel in closing:
            channel.close()
        if wake:
            self._wake.set()

    def worker_infos(self) -> list[WorkerInfo]:
        with self._lock:
            return self.core.worker_infos()

    def close(self) -> None:
        with self._lock:
            closing = self.core.close()
        self._wake.set()
        if self._healer is not None:
            # It ends at its next step; one waiting on a worker that does not answer (5 s at
            # most) ends on its own, closing what it opened, without holding up the caller.
            self._healer.join(timeout=CLOSE_WAIT)
        for channel in closing:
            channel.close()
