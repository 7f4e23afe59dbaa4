"""Benchmark: one slow worker, round-robin against least-loaded balancing, in one run.

A real ``tms-server`` with N workers serves a model that runs one call at a time per worker
and sleeps when asked to on one chosen worker. One caller sends such slow calls; the other
callers send fast ones. With round-robin, fast calls keep landing on the slow worker and wait
behind the slow call; least-loaded steers them away. The table gives the fast calls' latency
under each balancer, measured in alternating slices so drift on a noisy machine hits both.

    python3 -m uv run python benchmarks/bench_skew.py [--out benchmarks/RESULTS.md]

``--out`` writes (or replaces) the "Skewed load" section of that file.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from tms_client import Balancer, LeastLoaded, ModelClient, RoundRobin

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_mean import server_process

MODEL = '''\
"""Runs one call at a time; sleeps on the worker named by the args."""
import os
import time

import tms_server


class Model(tms_server.Model):
    thread_safe = False

    def run(self, image, args):
        if args.get("slow_pid") == os.getpid():
            time.sleep(args["sleep"])
        return os.getpid()
'''
SECTION = "## Skewed load"


def measure(
    client: ModelClient, slow_pid: int, sleep: float, callers: int, duration: float
) -> list[float]:
    """Latencies (s) of the fast callers' calls while caller 0 sends slow ones."""
    image = np.zeros((8, 8, 3), np.uint8)
    stop = time.monotonic() + duration
    fast: list[list[float]] = [[] for _ in range(callers)]

    def caller(index: int) -> None:
        args = {"slow_pid": slow_pid, "sleep": sleep} if index == 0 else {}
        while time.monotonic() < stop:
            started = time.perf_counter()
            client.run_image(image, args)
            if index:
                fast[index].append(time.perf_counter() - started)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [x for mine in fast for x in mine]


def table(results: dict[str, list[float]]) -> str:
    rows = [
        "| balancer | fast calls | p50 ms | p90 ms | p99 ms | max ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, latencies in results.items():
        ms = np.array(latencies) * 1000
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        rows.append(f"| {name} | {len(ms)} | {p50:.2f} | {p90:.2f} | {p99:.2f} | {ms.max():.2f} |")
    return "\n".join(rows)


def write_section(path: Path, text: str) -> None:
    """Replace the section of ``path`` that starts with SECTION (or append it)."""
    old = path.read_text() if path.exists() else ""
    before, found, after = old.partition(SECTION)
    rest = after.split("\n## ", 1)[1] if found and "\n## " in after else ""
    new = before.rstrip() + "\n\n" + text.rstrip() + "\n" + (f"\n## {rest}" if rest else "")
    path.write_text(new.lstrip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="server worker processes [2]")
    parser.add_argument("--callers", type=int, default=6, help="client threads, one slow [6]")
    parser.add_argument("--sleep", type=float, default=0.3, help="slow call seconds [0.3]")
    parser.add_argument("--duration", type=float, default=12, help="seconds per balancer [12]")
    parser.add_argument("--rounds", type=int, default=4, help="alternating slices [4]")
    parser.add_argument("--out", type=Path, help="write the Skewed load section here")
    args = parser.parse_args(argv)

    balancers: dict[str, Balancer] = {"round-robin": RoundRobin(), "least-loaded": LeastLoaded()}
    results: dict[str, list[float]] = {name: [] for name in balancers}
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp, "models")
        (models / "serial").mkdir(parents=True)
        (models / "serial" / "__init__.py").write_text(MODEL)
        command = [sys.executable, "-m", "tms_server", "--host", "127.0.0.1", "--port", "0"]
        command += ["--models", str(models), "--workers", str(args.workers)]
        command += ["--entry-points", "false", "--log-level", "WARNING"]
        with (
            open(Path(tmp, "server.log"), "wb") as log,
            server_process("tms-server", command, log) as target,
        ):
            clients = {
                name: ModelClient("serial", target, balancer=balancer)
                for name, balancer in balancers.items()
            }
            slow_pid = clients["round-robin"].workers()[0].pid
            slice_seconds = args.duration / args.rounds
            for _ in range(args.rounds):
                for name, client in clients.items():
                    print(f"measuring {name} ...", file=sys.stderr)
                    results[name] += measure(
                        client, slow_pid, args.sleep, args.callers, slice_seconds
                    )
            for client in clients.values():
                client.close()
    text = "\n".join(
        [
            SECTION,
            "",
            "Command: `"
            + shlex.join(["python3", "-m", "uv", "run", "python", "benchmarks/bench_skew.py"])
            + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
            + "`",
            "",
            f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; "
            f"{args.workers} workers, {args.callers} callers of which one sends calls that "
            f"sleep {args.sleep:g} s on one worker; {args.duration:g} s per balancer in "
            f"{args.rounds} alternating slices. Latency of the other callers' calls:",
            "",
            table(results),
        ]
    )
    print(text)
    if args.out:
        write_section(args.out, text)
        print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
