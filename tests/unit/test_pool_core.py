"""The pool's behaviour, over a scripted transport: the unit twins of tests/test_resilience.py.

Each scenario runs against both pools, ``WorkerPool`` (threads) and ``AsyncWorkerPool``
(asyncio), which carry out the same core (tms_client.core); the first test drives the core
by hand, with no pool at all. Together they take well under two seconds.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import grpc
import pytest

from tests.scripted import WORKER_INFO, AsyncScripted, FakeServer, ScriptedTransport
from tms.v1 import model_service_pb2
from tms_client import (
    CallError,
    ClientOptions,
    ConnectError,
    LeastLoaded,
    RetryPolicy,
    RoundRobin,
    UnauthenticatedError,
    UnavailableError,
    core,
)
from tms_client.aio_pool import AsyncWorkerPool
from tms_client.core import Open, PoolCore, Probe, Search, Send, Sleep
from tms_client.exceptions import from_code
from tms_client.pool import WorkerPool
from tms_client.protocol.methods import method_path
from tms_client.transport import Reply, Request
from tms_client.workers import WorkerInfo

T = TypeVar("T")
PATH = method_path("RunText")
STREAM = method_path("RunImageStream")
#: Quick retries, so that a scenario with several takes milliseconds.
FAST_RETRY = RetryPolicy(initial_backoff=0.001, max_backoff=0.005)


class Threads:
    """A WorkerPool over the scripted world."""

    def __init__(self, world: ScriptedTransport, options: ClientOptions) -> None:
        self.pool = WorkerPool(options, world)
        self.pool.start()

    def call(self, data: bytes = b"x", timeout: float | None = 5.0, model: str = "") -> bytes:
        return self.pool.call(Request(PATH, data, timeout), model)

    def workers(self) -> list[WorkerInfo]:
        return self.pool.worker_infos()

    def stream(self, messages: list[bytes], model: str = "") -> list[bytes]:
        request = Request(STREAM, messages[0], 5.0)
        return list(self.pool.stream(request, messages[1:], model))

    def close(self) -> None:
        self.pool.close()


class Asyncio:
    """An AsyncWorkerPool over the scripted world, on an event loop in a thread of its own
    (so its healer runs between the test's calls)."""

    def __init__(self, world: ScriptedTransport, options: ClientOptions) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.pool = AsyncWorkerPool(options, AsyncScripted(world))
        try:
            self._run(self.pool.start())
        except BaseException:
            self.close()
            raise

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=10)

    def call(self, data: bytes = b"x", timeout: float | None = 5.0, model: str = "") -> bytes:
        return self._run(self.pool.call(Request(PATH, data, timeout), model))

    def workers(self) -> list[WorkerInfo]:
        async def infos() -> list[WorkerInfo]:
            return self.pool.worker_infos()

        return self._run(infos())

    def stream(self, messages: list[bytes], model: str = "") -> list[bytes]:
        async def replies() -> list[bytes]:
            request = Request(STREAM, messages[0], 5.0)
            return [r async for r in self.pool.stream(request, messages[1:], model)]

        return self._run(replies())

    def close(self) -> None:
        if self.loop.is_running():
            self._run(self.pool.close())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
        self.loop.close()


Pool = Threads | Asyncio
MakePool = Callable[..., Pool]


@pytest.fixture(params=["threads", "asyncio"])
def make_pool(request: pytest.FixtureRequest) -> Iterator[MakePool]:
    """``make_pool(world, **options)``: a started pool of the parametrized kind."""
    pools: list[Pool] = []
    kind = Threads if request.param == "threads" else Asyncio

    def make(world: ScriptedTransport, **options: Any) -> Pool:
        targets = list(world.servers)
        options.setdefault("retry", FAST_RETRY)
        pool = kind(world, ClientOptions(target=targets, **options))
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()


def pids(pool: Pool) -> set[int]:
    return {w.pid for w in pool.workers()}


def live_pids(*servers: FakeServer) -> set[int]:
    return {w.pid for s in servers for w in s.workers if w.alive}


