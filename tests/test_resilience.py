"""Workers that die, servers that restart, a slow worker, several hosts: real processes under
load, driven by the sync client and by the asyncio client alike."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from tests.support import ServerProcess, start_process, wait_for, write_models
from tms_client import (
    AsyncModelClient,
    LeastLoaded,
    ModelClient,
    RetryPolicy,
    RoundRobin,
    TMSError,
    UnavailableError,
)

pytestmark = pytest.mark.slow

MODELS = {
    "whoami": """
        import os, time
        import tms_server

        class Model(tms_server.Model):
            thread_safe = True

            def run(self, image, args):
                if args.get("log"):
                    with open(args["log"], "a") as log:
                        log.write(f"{args['id']}\\n")
                time.sleep(args.get("sleep", 0))
                return {"pid": os.getpid(), "sum": int(image.sum()), "id": args.get("id")}
    """,
    "serial": """
        import os, pathlib, time
        import tms_server

        class Model(tms_server.Model):
            thread_safe = False  # calls queue behind a held one

            def run(self, image, args):
                if "gate" in args:  # hold this worker until the test opens the gate
                    gate = pathlib.Path(args["gate"])
                    gate.with_suffix(".started").write_text(str(os.getpid()))
                    for _ in range(3000):
                        if gate.exists():
                            break
                        time.sleep(0.02)
                return os.getpid()
    """,
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models(tmp_path_factory.mktemp("models"), MODELS)


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (the supervisor's workers)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()]


class Load:
    """Calls made by ``concurrency`` callers for ``duration`` seconds, sync or asyncio."""

    def __init__(self) -> None:
        self.results: list[Any] = []
        self.errors: list[BaseException] = []
        self.error_times: list[float] = []
        self.latencies: list[float] = []


def sync_load(
    client: ModelClient,
    call: Callable[[int, int], tuple[Any, dict[str, Any]]],
    *,
    concurrency: int,
    duration: float,
    done: threading.Event,
) -> Load:
    load = Load()
    stop = time.monotonic() + duration
    lock = threading.Lock()

    def caller(who: int) -> None:
        n = 0
        while time.monotonic() < stop and not done.is_set():
            image, args = call(who, n)
            started = time.monotonic()
            try:
                result = client.run_image(image, args)
            except Exception as exc:
                with lock:
                    load.errors.append(exc)
                    load.error_times.append(time.monotonic())
            else:
                with lock:
                    load.results.append((who, n, result))
                    load.latencies.append(time.monotonic() - started)
            n += 1

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return load


async def async_load(
    client: AsyncModelClient,
    call: Callable[[int, int], tuple[Any, dict[str, Any]]],
    *,
    concurrency: int,
    duration: float,
    done: threading.Event,
) -> Load:
    load = Load()
    stop = time.monotonic() + duration

    async def caller(who: int) -> None:
        n = 0
        while time.monotonic() < stop and not done.is_set():
            image, args = call(who, n)
            started = time.monotonic()
            try:
                result = await client.run_image(image, args)
            except Exception as exc:
                load.errors.append(exc)
                load.error_times.append(time.monotonic())
            else:
                load.results.append((who, n, result))
                load.latencies.append(time.monotonic() - started)
            n += 1

    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    return load


class Driver:
    """Runs the same scenario with ModelClient (threads) or AsyncModelClient (tasks)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def run(
        self,
        model: str,
        target: str | Sequence[str],
        call: Callable[[int, int], tuple[Any, dict[str, Any]]],
        *,
        concurrency: int,
        duration: float,
        during: Callable[[], None] = lambda: None,
        done: threading.Event | None = None,
        **options: Any,
    ) -> tuple[Load, list[Any]]:
        """The load's outcome and the client's workers at the end; ``during`` runs in a
        thread beside the load (an exception there fails the run). The load stops after
        ``duration`` seconds or once ``done`` is set. ``settle`` seconds after the load are
        given to the pool to find every worker, as it does in the background."""
        done = done or threading.Event()
        failures: list[BaseException] = []

        def side_body() -> None:
            try:
                during()
            except BaseException as exc:
                failures.append(exc)

        side = threading.Thread(target=side_body)
        settle = float(options.pop("settle", 0.0))
        expected = options.pop("expected_workers", None)

        if self.kind == "sync":
            with ModelClient(model, target, **options) as client:
                side.start()
                load = sync_load(
                    client, call, concurrency=concurrency, duration=duration, done=done
                )
                side.join()
                deadline = time.monotonic() + settle
                while len(client.workers()) != expected and time.monotonic() < deadline:
                    time.sleep(0.1)
                workers = client.workers()
        else:

            async def main() -> tuple[Load, list[Any]]:
                async with AsyncModelClient(model, target, **options) as client:
                    side.start()
                    load = await async_load(
                        client, call, concurrency=concurrency, duration=duration, done=done
                    )
                    await asyncio.to_thread(side.join)
                    deadline = time.monotonic() + settle
                    while len(await client.workers()) != expected and time.monotonic() < deadline:
                        await asyncio.sleep(0.1)
                    return load, await client.workers()

            load, workers = asyncio.run(main())
        if failures:
            raise failures[0]
        return load, workers


