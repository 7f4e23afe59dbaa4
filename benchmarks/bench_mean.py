"""Benchmark: TMS ``RunImage`` on the ``mean`` model against raw grpcio doing the same work.

One run starts a real ``tms-server`` (a models folder holding only ``mean``) and the raw
grpcio baseline of ``raw_server.py``, both as subprocesses on 127.0.0.1 with the same number
of worker processes and threads, and drives them with the same load, each client in a process
of its own (``driver.py``), as a program would use it: TMS through
``tms_client.ModelClient("mean", target).run_image(array)`` from threads ("TMS") and through
``AsyncModelClient`` from coroutines of one event loop ("TMS asyncio"), both with their
defaults (shared memory, calls on open streams), the baseline from threads through one channel
per worker process, balanced round-robin, as the TMS clients are here. For every image size
and concurrency it warms them up, then measures them in alternating slices (TMS, TMS asyncio,
raw, raw, TMS asyncio, TMS, ...) so that drift on a noisy machine hits all alike, and reports
p50/p99 latency, throughput and the ratios of each TMS client to raw as a Markdown table.

    python3 -m uv run python benchmarks/bench_mean.py [--out benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.metadata
import itertools
import os
import platform
import queue
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol, runtime_checkable

import grpc
import numpy as np
import numpy.typing as npt

# Run as a script (python benchmarks/bench_mean.py): make the benchmarks folder importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.raw_server import (
    HEADER,
    MAX_MESSAGE_BYTES,
    MEAN_METHOD,
    MEAN_MODEL,
    PID_METHOD,
    RESULT,
    pixel_mean,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SERVING = re.compile(r"serving on (\S+):(\d+) with (\d+) worker")
THREADS = 8  # per worker process, tms-server's default
#: The TMS systems measured: the thread client and the asyncio client.
CLIENTS = ("TMS", "TMS asyncio")
START_TIMEOUT = 120.0
CALL_TIMEOUT = 30.0
TARGETS = "p50 ratio (TMS/raw) <= 1.1 at concurrency 1; throughput ratio (TMS/raw) >= 0.95 at 8"


# -- load --------------------------------------------------------------------------------------


@dataclass
class Samples:
    """Latencies (seconds) of the calls of one system in one cell, and the time they took."""

    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0

    def add(self, other: Samples) -> None:
        self.latencies.extend(other.latencies)
        self.elapsed += other.elapsed

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000.0


@dataclass(frozen=True)
class OnLoop:
    """A call of an asyncio client, for ``run_load`` to make from coroutines of ``loop``."""

    loop: asyncio.AbstractEventLoop
    call: Callable[[], Awaitable[object]]


@runtime_checkable
class Remote(Protocol):
    """Calls another process makes (benchmarks/driver.py): it runs the load, gives the samples."""

    def load(self, concurrency: int, duration: float) -> Samples: ...


#: A system's call, as run_load makes it.
Call = Callable[[], object] | OnLoop | Remote


def run_load(call: Call, concurrency: int, duration: float) -> Samples:
    """Call ``call()`` back to back from ``concurrency`` threads (coroutines of its loop, for
    an ``OnLoop``) for ``duration`` seconds: in this process, or in another for a ``Remote``."""
    if isinstance(call, Remote):
        return call.load(concurrency, duration)
    if isinstance(call, OnLoop):
        return call.loop.run_until_complete(_load_on_loop(call.call, concurrency, duration))
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(concurrency + 1)
    deadline = 0.0

    def loop(mine: list[float]) -> None:
        barrier.wait()
        clock = time.perf_counter
        try:
            while (start := clock()) < deadline:
                call()
                mine.append(clock() - start)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(mine,), daemon=True) for mine in latencies]
    for thread in threads:
        thread.start()
    begin = time.perf_counter()
    deadline = begin + duration
    barrier.wait()
    for thread in threads:
        thread.join(duration + CALL_TIMEOUT + 10.0)
    elapsed = time.perf_counter() - begin
    if errors:
        raise RuntimeError(f"a call failed during the load: {errors[0]!r}") from errors[0]
    if any(thread.is_alive() for thread in threads):
        raise RuntimeError("a load thread did not finish in time")
    return Samples([x for mine in latencies for x in mine], elapsed)


async def _load_on_loop(
    call: Callable[[], Awaitable[object]], concurrency: int, duration: float
) -> Samples:
    latencies: list[float] = []
    clock = time.perf_counter
    begin = clock()
    stop = begin + duration

    async def loop() -> None:
        while (start := clock()) < stop:
            await call()
            latencies.append(clock() - start)

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return Samples(latencies, clock() - begin)


# -- servers -----------------------------------------------------------------------------------


@contextlib.contextmanager
def server_process(name: str, command: Sequence[str], log: IO[bytes]) -> Iterator[str]:
    """Start a server that prints ``serving on HOST:PORT``; yield its target; always stop it."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, cwd=ROOT)
    lines: queue.Queue[bytes] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                line = lines.get(timeout=max(0.0, min(0.5, deadline - time.monotonic())))
            except queue.Empty:
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not ready after {START_TIMEOUT:.0f}s") from None
                continue
            match = SERVING.search(line.decode(errors="replace"))
            if match:
                yield f"{match[1]}:{match[2]}"
                return
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def models_folder(parent: Path) -> Path:
    """A models folder holding only the mean model, so no heavy model loads."""
    folder = parent / "models"
    folder.mkdir()
    (folder / "mean").symlink_to(MEAN_MODEL, target_is_directory=True)
    return folder


