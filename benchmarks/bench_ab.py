"""Benchmark: this checkout's server against another checkout's (an older commit), side by side.

Both serve ``mean`` with two workers on 127.0.0.1, each from its own tree's ``server/src`` and
``python_client/src``; one client (this checkout's ``ModelClient``) per server sends 224x224x3
``RunImage`` calls in alternating slices, the order flipped each round, so that drift on a
noisy machine hits both alike. It prints, as medians over the rounds: calls per second at 8
callers, the server's CPU per call (its workers' user and system time, from /proc) and the
p50 latency at one caller, and the ratios new/old.

    git worktree add /tmp/tms-old <commit>
    python3 -m uv run python benchmarks/bench_ab.py --old /tmp/tms-old [--rounds 16]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tms_client import ModelClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_mean import server_process

ROOT = Path(__file__).resolve().parent.parent
MEAN = ROOT / "examples" / "models" / "mean"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="the other checkout")
    parser.add_argument("--rounds", type=int, default=16)
    options = parser.parse_args()
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), np.uint8)
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as stack:
        models = Path(folder) / "models"
        models.mkdir()
        (models / "mean").symlink_to(MEAN)
        log = stack.enter_context(open(Path(folder) / "servers.log", "wb"))
        clients = {}
        for name, tree in (("old", options.old.resolve()), ("new", ROOT)):
            path = f"PYTHONPATH={tree / 'server' / 'src'}:{tree / 'python_client' / 'src'}"
            command = [
                *("env", path, sys.executable, "-m", "tms_server"),
                *("--models", str(models), "--workers", "2", "--port", "0", "--host", "127.0.0.1"),
            ]
            target = stack.enter_context(server_process(name, command, log))
            clients[name] = stack.enter_context(ModelClient("mean", target))
        pids = {name: _worker_pids(client) for name, client in clients.items()}
        for client in clients.values():
            for _ in range(300):  # warm up: connections, regions, quick calls proven
                client.run_image(image)
        results: dict[str, dict[str, list[float]]] = {
            name: {"calls/s": [], "cpu": [], "p50": []} for name in clients
        }
        for number in range(options.rounds):
            order = ("old", "new") if number % 2 == 0 else ("new", "old")
            for name in order:
                call = functools.partial(clients[name].run_image, image)
                rate, cpu = _throughput(call, pids[name])
                results[name]["calls/s"].append(rate)
                results[name]["cpu"].append(cpu)
            for name in order:
                results[name]["p50"].append(_p50(functools.partial(clients[name].run_image, image)))
    medians = {n: {k: statistics.median(v) for k, v in r.items()} for n, r in results.items()}
    for name, m in medians.items():
        print(
            f"{name}: {m['calls/s']:.0f} calls/s at 8 callers, server CPU "
            f"{m['cpu']:.0f} us/call, p50 {m['p50']:.3f} ms at 1 caller"
        )
    new, old = medians["new"], medians["old"]
    print(
        f"new/old: calls/s {new['calls/s'] / old['calls/s']:.3f}, "
        f"server CPU {new['cpu'] / old['cpu']:.3f}, p50 {new['p50'] / old['p50']:.3f}"
    )


def _worker_pids(client: ModelClient) -> list[int]:
    return [worker.pid for worker in client.workers()]


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def _throughput(
    call: Callable[[], object], pids: list[int], seconds: float = 1.0
) -> tuple[float, float]:
    """Calls per second of 8 threads calling for ``seconds``, and server CPU per call (us)."""
    stop = time.perf_counter() + seconds
    counts = [0] * 8

    def loop(index: int) -> None:
        while time.perf_counter() < stop:
            call()
            counts[index] += 1

    before = _cpu_seconds(pids)
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    calls = sum(counts)
    return calls / seconds, (_cpu_seconds(pids) - before) / calls * 1e6


def _p50(call: Callable[[], object], seconds: float = 0.5) -> float:
    stop, times = time.perf_counter() + seconds, []
    while time.perf_counter() < stop:
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


if __name__ == "__main__":
    main()