@pytest.fixture(params=["sync", "async"])
def driver(request: pytest.FixtureRequest) -> Driver:
    return Driver(request.param)


def numbered(who: int, n: int) -> tuple[Any, dict[str, Any]]:
    """A call whose right answer is known: an image whose pixel sum encodes the call."""
    value = (who * 7 + n) % 200
    return np.full((4, 4), value, np.uint8), {"id": f"{who}-{n}"}


def check_answers(load: Load) -> None:
    for who, n, result in load.results:
        assert result["sum"] == 16 * ((who * 7 + n) % 200)
        assert result["id"] == f"{who}-{n}"


def test_killing_workers_under_load_loses_no_call(server_process, models, driver):
    # Ten kills, each once the last victim's replacement serves and the load has sent 20 more
    # calls: what is counted is kills and calls, not how many fit in some seconds here.
    server = server_process(models, workers=3)
    supervisor = server.process.pid
    done = threading.Event()
    killed: list[int] = []
    sent = [0]
    lock = threading.Lock()

    def counted(who: int, n: int) -> tuple[Any, dict[str, Any]]:
        with lock:
            sent[0] += 1
        return numbered(who, n)

    def twenty_more_calls() -> None:
        mark = sent[0]
        assert wait_for(lambda: sent[0] >= mark + 20, 60), "the load stopped"

    def serving() -> int:  # workers that said they serve: three, then one per replacement
        return server.logs().count(" model(s) on port ")

    def kill_ten_workers() -> None:
        rng = random.Random(7)
        try:
            while len(killed) < 10:
                # The last one killed is replaced and serving, and calls went on meanwhile.
                assert wait_for(lambda: serving() == 3 + len(killed), 60), server.logs()
                twenty_more_calls()
                victim = rng.choice(children(supervisor))
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
            twenty_more_calls()
        finally:
            done.set()

    load, _ = driver.run(
        "whoami",
        server.target,
        counted,
        concurrency=8,
        duration=600,
        during=kill_ten_workers,
        done=done,
    )
    assert load.errors == []
    assert len(killed) == 10
    assert len(load.results) == sent[0] >= 11 * 20  # every call sent was answered
    check_answers(load)
    assert wait_for(lambda: len(children(supervisor)) == 3, 20)
    # A worker replaced a moment ago may still be loading its models, not yet listening, when
    # a new client starts: the client finds it in the background.
    with ModelClient("whoami", server.target) as client:
        assert wait_for(lambda: len(client.workers()) == 3, 10)


def test_whole_server_restart_under_load(tmp_path, models, driver):
    first = start_process(models, workers=2)
    port = first.target.rsplit(":", 1)[1]
    servers: list[ServerProcess] = [first]

    def restart() -> None:
        time.sleep(2)
        first.stop()
        time.sleep(0.5)  # nobody listens for a moment
        servers.append(start_process(models, workers=2, args=("--port", port)))

    retry = RetryPolicy().with_attempts(1000).with_backoff(0.05, 0.5)
    try:
        load, workers = driver.run(
            "whoami",
            first.target,
            numbered,
            concurrency=4,
            duration=10,
            during=restart,
            retry=retry,
            refresh_interval=0.5,
            settle=5,
            expected_workers=2,
        )
    finally:
        for server in servers:
            server.stop()
    assert load.errors == []
    check_answers(load)
    pids = {result["pid"] for _, _, result in load.results}
    assert len(pids) == 4  # two workers before the restart, two after
    assert len(servers) == 2
    assert {w.instance_id for w in workers} != set()
    assert len(workers) == 2


