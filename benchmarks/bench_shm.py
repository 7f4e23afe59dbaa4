"""Benchmark: the same-host shared-memory path against raw grpcio moving the same frame.

One run starts a real ``tms-server`` (a models folder holding ``mean`` and ``echo``) and the
raw grpcio baseline of ``raw_server.py``, both as subprocesses on 127.0.0.1 with the same
number of worker processes and threads, and drives three systems with the same load loop
(``bench_mean.run_load``):

- ``shm``: ``ModelClient(...)`` as it comes, which passes the frame through shared memory;
- ``bytes``: ``ModelClient(..., shared_memory=False)``, the frame in the request;
- ``raw``: raw grpcio, the frame in the request (``raw_server.py``'s Mean and Echo).

Two calls: ``RunImage`` on ``mean`` (raw: Mean) and ``RunImageToImage`` on ``echo``, which
returns the frame it got and its mean (raw: Echo, the mean and the pixels back). For every
call and concurrency it warms the systems up, then measures them in alternating slices
(shm, bytes, raw, raw, bytes, shm, ...) so that drift on a noisy machine hits all alike, and
reports p50/p99 latency, throughput and the ratios to raw as a Markdown table.

    python3 -m uv run python benchmarks/bench_shm.py [--out benchmarks/RESULTS.md]

``--out`` appends a section to the file.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import itertools
import os
import shlex
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt

from tms_client import ModelClient, RoundRobin

# Run as a script (python benchmarks/bench_shm.py): make the benchmarks folder importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_mean import (
    CALL_TIMEOUT,
    THREADS,
    RawClient,
    Samples,
    alternate,
    machine,
    models_folder,
    server_process,
)
from benchmarks.raw_server import ECHO_METHOD, HEADER, MEAN_MODEL, RESULT, pixel_mean

HERE = Path(__file__).resolve().parent
ECHO_SOURCE = f'''\
"""Returns the image it got, and its mean (the mean model's pixel_mean, as the baseline's)."""
import importlib.util

import tms_server

_spec = importlib.util.spec_from_file_location("mean_model", {str(MEAN_MODEL / "__init__.py")!r})
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)


class Model(tms_server.Model):
    """Returns the image it got, and its mean."""

    thread_safe = True

    def run_image_to_image(self, images, args):
        return images[0], {{"mean": _module.pixel_mean(images[0])}}
'''
SYSTEMS = ("shm", "bytes", "raw")
#: The targets of the issue: p50 ratio shm/raw at concurrency 1, per call.
TARGETS = {"RunImage": 0.4, "RunImageToImage": 0.5}


class RawEcho(RawClient):
    """The baseline's client, also for Echo: the frame there and back, and its mean."""

    def __init__(self, target: str, workers: int) -> None:
        super().__init__(target, workers)
        self._echo: list[grpc.UnaryUnaryMultiCallable[bytes, bytes]] = [
            channel.unary_unary(ECHO_METHOD) for channel in self._channels.values()
        ]
        self._turn = itertools.count()

    def echo(self, array: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.uint8], float]:
        pixels = np.ascontiguousarray(array).data.cast("B")
        request = b"".join((HEADER.pack(*array.shape), pixels))
        method = self._echo[next(self._turn) % len(self._echo)]
        reply = method(request, timeout=CALL_TIMEOUT)
        (mean,) = RESULT.unpack_from(reply)
        image = np.frombuffer(reply, dtype=np.uint8, offset=RESULT.size).reshape(array.shape)
        return image, float(mean)


@dataclass
class Cell:
    """One (call, concurrency) of the table, with the samples of every system."""

    call: str
    concurrency: int
    samples: dict[str, Samples] = field(
        default_factory=lambda: {name: Samples() for name in SYSTEMS}
    )

    def ratio(self, name: str) -> tuple[float, float]:
        """(p50 ratio name/raw, throughput ratio name/raw)."""
        mine, raw = self.samples[name], self.samples["raw"]
        return mine.percentile_ms(50) / raw.percentile_ms(50), mine.throughput / raw.throughput

    def verdict(self) -> str:
        target = TARGETS.get(self.call)
        if self.concurrency != 1 or target is None:
            return "-"
        p50 = self.ratio("shm")[0]
        return "met" if p50 <= target else f"**missed** (p50 ratio > {target})"


