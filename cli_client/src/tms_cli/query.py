"""``tms models``, ``tms info``, ``tms health`` and ``tms workers``: what a server holds."""

from __future__ import annotations

import sys
import textwrap
from types import SimpleNamespace
from typing import Any

from tms_cli.connection import Options, check_model, connect, server_health
from tms_cli.errors import CliError, UsageError
from tms_cli.outputs import print_json, print_table, readable_json, to_json
from tms_client import ModelClient, ModelInfo, RoundRobin, UnauthenticatedError, WorkerInfo

__all__ = ["list_models", "show_health", "show_model", "show_workers", "worker_json"]


def list_models(options: Options, args: SimpleNamespace) -> int:
    """``tms models``: every loaded model, one line each, then those that failed to load and
    why (``--names``: only the names of the loaded ones)."""
    with connect(options) as client:
        models = client.list_models()
        failed = {} if args.names else client.failed_models()
    if args.names:
        sys.stdout.write("".join(f"{m.name}\n" for m in models))
        return 0
    if options.json:
        loaded = [_model_json(info) for info in models]
        _print_json(loaded + [{"name": name, "failed": why} for name, why in failed.items()])
        return 0
    if not models:
        sys.stderr.write(f"no models are loaded at {options.target}\n")
    else:
        rows = [
            [m.name, _shape(m.input_shape), m.dtype or "any", m.color or "as sent", _calls(m)]
            for m in models
        ]
        print_table(["name", "input shape", "dtype", "colour", "calls"], rows, sys.stdout)
    if failed:
        sys.stdout.write("\n" if models else "")
        print_table(["failed to load", "reason"], list(failed.items()), sys.stdout)
    return 0


def show_model(options: Options, args: SimpleNamespace) -> int:
    """``tms info MODEL``: one model in detail."""
    with connect(options, args.model) as client:
        info = check_model(client)
    if options.json:
        _print_json(_model_json(info))
        return 0
    lines = info.description.splitlines() or ["-"]
    description = "\n".join(f"  {line}" if line else "" for line in lines)
    fields = {
        "name": info.name,
        "input shape": _shape(info.input_shape),
        "dtype": info.dtype or "any",
        "colour order": info.color or "any (images arrive as sent)",
        "output order": info.output_color or "-",
        "calls": _calls(info),
        "thread safe": "yes" if info.thread_safe else "no (one call at a time per worker)",
        "version": info.version or "-",
        "max batch": _count(info.max_batch_size),
        "batching": _batching(info.max_batch_delay),
    }
    for key, value in fields.items():
        sys.stdout.write(f"{key + ':':14}{value}\n")
    for key, schema in (("args schema", info.args_schema), ("result schema", info.result_schema)):
        if schema is None:
            sys.stdout.write(f"{key}: -\n")
        else:
            sys.stdout.write(f"{key}:\n{textwrap.indent(readable_json(schema), '  ')}\n")
    sys.stdout.write(f"description:\n{description}\n")
    return 0


def show_health(options: Options, args: SimpleNamespace) -> int:
    """``tms health [MODEL...]``: the server's status and each model's; exit code 1 unless
    all are SERVING. Each model is asked of a worker that serves it (one placed on some
    workers is NOT_SERVING on the others). Health checks need no token, but listing the
    models and finding the workers do: without one, the models named are asked on one
    connection, and none else."""
    named = list(args.models or [])
    for name in named:
        if ":" in name:  # health would say SERVICE_UNKNOWN, as for any name it does not know
            raise UsageError(
                f"{name!r} is an address, not a model: give the server as --target {name} "
                f"(tms --target {name} health), or in TMS_TARGET"
            )
    models = _models_health(options, named)
    statuses = server_health(options, ["", *(named if models is None else [])])
    server = statuses.pop("")
    models = statuses if models is None else models
    if options.json:
        _print_json({"target": options.target, "server": server, "models": models})
    else:
        sys.stdout.write(f"server {options.target}: {server}\n")
        if models:
            print_table(["model", "status"], list(models.items()), sys.stdout)
    healthy = server == "SERVING" and all(status == "SERVING" for status in models.values())
    return 0 if healthy else 1


