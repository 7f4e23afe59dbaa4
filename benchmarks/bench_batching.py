"""Benchmark: dynamic batching on the ``digits`` model (scikit-learn), on against off.

One run starts two real ``tms-server`` processes serving examples/models/digits alike (the
same workers and threads), one with the model's dynamic batching (its ``max_batch_delay``,
or ``--delay-ms``) and one with it off (``--model-max-batch-delay-ms digits=off``), and
drives both with the same load loop: ``tms_client.ModelClient("digits", target)
.run_image(scan)``, a scan of a handwritten digit as a grayscale array, from 1 and from 16
threads. For every concurrency it warms both up, then measures them in alternating slices
(batched, off, off, batched, ...) so that drift on a noisy machine hits both alike, and
reports p50/p99 latency, throughput and the ratios batched/off as a Markdown table.

    python3 -m uv run python benchmarks/bench_batching.py [--out benchmarks/RESULTS.md]

``--out`` writes (or replaces) the "Dynamic batching" section of that file (with another
``--model``, a section of its own). ``--model upright``: the ONNX Runtime example, a
convolutional network that costs as much per image in a batch as alone on a CPU.
``--model fixed_cost`` stands for a model on an accelerator, whose every run costs the same
however many images it takes, to show what the batching itself can give apart from the model.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import os
import shlex
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
import numpy.typing as npt

from tms.v1 import model_service_pb2, model_service_pb2_grpc
from tms_client import ModelClient, RoundRobin

# Run as a script (python benchmarks/bench_batching.py): make the benchmarks folder importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_mean import Samples, alternate, machine, server_process

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SECTION = "## Dynamic batching"
FIXED_COST = '''\
"""Stands for a model on an accelerator: a run costs 20 ms however many images it takes
(plus 0.2 ms an image), spent waiting (no CPU), one run at a time."""
import time

import tms_server


class Model(tms_server.Model):
    """A fixed cost a run."""

    max_batch_size = 16
    max_batch_delay = 0.002

    def run(self, image, args):
        return self.run_batch([image], args)[0]

    def run_batch(self, images, args):
        time.sleep(0.020 + 0.0002 * len(images))
        return [{"angle": 0} for _ in images]
'''
START_TIMEOUT = 120.0
CALL_TIMEOUT = 30.0
SYSTEMS = ("batched", "off")
#: Per model: its section's heading in --out's file, and what it is.
MODELS = {
    "digits": (SECTION, "(a scikit-learn random forest, CPU)"),
    "upright": (f"{SECTION}, upright", "(ONNX Runtime, CPU)"),
    "fixed_cost": (f"{SECTION}, fixed-cost model", "(20 ms a run, waiting: see the script)"),
}


def text_line() -> npt.NDArray[np.uint8]:
    """A BGR line of black text on white, about as OCR crops it: 32 x 200 pixels."""
    line = np.full((32, 200, 3), 255, np.uint8)
    cv2.putText(line, "Tiny Model Server", (4, 23), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 2)
    return line


def digit_scan() -> tuple[npt.NDArray[np.uint8], int]:
    """The first of scikit-learn's scans of handwritten digits as a 32x32 grayscale image,
    dark on white (as tests/support.py's digit_scans), and its digit."""
    import sklearn.datasets  # noqa: PLC0415 - seconds to import: only for --model digits

    scans = sklearn.datasets.load_digits()
    scan = 255 - np.rint(scans.images[0] * (255 / 16)).astype(np.uint8)
    return np.kron(scan, np.ones((4, 4), np.uint8)), int(scans.target[0])


def call_input(model: str) -> tuple[npt.NDArray[np.uint8], str, Callable[[Any], bool]]:
    """What every call sends to ``model``, its description, and a check of the answer."""
    if model == "digits":
        scan, digit = digit_scan()
        about = f"a {scan.shape[1]}x{scan.shape[0]} grayscale scan of a handwritten digit"
        return scan, about, lambda result: result["digit"] == digit
    line = text_line()
    about = f"a {line.shape[1]}x{line.shape[0]} BGR line of text"
    return line, about, lambda result: result["angle"] == 0


@dataclass
class Cell:
    """One concurrency of the table, with the samples of both servers."""

    concurrency: int
    samples: dict[str, Samples] = field(
        default_factory=lambda: {name: Samples() for name in SYSTEMS}
    )


def verdict(cell: Cell, delay_ms: float) -> str:
    batched, off = cell.samples["batched"], cell.samples["off"]
    if cell.concurrency == 1:
        growth = batched.percentile_ms(50) - off.percentile_ms(50)
        ok = growth <= delay_ms
        return f"{'met' if ok else '**missed**'} (p50 +{growth:.2f} ms, wait {delay_ms:g} ms)"
    if cell.concurrency == 16:
        ratio = batched.throughput / off.throughput
        return "met" if ratio >= 2 else "**missed** (throughput ratio < 2)"
    return "-"


def table(cells: Sequence[Cell], delay_ms: float, judged: bool = True) -> str:
    """The Markdown table of ``cells``; the target column says "not a target" unless
    ``judged`` (the targets are the digits model's)."""
    head = (
        "| conc. | batching | calls | p50 ms | p99 ms | req/s "
        "| p50 ratio (batched/off) | throughput ratio (batched/off) | target |\n"
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n"
    )
    rows = []
    for cell in cells:
        batched, off = cell.samples["batched"], cell.samples["off"]
        p50_ratio = batched.percentile_ms(50) / off.percentile_ms(50)
        throughput_ratio = batched.throughput / off.throughput
        for name, samples in cell.samples.items():
            first = name == "batched"
            rows.append(
                f"| {cell.concurrency} | {name} | {len(samples.latencies)} "
                f"| {samples.percentile_ms(50):.2f} | {samples.percentile_ms(99):.2f} "
                f"| {samples.throughput:.0f} "
                f"| {f'{p50_ratio:.3f}' if first else ''} "
                f"| {f'{throughput_ratio:.3f}' if first else ''} "
                f"| {(verdict(cell, delay_ms) if judged else 'not a target') if first else ''} |"
            )
    return head + "\n".join(rows) + "\n"


def model_info(target: str, model: str) -> model_service_pb2.ModelInfo:
    """The server's ModelInfo of ``model``, asked with the generated stub (it has every field)."""
    with grpc.insecure_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        request = model_service_pb2.GetModelInfoRequest(model=model)
        return stub.GetModelInfo(request, timeout=CALL_TIMEOUT).info


def models_folder(parent: Path, model: str) -> Path:
    """A models folder holding only ``model``: an example (digits, upright) or fixed_cost."""
    folder = parent / "models"
    (folder / model).mkdir(parents=True)
    if model != "fixed_cost":
        (folder / model).rmdir()
        (folder / model).symlink_to(ROOT / "examples" / "models" / model, target_is_directory=True)
    else:
        (folder / model / "__init__.py").write_text(FIXED_COST)
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    default_workers = len(os.sched_getaffinity(0))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--duration", type=float, default=10.0, help="measured seconds per server and cell [10]"
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds [2]")
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
        "--threads", type=int, default=16, help="threads per worker process, both servers [16]"
    )
    parser.add_argument(
        "--delay-ms", type=float, help="the batched server's wait [the model's max_batch_delay]"
    )
    parser.add_argument("--concurrency", default="1,16", help="client threads, comma-separated")
    parser.add_argument("--model", choices=tuple(MODELS), default="digits", help="[digits]")
    parser.add_argument("--out", type=Path, help="also write the results to this Markdown file")
    args = parser.parse_args(argv)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    command = "python3 -m uv run python benchmarks/bench_batching.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    started = datetime.datetime.now(datetime.UTC)
    about = machine()
    image, about_image, right = call_input(args.model)
    cells = [Cell(c) for c in concurrencies]

    with contextlib.ExitStack() as stack:
        temp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tms-bench-")))
        log = stack.enter_context((temp / "servers.log").open("wb"))
        model = args.model
        models = models_folder(temp, model)
        common = [
            *(sys.executable, "-m", "tms_server"),
            *("--models", str(models), "--entry-points", "false"),
            *("--host", "127.0.0.1", "--port", "0"),
            *("--workers", str(args.workers), "--threads", str(args.threads)),
            *("--grace-seconds", "1", "--log-level", "WARNING"),
        ]
        batching = [] if args.delay_ms is None else [f"{model}={args.delay_ms:g}"]
        flags = {"batched": batching, "off": [f"{model}=off"]}
        clients: dict[str, ModelClient] = {}
        infos: dict[str, model_service_pb2.ModelInfo] = {}
        try:
            for name in SYSTEMS:
                extra = ["--model-max-batch-delay-ms", *flags[name]] if flags[name] else []
                target = stack.enter_context(server_process(name, [*common, *extra], log))
                infos[name] = model_info(target, model)
                clients[name] = stack.enter_context(
                    ModelClient(model, target, timeout=CALL_TIMEOUT, balancer=RoundRobin())
                )
        except RuntimeError:
            log.flush()
            sys.stderr.write((temp / "servers.log").read_text(errors="replace")[-4000:])
            raise
        info = infos["batched"]
        delay_ms = info.max_batch_delay.ToNanoseconds() / 1e6
        if not info.HasField("max_batch_delay") or infos["off"].HasField("max_batch_delay"):
            raise RuntimeError("the servers do not report batching on and off")
        for name, client in clients.items():
            if len(client.workers()) != args.workers:
                raise RuntimeError(f"{name}: found {len(client.workers())} of {args.workers}")
            if not right(client.run_image(image)):
                raise RuntimeError(f"{name}: {args.model} answered wrongly")

        for cell in cells:
            calls: dict[str, Callable[[], object]] = {
                name: functools.partial(client.run_image, image) for name, client in clients.items()
            }
            print(f"measuring concurrency {cell.concurrency} ...", file=sys.stderr)
            alternate(
                cell.samples,
                calls,
                cell.concurrency,
                duration=args.duration,
                warmup=args.warmup,
                rounds=args.rounds,
            )

    judged = model == "digits"  # the targets are the digits model's
    result = table(cells, delay_ms, judged=judged)
    print(result)
    if args.out is not None:
        heading, what = MODELS[model]
        section = (
            f"{heading}\n\n"
            f"Command: `{command.strip()}`\n\n"
            f"Date: {started:%Y-%m-%d %H:%M} UTC; `{model}` {what} on two servers "
            f"of {args.workers} worker processes x {args.threads} threads each, one with "
            f"dynamic batching (max_batch_delay {delay_ms:g} ms, max_batch_size "
            f"{info.max_batch_size}) and one without; {about_image} per call; "
            f"{args.duration:g}s measured per server and cell in "
            f"{args.rounds} alternating slices after {args.warmup:g}s of warm-up. Client and "
            "servers share the machine.\n\n"
            + "\n".join(about)
            + "\n\n"
            + (
                "Targets: throughput ratio (batched/off) >= 2 at concurrency 16; p50 at "
                "concurrency 1 no more than the wait above off's."
                if judged
                else f"Not a target (the targets are the digits model's): what batching gives "
                f"{model}."
            )
            + "\n\n"
            + result
        )
        previous = args.out.read_text() if args.out.exists() else ""
        before, found, after = previous.partition(heading + "\n")
        rest = after[after.find("\n## ") + 1 :] if found and "\n## " in after else ""
        text = (before.rstrip("\n") + "\n\n" if before.strip() else "") + section
        args.out.write_text(text + ("\n" + rest if rest else ""))
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
