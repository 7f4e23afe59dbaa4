"""``tms bench``: a bounded load generator with a live view, ending in a summary.

``--concurrency`` threads each send one call at a time for ``--duration`` seconds (a closed
loop: the load never exceeds that many calls in flight). Every call sends the same payload
(random pixels of ``--size``, an image file, or a text). The summary gives requests/s, MB/s,
latency percentiles of the calls that succeeded, failures by status code, and how many calls
each worker process got (the balancer's work).
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from tms_cli.connection import Options, check_model, connect, describe_error
from tms_cli.errors import CliError
from tms_cli.latency import LatencyHistogram
from tms_cli.outputs import print_table, to_json
from tms_cli.progress import CLEAR_LINE
from tms_client import (
    Balancer,
    CallError,
    LeastLoaded,
    ModelClient,
    ModelInfo,
    RandomBalancer,
    RoundRobin,
    TMSError,
    WorkerInfo,
)

__all__ = ["BALANCERS", "DEFAULT_SIZE", "DEFAULT_TEXT", "bench", "image_size"]

BALANCERS: dict[str, Callable[[], Balancer]] = {
    "round-robin": RoundRobin,
    "least-loaded": LeastLoaded,
    "random": RandomBalancer,
}
DEFAULT_SIZE = "480x640x3"
DEFAULT_TEXT = "The quick brown fox jumps over the lazy dog. " * 4
MAX_BYTES = 1 << 30  # a --size larger than this is surely a typo
_COLOR_OF_CHANNELS = {1: "gray", 3: "rgb", 4: "rgba"}
_SENT_ENCODED = ("PNG", "JPEG")  # image files sent as they are; others decoded here once
_REDRAW = 0.25  # seconds between redraws of the live view
_MB = 1e6


def image_size(text: str) -> tuple[int, ...]:
    """An argparse type: ``HxW`` (gray) or ``HxWxC`` with C 1, 3 or 4 (gray, RGB, RGBA)."""
    parts = text.lower().split("x")
    try:
        dims = tuple(int(part) for part in parts)
    except ValueError:
        dims = ()
    if len(dims) not in (2, 3) or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected HxW or HxWxC such as 1080x1920x3, not {text!r}")
    if len(dims) == 3 and dims[2] not in _COLOR_OF_CHANNELS:
        raise argparse.ArgumentTypeError(f"channels must be 1, 3 or 4, not {dims[2]}")
    if int(np.prod(dims)) > MAX_BYTES:
        raise argparse.ArgumentTypeError(f"{text} is more than {MAX_BYTES >> 30} GiB of pixels")
    return dims


@dataclass(frozen=True)
class Payload:
    """What every call of a run sends."""

    value: Any  # a numpy array, PNG/JPEG bytes, or a text
    description: str
    nbytes: int  # image bytes (as sent) or UTF-8 bytes of the text, per call
    color: str | None = None  # the colour order of a numpy array

    @property
    def is_text(self) -> bool:
        return isinstance(self.value, str)


def _random_pixels(size: tuple[int, ...]) -> Payload:
    pixels = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)
    color = "gray" if len(size) == 2 else _COLOR_OF_CHANNELS[size[2]]
    shape = "x".join(map(str, size))
    return Payload(pixels, f"{shape} uint8 random pixels", pixels.nbytes, color)


def _image_file(path: Path) -> Payload:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CliError(f"{path}: {describe_error(exc)}") from exc
    try:
        image = Image.open(io.BytesIO(data))
        size = f"{image.width}x{image.height}"
        if image.format in _SENT_ENCODED:
            return Payload(data, f"{path} ({image.format} {size}, sent encoded)", len(data))
        image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise CliError(f"{path}: not an image Pillow can read ({exc})") from exc
    mode = image.mode if image.mode in ("L", "RGB", "RGBA") else "RGB"
    pixels = np.asarray(image.convert(mode))
    color = {"L": "gray", "RGB": "rgb", "RGBA": "rgba"}[mode]
    description = f"{path} ({image.format} {size}, sent as raw {mode} pixels)"
    return Payload(pixels, description, pixels.nbytes, color)


def _text(text: str) -> Payload:
    encoded = len(text.encode())
    return Payload(text, f"a text of {len(text)} characters", encoded)


class Stats:
    """What the calls of a run did; shared by the threads that make them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ok = 0
        self.received = 0  # bytes of output images
        self.latency = LatencyHistogram()
        self.errors: Counter[str] = Counter()
        self.first_error: dict[str, str] = {}
        self.crash: BaseException | None = None  # a bug in a load thread, re-raised at the end
        self.last_end = 0.0  # when the last call ended (time.monotonic)

    @property
    def done(self) -> int:
        return self.ok + sum(self.errors.values())

    def success(self, seconds: float, received: int) -> None:
        with self._lock:
            self.ok += 1
            self.received += received
            self.latency.add(seconds)

    def failure(self, code: str, message: str) -> None:
        with self._lock:
            self.errors[code] += 1
            self.first_error.setdefault(code, message)

    def ended(self, when: float) -> None:
        with self._lock:
            self.last_end = max(self.last_end, when)

    def live(self) -> tuple[int, int, float, float]:
        """Calls done, calls failed, p50 and p99 latency (seconds) so far."""
        with self._lock:
            failed = sum(self.errors.values())
            p50, p99 = self.latency.percentile(50), self.latency.percentile(99)
            return self.ok + failed, failed, p50, p99