# -- the two clients ---------------------------------------------------------------------------


class RawClient:
    """The baseline's client, shaped like the TMS worker pool: one channel per worker process
    (found by asking each new connection for its pid), calls spread round-robin."""

    def __init__(self, target: str, workers: int) -> None:
        options = [
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        self._channels: dict[bytes, grpc.Channel] = {}
        for _ in range(10 * workers + 10):
            if len(self._channels) >= workers:
                break
            channel = grpc.insecure_channel(target, options=options)
            ask: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(PID_METHOD)
            who = ask(b"", timeout=10.0, wait_for_ready=True)
            if who in self._channels:
                channel.close()
            else:
                self._channels[who] = channel
        if len(self._channels) < workers:
            self.close()
            raise RuntimeError(f"raw client found only {len(self._channels)} of {workers} workers")
        #: The worker processes' pids.
        self.pids = [int(who) for who in self._channels]
        self._methods: list[grpc.UnaryUnaryMultiCallable[bytes, bytes]] = [
            channel.unary_unary(MEAN_METHOD) for channel in self._channels.values()
        ]
        self._counter = itertools.count()

    def mean(self, array: npt.NDArray[np.uint8]) -> float:
        """The mean of a uint8 (H, W, C) array, computed by a server worker."""
        # One copy of the pixels into the request bytes, as tobytes() would make.
        pixels = np.ascontiguousarray(array).data.cast("B")
        request = b"".join((HEADER.pack(*array.shape), pixels))
        method = self._methods[next(self._counter) % len(self._methods)]
        (value,) = RESULT.unpack(method(request, timeout=CALL_TIMEOUT))
        return float(value)

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Cell:
    """One (image size, concurrency) of the table, with the samples of both systems."""

    width: int
    height: int
    concurrency: int
    samples: dict[str, Samples] = field(
        default_factory=lambda: {name: Samples() for name in (*CLIENTS, "raw")}
    )

    @property
    def label(self) -> str:
        return f"{self.width}x{self.height}x3"

    @property
    def image_bytes(self) -> int:
        return self.width * self.height * 3


def alternate(
    samples: Mapping[str, Samples],
    calls: Mapping[str, Call],
    concurrency: int,
    *,
    duration: float,
    warmup: float,
    rounds: int,
) -> None:
    """Warm every system of ``calls`` up, then measure them in ``rounds`` alternating slices
    each (A B, B A, A B, ...), adding to their ``samples``, so that drift on a noisy machine
    hits them alike. The benchmarks' one way of comparing systems."""
    for call in calls.values():
        run_load(call, concurrency, warmup)
    names = list(calls)
    for index in range(rounds):
        for name in names if index % 2 == 0 else names[::-1]:
            samples[name].add(run_load(calls[name], concurrency, duration / rounds))


def ratios(cell: Cell, client: str = "TMS") -> tuple[float, float]:
    """(p50 ratio TMS/raw, throughput ratio TMS/raw) of ``client`` (one of CLIENTS)."""
    tms, raw = cell.samples[client], cell.samples["raw"]
    return tms.percentile_ms(50) / raw.percentile_ms(50), tms.throughput / raw.throughput


def verdict(cell: Cell, client: str = "TMS") -> str:
    p50_ratio, throughput_ratio = ratios(cell, client)
    if cell.concurrency == 1:
        return "met" if p50_ratio <= 1.1 else "**missed** (p50 ratio > 1.1)"
    if cell.concurrency == 8:
        return "met" if throughput_ratio >= 0.95 else "**missed** (throughput ratio < 0.95)"
    return "-"


def table(cells: Sequence[Cell]) -> str:
    head = (
        "| image | conc. | server | calls | p50 ms | p99 ms | req/s | MB/s "
        "| p50 ratio (TMS/raw) | throughput ratio (TMS/raw) | target |\n"
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n"
    )
    rows = []
    for cell in cells:
        for name, samples in cell.samples.items():
            first = name in CLIENTS
            p50_ratio, throughput_ratio = ratios(cell, name) if first else (0.0, 0.0)
            rows.append(
                f"| {cell.label} | {cell.concurrency} | {name} | {len(samples.latencies)} "
                f"| {samples.percentile_ms(50):.2f} | {samples.percentile_ms(99):.2f} "
                f"| {samples.throughput:.0f} "
                f"| {samples.throughput * cell.image_bytes / 1e6:.0f} "
                f"| {f'{p50_ratio:.3f}' if first else ''} "
                f"| {f'{throughput_ratio:.3f}' if first else ''} "
                f"| {verdict(cell, name) if first else ''} |"
            )
    return head + "\n".join(rows) + "\n"


def machine() -> list[str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    from google.protobuf.internal import api_implementation  # noqa: PLC0415

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    blas = [f"{k}={v}" for k, v in sorted(os.environ.items()) if "BLAS" in k or k.startswith("OMP")]
    return [
        f"- CPU: {os.cpu_count()} x {cpu} (nproc {len(os.sched_getaffinity(0))})",
        f"- OS: {platform.system()} {platform.release()}; load average at start: {load}",
        f"- Python {platform.python_version()}, grpcio {grpc.__version__}, "
        f"protobuf {importlib.metadata.version('protobuf')} ({api_implementation.Type()}), "
        f"numpy {np.__version__}",
        f"- environment: {', '.join(blas) if blas else 'no BLAS/OMP variables'}",
    ]


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        width, _, height = item.strip().lower().partition("x")
        sizes.append((int(width), int(height)))
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    default_workers = len(os.sched_getaffinity(0))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--duration", type=float, default=10.0, help="measured seconds per system and cell [10]"
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds [1]")
    parser.add_argument(
        "--rounds", type=int, default=10, help="alternating slices the duration is cut into [10]"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers,
        help=f"server worker processes [{default_workers}: the cores]",
    )
    parser.add_argument(
        "--sizes", default="224x224,1920x1080", help="WIDTHxHEIGHT,... of 3-channel uint8 images"
    )
    parser.add_argument("--concurrency", default="1,8", help="client threads, comma-separated")
    parser.add_argument("--out", type=Path, help="also write the results to this Markdown file")
    args = parser.parse_args(argv)
    sizes = parse_sizes(args.sizes)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    command = "python3 -m uv run python benchmarks/bench_mean.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    started = datetime.datetime.now(datetime.UTC)
    about = machine()

    from benchmarks.driver import driver, image  # noqa: PLC0415 - it imports this module

    cells = [Cell(w, h, c) for (w, h) in sizes for c in concurrencies]

    with contextlib.ExitStack() as stack:
        temp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tms-bench-")))
        log = stack.enter_context((temp / "servers.log").open("wb"))
        try:
            tms_target = stack.enter_context(
                server_process(
                    "tms-server",
                    [
                        *(sys.executable, "-m", "tms_server"),
                        *("--models", str(models_folder(temp)), "--entry-points", "false"),
                        *("--host", "127.0.0.1", "--port", "0"),
                        *("--workers", str(args.workers), "--threads", str(THREADS)),
                        *("--grace-seconds", "1", "--log-level", "WARNING"),
                    ],
                    log,
                )
            )
            raw_target = stack.enter_context(
                server_process(
                    "raw-server",
                    [
                        *(sys.executable, str(HERE / "raw_server.py")),
                        *("--host", "127.0.0.1", "--port", "0"),
                        *("--workers", str(args.workers), "--threads", str(THREADS)),
                    ],
                    log,
                )
            )
        except RuntimeError:
            log.flush()
            sys.stderr.write((temp / "servers.log").read_text(errors="replace")[-4000:])
            raise
        # Each client in a process of its own, as a program would use it (see driver.py).
        drivers = {
            name: stack.enter_context(driver(kind, target, workers=args.workers, log=log))
            for name, kind, target in (
                ("TMS", "tms", tms_target),
                ("TMS asyncio", "tms-asyncio", tms_target),
                ("raw", "raw", raw_target),
            )
        }
        found = {name: each.workers() for name, each in drivers.items()}
        if set(found.values()) != {args.workers}:
            raise RuntimeError(f"the clients found {found} of {args.workers} workers")

        for width, height in sizes:
            expected = pixel_mean(image(width, height))
            got = {name: each.mean(width, height) for name, each in drivers.items()}
            if not np.allclose(list(got.values()), expected):
                raise RuntimeError(f"wrong means for {width}x{height}: {got}, not {expected}")

        for cell in cells:
            calls: dict[str, Call] = {
                name: each.on(cell.width, cell.height) for name, each in drivers.items()
            }
            print(f"measuring {cell.label}, concurrency {cell.concurrency} ...", file=sys.stderr)
            alternate(
                cell.samples,
                calls,
                cell.concurrency,
                duration=args.duration,
                warmup=args.warmup,
                rounds=args.rounds,
            )

    result = table(cells)
    print(result)
    if args.out is not None:
        # Keep the sections other benchmarks wrote into the same file (bench_skew.py).
        previous = args.out.read_text() if args.out.exists() else ""
        others = previous[previous.find("\n## ") :] if "\n## " in previous else ""
        args.out.write_text(
            "# bench_mean: TMS RunImage on `mean` vs raw grpcio\n\n"
            f"Command: `{command.strip()}`\n\n"
            f"Date: {started:%Y-%m-%d %H:%M} UTC; {args.workers} server worker processes "
            f"x {THREADS} threads each (TMS and raw alike); {args.duration:g}s measured per "
            f"system and cell in {args.rounds} alternating slices after {args.warmup:g}s "
            "of warm-up. Client and servers share the machine.\n\n"
            + "\n".join(about)
            + f"\n\nTargets: {TARGETS}.\n\n"
            "Latency is per call as the client sees it; MB/s counts the image pixels sent.\n\n"
            + result
            + ("\n" + others if others else "\n")
        )
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
