"""Benchmark: frames through ``mean`` as a video stream (RunImageStream) against sequential
unary calls (RunImage), from one caller.

One run starts a real ``tms-server`` (a models folder holding only ``mean``) as a subprocess
on 127.0.0.1, and one ``ModelClient``. A video caller sends frames one after another: the
unary way, each frame is a ``run_image`` call that waits for its answer before the next; the
stream way, ``run_image_stream`` keeps up to ``window`` frames in flight on one worker, so
sending the next frame overlaps with the server running the previous one. For every frame
size and window it warms both up, then measures them in alternating slices (unary, stream,
stream, unary, ...) so that drift on a noisy machine hits both alike, and reports frames/s
and the ratio stream/unary as a Markdown table.

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

TARGET_RATIO = 1.3  # frames/s of the stream over those of sequential unary calls, 640x480x3
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
    counts: dict[str, Count] = field(default_factory=lambda: {"unary": Count(), "stream": Count()})

    @property
    def label(self) -> str:
        return f"{self.width}x{self.height}x3"

    @property
    def ratio(self) -> float:
        unary = self.counts["unary"].rate
        return self.counts["stream"].rate / unary if unary else 0.0


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
    """Warm both ways up, then measure them in ``rounds`` alternating slices each."""
    for way in ways.values():
        way(warmup)
    names = list(ways)
    for index in range(rounds):
        for name in names if index % 2 == 0 else names[::-1]:
            cell.counts[name].add(*ways[name](duration / rounds))


def verdict(cell: Cell) -> str:
    if (cell.width, cell.height) != (640, 480):
        return "-"
    return "met" if cell.ratio >= TARGET_RATIO else f"**missed** (ratio < {TARGET_RATIO})"


def table(cells: Sequence[Cell]) -> str:
    head = (
        "| frame | window | way | frames | frames/s | MB/s | ratio (stream/unary) | target |\n"
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |\n"
    )
    rows = []
    for cell in cells:
        for name, count in cell.counts.items():
            first = name == "stream"
            mb = count.rate * cell.width * cell.height * 3 / 1e6
            rows.append(
                f"| {cell.label} | {cell.window if first else ''} | {name} | {count.frames} "
                f"| {count.rate:.0f} | {mb:.0f} "
                f"| {f'{cell.ratio:.3f}' if first else ''} "
                f"| {verdict(cell) if first else ''} |"
            )
    return head + "\n".join(rows) + "\n"


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
        client = stack.enter_context(ModelClient("mean", target, timeout=CALL_TIMEOUT))
        for size, frame in frames.items():
            expected = float(frame.mean())
            got = [r.result["mean"] for r in client.run_image_stream([frame, frame])]
            if not np.allclose([client.run_image(frame)["mean"], *got], expected):
                raise RuntimeError(f"wrong means for {size}: {got}, expected {expected}")
        for cell in cells:
            frame = frames[(cell.width, cell.height)]
            ways: dict[str, Callable[[float], tuple[int, float]]] = {
                "unary": functools.partial(unary, client, frame),
                "stream": functools.partial(stream, client, frame, window=cell.window),
            }
            print(f"measuring {cell.label}, window {cell.window} ...", file=sys.stderr)
            measure(cell, ways, duration=args.duration, warmup=args.warmup, rounds=args.rounds)

    result = table(cells)
    print(result)
    if args.out is not None:
        section = (
            "\n## Video streams: RunImageStream against sequential RunImage\n\n"
            f"Command: `{command.strip()}`\n\n"
            f"Date: {started:%Y-%m-%d %H:%M} UTC; one caller sending frames of random pixels "
            f"through `mean`; {args.workers} server worker processes x {THREADS} threads; "
            f"{args.duration:g}s measured per way and cell in {args.rounds} alternating "
            f"slices after {args.warmup:g}s of warm-up. Client and server share the machine.\n\n"
            + "\n".join(about)
            + f"\n\nTarget: 640x480x3 frames/s ratio (stream/unary) >= {TARGET_RATIO}.\n\n"
            + result
        )
        with args.out.open("a", encoding="utf-8") as out:
            out.write(section)
        print(f"appended to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