@dataclass
class Run:
    """One benchmark run: what it sends, how, and what came of it."""

    model: str
    target: str
    call: str
    payload: Payload
    concurrency: int
    duration: float
    balancer: str
    stats: Stats = field(default_factory=Stats)
    elapsed: float = 0.0
    interrupted: bool = False
    workers: list[tuple[WorkerInfo, int]] = field(default_factory=list)  # (worker, its calls)


def bench(options: Options, args: argparse.Namespace) -> int:
    """``tms bench MODEL``: exit code 0 if every call succeeded, 1 if any failed, 130 if
    interrupted (after the summary of what was done)."""
    if args.image is not None:
        payload = _image_file(args.image)
    elif args.text is not None:
        payload = _text(args.text)
    else:
        payload = _random_pixels(args.size or image_size(DEFAULT_SIZE))
    with connect(options, args.model, balancer=BALANCERS[args.balancer]()) as client:
        info = check_model(client)
        if args.text is None and args.image is None and args.size is None and _takes_text(info):
            payload = _text(DEFAULT_TEXT)
        name, call = _call_for(client, info, payload, args.args)
        try:
            call()  # fails fast on what every call would fail on; warms the workers up
        except (TMSError, ValueError) as exc:
            raise CliError(
                f"the first call failed, nothing was measured: {describe_error(exc)}"
            ) from exc
        run = Run(
            args.model,
            options.target,
            name,
            payload,
            args.concurrency,
            args.duration,
            args.balancer,
        )
        _load(client, call, run, LiveView(sys.stderr, enabled=sys.stderr.isatty()))
    if run.stats.crash is not None:
        raise run.stats.crash
    if options.json:
        sys.stdout.write(to_json(summary_json(run), pretty=True) + "\n")
    else:
        print_summary(run, sys.stdout)
    if run.interrupted:
        return 130
    return 1 if run.stats.errors else 0


def _takes_text(info: ModelInfo) -> bool:
    return "run_text" in info.calls and "run_image" not in info.calls


def _call_for(
    client: ModelClient, info: ModelInfo, payload: Payload, args: dict[str, Any] | None
) -> tuple[str, Callable[[], int]]:
    """The client method a run calls, and a function making one call that returns the bytes
    of output images received."""
    if payload.is_text:
        check_model(client, "run_text")
        text: str = payload.value
        return "run_text", lambda: _no_output(client.run_text(text, args))
    if "run_image" in info.calls or "run_image_to_image" not in info.calls:
        check_model(client, "run_image")  # says what the model supports when it is neither
        return "run_image", lambda: _no_output(
            client.run_image(payload.value, args, color=payload.color)
        )

    def image_to_image() -> int:
        output = client.run_image_to_image(payload.value, args, color=payload.color)
        return sum(image.nbytes for image in output.images)

    return "run_image_to_image", image_to_image


def _no_output(result: Any) -> int:
    return 0


