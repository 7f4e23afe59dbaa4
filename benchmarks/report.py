"""The benchmark report: every TMS benchmark in one run, written to ``benchmarks/REPORT.md``
with PNG plots beside it (``benchmarks/report/``).

    python3 -m uv run python benchmarks/report.py [--seconds 1.5] [--out benchmarks/REPORT.md]

Sections: latency against image size (64x64 to 3840x2160) for TMS's bytes path, its
shared-memory path, raw grpcio moving the same frame, and the model called in-process;
throughput against concurrency, TMS and raw grpcio; where a small call's time goes (the TMS
client and server each against raw grpcio, and raw grpcio on grpc.aio, the workers'
transport, at 1 and 8 callers); a CPU-bound model on one worker and on two;
dynamic batching on and off; a video stream against one unary call per frame. Every
ratio comes from one run: the systems a ratio compares are measured in alternating slices
(A B, B A, ...), so that a noisy machine slows them alike. The targets are checked here, in
the report, never by timed assertions in the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import itertools
import os
import re
import resource
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc
import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from tms.v1 import model_service_pb2 as pb
from tms_client import ModelClient, RoundRobin, calls
from tms_client.protocol.methods import method_path
from tms_client.protocol.wire import ImageMessage

# Run as a script (python benchmarks/report.py): make the benchmarks folder importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import bench_batching, bench_shm, bench_stream
from benchmarks.bench_mean import (
    CALL_TIMEOUT,
    THREADS,
    Call,
    RawClient,
    Samples,
    alternate,
    machine,
    models_folder,
    run_load,
    server_process,
)
from benchmarks.driver import driver
from benchmarks.raw_server import pixel_mean

HERE = Path(__file__).resolve().parent
SIZES = ((64, 64), (256, 256), (640, 480), (1280, 720), (1920, 1080), (3840, 2160))
CONCURRENCY = (1, 2, 4, 8, 16)
BUSY_SOURCE = '''\
"""Pure-Python work of about 40 ms a call: a CPU-bound model for the scaling check."""
import tms_server


class Model(tms_server.Model):
    inputs = "text"
    thread_safe = True

    def run(self, text, args):
        return {"sum": sum(i * i for i in range(int(args.get("n", 600000))))}
'''


@dataclass
class Target:
    """A number the issue set, checked against what this run measured."""

    what: str
    value: float
    limit: float
    at_most: bool  # value <= limit is met; else value >= limit

    @property
    def met(self) -> bool:
        return self.value <= self.limit if self.at_most else self.value >= self.limit

    def row(self) -> str:
        sign = "≤" if self.at_most else "≥"
        verdict = "met" if self.met else "**missed**"
        return f"| {self.what} | {self.value:.3f} | {sign} {self.limit:g} | {verdict} |"


@dataclass
class Report:
    """What the sections found: Markdown parts, plots, targets."""

    folder: Path
    seconds: float
    rounds: int
    parts: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)

    def plot(self, name: str, draw: Callable[[Any], None], title: str) -> None:
        figure, axes = plt.subplots(figsize=(7, 4.2))
        draw(axes)
        axes.set_title(title)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend()
        figure.tight_layout()
        self.folder.mkdir(parents=True, exist_ok=True)
        figure.savefig(self.folder / f"{name}.png", dpi=110)
        plt.close(figure)
        self.parts.append(f"![{title}](report/{name}.png)\n")


def sampled(
    calls: Mapping[str, Call], concurrency: int, seconds: float, rounds: int
) -> dict[str, Samples]:
    """The samples of each system of ``calls``, measured in alternating slices."""
    samples = {name: Samples() for name in calls}
    warmup = min(0.5, seconds / 2)
    alternate(samples, calls, concurrency, duration=seconds, warmup=warmup, rounds=rounds)
    return samples


def in_process(image: np.ndarray[Any, Any]) -> float:
    """What the mean model does, called in this process: the floor under any transport."""
    return pixel_mean(image)


def client(target: str, **options: Any) -> ModelClient:
    return ModelClient("mean", target, timeout=CALL_TIMEOUT, balancer=RoundRobin(), **options)


# -- sections ------------------------------------------------------------------------------------


def latency_by_size(report: Report, tms_target: str, raw: RawClient) -> None:
    rng = np.random.default_rng(0)
    with contextlib.ExitStack() as stack:
        systems: dict[str, ModelClient] = {
            "TMS bytes": stack.enter_context(client(tms_target, shared_memory=False)),
            "TMS shared memory": stack.enter_context(client(tms_target, shared_memory=True)),
        }
        rows: list[str] = []
        p50s: dict[str, list[float]] = {n: [] for n in ("in-process", "raw grpcio", *systems)}
        for width, height in SIZES:
            image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            calls: dict[str, Callable[[], object]] = {
                "in-process": functools.partial(in_process, image),
                "raw grpcio": functools.partial(raw.mean, image),
            }
            calls |= {name: functools.partial(c.run_image, image) for name, c in systems.items()}
            print(f"latency: {width}x{height} ...", file=sys.stderr)
            samples = sampled(calls, 1, report.seconds, report.rounds)
            base = samples["raw grpcio"].percentile_ms(50)
            for name, measured in samples.items():
                p50 = measured.percentile_ms(50)
                p50s[name].append(p50)
                ratio = f"{p50 / base:.3f}"
                rows.append(
                    f"| {width}x{height}x3 | {name} | {p50:.3f} | "
                    f"{measured.percentile_ms(99):.3f} | {ratio} |"
                )
    report.parts.append(
        "## Latency against image size (concurrency 1)\n\n"
        "The `mean` model on random 3-channel uint8 frames; p50 and p99 per call as the client "
        "sees it; the ratio is to raw grpcio moving the same frame and computing the same mean.\n\n"
        "| image | system | p50 ms | p99 ms | p50 / raw |\n| --- | --- | ---: | ---: | ---: |\n"
        + "\n".join(rows)
        + "\n"
    )
    pixels = [w * h for w, h in SIZES]

    def draw(axes: Any) -> None:
        for name, values in p50s.items():
            axes.plot(pixels, values, marker="o", label=name)
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("pixels per frame")
        axes.set_ylabel("p50 latency (ms)")

    report.plot("latency", draw, "p50 latency against image size")


def throughput_by_concurrency(
    report: Report, tms_target: str, raw_target: str, workers: int, log: IO[bytes]
) -> None:
    rows: list[str] = []
    clients = {"TMS": "thread client", "TMS asyncio": "asyncio client"}
    systems = (  # name, driver kind, target, shared memory
        ("TMS", "tms", tms_target, True),
        ("TMS asyncio", "tms-asyncio", tms_target, True),
        ("TMS bytes", "tms", tms_target, False),
        ("TMS asyncio bytes", "tms-asyncio", tms_target, False),
        ("raw grpcio", "raw", raw_target, True),
    )
    rates: dict[str, list[float]] = {name: [] for name, *_ in systems}
    with contextlib.ExitStack() as stack:
        # Each client in a process of its own, as in bench_mean.py (see driver.py).
        calls: dict[str, Call] = {
            name: stack.enter_context(
                driver(kind, target, workers=workers, log=log, shared_memory=shared_memory)
            ).on(224, 224)
            for name, kind, target, shared_memory in systems
        }
        for concurrency in CONCURRENCY:
            print(f"throughput: concurrency {concurrency} ...", file=sys.stderr)
            samples = sampled(calls, concurrency, report.seconds, report.rounds)
            base = samples["raw grpcio"]
            for name, measured in samples.items():
                rates[name].append(measured.throughput)
                ratio = measured.throughput / base.throughput
                p50_ratio = measured.percentile_ms(50) / base.percentile_ms(50)
                rows.append(
                    f"| {concurrency} | {name} | {measured.throughput:.0f} | "
                    f"{measured.percentile_ms(50):.3f} | {p50_ratio:.3f} | {ratio:.3f} |"
                )
                if name not in clients:
                    continue
                if concurrency == 1:
                    what = f"224x224 p50 / raw, c=1, {clients[name]}"
                    report.targets.append(Target(what, p50_ratio, 1.1, True))
                if concurrency == 8:
                    what = f"224x224 throughput / raw, c=8, {clients[name]}"
                    report.targets.append(Target(what, ratio, 0.95, False))
    report.parts.append(
        "## Throughput against concurrency (224x224x3)\n\n"
        "The thread client (`ModelClient`, callers are threads, their calls run on the "
        "client's own event loop) and the asyncio client (`AsyncModelClient`, callers are "
        "coroutines of one event loop) against raw grpcio's thread API, as in "
        "`bench_mean.py`: each client in a process of its own (`driver.py`), the TMS clients "
        "with their defaults (shared memory, calls carried on `Calls` streams), and again "
        "with shared memory off (bytes).\n\n"
        "| callers | system | calls/s | p50 ms | p50 / raw | calls/s / raw |\n"
        "| ---: | --- | ---: | ---: | ---: | ---: |\n" + "\n".join(rows) + "\n"
    )

    def draw(axes: Any) -> None:
        for name, values in rates.items():
            axes.plot(CONCURRENCY, values, marker="o", label=name)
        axes.set_xscale("log", base=2)
        axes.set_xlabel("concurrent callers")
        axes.set_ylabel("calls per second")

    report.plot("throughput", draw, "throughput against concurrency (224x224x3)")


def cpu_seconds(pids: Sequence[int]) -> float:
    """CPU time (user + system) the processes ``pids`` have used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def own_cpu_seconds() -> float:
    """CPU time this process (the clients, all threads) has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def per_worker(
    target: str, workers: int, stack: contextlib.ExitStack
) -> list[grpc.UnaryUnaryMultiCallable[bytes, bytes]]:
    """RunImage on one raw grpcio channel to each of the ``workers`` worker processes of the
    TMS server at ``target`` (found by asking new connections for their pid), round-robin
    over them as the TMS client and RawClient are."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    found: dict[int, grpc.Channel] = {}
    for _ in range(10 * workers + 10):
        if len(found) == workers:
            break
        channel = stack.enter_context(grpc.insecure_channel(target, options=options))
        ask: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            method_path("GetWorkerInfo")
        )
        info = pb.GetWorkerInfoResponse.FromString(ask(b"", timeout=CALL_TIMEOUT))
        found.setdefault(info.pid, channel)
    return [channel.unary_unary(method_path("RunImage")) for channel in found.values()]


