"""Benchmark: what one small call costs as a unary RPC and as one message on an open stream.

bench_mean's 224x224 targets compare a TMS ``RunImage`` call with a raw grpcio unary call.
This benchmark measures where the floor of such a call lies: the same request (a 224x224x3
image for ``mean``, its pixels in the request bytes) sent ten ways, at 1 and at 8 callers,
in alternating slices, against a 2-worker TMS server and the 2-worker raw server
(``raw_server.py``):

- with grpcio's thread API: a raw unary call to the raw server (bench_mean's baseline); a
  raw unary ``RunImage`` to the TMS server; a ``RunImageStream`` frame on a stream the caller
  keeps open (one frame in flight per stream, a stream per caller); the TMS client's
  ``run_image``, its calls carried on ``Calls`` streams (the default) and each a call of its
  own (``call_streams=False``);
- the same five with grpc.aio, callers being coroutines of one event loop (the last two are
  the asyncio client's ``run_image``).

The stream ways need no TMS client: they show what a call could cost if a call were a
message on a stream rather than an RPC of its own, which is the part of a call that no work
inside TMS can remove. CPU per call is read from /proc for the servers' workers and from
getrusage for this process (the callers). Ratios are to the thread API's raw unary call at
the same number of callers.

    python3 -m uv run python benchmarks/bench_floor.py [--duration 6] [--rounds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import itertools
import json
import queue
import shlex
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from tms.v1 import image_pb2
from tms.v1 import model_service_pb2 as pb
from tms_client import AsyncModelClient, ModelClient
from tms_client.protocol.methods import method_path

# Run as a script (python benchmarks/bench_floor.py): make the benchmarks folder importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_mean import (
    CALL_TIMEOUT,
    THREADS,
    Call,
    OnLoop,
    Samples,
    machine,
    models_folder,
    run_load,
    server_process,
)
from benchmarks.raw_server import HEADER, MEAN_METHOD, PID_METHOD, pixel_mean
from benchmarks.report import cpu_seconds, own_cpu_seconds

WORKERS = 2
CONCURRENCY = (1, 8)
BASELINE = "thread: raw unary, raw server"
OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


def _found(pids: Sequence[bytes | int], wanted: int) -> None:
    if len(set(pids)) < wanted:
        raise RuntimeError(f"found {len(set(pids))} of {wanted} workers")


def thread_channels(target: str, ask: str, stack: contextlib.ExitStack) -> dict[int, grpc.Channel]:
    """One grpcio channel to each worker process at ``target``, by pid (``ask`` answers it)."""
    found: dict[int, grpc.Channel] = {}
    for _ in range(10 * WORKERS + 10):
        if len(found) == WORKERS:
            break
        channel = stack.enter_context(grpc.insecure_channel(target, options=OPTIONS))
        answer = unary(channel, ask)(b"", timeout=CALL_TIMEOUT, wait_for_ready=True)
        found.setdefault(pid_of(ask, answer), channel)
    _found(list(found), WORKERS)
    return found


async def aio_channels(target: str, ask: str, stack: contextlib.AsyncExitStack) -> list[Any]:
    """As ``thread_channels``, with grpc.aio channels."""
    found: dict[int, Any] = {}
    for _ in range(10 * WORKERS + 10):
        if len(found) == WORKERS:
            break
        channel = grpc.aio.insecure_channel(target, options=OPTIONS)
        stack.push_async_callback(channel.close)
        asked: Any = channel.unary_unary(ask)
        answer: bytes = await asked(b"", timeout=CALL_TIMEOUT, wait_for_ready=True)
        found.setdefault(pid_of(ask, answer), channel)
    _found(list(found), WORKERS)
    return list(found.values())


def unary(channel: grpc.Channel, method: str) -> grpc.UnaryUnaryMultiCallable[bytes, bytes]:
    """``method`` of ``channel``, taking and giving bytes."""
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
    return call


def pid_of(ask: str, answer: bytes) -> int:
    if ask == PID_METHOD:
        return int(answer)
    return pb.GetWorkerInfoResponse.FromString(answer).pid


class ThreadStreams:
    """Open RunImageStreams to the TMS server's workers, each taken by one call at a time: a
    call takes an idle stream (opening one when none is idle), sends its frame, reads the
    answer and gives the stream back. grpcio's thread API sends a stream's messages from an
    iterator on a thread of its own, so each stream is fed through a queue."""

    def __init__(self, channels: Sequence[grpc.Channel], first: bytes, frame: bytes) -> None:
        methods: list[grpc.StreamStreamMultiCallable[bytes, bytes]] = [
            channel.stream_stream(method_path("RunImageStream")) for channel in channels
        ]
        self._methods = itertools.cycle(methods)
        self._first = first
        self._frame = frame
        self._idle: queue.SimpleQueue[tuple[queue.SimpleQueue[bytes | None], Any]] = (
            queue.SimpleQueue()
        )
        self._open: list[queue.SimpleQueue[bytes | None]] = []

    def call(self) -> bytes:
        try:
            stream = self._idle.get_nowait()
        except queue.Empty:
            stream = self._start()
        frames, answers = stream
        frames.put(self._frame)
        answer: bytes = next(answers)
        self._idle.put(stream)
        return answer

    def _start(self) -> tuple[queue.SimpleQueue[bytes | None], Any]:
        frames: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._open.append(frames)

        def sent() -> Iterator[bytes]:
            while (frame := frames.get()) is not None:
                yield frame

        answers = next(self._methods)(sent())
        frames.put(self._first)
        next(answers)
        return frames, answers

    def close(self) -> None:
        for frames in self._open:
            frames.put(None)


class AioStreams:
    """As ThreadStreams, with grpc.aio streams written and read by the calling coroutine."""

    def __init__(self, channels: Sequence[Any], first: bytes, frame: bytes) -> None:
        self._methods = itertools.cycle(
            [channel.stream_stream(method_path("RunImageStream")) for channel in channels]
        )
        self._first = first
        self._frame = frame
        self._idle: list[Any] = []
        self._open: list[Any] = []

    async def call(self) -> bytes:
        stream = self._idle.pop() if self._idle else await self._start()
        await stream.write(self._frame)
        answer: bytes = await stream.read()
        self._idle.append(stream)
        return answer

    async def _start(self) -> Any:
        stream = next(self._methods)()
        self._open.append(stream)
        await stream.write(self._first)
        await stream.read()
        return stream

    async def close(self) -> None:
        for stream in self._open:
            await stream.done_writing()


@dataclass
class Way:
    """One way of making the call, and what it measured at each number of callers."""

    name: str
    pids: list[int]
    call: Call
    samples: dict[int, Samples] = field(default_factory=dict)
    cpu: dict[int, list[float]] = field(default_factory=dict)  # callers: client, server seconds


def measure(ways: Sequence[Way], *, duration: float, rounds: int) -> None:
    for concurrency in CONCURRENCY:
        print(f"{concurrency} caller(s) ...", file=sys.stderr)
        for way in ways:
            run_load(way.call, concurrency, 0.5)
            way.samples[concurrency] = Samples()
            way.cpu[concurrency] = [0.0, 0.0]
        for index in range(rounds):
            for way in ways if index % 2 == 0 else ways[::-1]:
                mine, theirs = own_cpu_seconds(), cpu_seconds(way.pids)
                way.samples[concurrency].add(run_load(way.call, concurrency, duration / rounds))
                way.cpu[concurrency][0] += own_cpu_seconds() - mine
                way.cpu[concurrency][1] += cpu_seconds(way.pids) - theirs


def table(ways: Sequence[Way]) -> str:
    base = next(way for way in ways if way.name == BASELINE)
    lines = [
        "| way | callers | p50 ms | p50 / raw | calls/s | calls/s / raw "
        "| client CPU µs/call | server CPU µs/call |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for concurrency in CONCURRENCY:
        raw = base.samples[concurrency]
        for way in ways:
            measured = way.samples[concurrency]
            count = len(measured.latencies)
            client_us, server_us = (seconds / count * 1e6 for seconds in way.cpu[concurrency])
            lines.append(
                f"| {way.name} | {concurrency} | {measured.percentile_ms(50):.3f} | "
                f"{measured.percentile_ms(50) / raw.percentile_ms(50):.3f} | "
                f"{measured.throughput:.0f} | {measured.throughput / raw.throughput:.3f} | "
                f"{client_us:.0f} | {server_us:.0f} |"
            )
    return "\n".join(lines)


@contextlib.contextmanager
def servers(temp: Path) -> Iterator[tuple[str, str]]:
    with contextlib.ExitStack() as stack:
        log = stack.enter_context((temp / "servers.log").open("wb"))
        common: tuple[str, ...] = ("--host", "127.0.0.1", "--port", "0")
        common += ("--workers", str(WORKERS), "--threads", str(THREADS))
        try:
            tms = stack.enter_context(
                server_process(
                    "tms-server",
                    [
                        *(sys.executable, "-m", "tms_server", *common, "--log-level", "WARNING"),
                        *("--models", str(models_folder(temp)), "--entry-points", "false"),
                    ],
                    log,
                )
            )
            raw_command = [sys.executable, str(Path(__file__).parent / "raw_server.py")]
            raw = stack.enter_context(server_process("raw-server", [*raw_command, *common], log))
        except RuntimeError:
            log.flush()
            sys.stderr.write((temp / "servers.log").read_text(errors="replace")[-4000:])
            raise
        yield tms, raw


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per way and cell [6]")
    parser.add_argument("--rounds", type=int, default=6, help="alternating slices [6]")
    args = parser.parse_args(argv)
    command = "python3 -m uv run python benchmarks/bench_floor.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    started = datetime.datetime.now(datetime.UTC)
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    picture = image_pb2.Image(
        dtype=image_pb2.D_TYPE_UINT8,
        shape=image.shape,
        data=image.tobytes(),
        encoding=image_pb2.ENCODING_RAW,
    )
    run_request = pb.RunImageRequest(model="mean", image=picture).SerializeToString()
    first = pb.RunImageStreamRequest(model="mean", image=picture).SerializeToString()
    frame = pb.RunImageStreamRequest(image=picture).SerializeToString()
    raw_request = HEADER.pack(*image.shape) + image.tobytes()
    loop = asyncio.new_event_loop()
    with contextlib.ExitStack() as stack:
        temp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tms-bench-")))
        tms_target, raw_target = stack.enter_context(servers(temp))
        raw_channels = thread_channels(raw_target, PID_METHOD, stack)
        tms_channels = thread_channels(tms_target, method_path("GetWorkerInfo"), stack)
        raw_pids, tms_pids = list(raw_channels), list(tms_channels)
        tms = stack.enter_context(ModelClient("mean", tms_target, shared_memory=False))
        alone = stack.enter_context(
            ModelClient("mean", tms_target, shared_memory=False, call_streams=False)
        )
        raw_means = itertools.cycle([unary(c, MEAN_METHOD) for c in raw_channels.values()])
        runs = itertools.cycle([unary(c, method_path("RunImage")) for c in tms_channels.values()])
        streams = ThreadStreams(list(tms_channels.values()), first, frame)
        stack.callback(streams.close)

        aio = contextlib.AsyncExitStack()
        stack.callback(lambda: loop.run_until_complete(aio.aclose()))
        aio_tms = loop.run_until_complete(
            aio.enter_async_context(AsyncModelClient("mean", tms_target, shared_memory=False))
        )
        aio_alone = loop.run_until_complete(
            aio.enter_async_context(
                AsyncModelClient("mean", tms_target, shared_memory=False, call_streams=False)
            )
        )
        aio_raw = loop.run_until_complete(aio_channels(raw_target, PID_METHOD, aio))
        aio_run = loop.run_until_complete(
            aio_channels(tms_target, method_path("GetWorkerInfo"), aio)
        )
        aio_raw_means = itertools.cycle([c.unary_unary(MEAN_METHOD) for c in aio_raw])
        aio_runs = itertools.cycle([c.unary_unary(method_path("RunImage")) for c in aio_run])
        aio_streams = AioStreams(aio_run, first, frame)
        aio.push_async_callback(aio_streams.close)

        ways = [
            Way(BASELINE, raw_pids, lambda: next(raw_means)(raw_request, timeout=CALL_TIMEOUT)),
            Way(
                "thread: raw unary, TMS server",
                tms_pids,
                lambda: next(runs)(run_request, timeout=CALL_TIMEOUT),
            ),
            Way("thread: raw stream message, TMS server", tms_pids, streams.call),
            Way("thread: TMS client", tms_pids, lambda: tms.run_image(image)),
            Way("thread: TMS client, a call each", tms_pids, lambda: alone.run_image(image)),
            Way(
                "aio: raw unary, raw server",
                raw_pids,
                OnLoop(loop, lambda: next(aio_raw_means)(raw_request, timeout=CALL_TIMEOUT)),
            ),
            Way(
                "aio: raw unary, TMS server",
                tms_pids,
                OnLoop(loop, lambda: next(aio_runs)(run_request, timeout=CALL_TIMEOUT)),
            ),
            Way("aio: raw stream message, TMS server", tms_pids, OnLoop(loop, aio_streams.call)),
            Way(
                "aio: TMS asyncio client", tms_pids, OnLoop(loop, lambda: aio_tms.run_image(image))
            ),
            Way(
                "aio: TMS asyncio client, a call each",
                tms_pids,
                OnLoop(loop, lambda: aio_alone.run_image(image)),
            ),
        ]
        expected = pixel_mean(image)
        for way in ways:
            answer = run_load(way.call, 1, 0.05)
            if not answer.latencies:
                raise RuntimeError(f"{way.name}: no call answered")
        check = json.loads(pb.RunImageStreamResponse.FromString(streams.call()).result_json)
        if not np.isclose(check["mean"], expected):
            raise RuntimeError(f"wrong mean from a stream: {check}")
        measure(ways, duration=args.duration, rounds=args.rounds)
    loop.close()
    print(
        f"Command: `{command.strip()}`\n\nDate: {started:%Y-%m-%d %H:%M} UTC; "
        f"{WORKERS} worker processes x {THREADS} threads per server; {args.duration:g}s per "
        f"way and cell in {args.rounds} alternating slices.\n\n"
        + "\n".join(machine())
        + "\n\n"
        + table(ways)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