def test_restart_without_retries_fails_only_in_the_window(models, driver):
    first = start_process(models, workers=2)
    port = first.target.rsplit(":", 1)[1]
    servers = [first]
    window: list[float] = []

    def restart() -> None:
        time.sleep(1)
        window.append(time.monotonic())
        first.stop()
        servers.append(start_process(models, workers=2, args=("--port", port)))
        window.append(time.monotonic())

    try:
        load, workers = driver.run(
            "whoami",
            first.target,
            numbered,
            concurrency=2,
            # Long enough that the load outlasts the restart (a server started on a busy
            # machine can take several seconds to load), so its last calls reach the new one.
            duration=15,
            during=restart,
            retry=RetryPolicy.never(),
            refresh_interval=0.2,
            settle=5,
            expected_workers=2,
        )
    finally:
        for server in servers:
            server.stop()
    # Calls fail only while the server is down (or being cancelled as it stops) ...
    assert {e.code for e in load.errors} <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    assert all(window[0] - 0.1 <= t <= window[1] + 1.0 for t in load.error_times)
    check_answers(load)
    # ... and the client recovers without being recreated.
    assert len(workers) == 2
    assert load.results[-1][2]["pid"] in {w.pid for w in workers}


def gated_call(client: ModelClient, gate: Path) -> tuple[threading.Thread, list[int]]:
    """A call to the ``serial`` model that holds its worker until ``gate`` exists, in a
    thread, started on its worker when this returns; the list gets the worker's pid."""
    started = gate.with_suffix(".started")
    answer: list[int] = []
    thread = threading.Thread(
        target=lambda: answer.append(
            client.run_image(np.zeros((2, 2), np.uint8), {"gate": str(gate)})
        )
    )
    thread.start()
    assert wait_for(started.exists, 30)
    return thread, answer


def test_least_loaded_keeps_calls_away_from_a_slow_worker(server_process, models, tmp_path):
    # One call holds a worker (and the calls queued behind it): least-loaded sends every
    # other call to the free worker, where round-robin sends every second one to the held
    # worker. A call that went to the held worker would wait for the gate, opened only at the
    # end, so the outcome does not depend on how fast the calls are. How much faster
    # least-loaded is is measured by benchmarks/bench_skew.py.
    server = server_process(models, workers=2)
    fast = np.zeros((2, 2), np.uint8)
    # Reports ignored (max_report_age 0): the balancer goes by this client's calls in flight.
    with ModelClient(
        "serial", server.target, timeout=60, balancer=LeastLoaded(max_report_age=0.0)
    ) as client:
        assert wait_for(lambda: len(client.workers()) == 2, 30)
        gate = tmp_path / "least-loaded"
        held, answer = gated_call(client, gate)
        try:
            held_pid = int((gate.with_suffix(".started")).read_text())
            answered_by = {client.run_image(fast) for _ in range(20)}
        finally:
            gate.touch()
            held.join(30)
    assert answer == [held_pid]
    assert len(answered_by) == 1
    assert held_pid not in answered_by

    with ModelClient("serial", server.target, timeout=60, balancer=RoundRobin()) as client:
        assert wait_for(lambda: len(client.workers()) == 2, 30)
        gate = tmp_path / "round-robin"
        held, answer = gated_call(client, gate)
        replies: list[int] = []
        callers = [
            threading.Thread(target=lambda: replies.append(client.run_image(fast)))
            for _ in range(4)
        ]
        try:
            for caller in callers:
                caller.start()
            assert wait_for(lambda: len(replies) == 2, 30)  # the two on the free worker
            held_pid = int((gate.with_suffix(".started")).read_text())
            assert held_pid not in replies
        finally:
            gate.touch()
            for caller in callers:
                caller.join(30)
            held.join(30)
    assert sorted(replies).count(held_pid) == 2  # they waited behind the held call


def test_two_hosts_behind_one_client(server_process, models, driver):
    first = server_process(models, workers=2)
    second = server_process(models, workers=2, args=("--host", "127.0.0.2"))
    assert second.target.startswith("127.0.0.2:")
    load, workers = driver.run(
        "whoami", [first.target, second.target], numbered, concurrency=4, duration=2
    )
    assert load.errors == []
    check_answers(load)
    assert len(workers) == 4
    assert len({w.instance_id for w in workers}) == 2
    assert {w.address for w in workers} == {first.target, second.target}
    assert {result["pid"] for _, _, result in load.results} == {w.pid for w in workers}


