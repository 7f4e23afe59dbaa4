"""Benchmark: frames through ``mean`` as a video stream (RunImageStream) against sequential
unary calls (RunImage), from one caller, with same-host shared memory on and off.

One run starts a real ``tms-server`` (a models folder holding only ``mean``) as a subprocess
on 127.0.0.1, and two ``ModelClient``s: one with shared memory (the default on Linux: each
frame is written into a region the worker attached and sent by reference) and one with
``shared_memory=False`` (each frame's pixels in the request bytes). A video caller sends
frames one after another: the unary way, each frame is a ``run_image`` call that waits for
its answer before the next; the stream way, ``run_image_stream`` keeps up to ``window``
frames in flight on one worker, so sending the next frame overlaps with the server running
the previous one. That makes four ways: ``unary``, ``unary+shm``, ``stream``, ``stream+shm``.
For every frame size and window it warms them all up, then measures them in alternating
slices (the order rotated and reversed from round to round) so that drift on a noisy machine
hits all alike, and reports frames/s and ratios as a Markdown table. The baseline is
``unary`` (sequential calls sending bytes): the targets are stream/unary >= 1.3 and
stream+shm/unary >= 2; stream+shm/unary+shm and unary+shm/unary are reported too.

    python3 -m uv run python benchmarks/bench_stream.py [--out benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tms_client import ModelClient

# Run as a script (python benchmarks/bench_stream.py): make the benchmarks folder importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_mean import THREADS, machine, models_folder, parse_sizes, server_process
from benchmarks.raw_server import pixel_mean

#: Targets, 640x480x3: frames/s of a way over those of sequential unary calls sending bytes.
TARGETS = {"stream": 1.3, "stream+shm": 2.0}
WAYS = ("unary", "unary+shm", "stream", "stream+shm")
#: Ratios reported: (numerator, denominator) ways.
RATIOS = (
    ("stream+shm", "unary"),
    ("stream", "unary"),
    ("unary+shm", "unary"),
    ("stream+shm", "unary+shm"),
    ("stream+shm", "stream"),
)
CALL_TIMEOUT = 30.0

Frame = npt.NDArray[np.uint8]


@dataclass
class Count:
    """Frames answered by one way in one cell, and the time they took."""

    frames: int = 0
    elapsed: float = 0.0

    def add(self, frames: int, elapsed: float) -> None:
        self.frames += frames
        self.elapsed += elapsed

    @property
    def rate(self) -> float:
        return self.frames / self.elapsed if self.elapsed else 0.0


@dataclass
class Cell:
    """One (frame size, window) of the table."""

    width: int
    height: int
    window: int
    counts: dict[str, Count] = field(default_factory=lambda: {way: Count() for way in WAYS})

    @property
    def label(self) -> str:
        return f"{self.width}x{self.height}x3"

    def ratio(self, way: str, baseline: str = "unary") -> float:
        base = self.counts[baseline].rate
        return self.counts[way].rate / base if base else 0.0


def unary(client: ModelClient, frame: Frame, seconds: float) -> tuple[int, float]:
    """Sequential RunImage calls for ``seconds``: (frames answered, time taken)."""
    begin = time.perf_counter()
    deadline, frames = begin + seconds, 0
    while time.perf_counter() < deadline:
        client.run_image(frame)
        frames += 1
    return frames, time.perf_counter() - begin


def stream(client: ModelClient, frame: Frame, seconds: float, *, window: int) -> tuple[int, float]:
    """One RunImageStream fed frames for ``seconds``: (frames answered, time taken, until
    the last answer)."""
    begin = time.perf_counter()
    deadline = begin + seconds

    def frames() -> Iterator[Frame]:
        while time.perf_counter() < deadline:
            yield frame

    answered = sum(1 for _ in client.run_image_stream(frames(), window=window))
    return answered, time.perf_counter() - begin


def measure(
    cell: Cell,
    ways: dict[str, Callable[[float], tuple[int, float]]],
    *,
    duration: float,
    warmup: float,
    rounds: int,
) -> None:
    """Warm every way up, then measure them in ``rounds`` slices each, the order rotated
    and reversed from round to round."""
    for way in ways.values():
        way(warmup)
    names = list(ways)
    for index in range(rounds):
        turn = index // 2 % len(names)
        order = names[turn:] + names[:turn]
        for name in order if index % 2 == 0 else order[::-1]:
            cell.counts[name].add(*ways[name](duration / rounds))


def verdict(cell: Cell, way: str) -> str:
    target = TARGETS.get(way)
    if target is None or (cell.width, cell.height) != (640, 480):
        return ""
    return "met" if cell.ratio(way) >= target else f"**missed** (< {target:g})"


def table(cells: Sequence[Cell]) -> str:
    """frames/s of each way, and its ratio over ``unary``, in each cell."""
    head = (
        "| frame | window | way | frames | frames/s | MB/s | ratio (way/unary) | target |\n"
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |\n"
    )
    rows = []
    for cell in cells:
        for name, count in cell.counts.items():
            mb = count.rate * cell.width * cell.height * 3 / 1e6
            rows.append(
                f"| {cell.label} | {cell.window if name.startswith('stream') else ''} | {name} "
                f"| {count.frames} | {count.rate:.0f} | {mb:.0f} "
                f"| {cell.ratio(name):.3f} | {verdict(cell, name)} |"
            )
    return head + "\n".join(rows) + "\n"


def ratios(cells: Sequence[Cell]) -> str:
    """Every ratio of RATIOS, a column each, a row per cell."""
    names = [f"{a} / {b}" for a, b in RATIOS]
    head = f"| frame | window | {' | '.join(names)} |\n| --- | ---: |{' ---: |' * len(names)}\n"
    rows = [
        f"| {cell.label} | {cell.window} | "
        + " | ".join(f"{cell.ratio(a, b):.3f}" for a, b in RATIOS)
        + " |"
        for cell in cells
    ]
    return head + "\n".join(rows) + "\n"


def lends(client: ModelClient) -> bool:
    """Whether ``client`` has regions attached to a worker (shared memory in use). Peeks at
    the pool: a check of the benchmark, not an API."""
    pool = client._pool
    assert pool is not None
    workers = pool.core.workers.workers()
    return any("regions" in repr(getattr(w.channel, "lender", "")) for w in workers)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--duration", type=float, default=10.0, help="measured seconds per way and cell [10]"
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds [1]")
    parser.add_argument(
        "--rounds", type=int, default=10, help="alternating slices the duration is cut into [10]"
    )
    parser.add_argument("--workers", type=int, default=2, help="server worker processes [2]")
    parser.add_argument("--sizes", default="640x480", help="WIDTHxHEIGHT,... of the frames")
    parser.add_argument("--windows", default="2,4,8", help="stream windows, comma-separated")
    parser.add_argument("--out", type=Path, help="also append the results to this Markdown file")
    args = parser.parse_args(argv)
    sizes = parse_sizes(args.sizes)
    windows = [int(w) for w in args.windows.split(",")]
    command = "python3 -m uv run python benchmarks/bench_stream.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    started = datetime.datetime.now(datetime.UTC)
    about = machine()
    rng = np.random.default_rng(0)
    frames = {size: rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) for size in sizes}
    cells = [Cell(w, h, window) for (w, h) in sizes for window in windows]

    with contextlib.ExitStack() as stack:
        temp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tms-bench-")))
        log = stack.enter_context((temp / "server.log").open("wb"))
        try:
            target = stack.enter_context(
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
        except RuntimeError:
            log.flush()
            sys.stderr.write((temp / "server.log").read_text(errors="replace")[-4000:])
            raise
        shm = stack.enter_context(ModelClient("mean", target, timeout=CALL_TIMEOUT))
        plain = stack.enter_context(
            ModelClient("mean", target, timeout=CALL_TIMEOUT, shared_memory=False)
        )
        for size, frame in frames.items():
            expected = pixel_mean(frame)
            for client in (shm, plain):
                got = [r.result["mean"] for r in client.run_image_stream([frame, frame])]
                if not np.allclose([client.run_image(frame)["mean"], *got], expected):
                    raise RuntimeError(f"wrong means for {size}: {got}, expected {expected}")
        if not lends(shm) or lends(plain):
            raise RuntimeError("shared memory is not in use as asked (another host? not Linux?)")
        for cell in cells:
            frame = frames[(cell.width, cell.height)]
            ways: dict[str, Callable[[float], tuple[int, float]]] = {
                "unary": functools.partial(unary, plain, frame),
                "unary+shm": functools.partial(unary, shm, frame),
                "stream": functools.partial(stream, plain, frame, window=cell.window),
                "stream+shm": functools.partial(stream, shm, frame, window=cell.window),
            }
            print(f"measuring {cell.label}, window {cell.window} ...", file=sys.stderr)
            measure(cell, ways, duration=args.duration, warmup=args.warmup, rounds=args.rounds)

    result = (
        table(cells) + "\nRatios of frames/s, each from the same run and cell:\n\n" + ratios(cells)
    )
    print(result)
    if args.out is not None:
        section = (
            "\n## Video streams: RunImageStream against sequential RunImage, shared memory on "
            "and off\n\n"
            f"Command: `{command.strip()}`\n\n"
            f"Date: {started:%Y-%m-%d %H:%M} UTC; one caller sending frames of random pixels "
            f"through `mean`; {args.workers} server worker processes x {THREADS} threads; "
            f"{args.duration:g}s measured per way and cell in {args.rounds} alternating "
            f"slices after {args.warmup:g}s of warm-up. Client and server share the machine.\n\n"
            + "\n".join(about)
            + "\n\nWays: `unary`/`stream` send each frame's pixels in the request bytes "
            "(`shared_memory=False`); `unary+shm`/`stream+shm` write them into a region the "
            "worker attached and send a reference. Baseline: `unary` (sequential calls, bytes). "
            "Targets, 640x480x3: "
            + ", ".join(f"{way}/unary >= {target:g}" for way, target in TARGETS.items())
            + ".\n\n"
            + result
        )
        with args.out.open("a", encoding="utf-8") as out:
            out.write(section)
        print(f"appended to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
