"""Balancers: which worker gets the next call."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from tms_client import Balancer, RandomBalancer, RoundRobin
from tms_client.protocol.load import LoadReport

W = TypeVar("W")
WORKERS = ["w0", "w1", "w2", "w3"]


def test_round_robin_takes_each_worker_in_turn() -> None:
    balancer = RoundRobin()
    picks = [balancer.pick(WORKERS) for _ in range(10)]
    assert picks == WORKERS + WORKERS + WORKERS[:2]


def test_round_robin_follows_a_changing_worker_list() -> None:
    balancer = RoundRobin()
    assert [balancer.pick(["a", "b", "c"]) for _ in range(3)] == ["a", "b", "c"]
    # One worker left: every call goes to it.
    assert [balancer.pick(["b"]) for _ in range(3)] == ["b", "b", "b"]
    picks = Counter(balancer.pick(["x", "y"]) for _ in range(100))
    assert picks == {"x": 50, "y": 50}


def test_round_robin_is_even_across_threads() -> None:
    balancer = RoundRobin()
    threads, per_thread = 8, 1000
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def pick_many() -> None:
        start.wait()
        local = Counter(balancer.pick(WORKERS) for _ in range(per_thread))
        with lock:
            counts.update(local)

    runners = [threading.Thread(target=pick_many) for _ in range(threads)]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join()
    share = threads * per_thread // len(WORKERS)
    assert counts == dict.fromkeys(WORKERS, share)


def test_round_robins_are_independent() -> None:
    first, second = RoundRobin(), RoundRobin()
    assert first.pick(WORKERS) == "w0"
    assert first.pick(WORKERS) == "w1"
    assert second.pick(WORKERS) == "w0"


def test_random_balancer_with_a_seed_reaches_every_worker() -> None:
    balancer = RandomBalancer(seed=7)
    counts = Counter(balancer.pick(WORKERS) for _ in range(4000))
    assert set(counts) == set(WORKERS)
    # Uniform: each of 4 workers gets about 1000 of 4000 picks.
    assert all(800 < count < 1200 for count in counts.values())


def test_random_balancer_with_the_same_seed_repeats_itself() -> None:
    one, two = RandomBalancer(seed=3), RandomBalancer(seed=3)
    sequence = [one.pick(WORKERS) for _ in range(50)]
    assert sequence == [two.pick(WORKERS) for _ in range(50)]
    assert len(set(sequence)) > 1


def test_random_balancer_picks_the_only_worker() -> None:
    balancer = RandomBalancer()
    assert {balancer.pick(["only"]) for _ in range(20)} == {"only"}


def test_reprs() -> None:
    assert repr(RoundRobin()) == "RoundRobin()"
    assert repr(RandomBalancer(seed=1)) == "RandomBalancer()"


class LastWorker:
    """A balancer of our own: always the newest worker."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def pick(self, workers: Sequence[W]) -> W:
        self.seen.append(len(workers))
        return workers[-1]


@dataclass
class NamedWorker:
    """What the pool hands a balancer, reduced to a name."""

    name: str
    in_flight: int = 0
    load: LoadReport | None = None
    latency: float = 0.0
    latency_at: float = 0.0


def spread(balancer: Balancer, workers: Sequence[str], calls: int) -> Counter[str]:
    """Route ``calls`` calls through any Balancer, as the client does."""
    named = [NamedWorker(name) for name in workers]
    return Counter(balancer.pick(named).name for _ in range(calls))


def test_any_object_with_pick_is_a_balancer() -> None:
    custom = LastWorker()
    assert spread(custom, WORKERS, 5) == {"w3": 5}
    assert custom.seen == [4] * 5
    assert spread(RoundRobin(), WORKERS, 8) == dict.fromkeys(WORKERS, 2)
    assert set(spread(RandomBalancer(seed=0), WORKERS, 200)) == set(WORKERS)