def _load(client: ModelClient, call: Callable[[], int], run: Run, view: LiveView) -> None:
    """Make the calls of ``run``, showing them on ``view``, and fill in its results."""
    stats, stop = run.stats, threading.Event()
    before = {(w.instance_id, w.pid): w.calls for w in client.workers()}
    started = time.monotonic()
    deadline = started + run.duration
    threads = [
        threading.Thread(
            target=_keep_calling,
            args=(call, stats, stop, deadline),
            name=f"tms-bench-{i}",
            daemon=True,  # a call stuck past Ctrl-C must not keep the process alive
        )
        for i in range(run.concurrency)
    ]
    for thread in threads:
        thread.start()
    rate = Rate(started)
    try:
        while any(thread.is_alive() for thread in threads):
            stop.wait(_REDRAW)
            if view.enabled:
                view.draw(_live_lines(run, client, before, rate, time.monotonic() - started))
            if stop.is_set():  # a load thread crashed
                break
    except KeyboardInterrupt:
        run.interrupted = True
    finally:
        stop.set()
        for thread in threads:  # calls end within their timeout; after Ctrl-C wait briefly
            thread.join(timeout=1.0 if run.interrupted else None)
        view.clear()
    # The last call's end, not this loop's (it only looks every _REDRAW seconds).
    run.elapsed = (time.monotonic() if run.interrupted else stats.last_end or started) - started
    run.workers = [(w, w.calls - before.get((w.instance_id, w.pid), 0)) for w in client.workers()]


def _keep_calling(
    call: Callable[[], int], stats: Stats, stop: threading.Event, deadline: float
) -> None:
    # Stop is set before the deadline only on Ctrl-C (or a crash): calls ending after that
    # were cut short, or end after the summary was taken, and are not counted.
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                received = call()
            except CallError as exc:
                if not stop.is_set():
                    stats.failure(exc.code.name, exc.details)
            except (TMSError, ValueError, OSError) as exc:  # failed before it got a status
                if not stop.is_set():
                    stats.failure(type(exc).__name__, describe_error(exc))
            else:
                if not stop.is_set():
                    stats.success(time.monotonic() - started, received)
    except BaseException as exc:  # a bug: stop the run and show it
        stats.crash = exc
        stop.set()
    finally:
        stats.ended(time.monotonic())


class Rate:
    """Calls per second over about the last second."""

    def __init__(self, started: float, window: float = 1.0) -> None:
        self._samples: deque[tuple[float, int]] = deque([(started, 0)])
        self._window = window

    def update(self, now: float, done: int) -> float:
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self._window:
            self._samples.popleft()
        then, before = self._samples[0]
        return (done - before) / (now - then) if now > then else 0.0


def _live_lines(
    run: Run, client: ModelClient, before: dict[tuple[str, int], int], rate: Rate, elapsed: float
) -> list[str]:
    """The live view: progress and totals, then one line per worker."""
    done, failed, p50, p99 = run.stats.live()
    elapsed = min(elapsed, run.duration)
    filled = int(10 * elapsed / run.duration)
    lines = [
        f"[{'#' * filled}{'.' * (10 - filled)}] {elapsed:.1f}/{run.duration:g} s  "
        f"{done} calls  {rate.update(time.monotonic(), done):.0f}/s  "
        f"p50 {_ms(p50)}  p99 {_ms(p99)}  {failed} failed"
    ]
    for w in client.workers():
        calls = w.calls - before.get((w.instance_id, w.pid), 0)
        line = (
            f"  {w.index}/{w.count} pid {w.pid} {w.address}: {calls} calls, {w.in_flight} in flight"
        )
        if w.reported_in_flight is not None:
            line += f", reports {w.reported_in_flight} running {w.reported_queued} queued"
        lines.append(line)
    return lines


