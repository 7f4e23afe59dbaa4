"""The worker pool: one gRPC channel per worker process behind the targets, kept healthy.

A TMS server runs several worker processes on one port (SO_REUSEPORT); the kernel hands each
new TCP connection to one of them. The pool opens connections, each with a subchannel of its
own, and asks each who answered (``GetWorkerInfo``: instance id and pid) until it holds one
connection to every worker of every server, within a bounded number of attempts per address.

Calls go to the worker a balancer picks. A call that fails with a code the retry policy
names is sent again to another worker. The pool heals: a worker whose connection fails
(UNAVAILABLE) or whose connection ends up at another process is dropped, and a background
thread looks for missing workers (restarted ones, a restarted server, new servers behind a
``dns:///`` target) every ``refresh_interval`` seconds, and at once when a worker is dropped.
When no worker is known, a call looks for them itself before giving up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import grpc.aio

from tms.v1 import model_service_pb2
from tms_client.balancers import Balancer, LeastLoaded
from tms_client.calls import WorkerInfo
from tms_client.exceptions import (
    CallError,
    ConnectError,
    TMSError,
    UnavailableError,
    from_rpc_error,
)
from tms_client.protocol.load import read_trailers
from tms_client.protocol.methods import method_path
from tms_client.retry import Attempts, RetryPolicy
from tms_client.targets import parse_targets, resolve
from tms_client.tls import TLS, auth_metadata
from tms_client.workers import Worker, WorkerSet

__all__ = ["REFUSED", "Metadata", "PoolOptions", "WorkerPool"]

log = logging.getLogger("tms_client")

Metadata = tuple[tuple[str, str | bytes], ...]
_WORKER_INFO = method_path("GetWorkerInfo")
_IDENTIFY_TIMEOUT = 5.0  # one GetWorkerInfo while healing
EMPTY_RETRY_GAP = 0.1  # seconds between searches on demand that find no worker
#: Codes with which a server refuses a client's credentials.
REFUSED = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})


class PoolOptions:
    """Settings shared by the sync and asyncio pools (see ModelClient for their meaning)."""

    def __init__(
        self,
        target: str | Sequence[str],
        *,
        connect_timeout: float = 10.0,
        balancer: Balancer | None = None,
        retry: RetryPolicy | None = None,
        max_message_bytes: int = 64 * 1024 * 1024,
        discovery_attempts: int | None = None,
        refresh_interval: float = 2.0,
        tls: TLS | None = None,
        token: str | None = None,
    ) -> None:
        self.targets = parse_targets(target)
        self.tls = tls
        # Read the certificate files once, now; every channel shares the credentials.
        self.credentials = tls.credentials() if tls is not None else None
        #: Sent with every call, discovery and health included.
        self.metadata: Metadata = auth_metadata(token)
        self.connect_timeout = connect_timeout
        self.balancer: Balancer = balancer if balancer is not None else LeastLoaded()
        self.retry = retry if retry is not None else RetryPolicy()
        self.discovery_attempts = discovery_attempts
        self.refresh_interval = refresh_interval
        self.channel_options: list[tuple[str, Any]] = [
            # A private subchannel pool gives every channel its own TCP connection, and so
            # a chance to land on another worker process.
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # A channel belongs to one worker: never let gRPC retry on a new connection.
            ("grpc.enable_retries", 0),
            *(tls.channel_options() if tls is not None else ()),
        ]

    def open_channel(self, address: str) -> grpc.Channel:
        """A new channel (its own connection) to ``address``, with TLS if configured."""
        if self.credentials is None:
            return grpc.insecure_channel(address, options=self.channel_options)
        return grpc.secure_channel(address, self.credentials, options=self.channel_options)

    def open_aio_channel(self, address: str) -> grpc.aio.Channel:
        """As ``open_channel``, for asyncio."""
        if self.credentials is None:
            return grpc.aio.insecure_channel(address, options=self.channel_options)
        return grpc.aio.secure_channel(address, self.credentials, options=self.channel_options)

    def no_server_message(self) -> str:
        """What ConnectError says when no server answered."""
        hint = (
            "is it running, and does it serve TLS (then pass tls=TLS(...))?"
            if self.tls is None
            else "is it running, and do the CA, server name and client certificate fit it?"
        )
        return (
            f"no TMS server answered at {', '.join(self.targets)} "
            f"within {self.connect_timeout:g}s; {hint}"
        )

    def heal_interval(self, complete: bool) -> float:
        """Seconds until the next round of looking for workers: soon while some are missing
        (a restarted worker is usually back within a second), else ``refresh_interval``."""
        return self.refresh_interval if complete else min(self.refresh_interval, 0.25)

    def attempts_for(self, expected: int) -> int:
        """How many connections to open at an address to find ``expected`` workers."""
        if self.discovery_attempts is not None:
            return self.discovery_attempts
        return 4 * expected + 4


class HealLog:
    """Says why background discovery fails: one warning per new reason (a wrong token would
    otherwise fill the log every round), a traceback only for what is not a call error."""

    def __init__(self) -> None:
        self._last: str | None = None

    def failed(self, exc: Exception) -> None:
        if not isinstance(exc, TMSError):
            log.error("worker discovery failed", exc_info=exc)
            return
        reason = str(exc)
        if reason != self._last:
            log.warning("worker discovery failed, will retry: %s", reason)
        self._last = reason

    def succeeded(self) -> None:
        if self._last is not None:
            log.info("worker discovery works again")
        self._last = None


class WorkerPool:
    """Finds the workers behind the targets, keeps them, and sends calls to them."""

    def __init__(self, options: PoolOptions) -> None:
        self.options = options
        self._set = WorkerSet()
        self._lock = threading.Lock()  # guards _set and the workers' counters
        self._discovering = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._healer: threading.Thread | None = None
        self._search_after = 0.0  # no search for workers on demand before this time

    def __repr__(self) -> str:
        with self._lock:
            return f"<WorkerPool targets={list(self.options.targets)} {self._set!r}>"

    # -- finding workers ----------------------------------------------------------------------

    def start(self) -> None:
        """Wait for the servers (up to the connect timeout), find their workers, and start
        healing in the background. Raises ConnectError when no server answers."""
        addresses = resolve(self.options.targets)
        timeout = self.options.connect_timeout
        with ThreadPoolExecutor(max(1, len(addresses))) as executor:
            list(executor.map(lambda a: self._discover(a, timeout, wait=True), addresses))
        if not len(self._set):
            raise ConnectError(self.options.no_server_message())
        self._healer = threading.Thread(target=self._heal, name="tms-pool-healer", daemon=True)
        self._healer.start()

    def _identify(self, address: str, timeout: float, wait: bool) -> Worker | None:
        """Open a connection to ``address`` and ask who answered; None if nobody did.

        A server that refuses the credentials raises (UnauthenticatedError...): waiting
        longer would not help.
        """
        channel = self.options.open_channel(address)
        call: grpc.UnaryUnaryMultiCallable[bytes, Any] = channel.unary_unary(
            _WORKER_INFO,
            request_serializer=None,
            response_deserializer=model_service_pb2.GetWorkerInfoResponse.FromString,
        )
        try:
            info = call(b"", timeout=timeout, wait_for_ready=wait, metadata=self.options.metadata)
        except grpc.RpcError as exc:
            channel.close()
            if from_rpc_error(exc).code in REFUSED:
                raise from_rpc_error(exc) from exc
            log.debug("no worker identified at %s: %s", address, exc)
            return None
        return Worker.from_info(address, info, channel)

    def _discover(self, address: str, timeout: float, *, wait: bool = False) -> None:
        """Open connections to ``address`` until every worker of its server is known.

        With ``wait`` the first connection waits up to ``timeout`` for a server that is
        starting; otherwise an address where nothing listens is given up at once (the
        retry policy, or the next round of healing, tries again later).
        """
        opened = 0
        while opened < self.options.attempts_for(self._set.expected(address) or 1):
            with self._lock:
                if self._set.complete(address) or self._closed.is_set():
                    return
            worker = self._identify(address, timeout, wait)
            opened += 1
            if worker is None:
                return
            wait = False
            with self._lock:
                closing = self._set.add(worker)
            for old in closing:
                self._retire(old)
        log.debug("found only some workers at %s after %d connections", address, opened)

    def discover(self, timeout: float | None = None) -> None:
        """Look for missing workers at every address now (one caller at a time)."""
        timeout = _IDENTIFY_TIMEOUT if timeout is None else max(0.1, timeout)
        with self._discovering:
            with self._lock:
                missing = self._set.missing(resolve(self.options.targets))
            for address in missing:
                self._discover(address, timeout)

    def _heal(self) -> None:
        trouble = HealLog()
        while not self._closed.is_set():
            with self._lock:
                complete = not self._set.missing(resolve(self.options.targets))
            self._wake.wait(self.options.heal_interval(complete))
            self._wake.clear()
            if self._closed.is_set():
                return
            try:
                self.discover()
            except Exception as exc:  # keep healing whatever one round ran into
                trouble.failed(exc)
            else:
                trouble.succeeded()

    def _drop(self, worker: Worker, reason: str) -> None:
        """Forget ``worker`` and look for its successor."""
        with self._lock:
            dropped = self._set.remove(worker)
        if dropped:
            log.info("dropping worker pid %s at %s: %s", worker.pid, worker.address, reason)
            self._wake.set()
        self._retire(worker)

    def _retire(self, worker: Worker) -> None:
        """Close the channel of a worker no longer in the set once its calls have ended."""
        with self._lock:
            worker.retired = True
            idle = worker.in_flight == 0
        if idle:
            worker.channel.close()

    # -- calls --------------------------------------------------------------------------------

    def _pick(self, attempts: Attempts) -> Worker:
        """A worker for the next attempt (one not tried yet if possible), its count raised."""
        worker = self._take(attempts)
        if worker is None:
            # Look for workers here, but not again within EMPTY_RETRY_GAP of a search that
            # found none: callers failing fast must not turn into a storm of connections.
            if time.monotonic() >= self._search_after:
                self.discover(attempts.remaining())
                worker = self._take(attempts)
            if worker is None:
                self._search_after = time.monotonic() + EMPTY_RETRY_GAP
                raise UnavailableError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"no TMS worker reachable at {', '.join(self.options.targets)}",
                )
        attempts.tried.add(worker.key)
        return worker

    def _take(self, attempts: Attempts) -> Worker | None:
        # One lock for choosing and counting, so a worker cannot be dropped (and its channel
        # closed) between the two.
        with self._lock:
            candidates = self._set.candidates(attempts.tried)
            if not candidates:
                return None
            worker = self.options.balancer.pick(candidates)
            worker.in_flight += 1
            worker.calls += 1
            return worker

    def _observe(self, worker: Worker, trailers: Any) -> None:
        identity, report = read_trailers(trailers)
        if report is not None:
            worker.load = report
        if identity is not None and identity != worker.identity:
            # gRPC reconnected this channel and the kernel gave it to another process.
            self._drop(worker, f"its connection now reaches {identity}")

    def _attempt(
        self, worker: Worker, path: str, request: bytes, attempts: Attempts, metadata: Metadata
    ) -> bytes:
        started = time.monotonic()
        try:
            call = worker.methods.get(path)
            if call is None:
                call = worker.methods.setdefault(path, worker.channel.unary_unary(path))
            reply, outcome = call.with_call(request, timeout=attempts.timeout(), metadata=metadata)
            worker.record_latency(time.monotonic() - started, time.monotonic())
        except grpc.RpcError as exc:
            worker.record_latency(time.monotonic() - started, time.monotonic())
            trailers = getattr(exc, "trailing_metadata", None)
            self._observe(worker, trailers() if callable(trailers) else None)
            error = from_rpc_error(exc)
            if error.code == grpc.StatusCode.UNAVAILABLE:
                self._drop(worker, error.details)
            raise error from exc
        finally:
            with self._lock:
                worker.in_flight -= 1
                idle = worker.retired and worker.in_flight == 0
            if idle:
                worker.channel.close()
        self._observe(worker, outcome.trailing_metadata())
        return bytes(reply)

    def call(
        self,
        path: str,
        request: bytes,
        *,
        timeout: float | None,
        metadata: Metadata = (),
    ) -> bytes:
        """Send ``request`` to ``path`` on a worker, retrying as the policy says; the reply."""
        attempts = Attempts(self.options.retry, timeout)
        metadata = self.options.metadata + metadata
        while True:
            try:
                attempts.begin()
                worker = self._pick(attempts)
                return self._attempt(worker, path, request, attempts, metadata)
            except CallError as error:
                time.sleep(attempts.delay_after(error))

    # -- state --------------------------------------------------------------------------------

    @property
    def workers(self) -> list[Worker]:
        with self._lock:
            return self._set.workers()

    def worker_infos(self) -> list[WorkerInfo]:
        with self._lock:
            return [w.info() for w in self._set.workers()]

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        if self._healer is not None:
            self._healer.join(timeout=10)
        with self._lock:
            workers = self._set.workers()
            for worker in workers:
                self._set.remove(worker)
        for worker in workers:
            worker.channel.close()