def _models_health(options: Options, named: list[str]) -> dict[str, str] | None:
    """The health of each model named (else of every model, those that failed to load
    included), each asked of a worker that serves it; None when finding the workers needs a
    token (said on stderr when no model is named)."""
    try:
        with connect(options) as client:
            names = named or sorted(
                {info.name for info in client.list_models()} | set(client.failed_models())
            )
            return {name: client.health(name) for name in names}
    except CliError as exc:
        if options.client.token is not None or not isinstance(exc.__cause__, UnauthenticatedError):
            raise
    if not named:
        sys.stderr.write(
            "tms: listing the models needs a token (--token or TMS_TOKEN); showing the "
            "server's health only\n"
        )
    return None


def show_workers(options: Options, args: SimpleNamespace) -> int:
    """``tms workers``: the worker processes found behind the target, their device, and
    their load.

    Each worker is asked once (a ListModels call) for its load: the calls it is running
    besides that one, and those waiting for one of its threads. RoundRobin sends those calls
    to each worker in turn (LeastLoaded may send them all to the one that answers fastest).
    """
    with connect(options, balancer=RoundRobin()) as client:
        workers = _probe_each(client)
    rows = [worker_json(w) for w in workers]
    _say_missing(workers)
    if options.json:
        _print_json(rows)
        return 0
    table = [
        [
            w["address"],
            f"{w['index']}/{w['count']}",
            w["device"] or "?",  # "" from servers that do not say
            str(w["pid"]),
            _count(w["running"]),
            _count(w["queued"]),
            str(w["in_flight"]),
            str(w["calls"]),
        ]
        for w in rows
    ]
    header = ["address", "worker", "device", "pid", "running", "queued", "in flight", "calls"]
    print_table(header, table, sys.stdout)
    return 0


def _say_missing(workers: list[WorkerInfo]) -> None:
    """On stderr: the workers a server says it runs that did not answer (a worker stopped or
    wedged is given up after a second; the supervisor replaces it after
    --worker-timeout-seconds)."""
    found: dict[str, tuple[int, set[int]]] = {}
    for worker in workers:
        count, indexes = found.setdefault(worker.address, (worker.count, set()))
        indexes.add(worker.index)
    for address, (count, indexes) in found.items():
        missing = sorted(set(range(count)) - indexes)
        if missing:
            which = ", ".join(str(i) for i in missing)
            sys.stderr.write(
                f"{address}: worker {which} of {count} did not answer "
                "(starting, restarting, or stuck until the server replaces it)\n"
            )


def _probe_each(client: ModelClient) -> list[WorkerInfo]:
    """The client's workers after each has answered at least one call (a bounded number of
    tries, for a worker that fails its call: the client retries it on another)."""
    workers = client.workers()
    for _ in range(3 * len(workers)):
        if all(w.calls for w in workers):
            break
        client.list_models()
        workers = client.workers()
    return workers


def worker_json(worker: WorkerInfo) -> dict[str, Any]:
    running = worker.reported_in_flight
    return {
        "address": worker.address,
        "index": worker.index,
        "count": worker.count,
        "device": worker.device,
        "pid": worker.pid,
        "instance_id": worker.instance_id,
        # A report counts the call that carried it: here, this command's own probe.
        "running": None if running is None else max(0, running - 1),
        "queued": worker.reported_queued,
        "in_flight": worker.in_flight,
        "calls": worker.calls,
    }


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)


def _batching(delay: float | None) -> str:
    if delay is None:
        return "off (each call runs alone)"
    return f"calls within {delay * 1000:g} ms run as one batch"


def _model_json(info: ModelInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "description": info.description,
        "input_shape": list(info.input_shape) if info.input_shape is not None else None,
        "dtype": info.dtype,
        "color": info.color,
        "calls": sorted(info.calls),
        "thread_safe": info.thread_safe,
        "output_color": info.output_color,
        "version": info.version,
        "max_batch_size": info.max_batch_size,
        "max_batch_delay": info.max_batch_delay,
        "args_schema": info.args_schema,
        "result_schema": info.result_schema,
    }


def _shape(shape: tuple[int | None, ...] | None) -> str:
    if shape is None:
        return "any"
    return "x".join("*" if d is None else str(d) for d in shape)


def _calls(info: ModelInfo) -> str:
    return ", ".join(sorted(info.calls))


def _print_json(value: Any) -> None:
    print_json(to_json(value, pretty=True), sys.stdout)
