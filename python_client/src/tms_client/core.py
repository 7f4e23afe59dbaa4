"""The pool's decisions, apart from its I/O: one core under the thread and asyncio pools.

Everything the pool decides is here, and nothing it does: which worker takes an attempt,
what a reply means (a load report, a worker that turns out to be another process), what an
error means (drop the worker, retry elsewhere after a backoff, give up), when to look for
workers and how often to heal. No I/O, no locks, no sleeping (after h11 and httpcore).

Each job is a *plan*: a generator that yields the actions it needs carried out (ask whether
anything listens at an address, open a connection, send a request, sleep, look for workers,
wait to be woken) and receives their results, or their exceptions, back (a stream's plan,
``stream``, places it on a worker and has the pool relay its replies: ``Relay``).
``WorkerPool`` (threads) and ``AsyncWorkerPool`` (asyncio) run plans with ``advance`` and
carry out the actions with their own transport, locks and sleeps; the core's state changes
only inside its methods, so a lock held around each call of one guards everything. Tests
run the same pools over a scripted transport, in milliseconds.

A call's first attempt needs no plan: ``first`` picks its worker, the pool sends it, and
``answered`` takes the reply in. Only when that attempt fails does a plan (``retry``) take
the call over, with its backoff, other workers and deadline, exactly as ``call`` would.

What a pool does (see tms_client.pool): a TMS server runs several worker processes on one
port (SO_REUSEPORT), and the kernel hands each new connection to one of them. The pool opens
connections and asks each who answered (``GetWorkerInfo``) until it holds one to every
worker of every server. Calls go to the worker the balancer picks; a call that fails with a
code the retry policy names is sent again, to another worker. A worker whose connection
fails (UNAVAILABLE), or now reaches another process, is dropped, and the pool looks for
missing workers in the background every ``refresh_interval`` seconds (at once after a drop),
and on demand, at most every ``EMPTY_RETRY_GAP`` seconds, when a call finds none. When a
worker's load report says it has done a reload (which may change the models a worker
serves), the workers of its server are asked again which they serve, in the background.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Generator
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import grpc

from tms.v1 import model_service_pb2
from tms_client.balancers import Balancer, LeastLoaded
from tms_client.exceptions import (
    CallError,
    ClientClosedError,
    ConnectError,
    TMSError,
    UnavailableError,
)
from tms_client.options import ClientOptions
from tms_client.protocol.load import read_trailers
from tms_client.protocol.methods import method_path
from tms_client.retry import Attempts
from tms_client.transport import Metadata, Reply, Request
from tms_client.workers import Key, Worker, WorkerInfo, WorkerSet

__all__ = [
    "EMPTY_RETRY_GAP",
    "PROBE_TIMEOUT",
    "REFUSED",
    "Action",
    "Attempt",
    "Open",
    "Plan",
    "PoolCore",
    "Probe",
    "Relay",
    "Resolve",
    "Search",
    "Send",
    "Sleep",
    "Step",
    "Wait",
    "refused_error",
]

log = logging.getLogger("tms_client")

R = TypeVar("R")

WORKER_INFO = method_path("GetWorkerInfo")
IDENTIFY_TIMEOUT = 5.0  # one GetWorkerInfo while healing
PROBE_TIMEOUT = 2.0  # the most a start waits to learn whether an address refuses connections
#: The start's wait for one connection's worker to answer while half its connect timeout
#: would still be left after it (then the last connection gets the rest): a stalled worker
#: (stopped, wedged) costs a start about a second, and a slow but live server (far away,
#: overloaded) is still answered.
ANSWER_WAIT = 1.0
EMPTY_RETRY_GAP = 0.1  # seconds between searches on demand that find no worker
#: Codes with which a server refuses a client's credentials: waiting would not help.
REFUSED = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})


def refused_error(addresses: list[str]) -> ConnectError:
    """The error for a start where every address refused the connection."""
    return ConnectError(
        f"connection refused at {', '.join(addresses)}: is tms-server running?",
        refused=addresses,
    )


# -- the actions a plan asks for ----------------------------------------------------------------


@dataclass(frozen=True)
class Open:
    """Open a connection (a transport channel) to ``address``; the result is the channel."""

    address: str


@dataclass(frozen=True)
class Probe:
    """Learn whether ``address`` refuses connections (nothing listens there) within
    ``timeout`` seconds; the result is True if it does (see Transport.refuses)."""

    address: str
    timeout: float


@dataclass(frozen=True)
class Send:
    """Send ``request`` on ``channel``; the result is the transport's Reply, or CallError."""

    channel: Any
    request: Request