class LiveView:
    """Lines redrawn in place on a terminal, and removed at the end."""

    def __init__(self, stream: TextIO, *, enabled: bool) -> None:
        self.enabled = enabled
        self._stream = stream
        self._drawn = 0

    def __repr__(self) -> str:
        return f"<LiveView enabled={self.enabled} lines={self._drawn}>"

    def draw(self, lines: list[str]) -> None:
        columns, rows = shutil.get_terminal_size()
        if len(lines) > rows - 2:  # lines that scroll away cannot be redrawn
            hidden = len(lines) - (rows - 3)
            lines = [*lines[: rows - 3], f"  ... and {hidden} more workers"]
        # Lines that wrap cannot be redrawn in place either.
        text = "".join(CLEAR_LINE + line[: columns - 1] + "\n" for line in lines)
        self._stream.write(self._up() + text)
        self._stream.flush()
        self._drawn = len(lines)

    def clear(self) -> None:
        if self.enabled and self._drawn:
            self._stream.write(self._up() + "\x1b[J")
            self._stream.flush()
            self._drawn = 0

    def _up(self) -> str:
        return f"\x1b[{self._drawn}F" if self._drawn else ""


# -- the summary ----------------------------------------------------------------------------------


def summary_json(run: Run) -> dict[str, Any]:
    """The summary as a JSON object (``--json``); times in ms, rates per second."""
    stats, latency = run.stats, run.stats.latency
    seconds = run.elapsed or 1e-9
    return {
        "model": run.model,
        "target": run.target,
        "call": run.call,
        "payload": run.payload.description,
        "bytes_per_call": run.payload.nbytes,
        "concurrency": run.concurrency,
        "duration_s": run.duration,
        "elapsed_s": round(run.elapsed, 3),
        "balancer": run.balancer,
        "interrupted": run.interrupted,
        "requests": stats.done,
        "ok": stats.ok,
        "failed": sum(stats.errors.values()),
        "requests_per_s": round(stats.done / seconds, 1),
        "sent_mb_per_s": round(stats.done * run.payload.nbytes / _MB / seconds, 2),
        "received_mb_per_s": round(stats.received / _MB / seconds, 2),
        "latency_ms": {
            "p50": _round_ms(latency.percentile(50)),
            "p90": _round_ms(latency.percentile(90)),
            "p99": _round_ms(latency.percentile(99)),
            "max": _round_ms(latency.max),
            "mean": _round_ms(latency.mean),
        },
        "errors": {
            code: {"count": count, "first": stats.first_error[code]}
            for code, count in stats.errors.most_common()
        },
        "workers": [
            {"address": w.address, "index": w.index, "pid": w.pid, "calls": calls}
            for w, calls in run.workers
        ],
    }


def print_summary(run: Run, stream: TextIO) -> None:
    """The summary as text: one line per measure, then a table of the workers."""
    summary = summary_json(run)
    latency = summary["latency_ms"]
    size = _bytes(run.payload.nbytes)
    fields = {
        "model": f"{run.model} at {run.target}, {run.call}",
        "sent": f"{run.payload.description}, {size} per call",
        "load": f"{run.concurrency} calls at a time for {run.elapsed:.1f} s, "
        f"balancer {run.balancer}" + (" (interrupted)" if run.interrupted else ""),
        "requests": f"{summary['requests']} ({summary['ok']} ok, {summary['failed']} failed), "
        f"{summary['requests_per_s']:.1f}/s",
        "data": f"{summary['sent_mb_per_s']:.1f} MB/s sent"
        + (f", {summary['received_mb_per_s']:.1f} MB/s received" if run.stats.received else ""),
        "latency": "  ".join(f"{key} {latency[key]:.2f} ms" for key in ("p50", "p90", "p99", "max"))
        + ("" if run.stats.ok else " (no call succeeded)"),
    }
    for key, value in fields.items():
        stream.write(f"{key:<10}{value}\n")
    errors = [f"{code} {e['count']}: {e['first']}" for code, e in summary["errors"].items()]
    stream.write(f"{'errors':<10}{errors[0] if errors else 'none'}\n")
    for line in errors[1:]:
        stream.write(f"{'':<10}{line}\n")
    total = sum(calls for _, calls in run.workers) or 1
    rows = [
        [f"{w.index}/{w.count}", str(w.pid), w.address, str(calls), f"{100 * calls / total:.1f}%"]
        for w, calls in run.workers
    ]
    stream.write("\n")
    print_table(["worker", "pid", "address", "calls", "share"], rows, stream)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def _round_ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)


def _bytes(count: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"