def small_call_costs(report: Report, tms_target: str, raw: RawClient, raw_aio: RawClient) -> None:
    """Where a 224x224 call's time goes: the TMS client and server each against raw grpcio.

    Four ways of making the same call, at 1 and at 8 callers, in alternating slices: the TMS
    client calling the TMS server; raw grpcio calling the TMS server (a RunImageRequest, its
    pixels joined in per call as the TMS client does); raw grpcio calling the raw server on
    grpc.aio (the TMS workers' transport, nothing else of TMS); raw grpcio calling the raw
    server. The first two differ only in the client, the last three only in the server. CPU
    time per call is read from /proc for the servers' workers and from getrusage for this
    process (the clients)."""
    image = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    request = calls.run_image("mean", image).request
    assert isinstance(request, ImageMessage)
    rows = []
    with contextlib.ExitStack() as stack:
        tms = stack.enter_context(client(tms_target, shared_memory=False))
        tms.run_image(image)
        tms_pids = [w.pid for w in tms.workers()]
        methods = itertools.cycle(per_worker(tms_target, len(tms_pids), stack))
        ways: dict[str, tuple[Callable[[], object], list[int]]] = {
            "TMS client, TMS server": (functools.partial(tms.run_image, image), tms_pids),
            "raw client, TMS server": (
                lambda: next(methods)(request.join(), timeout=CALL_TIMEOUT),
                tms_pids,
            ),
            "raw client, raw grpc.aio server": (
                functools.partial(raw_aio.mean, image),
                raw_aio.pids,
            ),
            "raw client, raw server": (functools.partial(raw.mean, image), raw.pids),
        }
        names = list(ways)
        slice_seconds = report.seconds / report.rounds
        for concurrency in (1, 8):
            print(f"small call costs, {concurrency} caller(s) ...", file=sys.stderr)
            samples = {name: Samples() for name in ways}
            spent = {name: [0.0, 0.0] for name in ways}  # client, server CPU seconds
            for call, _ in ways.values():
                run_load(call, concurrency, 0.5)
            for index in range(report.rounds * 2):
                for name in names if index % 2 == 0 else names[::-1]:
                    call, pids = ways[name]
                    mine, theirs = own_cpu_seconds(), cpu_seconds(pids)
                    samples[name].add(run_load(call, concurrency, slice_seconds))
                    spent[name][0] += own_cpu_seconds() - mine
                    spent[name][1] += cpu_seconds(pids) - theirs
            base = samples["raw client, raw server"]
            for name, measured in samples.items():
                count = len(measured.latencies)
                client_us, server_us = (seconds / count * 1e6 for seconds in spent[name])
                rows.append(
                    f"| {name} | {concurrency} | {measured.percentile_ms(50):.3f} | "
                    f"{measured.percentile_ms(50) / base.percentile_ms(50):.3f} | "
                    f"{measured.throughput:.0f} | {measured.throughput / base.throughput:.3f} | "
                    f"{client_us:.0f} | {server_us:.0f} |"
                )
    report.parts.append(
        "## Where a small call's time goes (224x224x3)\n\n"
        "The same call made four ways in alternating slices: the first two rows differ only "
        "in the client, the last three only in the server (the third is raw grpcio on "
        "grpc.aio, the transport the TMS workers use, with nothing else of TMS). Ratios are "
        "to raw client and raw server at the same number of callers. CPU per call: the client "
        "(this process) and the server's workers.\n\n"
        "| way | callers | p50 ms | p50 / raw | calls/s | calls/s / raw "
        "| client CPU µs/call | server CPU µs/call |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n" + "\n".join(rows) + "\n"
    )


