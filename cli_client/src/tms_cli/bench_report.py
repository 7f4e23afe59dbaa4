"""The summary of a ``tms bench`` run: a JSON object (``--json``), or text lines and a table of
the workers."""

from __future__ import annotations

from typing import Any, TextIO

from tms_cli.bench_load import Run
from tms_cli.outputs import print_table

__all__ = ["print_summary", "summary_json"]

_MB = 1e6


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


def _round_ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _bytes(count: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"
