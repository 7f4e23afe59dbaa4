"""One client making the benchmarks' calls from a process of its own, when told.

A program uses one client: the thread client, the asyncio client or raw grpcio. Measured in one
process, they would share its GIL, and grpc.aio wakes every event loop bound to it for each
completion (the thread client's loop and the asyncio client's alike). So ``bench_mean.py`` and
``report.py`` run each client in a process like this one, with its own CPU and nothing else in
it, and tell it, slice by slice, what load to make.

    python benchmarks/driver.py KIND TARGET [--workers N] [--bytes]

KIND is ``tms`` (ModelClient, callers are threads), ``tms-asyncio`` (AsyncModelClient, callers
are coroutines of one event loop) or ``raw`` (bench_mean.RawClient). ``--bytes`` turns the
TMS clients' shared memory off. It reads JSON lines on stdin and answers each with one line:

- ``{"load": [W, H, CONCURRENCY, SECONDS]}``: ``run_load`` on frames ``image(W, H)``, the
  calls' latencies (seconds) and how long the load took, ``{"latencies": [...], "elapsed": S}``;
- ``{"mean": [W, H]}``: ``{"mean": M}``, the mean of ``image(W, H)`` as the server computed it;
- ``{"workers": null}``: ``{"workers": N}``, the worker processes the client found.

It ends at the end of its input, closing the client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from tms_client import AsyncModelClient, ModelClient, RoundRobin

# Run as a script (python benchmarks/driver.py): make the benchmarks folder importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_mean import CALL_TIMEOUT, Call, OnLoop, RawClient, Samples, run_load

KINDS = ("tms", "tms-asyncio", "raw")


@functools.cache
def image(width: int, height: int) -> npt.NDArray[np.uint8]:
    """The random 3-channel frame of a size: the same in every process."""
    return np.random.default_rng((width, height)).integers(
        0, 256, (height, width, 3), dtype=np.uint8
    )


@dataclass(frozen=True)
class Driven:
    """Calls on frames of one size, made by a driver's process (a ``bench_mean.Remote``)."""

    driver: Driver
    width: int
    height: int

    def load(self, concurrency: int, duration: float) -> Samples:
        answer = self.driver.ask(load=[self.width, self.height, concurrency, duration])
        return Samples(answer["latencies"], answer["elapsed"])


class Driver:
    """A driver process: one client of ``kind`` for ``target``."""

    def __init__(
        self, kind: str, target: str, *, workers: int, shared_memory: bool, log: IO[bytes]
    ) -> None:
        command = [sys.executable, __file__, kind, target, "--workers", str(workers)]
        if not shared_memory:
            command.append("--bytes")
        self.kind = kind
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
        )

    def on(self, width: int, height: int) -> Driven:
        return Driven(self, width, height)

    def ask(self, **question: Any) -> Any:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None
        assert stdout is not None
        stdin.write(json.dumps(question) + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            code = self.process.wait(10.0)
            raise RuntimeError(f"the {self.kind} driver exited with {code}")
        return json.loads(line)

    def mean(self, width: int, height: int) -> float:
        return float(self.ask(mean=[width, height])["mean"])

    def workers(self) -> int:
        return int(self.ask(workers=None)["workers"])

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(30.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def driver(
    kind: str, target: str, *, workers: int, log: IO[bytes], shared_memory: bool = True
) -> Iterator[Driver]:
    """A driver process, closed at the end."""
    process = Driver(kind, target, workers=workers, shared_memory=shared_memory, log=log)
    try:
        yield process
    finally:
        process.close()


# -- the driver process ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Client:
    """The client of a driver process: a call on a frame as ``run_load`` makes it, the mean
    of a frame, the workers found."""

    call: Callable[[npt.NDArray[np.uint8]], Call]
    mean: Callable[[npt.NDArray[np.uint8]], float]
    workers: Callable[[], int]


def _client(
    kind: str, target: str, workers: int, shared_memory: bool, stack: contextlib.ExitStack
) -> _Client:
    options: dict[str, Any] = {
        "timeout": CALL_TIMEOUT,
        "balancer": RoundRobin(),
        "shared_memory": shared_memory,
    }
    if kind == "tms":
        tms = stack.enter_context(ModelClient("mean", target, **options))
        return _Client(
            lambda frame: functools.partial(tms.run_image, frame),
            lambda frame: float(tms.run_image(frame)["mean"]),
            lambda: len(tms.workers()),
        )
    if kind == "tms-asyncio":
        # A Runner cancels what grpc.aio leaves running once the client is closed.
        loop = stack.enter_context(asyncio.Runner()).get_loop()
        aio = AsyncModelClient("mean", target, **options)
        loop.run_until_complete(aio.__aenter__())
        stack.callback(lambda: loop.run_until_complete(aio.close()))
        return _Client(
            lambda frame: OnLoop(loop, functools.partial(aio.run_image, frame)),
            lambda frame: float(loop.run_until_complete(aio.run_image(frame))["mean"]),
            lambda: len(loop.run_until_complete(aio.workers())),
        )
    raw = RawClient(target, workers)
    stack.callback(raw.close)
    return _Client(
        lambda frame: functools.partial(raw.mean, frame), raw.mean, lambda: len(raw.pids)
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("target")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--bytes", action="store_true", help="no shared memory (TMS clients)")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        client = _client(args.kind, args.target, args.workers, not args.bytes, stack)
        for line in sys.stdin:
            question = json.loads(line)
            if "load" in question:
                width, height, concurrency, duration = question["load"]
                samples = run_load(client.call(image(width, height)), concurrency, duration)
                answer = {"latencies": samples.latencies, "elapsed": samples.elapsed}
            elif "mean" in question:
                answer = {"mean": client.mean(image(*question["mean"]))}
            else:
                answer = {"workers": client.workers()}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