def scaling(report: Report, temp: Path, log: IO[bytes]) -> None:
    folder = temp / "busy-models"
    (folder / "busy").mkdir(parents=True)
    (folder / "busy" / "__init__.py").write_text(BUSY_SOURCE)
    with contextlib.ExitStack() as stack:
        clients = {}
        for workers in (1, 2):
            target = stack.enter_context(tms_server(folder, workers, log))
            clients[f"{workers} worker{'s' if workers > 1 else ''}"] = stack.enter_context(
                ModelClient("busy", target, timeout=CALL_TIMEOUT, balancer=RoundRobin())
            )
        calls = {name: functools.partial(c.run_text, "x") for name, c in clients.items()}
        print("scaling ...", file=sys.stderr)
        samples = sampled(calls, 8, report.seconds * 2, report.rounds)
    one, two = (samples[name].throughput for name in calls)
    report.targets.append(
        Target("CPU-bound model, throughput 2 workers / 1", two / one, 1.8, False)
    )
    report.parts.append(
        "## Scaling over worker processes\n\n"
        "A CPU-bound model (about 40 ms of pure Python a call, so that the client's own work, "
        "on the same two cores, is a small share of each call), 8 concurrent callers, one "
        "server with one worker and one with two, measured alternately.\n\n"
        "| server | calls/s | p50 ms |\n| --- | ---: | ---: |\n"
        + "\n".join(
            f"| {name} | {s.throughput:.1f} | {s.percentile_ms(50):.1f} |"
            for name, s in samples.items()
        )
        + f"\n\nRatio: {two / one:.3f}.\n"
    )