@dataclass(frozen=True)
class Relay:
    """Open a streaming call of ``request`` on ``channel`` (the pool sends the caller's
    messages after it) and relay its replies to the caller as they come; the result is its
    trailers once it has ended, or its CallError."""

    channel: Any
    request: Request


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Search:
    """Look for missing workers now: run the plan ``discover(timeout)``, one at a time."""

    timeout: float | None


@dataclass(frozen=True)
class Wait:
    """Wait until woken (a worker was dropped) or ``seconds`` have passed."""

    seconds: float


@dataclass(frozen=True)
class Resolve:
    """Look up the addresses behind the targets (``dns:///`` names); the result is a list."""


Action = Open | Probe | Send | Relay | Sleep | Search | Wait | Resolve
Plan = Generator[Action, Any, R]


class Step(NamedTuple):
    """Where a plan stands after ``advance``, and what the pool must do besides."""

    action: Action | None  # the next action; None when the plan has ended
    value: Any  # what the plan returned
    error: BaseException | None  # what the plan raised
    closing: list[Any]  # channels to close now (their workers are gone, their calls done)
    wake: bool  # wake the background search: a worker was dropped

    def result(self) -> Any:
        """What the ended plan returned; raises what it raised."""
        if self.error is not None:
            raise self.error
        return self.value


class Attempt(NamedTuple):
    """The first attempt of a call, made by the pool without a plan (see PoolCore.first)."""

    worker: Worker
    request: Request  # as sent to the worker
    started: float  # the clock when the call began


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