def test_sigterm_under_load_loses_no_accepted_call(server_process, models, driver, tmp_path):
    server = server_process(models, workers=2)
    started = tmp_path / "started.log"

    def call(who: int, n: int) -> tuple[Any, dict[str, Any]]:
        image, args = numbered(who, n)
        return image, {**args, "log": str(started), "sleep": 0.2}

    def terminate() -> None:
        time.sleep(1.5)
        server.stop(signal.SIGTERM)

    load, _ = driver.run(
        "whoami",
        server.target,
        call,
        concurrency=8,
        duration=4,
        during=terminate,
        retry=RetryPolicy().with_attempts(3),
    )
    check_answers(load)
    answered = {result["id"] for _, _, result in load.results}
    accepted = set(started.read_text().split())
    assert accepted - answered == set()  # every call a model started was answered
    assert load.errors, "calls after the server stopped should have failed"
    assert all(isinstance(e, UnavailableError) for e in load.errors)


def _silence(server: ServerProcess) -> socket.socket:
    """Listen on ``server``'s port (it is gone) without ever answering (a frozen host, a
    proxy in front of nothing): connections complete, and no call on them does. Returned
    a second later, when the background search of a client is waiting on it."""
    host, port = server.target.rsplit(":", 1)
    silent = socket.socket()
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    silent.bind((host, int(port)))
    silent.listen(64)
    time.sleep(1)
    return silent


def _hang_the_search(server: ServerProcess, client: ModelClient) -> socket.socket:
    """Kill ``server``, let three calls of ``client`` drop its workers (refused), then
    ``_silence`` its port."""
    server.stop(signal.SIGKILL)
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda _: _timed(lambda: client.run_image(IMAGE)), range(3)))
    return _silence(server)


def _timed(call: Callable[[], Any]) -> float:
    began = time.monotonic()
    with contextlib.suppress(TMSError):
        call()
    return time.monotonic() - began


# The server is gone, and what listens on its port never answers: the background search waits
# 5 s for an answer. A call that found no worker waited for that search to end, whatever its
# own timeout; each now ends within its timeout (2 s).
IMAGE = np.zeros((4, 4), np.uint8)


def test_calls_keep_their_timeout_while_a_search_hangs(models):
    server = start_process(models, workers=2)
    silent = None
    try:
        with ModelClient("whoami", server.target, timeout=2.0, refresh_interval=0.5) as client:
            assert wait_for(lambda: len(client.workers()) == 2, 10)
            silent = _hang_the_search(server, client)
            with ThreadPoolExecutor(8) as pool:
                took = list(pool.map(lambda _: _timed(lambda: client.run_image(IMAGE)), range(8)))
        assert max(took) < 3.0, took
    finally:
        if silent is not None:
            silent.close()
        server.stop(signal.SIGKILL)


def test_asyncio_calls_keep_their_timeout_while_a_search_hangs(models):
    server = start_process(models, workers=2)
    silent: list[socket.socket] = []

    async def timed() -> float:
        began = time.monotonic()
        with contextlib.suppress(TMSError):
            await client.run_image(IMAGE)
        return time.monotonic() - began

    async def main() -> list[float]:
        async with client:
            while len(await client.workers()) < 2:
                await asyncio.sleep(0.05)
            server.stop(signal.SIGKILL)
            await asyncio.gather(*(timed() for _ in range(3)))  # refused: workers dropped
            silent.append(await asyncio.to_thread(_silence, server))
            return list(await asyncio.gather(*(timed() for _ in range(8))))

    client = AsyncModelClient("whoami", server.target, timeout=2.0, refresh_interval=0.5)
    try:
        took = asyncio.run(main())
        assert max(took) < 3.0, took
    finally:
        for sock in silent:
            sock.close()
        server.stop(signal.SIGKILL)


def test_close_does_not_wait_for_a_search_that_hangs(models):
    # close() waited for the background search to end: up to 5 s on a connection nothing
    # answers. It now returns within a second; the search ends on its own.
    server = start_process(models, workers=2)
    silent = None
    try:
        client = ModelClient("whoami", server.target, timeout=2.0, refresh_interval=0.5)
        assert wait_for(lambda: len(client.workers()) == 2, 10)
        silent = _hang_the_search(server, client)
        took = _timed(client.close)
        assert took < 1.5, took
    finally:
        if silent is not None:
            silent.close()
        server.stop(signal.SIGKILL)