def embedded(
    report: Report, title: str, main: Callable[[list[str]], int], argv: list[str]
) -> list[list[str]]:
    """Run another benchmark script's ``main`` (its own servers, its own alternating slices),
    put its Markdown under ``title``, and return the rows of its table, split into cells."""
    with tempfile.TemporaryDirectory(prefix="tms-report-") as folder:
        out = Path(folder) / "part.md"
        print(f"{title} ...", file=sys.stderr)
        if main([*argv, "--out", str(out)]) != 0:
            raise RuntimeError(f"{title}: the benchmark failed")
        text = out.read_text()
    # Less what the report says once for all: titles, the command, the machine.
    said = ("#", "Command:", "- CPU:", "- OS:", "- Python", "- environment:")
    body = "\n".join(line for line in text.splitlines() if not line.startswith(said))
    body = re.sub(r"\n{3,}", "\n\n", body)
    report.parts.append(f"## {title}\n\n`{' '.join(argv)}`\n{body}\n")
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| ") and not line.startswith("| ---")
    ]


def number(text: str) -> float:
    found = re.search(r"-?\d+(\.\d+)?", text)
    if found is None:
        raise ValueError(f"no number in {text!r}")
    return float(found.group(0))


def shared_memory_image_to_image(report: Report) -> None:
    seconds = str(report.seconds * 2)
    rows = embedded(
        report,
        "Shared memory: RunImage and RunImageToImage of a 1080p frame",
        bench_shm.main,
        ["--duration", seconds, "--rounds", str(report.rounds), "--concurrency", "1"],
    )
    # The targets come from here, not from the size sweep: there raw grpcio (whose server and
    # channels carry frames of every size) took about 20 ms a 1080p call in two runs, against
    # 11-12 ms here, where it moves 1080p frames alone; that made the sweep's ratio look better.
    limits = {"RunImage": ("RunImage", 0.4), "RunImageToImage": ("image-to-image", 0.5)}
    for row in rows:
        if row[0] in limits and row[2] == "1" and row[3] == "shm":
            name, limit = limits[row[0]]
            report.targets.append(
                Target(f"1920x1080 {name} p50 / raw, shared memory", number(row[8]), limit, True)
            )


