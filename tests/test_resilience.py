"""Workers that die, servers that restart, a slow worker, several hosts: real processes under
load, driven by the sync client and by the asyncio client alike."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Sequence
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
        import os, time
        import tms_server

        class Model(tms_server.Model):
            thread_safe = False  # calls queue behind a slow one

            def run(self, image, args):
                if args.get("slow_pid") == os.getpid():
                    time.sleep(args["sleep"])
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
) -> Load:
    load = Load()
    stop = time.monotonic() + duration
    lock = threading.Lock()

    def caller(who: int) -> None:
        n = 0
        while time.monotonic() < stop:
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
) -> Load:
    load = Load()
    stop = time.monotonic() + duration

    async def caller(who: int) -> None:
        n = 0
        while time.monotonic() < stop:
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
        **options: Any,
    ) -> tuple[Load, list[Any]]:
        """The load's outcome and the client's workers at the end; ``during`` runs in a
        thread beside the load (an exception there fails the run). ``settle`` seconds after the
        load are given to the pool to find every worker, as it does in the background."""
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
                load = sync_load(client, call, concurrency=concurrency, duration=duration)
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
                        client, call, concurrency=concurrency, duration=duration
                    )
                    await asyncio.to_thread(side.join)
                    deadline = time.monotonic() + settle
                    while len(client.workers()) != expected and time.monotonic() < deadline:
                        await asyncio.sleep(0.1)
                    return load, client.workers()

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


def test_kill_a_worker_every_second_loses_no_call(server_process, models, driver):
    server = server_process(models, workers=3)
    supervisor = server.process.pid
    stop = threading.Event()
    killed: list[int] = []

    def kill_every_second() -> None:
        rng = random.Random(7)
        while not stop.wait(1.0):
            pids = children(supervisor)
            if pids:
                victim = rng.choice(pids)
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)

    def during() -> None:
        time.sleep(20)
        stop.set()

    killer = threading.Thread(target=kill_every_second)
    killer.start()
    try:
        load, _ = driver.run(
            "whoami", server.target, numbered, concurrency=8, duration=20, during=during
        )
    finally:
        stop.set()
        killer.join()
    assert load.errors == []
    assert len(load.results) > 500
    check_answers(load)
    assert len(killed) >= 15
    deadline = time.monotonic() + 20
    while len(children(supervisor)) != 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(children(supervisor)) == 3
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


def test_least_loaded_keeps_calls_away_from_a_slow_worker(server_process, models, driver):
    server = server_process(models, workers=2)
    with ModelClient("serial", server.target) as client:
        slow_pid = client.workers()[0].pid

    def call(who: int, n: int) -> tuple[Any, dict[str, Any]]:
        # Caller 0 sends calls that are slow on one worker; the others' calls are fast
        # unless they queue behind one of those.
        args = {"slow_pid": slow_pid, "sleep": 0.3} if who == 0 else {}
        return np.zeros((2, 2), np.uint8), args

    stuck: dict[str, float] = {}
    for name, balancer in (("round-robin", RoundRobin()), ("least-loaded", LeastLoaded(1))):
        load, _ = driver.run(
            "serial", server.target, call, concurrency=6, duration=4, balancer=balancer
        )
        assert load.errors == []
        others = [
            lat for (who, _, _), lat in zip(load.results, load.latencies, strict=True) if who != 0
        ]
        # A fast call that took most of a slow call's 0.3 s queued behind one: count those,
        # not how fast this machine is today.
        stuck[name] = sum(lat > 0.2 for lat in others) / len(others)
    print(
        f"\n{driver.kind}: share of the other calls stuck behind a slow one: "
        + ", ".join(f"{k} {v:.1%}" for k, v in stuck.items())
    )
    assert stuck["round-robin"] > 0.05  # the slow worker does hold calls up ...
    assert stuck["least-loaded"] < stuck["round-robin"] / 2  # ... and least-loaded avoids it


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