class PoolCore:
    """The workers a pool knows and every decision about them."""

    def __init__(self, options: ClientOptions, clock: Callable[[], float] = time.monotonic) -> None:
        self.options = options
        self.balancer: Balancer = options.balancer if options.balancer else LeastLoaded()
        self.clock = clock
        self.workers = WorkerSet()
        self.closed = False
        self._search_after = 0.0  # no search for workers on demand before this time
        self._refused: dict[str, bool] = {}  # address -> whether it refused, at start
        self._changed: set[Worker] = set()  # workers to ask for their models (a reload)
        self._reloads: dict[str, int] = {}  # server instance id -> its last reload seen
        self._closing: list[Any] = []
        self._wake = False

    def __repr__(self) -> str:
        return f"targets={list(self.options.targets)} {self.workers!r}"

    def advance(
        self, plan: Plan[Any], result: Any = None, error: BaseException | None = None
    ) -> Step:
        """Run ``plan`` on to its next action, handing it the last action's result (or
        throwing in its error); never raises."""
        action: Action | None = None
        value: Any = None
        raised: BaseException | None = None
        try:
            action = plan.send(result) if error is None else plan.throw(error)
        except StopIteration as done:
            value = done.value
        except BaseException as exc:  # handed to the pool, which raises it
            raised = exc
        closing, wake = self.pending()
        return Step(action, value, raised, closing, wake)

    def pending(self) -> tuple[list[Any], bool]:
        """What the pool must do besides, since it last asked: the channels to close, and
        whether to wake the background search (see Step)."""
        closing, self._closing = self._closing, []
        wake, self._wake = self._wake, False
        return closing, wake

    # -- finding workers --------------------------------------------------------------------

    def found_none(self) -> ConnectError | None:
        """After the first search: the error to raise when no server answered."""
        if len(self.workers):
            return None
        if self._refused and all(self._refused.values()):
            return refused_error(list(self._refused))
        hint = (
            "is it running, is that its gRPC port (not its --http-port), and does it serve "
            "TLS (then pass tls=TLS(...))?"
            if self.options.tls is None
            else "is it running, and do the CA, server name and client certificate fit it?"
        )
        return ConnectError(
            f"no TMS server answered at {', '.join(self.options.targets)} "
            f"within {self.options.connect_timeout:g}s; {hint}"
        )

    def identify(self, address: str, timeout: float, wait: bool) -> Plan[Worker | None]:
        """Open a connection to ``address`` and ask who answered; None if nobody did.

        A server that refuses the credentials raises (UnauthenticatedError...)."""
        channel = yield Open(address)
        request = Request(WORKER_INFO, b"", timeout, self.options.metadata, wait)
        try:
            reply = yield Send(channel, request)
        except CallError as error:
            self._closing.append(channel)
            if error.code in REFUSED:
                raise
            log.debug("no worker identified at %s: %s", address, error)
            return None
        info = model_service_pb2.GetWorkerInfoResponse.FromString(reply.data)
        return Worker.from_info(address, info, channel)

    def find(self, address: str, timeout: float, *, wait: bool = False) -> Plan[None]:
        """Open connections to ``address`` until every worker of its server is known.

        With ``wait`` (the client's start) an address that refuses connections is given
        up at once, unless the options say ``wait_for_server``, the first connection waits
        for the server to answer, and more connections may be opened (see _attempts_for),
        all within ``timeout``. A connection is waited for ANSWER_WAIT seconds while half
        of ``timeout`` would be left after it, the last one for the rest; when it is not
        answered (its worker is stalled), the start opens another while no worker of the
        address is known, and stops there once one is (the background search finds the
        rest). Otherwise an address where nothing listens, or a connection not answered in
        ``timeout``, ends the search (the retry policy, or the next round of healing, tries
        again later)."""
        start = wait
        deadline = self.clock() + timeout
        if wait and not self.options.wait_for_server:
            self._refused[address] = yield Probe(address, min(timeout, PROBE_TIMEOUT))
            if self._refused[address]:
                return
        opened = 0
        while opened < self._attempts_for(self.workers.expected(address) or 1, start):
            if self.workers.complete(address) or self.closed:
                return
            patience = timeout
            if start:
                left = deadline - self.clock()
                if left <= 0:
                    break
                patience = ANSWER_WAIT if left - ANSWER_WAIT >= timeout / 2 else left
            worker = yield from self.identify(address, patience, wait)
            opened += 1
            if worker is None:
                if not start or self.workers.expected(address) is not None:
                    return
                continue  # nothing known here yet: another connection may reach a live worker
            wait = False
            for old in self.workers.add(worker):
                self._retire(old)
        log.debug("found only some workers at %s after %d connections", address, opened)

    def _attempts_for(self, expected: int, start: bool) -> int:
        """How many connections to open at an address to find ``expected`` workers.

        The kernel hands each new connection to a worker at random, so a few more than
        ``expected`` usually find them all. The client's start opens up to eight per worker
        and eight more: a worker is missed in about one start in 100,000 at 3 workers, one
        in 2,000 at 8. A background search opens half that: it runs again soon while
        workers are missing, and a worker that is not listening (a restarting one) costs
        it every connection."""
        if self.options.discovery_attempts is not None:
            return self.options.discovery_attempts
        return (8 if start else 4) * (expected + 1)

    def discover(self, timeout: float | None = None) -> Plan[None]:
        """Look for missing workers at every address."""
        timeout = IDENTIFY_TIMEOUT if timeout is None else max(0.1, timeout)
        addresses = yield Resolve()
        for address in self.workers.missing(addresses):
            yield from self.find(address, timeout)

    def heal(self) -> Plan[None]:
        """The background search, until the pool closes: soon while workers are missing (a
        restarted worker is usually back within a second), else every refresh_interval."""
        trouble = HealLog()
        interval = self.options.refresh_interval
        while True:
            complete = not self.workers.missing((yield Resolve()))
            yield Wait(interval if complete else min(interval, 0.25))
            if self.closed:
                return
            try:
                yield Search(None)
                yield from self._follow_models()
            except Exception as exc:  # keep healing whatever one round ran into
                trouble.failed(exc)
            else:
                trouble.succeeded()

    def _follow_models(self) -> Plan[None]:
        """Ask each worker of a server that has reloaded which models it serves now. One that
        does not say, or has not done the server's last reload yet, is asked again next
        round."""
        for worker in list(self._changed):
            if worker.retired:  # its channel closes once its calls end: ask no more
                self._changed.discard(worker)
                continue
            request = Request(WORKER_INFO, b"", IDENTIFY_TIMEOUT, self.options.metadata)
            worker.in_flight += 1  # its channel stays open meanwhile
            try:
                reply = yield Send(worker.channel, request)
            except CallError as error:
                self._failed(worker, error)
                continue
            finally:
                self._done(worker)
            info = model_service_pb2.GetWorkerInfoResponse.FromString(reply.data)
            if (info.instance_id, info.pid) == worker.key:
                self.workers.follow(worker, info)
                log.debug("worker pid %s at %s serves %s", worker.pid, worker.address, info.models)
            if worker.reload >= self._reloads.get(worker.instance_id, 0):
                self._changed.discard(worker)
            self._observe(worker, reply.trailers)

    def _reloaded(self, worker: Worker, reload: int) -> None:
        """``worker`` says it has done reload number ``reload``, after it said which models
        it serves: have the background search ask it at once (_follow_models), and, the first
        time a server says so, all its workers (a worker asked before it had done the reload
        is asked again when its own answers say it has)."""
        instance_id = worker.instance_id
        if reload > self._reloads.get(instance_id, 0):
            self._reloads[instance_id] = reload
            self._changed.update(w for w in self.workers.workers() if w.instance_id == instance_id)
        self._changed.add(worker)
        self._wake = True

    def _drop(self, worker: Worker, reason: str) -> None:
        """Forget ``worker`` and look for its successor."""
        if self.workers.remove(worker):
            log.info("dropping worker pid %s at %s: %s", worker.pid, worker.address, reason)
            self._wake = True
        self._changed.discard(worker)
        self._retire(worker)

    def _retire(self, worker: Worker) -> None:
        """Close the channel of a worker no longer known once its calls have ended."""
        worker.retired = True
        if worker.in_flight == 0:
            self._closing.append(worker.channel)

    # -- calls ------------------------------------------------------------------------------

    def call(self, request: Request, model: str = "") -> Plan[bytes]:
        """Send ``request`` to a worker that has ``model``, retrying as the policy says
        (``request.timeout`` bounds all attempts); the reply."""
        attempts = Attempts(self.options.retry, request.timeout, self.clock)
        return (yield from self._attempts(request, model, attempts))

    def first(self, request: Request, model: str = "") -> Attempt | None:
        """The first attempt of ``call``, made without a plan: most calls need no other,
        and running a plan would cost a small call a good part of its time. The worker is
        taken (its count raised) as ``call`` takes it; the pool sends ``attempt.request``
        on its channel and hands the reply to ``answered`` or, on a CallError, runs the
        plan ``retry``, which goes on as ``call`` would.

        None when only a plan can go on: no worker is known (``call`` looks for one) or
        no time is left (``call`` raises DeadlineExceededError)."""
        timeout = Attempts.limit(self.options.retry, request.timeout)
        if timeout is not None and timeout <= 0:
            return None
        worker = self._take((), model)
        if worker is None:
            return None
        started = self.clock()
        metadata = self.options.metadata + request.metadata
        if timeout != request.timeout or metadata is not request.metadata or request.wait_for_ready:
            request = Request(request.path, request.data, timeout, metadata)
        return Attempt(worker, request, started)

    def answered(self, attempt: Attempt, reply: Reply) -> bytes:
        """The reply to ``attempt``, what it says of its worker taken in (see ``first``)."""
        worker = attempt.worker
        self._done(worker)
        self._answered(worker, attempt.started, reply.trailers)
        return bytes(reply.data)

    def abandoned(self, attempt: Attempt) -> None:
        """``attempt`` ended without an answer or a CallError (the caller was interrupted)."""
        self._done(attempt.worker)

    def retry(
        self, request: Request, model: str, attempt: Attempt, error: CallError
    ) -> Plan[bytes]:
        """The rest of ``call(request, model)`` after its first ``attempt`` (see ``first``)
        failed with ``error``: as ``call`` goes on after a failed attempt."""
        self._attempt_failed(attempt.worker, attempt.started, error)
        self._done(attempt.worker)
        attempts = Attempts(self.options.retry, request.timeout, self.clock, attempt.started)
        attempts.number = 1
        attempts.tried.add(attempt.worker.key)
        yield Sleep(attempts.delay_after(error))
        return (yield from self._attempts(request, model, attempts))

    def _attempts(self, request: Request, model: str, attempts: Attempts) -> Plan[bytes]:
        metadata = self.options.metadata + request.metadata
        while True:
            self.check_open()  # a retry ends once the client is closed
            try:
                attempts.begin()
                worker = self._take(attempts.tried, model)
                if worker is None:
                    worker = yield from self._search(attempts, model)
                attempts.tried.add(worker.key)
                attempt = Request(request.path, request.data, attempts.timeout(), metadata)
                return (yield from self._attempt(worker, attempt))
            except CallError as error:
                yield Sleep(attempts.delay_after(error))

    def _search(self, attempts: Attempts, model: str) -> Plan[Worker]:
        """When no worker is known: look for workers, but not again within EMPTY_RETRY_GAP
        of a search that found none (callers failing fast must not turn into a storm of
        connections); UnavailableError when there is still none."""
        worker = None
        if self.clock() >= self._search_after:
            yield Search(attempts.remaining())
            worker = self._take(attempts.tried, model)
        if worker is None:
            self._search_after = self.clock() + EMPTY_RETRY_GAP
            raise UnavailableError(
                grpc.StatusCode.UNAVAILABLE,
                f"no TMS worker reachable at {', '.join(self.options.targets)}",
            )
        return worker

    def _take(self, tried: Collection[Key], model: str) -> Worker | None:
        """A worker for the next attempt (one not tried yet if possible), its count raised."""
        candidates = self.workers.candidates(tried, model)
        if not candidates:
            return None
        worker = self.balancer.pick(candidates)
        worker.in_flight += 1
        worker.calls += 1
        return worker

    def _attempt(self, worker: Worker, request: Request) -> Plan[bytes]:
        started = self.clock()
        try:
            reply = yield Send(worker.channel, request)
        except CallError as error:
            self._attempt_failed(worker, started, error)
            raise
        finally:
            self._done(worker)
        self._answered(worker, started, reply.trailers)
        return bytes(reply.data)

    def _answered(self, worker: Worker, started: float, trailers: Metadata) -> None:
        """What an answer says of its worker: its latency and load, whether it moved."""
        now = self.clock()
        worker.record_latency(now - started, now)
        self._observe(worker, trailers)

    def _attempt_failed(self, worker: Worker, started: float, error: CallError) -> None:
        now = self.clock()
        worker.record_latency(now - started, now)
        self._failed(worker, error)

    def stream(self, request: Request, model: str = "") -> Plan[None]:
        """Place a streaming call on one worker that has ``model`` and relay it there
        (``request.timeout`` bounds the whole stream).

        A stream stays on the worker it was placed on, and is not retried: its replies have
        gone to the caller as they came, and the model may keep state for it. While it lasts
        it counts as one call in flight of its worker, so the balancer spreads streams; when
        it fails with UNAVAILABLE the worker is dropped, as after any call."""
        self.check_open()
        attempts = Attempts(self.options.retry, request.timeout, self.clock)
        attempts.begin()
        worker = self._take(attempts.tried, model)
        if worker is None:
            worker = yield from self._search(attempts, model)
        metadata = self.options.metadata + request.metadata
        relayed = Request(request.path, request.data, request.timeout, metadata)
        try:
            trailers = yield Relay(worker.channel, relayed)
        except CallError as error:
            self._failed(worker, error)
            if self.closed and error.code == grpc.StatusCode.CANCELLED:
                raise ClientClosedError() from None  # close() closed its channel
            raise
        finally:
            self._done(worker)
        self._observe(worker, trailers)

    def check_open(self) -> None:
        """ClientClosedError once the pool is closed."""
        if self.closed:
            raise ClientClosedError()

    def _failed(self, worker: Worker, error: CallError) -> None:
        """What a failed call says of its worker: its load, and whether it is gone."""
        self._observe(worker, error.trailers)
        if error.code == grpc.StatusCode.UNAVAILABLE:
            self._drop(worker, error.details)

    def _done(self, worker: Worker) -> None:
        """A call of ``worker`` is over: close its channel if it was retired meanwhile."""
        worker.in_flight -= 1
        if worker.retired and worker.in_flight == 0:
            self._closing.append(worker.channel)

    def _observe(self, worker: Worker, trailers: Metadata) -> None:
        identity, report = read_trailers(trailers)
        if report is not None:
            worker.load = report
            if report.reload > worker.reload:
                self._reloaded(worker, report.reload)
        if identity is not None and identity != worker.identity:
            # The transport reconnected this channel and reached another process.
            self._drop(worker, f"its connection now reaches {identity}")

    # -- state ------------------------------------------------------------------------------

    def worker_infos(self) -> list[WorkerInfo]:
        self.check_open()
        return [w.info() for w in self.workers.workers()]

    def close(self) -> list[Any]:
        """Forget every worker; the channels to close."""
        self.closed = True
        workers = self.workers.workers()
        for worker in workers:
            self.workers.remove(worker)
        return [w.channel for w in workers]