def batching(report: Report) -> None:
    seconds = str(report.seconds * 3)
    rows = embedded(
        report,
        "Dynamic batching on and off (the digits example)",
        bench_batching.main,
        ["--duration", seconds, "--rounds", str(report.rounds), "--warmup", "1"],
    )
    for row in rows:
        if row[1] != "batched":
            continue
        if row[0] == "16":
            report.targets.append(
                Target("batching on / off, throughput at 16 callers", number(row[7]), 2.0, False)
            )
        if row[0] == "1":
            growth, wait = (float(x) for x in re.findall(r"[\d.]+(?= ms)", row[8])[:2])
            report.targets.append(
                Target(
                    f"batching: p50 growth at 1 caller, ms (wait {wait:g} ms)", growth, wait, True
                )
            )
    # Not targets: what the batching gives a convolutional network on the CPU (upright), which
    # costs as much per image in a batch as alone, and a model whose run costs the same for one
    # image or many (an accelerator's stand-in).
    for model, title in (
        ("upright", "Dynamic batching on and off (upright: ONNX Runtime on the CPU)"),
        (
            "fixed_cost",
            "Dynamic batching on and off (a fixed cost a run: an accelerator's stand-in)",
        ),
    ):
        argv = ["--model", model, "--duration", seconds, "--rounds", str(report.rounds)]
        embedded(
            report, title, bench_batching.main, [*argv, "--warmup", "1", "--concurrency", "16"]
        )


def streaming(report: Report) -> None:
    seconds = str(report.seconds * 2)
    rows = embedded(
        report,
        "A video stream against one unary call per frame (640x480)",
        bench_stream.main,
        ["--duration", seconds, "--rounds", str(report.rounds), "--windows", "4"],
    )
    wanted = {"stream": 1.3, "stream+shm": 2.0}
    for row in rows:
        if row[0] == "640x480x3" and row[2] in wanted and len(row) >= 8:
            what = f"640x480 {row[2]} / unary (bytes) frames per second, window 4"
            report.targets.append(Target(what, number(row[6]), wanted[row[2]], False))


@contextlib.contextmanager
def tms_server(models: Path, workers: int, log: IO[bytes]) -> Iterator[str]:
    command = [
        *(sys.executable, "-m", "tms_server"),
        *("--models", str(models), "--entry-points", "false"),
        *("--host", "127.0.0.1", "--port", "0"),
        *("--workers", str(workers), "--threads", str(THREADS)),
        *("--grace-seconds", "1", "--log-level", "WARNING"),
    ]
    with server_process(f"tms-server ({workers})", command, log) as target:
        yield target


# -- the run -------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=1.5, help="measured seconds per system and point [1.5]"
    )
    parser.add_argument("--rounds", type=int, default=4, help="alternating slices per point [4]")
    parser.add_argument(
        "--out", type=Path, default=HERE / "REPORT.md", help="[benchmarks/REPORT.md]"
    )
    args = parser.parse_args(argv)
    command = "python3 -m uv run python benchmarks/report.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    began = time.perf_counter()
    started = datetime.datetime.now(datetime.UTC)
    about = machine()
    workers = len(os.sched_getaffinity(0))
    report = Report(args.out.parent / "report", args.seconds, args.rounds)
    with contextlib.ExitStack() as stack:
        temp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tms-report-")))
        log = stack.enter_context((temp / "servers.log").open("wb"))
        tms_target = stack.enter_context(tms_server(models_folder(temp), workers, log))
        raw_command = [
            *(sys.executable, str(HERE / "raw_server.py")),
            *("--host", "127.0.0.1", "--port", "0"),
            *("--workers", str(workers), "--threads", str(THREADS)),
        ]
        raw_target = stack.enter_context(server_process("raw-server", raw_command, log))
        raw = RawClient(raw_target, workers)
        stack.callback(raw.close)
        raw_aio = RawClient(
            stack.enter_context(server_process("raw-server --aio", [*raw_command, "--aio"], log)),
            workers,
        )
        stack.callback(raw_aio.close)
        latency_by_size(report, tms_target, raw)
        throughput_by_concurrency(report, tms_target, raw_target, workers, log)
        small_call_costs(report, tms_target, raw, raw_aio)
        scaling(report, temp, log)
    shared_memory_image_to_image(report)
    batching(report)
    streaming(report)
    minutes = (time.perf_counter() - began) / 60
    args.out.write_text(
        "# TMS benchmark report\n\n"
        f"Command: `{command.strip()}` ({minutes:.1f} min)\n\n"
        f"Date: {started:%Y-%m-%d %H:%M} UTC; servers of {workers} worker processes x {THREADS} "
        f"threads (TMS and raw grpcio alike); {args.seconds:g}s measured per system and point "
        f"in {args.rounds} alternating slices. Client and servers share the machine.\n\n"
        + "\n".join(about)
        + "\n\n## Targets\n\n| target | measured | limit | |\n| --- | ---: | ---: | --- |\n"
        + "\n".join(target.row() for target in report.targets)
        + "\n\n"
        + "\n".join(report.parts)
    )
    print(f"wrote {args.out} in {minutes:.1f} min", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