def table(cells: Sequence[Cell], label: str) -> str:
    head = (
        "| call | image | conc. | system | calls | p50 ms | p99 ms | req/s "
        "| p50 ratio (x/raw) | throughput ratio (x/raw) | target |\n"
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n"
    )
    rows = []
    for cell in cells:
        for name, samples in cell.samples.items():
            p50, throughput = cell.ratio(name)
            target = cell.verdict() if name == "shm" else ""
            rows.append(
                f"| {cell.call} | {label} | {cell.concurrency} | {name} "
                f"| {len(samples.latencies)} | {samples.percentile_ms(50):.2f} "
                f"| {samples.percentile_ms(99):.2f} | {samples.throughput:.0f} "
                f"| {p50:.3f} | {throughput:.3f} | {target} |"
            )
    return head + "\n".join(rows) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    default_workers = len(os.sched_getaffinity(0))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--duration", type=float, default=6.0, help="measured seconds per system and cell [6]"
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds [1]")
    parser.add_argument(
        "--rounds", type=int, default=6, help="alternating slices the duration is cut into [6]"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers,
        help=f"server worker processes [{default_workers}: the cores]",
    )
    parser.add_argument("--size", default="1920x1080", help="WIDTHxHEIGHT of the 3-channel frame")
    parser.add_argument("--concurrency", default="1", help="client threads, comma-separated [1]")
    parser.add_argument("--out", type=Path, help="also append the results to this Markdown file")
    args = parser.parse_args(argv)
    width, _, height = args.size.lower().partition("x")
    shape = (int(height), int(width), 3)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    command = "python3 -m uv run python benchmarks/bench_shm.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    started = datetime.datetime.now(datetime.UTC)
    about = machine()
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    label = f"{width}x{height}x3"
    cells = [Cell(call, c) for call in TARGETS for c in concurrencies]

    with contextlib.ExitStack() as stack:
        temp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tms-bench-")))
        models = models_folder(temp)
        (models / "echo").mkdir()
        (models / "echo" / "__init__.py").write_text(ECHO_SOURCE)
        log = stack.enter_context((temp / "servers.log").open("wb"))
        try:
            tms_target = stack.enter_context(
                server_process(
                    "tms-server",
                    [
                        *(sys.executable, "-m", "tms_server"),
                        *("--models", str(models), "--entry-points", "false"),
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
        clients = {}
        for model in ("mean", "echo"):
            for name, shared in (("shm", True), ("bytes", False)):
                client = ModelClient(
                    model,
                    tms_target,
                    timeout=CALL_TIMEOUT,
                    balancer=RoundRobin(),
                    shared_memory=shared,
                )
                stack.callback(client.close)
                clients[model, name] = client
        raw = RawEcho(raw_target, args.workers)
        stack.callback(raw.close)

        expected = pixel_mean(image)
        for name in ("shm", "bytes"):
            got = clients["mean", name].run_image(image)["mean"]
            echoed = clients["echo", name].run_image_to_image(image)
            if not np.isclose(got, expected) or not np.array_equal(echoed.image, image):
                raise RuntimeError(f"{name}: wrong answers")
        back, _ = raw.echo(image)
        if not np.isclose(raw.mean(image), expected) or not np.array_equal(back, image):
            raise RuntimeError("raw: wrong answers")

        for cell in cells:
            if cell.call == "RunImage":
                calls: dict[str, Callable[[], object]] = {
                    "shm": functools.partial(clients["mean", "shm"].run_image, image),
                    "bytes": functools.partial(clients["mean", "bytes"].run_image, image),
                    "raw": functools.partial(raw.mean, image),
                }
            else:
                calls = {
                    "shm": functools.partial(clients["echo", "shm"].run_image_to_image, image),
                    "bytes": functools.partial(clients["echo", "bytes"].run_image_to_image, image),
                    "raw": functools.partial(raw.echo, image),
                }
            print(f"measuring {cell.call}, concurrency {cell.concurrency} ...", file=sys.stderr)
            alternate(
                cell.samples,
                calls,
                cell.concurrency,
                duration=args.duration,
                warmup=args.warmup,
                rounds=args.rounds,
            )

    result = table(cells, label)
    print(result)
    if args.out is not None:
        section = (
            "\n## Same-host shared memory (bench_shm)\n\n"
            f"Command: `{command.strip()}`\n\n"
            f"Date: {started:%Y-%m-%d %H:%M} UTC; {args.workers} server worker processes x "
            f"{THREADS} threads each (TMS and raw alike); {args.duration:g}s measured per "
            f"system and cell in {args.rounds} alternating slices after {args.warmup:g}s of "
            "warm-up. Client and servers share the machine. shm: the client as it comes "
            "(images through shared memory); bytes: `shared_memory=False`; raw: raw grpcio "
            "moving the same frame (Mean: there; Echo: there and back) and computing its "
            "mean.\n\n"
            + "\n".join(about)
            + "\n\nTargets (shm, concurrency 1): p50 ratio shm/raw "
            + ", ".join(f"<= {t} for {call}" for call, t in TARGETS.items())
            + ".\n\n"
            + result
        )
        with args.out.open("a") as out:
            out.write(section)
        print(f"appended to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