def eventually(check: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the pool did not get there in time"
        time.sleep(0.002)


def sent(world: ScriptedTransport) -> list[Any]:
    """The model calls the pool sent (not its GetWorkerInfo calls)."""
    return [r for r in world.requests if r.path == PATH]


def test_the_core_decides_and_leaves_every_action_to_its_pool() -> None:
    core = PoolCore(ClientOptions(target="a:1"))
    finding = core.find("a:1", 1.0, wait=True)
    assert core.advance(finding).action == Probe("a:1", 1.0)  # does anything listen there?
    assert core.advance(finding, False).action == Open("a:1")
    step = core.advance(finding, "channel-1")
    assert isinstance(step.action, Send)
    assert step.action.request.path == WORKER_INFO
    assert step.action.request.wait_for_ready  # the first connection waits for the server
    info = model_service_pb2.GetWorkerInfoResponse(instance_id="i", pid=7, worker_count=1)
    step = core.advance(finding, Reply(info.SerializeToString(), ()))
    assert step.action is None  # the server's one worker is known
    assert step.error is None

    calling = core.call(Request(PATH, b"hello", 1.0))
    step = core.advance(calling)
    assert isinstance(step.action, Send)
    assert (step.action.channel, step.action.request.data) == ("channel-1", b"hello")
    gone = UnavailableError(grpc.StatusCode.UNAVAILABLE, "connection reset")
    step = core.advance(calling, error=gone)
    # The worker is dropped: its channel closes, the background search wakes, and the call
    # waits for a backoff before its next attempt.
    assert (step.closing, step.wake) == (["channel-1"], True)
    assert isinstance(step.action, Sleep)
    assert isinstance(core.advance(calling).action, Search)  # no worker left: look for one
    step = core.advance(calling)  # ... which found none
    assert isinstance(step.action, Sleep)
    step = core.advance(calling)  # too soon to search again: fail, and back off again
    assert isinstance(step.action, Sleep)


def test_start_finds_every_worker_and_spreads_calls(make_pool: MakePool) -> None:
    # the twin of test_two_hosts_behind_one_client
    a, b = FakeServer("a:1", 2), FakeServer("b:1", 3)
    pool = make_pool(ScriptedTransport(a, b), balancer=RoundRobin())
    assert pids(pool) == live_pids(a, b)
    for _ in range(10):
        assert pool.call(b"x") == b"x"
    assert [w.calls for w in a.workers + b.workers] == [2, 2, 2, 2, 2]


def test_the_start_finds_a_worker_the_first_20_connections_missed(make_pool: MakePool) -> None:
    # The kernel hands connections to workers at random: a start whose first 20 connections
    # all miss one worker of three still finds it (up to 8 x 3 + 8 connections; a
    # background search gives up after 4 x 3 + 4, and tries again soon).
    server = FakeServer("a:1", 3)
    server.lands = [0, 1] * 10 + [2]
    world = ScriptedTransport(server)
    pool = make_pool(world)
    assert pids(pool) == live_pids(server)
    assert len(world.opened) == 21


def worker_info_waits(world: ScriptedTransport) -> list[float]:
    """How long each GetWorkerInfo the pool sent was given to be answered (inf: no limit)."""
    return [
        math.inf if r.timeout is None else r.timeout
        for r in world.requests
        if r.path == WORKER_INFO
    ]


@pytest.mark.parametrize("first", ["stalled", "live"])
def test_a_stalled_worker_costs_the_start_one_short_wait(
    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch, first: str
) -> None:
    # A stopped or wedged worker: the kernel still hands it connections, and nothing answers
    # on them. The start waits ANSWER_WAIT on such a connection, not its connect timeout, and
    # a first connection that lands there does not fail a start a live worker can serve.
    monkeypatch.setattr(core, "ANSWER_WAIT", 0.05)
    server = FakeServer("a:1", 2)
    stalled, live = server.workers
    stalled.stalled = True
    server.lands = [0, 1, 0] if first == "stalled" else [1, 0]
    world = ScriptedTransport(server)
    started = time.monotonic()
    pool = make_pool(world, connect_timeout=10)
    assert time.monotonic() - started < 2
    assert pids(pool) == {live.pid}
    # a connection to the stalled worker ends the start's search once a worker is known
    assert worker_info_waits(world) == ([0.05, 0.05, 0.05] if first == "stalled" else [0.05, 0.05])
    assert pool.call(b"x") == b"x"


def test_the_start_gives_a_slow_server_half_its_connect_timeout() -> None:
    # Connections get ANSWER_WAIT while half the connect timeout would be left after them;
    # the last gets the rest, so a server slower to answer (far away, overloaded) is answered.
    # The core by hand, on a clock that moves only as each connection waits out its wait.
    now = 0.0
    pool_core = PoolCore(ClientOptions(target="a:1"), clock=lambda: now)
    finding = pool_core.find("a:1", 10.0, wait=True)
    assert isinstance(pool_core.advance(finding).action, Probe)
    step = pool_core.advance(finding, False)  # something listens there
    unanswered = from_code(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", ())
    waits: list[float] = []
    while step.action is not None:
        if isinstance(step.action, Open):
            step = pool_core.advance(finding, f"channel-{len(waits)}")
            continue
        assert isinstance(step.action, Send)
        assert step.action.request.timeout is not None
        waits.append(step.action.request.timeout)
        now += waits[-1]
        step = pool_core.advance(finding, error=unanswered)
    assert waits == [core.ANSWER_WAIT] * 5 + [5.0]
    assert isinstance(pool_core.found_none(), ConnectError)


def test_a_worker_dying_mid_call_is_retried_elsewhere_and_replaced(make_pool: MakePool) -> None:
    # the twin of test_kill_a_worker_every_second_loses_no_call
    server = FakeServer("a:1", 2)
    pool = make_pool(ScriptedTransport(server), balancer=RoundRobin())
    victim = server.workers[0]
    victim.doomed = True  # RoundRobin sends it the first call
    assert pool.call(b"x") == b"x"
    assert victim.pid not in live_pids(server)
    assert sum(w.calls for w in server.workers) == 1  # the worker left, or the replacement
    eventually(lambda: pids(pool) == live_pids(server))  # its replacement is found


def test_a_restarted_server_loses_no_call(make_pool: MakePool) -> None:
    # the twin of test_whole_server_restart_under_load
    server = FakeServer("a:1", 3)
    world = ScriptedTransport(server)
    pool = make_pool(world)
    before = pids(pool)
    server.restart()
    assert pool.call(b"x") == b"x"
    eventually(lambda: pids(pool) == live_pids(server))
    assert not before & pids(pool)


def test_a_connection_that_now_reaches_another_worker_is_dropped(make_pool: MakePool) -> None:
    server = FakeServer("a:1", 2)
    server.reconnect = True  # as gRPC does: a broken connection reconnects, to any worker
    pool = make_pool(ScriptedTransport(server), balancer=RoundRobin())
    first = server.workers[0]
    server.replace(first)
    assert pool.call(b"x") == b"x"  # answered, by another process than the one it knew
    eventually(lambda: pids(pool) == live_pids(server))
    assert first.pid not in pids(pool)


def test_an_empty_pool_searches_at_most_every_tenth_of_a_second(make_pool: MakePool) -> None:
    server = FakeServer("a:1", 1)
    world = ScriptedTransport(server)
    pool = make_pool(world, retry=RetryPolicy.never(), refresh_interval=60)
    server.stop()
    opened = len(world.opened)
    failed = 0
    started = time.monotonic()
    while time.monotonic() - started < 0.2:
        with pytest.raises(UnavailableError):
            pool.call(b"x")
        failed += 1
    elapsed = time.monotonic() - started
    searches = len(world.opened) - opened  # each search opens one connection to the server
    # on demand at most every 0.1 s; in the background every 0.25 s while workers are missing
    assert searches <= elapsed / 0.1 + elapsed / 0.25 + 2
    assert failed > searches


def test_least_loaded_keeps_calls_away_from_a_slow_worker(make_pool: MakePool) -> None:
    # the twin of test_least_loaded_keeps_calls_away_from_a_slow_worker (live)
    server = FakeServer("a:1", 2)
    fast, slow = server.workers
    slow.delay = 0.05
    pool = make_pool(ScriptedTransport(server), balancer=LeastLoaded(seed=1))
    for _ in range(40):
        pool.call(b"x")
    assert slow.calls <= 3
    assert fast.calls >= 37


def test_refused_credentials_raise_at_once(make_pool: MakePool) -> None:
    server = FakeServer("a:1", 2)
    server.refuse = True
    world = ScriptedTransport(server)
    with pytest.raises(UnauthenticatedError):
        make_pool(world, connect_timeout=60)  # not waited for: no server will take the token
    assert len(world.opened) == 1


def test_a_revoked_token_fails_the_call_without_retrying(make_pool: MakePool) -> None:
    server = FakeServer("a:1", 2)
    world = ScriptedTransport(server)
    pool = make_pool(world)
    server.refuse = True
    with pytest.raises(UnauthenticatedError):
        pool.call(b"x")
    assert len(sent(world)) == 1


def test_a_draining_worker_s_refusal_is_retried_elsewhere(make_pool: MakePool) -> None:
    # the twin of test_sigterm_under_load_loses_no_accepted_call: a stopping worker cancels
    # the calls it has not started; the client sends them to another worker, and keeps it
    server = FakeServer("a:1", 2)
    pool = make_pool(ScriptedTransport(server), balancer=RoundRobin())
    draining, other = server.workers
    draining.fail = grpc.StatusCode.CANCELLED
    assert pool.call(b"x") == b"x"
    assert (draining.calls, other.calls) == (1, 1)
    assert pids(pool) == live_pids(server)


class First:
    """A balancer that picks the first worker it is offered."""

    def pick(self, workers: Any) -> Any:
        return workers[0]


def test_each_retry_goes_to_a_worker_not_tried_yet(make_pool: MakePool) -> None:
    server = FakeServer("a:1", 3)
    for worker in server.workers:
        worker.fail = grpc.StatusCode.CANCELLED  # retried, and the worker kept
    retry = RetryPolicy(attempts=3, initial_backoff=0.001, max_backoff=0.005)
    pool = make_pool(ScriptedTransport(server), balancer=First(), retry=retry)
    with pytest.raises(CallError):
        pool.call(b"x")
    assert [w.calls for w in server.workers] == [1, 1, 1]


def test_retries_stop_at_the_deadline(make_pool: MakePool) -> None:
    server = FakeServer("a:1", 2)
    for worker in server.workers:
        worker.fail = grpc.StatusCode.CANCELLED
    world = ScriptedTransport(server)
    retry = RetryPolicy(attempts=1000, initial_backoff=0.01, multiplier=1, jitter=0)
    pool = make_pool(world, retry=retry)
    with pytest.raises(CallError) as caught:
        pool.call(b"x", timeout=0.1)
    assert caught.value.code in {grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED}
    timeouts = [request.timeout for request in sent(world)]
    assert 2 <= len(timeouts) <= 0.1 / 0.01 + 1  # it retried, and waited between attempts
    assert all(0 < t <= 0.1 for t in timeouts)  # each attempt gets only the time left
    assert timeouts == sorted(timeouts, reverse=True)


def test_a_model_s_calls_go_to_the_workers_that_have_it(make_pool: MakePool) -> None:
    server = FakeServer("a:1", 3)
    first, second, third = server.workers
    first.models, second.models, third.models = ("big",), ("big", "small"), ("small",)
    pool = make_pool(ScriptedTransport(server), balancer=RoundRobin())
    for _ in range(6):
        pool.call(b"x", model="big")
    assert (first.calls, second.calls, third.calls) == (3, 3, 0)
    for _ in range(3):
        pool.call(b"x")  # about the whole server: any worker
    assert third.calls > 0
    pool.call(b"x", model="unknown")  # no worker has it: one of them says so
    assert first.calls + second.calls + third.calls == 10


def test_a_stream_stays_on_one_worker_that_has_its_model(make_pool: MakePool) -> None:
    server = FakeServer("a:1", 3)
    first, second, third = server.workers
    first.models, second.models, third.models = ("big",), ("big", "small"), ("small",)
    world = ScriptedTransport(server)
    pool = make_pool(world, balancer=RoundRobin())
    for number in range(4):
        messages = [f"{number}-{i}".encode() for i in range(3)]
        assert pool.stream(messages, model="big") == messages
    assert (first.calls, second.calls, third.calls) == (6, 6, 0)  # two streams each, whole
    assert len([r for r in world.requests if r.path == STREAM]) == 4  # one call per stream


def test_a_stream_counts_as_a_call_in_flight_while_it_lasts() -> None:
    world = ScriptedTransport(FakeServer("a:1", 2))
    pool = Threads(world, ClientOptions(target="a:1", balancer=LeastLoaded()))
    try:
        replies = pool.pool.stream(Request(STREAM, b"0", 5.0), [b"1", b"2"])
        assert next(replies) == b"0"
        assert sorted(w.in_flight for w in pool.workers()) == [0, 1]
        assert pool.call(b"x") == b"x"  # goes to the other worker
        assert list(replies) == [b"1", b"2"]
        assert [w.in_flight for w in pool.workers()] == [0, 0]
        replies = pool.pool.stream(Request(STREAM, b"0", 5.0), [b"1", b"2"])
        next(replies)
        replies.close()  # the caller stops early
        assert [w.in_flight for w in pool.workers()] == [0, 0]
    finally:
        pool.close()


def test_a_stream_whose_worker_dies_fails_and_is_not_retried(make_pool: MakePool) -> None:
    server = FakeServer("a:1", 2)
    for worker in server.workers:
        worker.doomed = True  # dies at its next model call: the stream's first message
    world = ScriptedTransport(server)
    pool = make_pool(world)
    with pytest.raises(UnavailableError):
        pool.stream([b"0", b"1"])
    assert len([r for r in world.requests if r.path == STREAM]) == 1
    eventually(lambda: pids(pool) == live_pids(server))  # dropped, its successor found
