"""``tms models``, ``tms info``, ``tms health`` and ``tms workers``: what a server holds."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tms_cli.connection import Options, check_model, connect
from tms_cli.outputs import print_table, to_json
from tms_client import ModelInfo

__all__ = ["list_models", "show_health", "show_model", "show_workers"]


def list_models(options: Options, args: argparse.Namespace) -> int:
    """``tms models``: every loaded model, one line each."""
    with connect(options) as client:
        models = client.list_models()
    if options.json:
        _print_json([_model_json(info) for info in models])
    elif not models:
        sys.stderr.write(f"no models are loaded at {options.target}\n")
    else:
        rows = [
            [m.name, _shape(m.input_shape), m.dtype or "any", m.color or "as sent", _calls(m)]
            for m in models
        ]
        print_table(["name", "input shape", "dtype", "colour", "calls"], rows, sys.stdout)
    return 0


def show_model(options: Options, args: argparse.Namespace) -> int:
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
        "calls": _calls(info),
        "thread safe": "yes" if info.thread_safe else "no (one call at a time per worker)",
    }
    for key, value in fields.items():
        sys.stdout.write(f"{key + ':':14}{value}\n")
    sys.stdout.write(f"description:\n{description}\n")
    return 0


def show_health(options: Options, args: argparse.Namespace) -> int:
    """``tms health [MODEL...]``: the server's status and each model's; exit code 1 unless
    all are SERVING."""
    with connect(options) as client:
        server = client.health("")
        names = args.models or [info.name for info in client.list_models()]
        models = {name: client.health(name) for name in names}
    if options.json:
        _print_json({"target": options.target, "server": server, "models": models})
    else:
        sys.stdout.write(f"server {options.target}: {server}\n")
        if models:
            print_table(["model", "status"], list(models.items()), sys.stdout)
    healthy = server == "SERVING" and all(status == "SERVING" for status in models.values())
    return 0 if healthy else 1


def show_workers(options: Options, args: argparse.Namespace) -> int:
    """``tms workers``: the worker processes found behind the target."""
    with connect(options) as client:
        workers = client.workers()
    if options.json:
        _print_json(
            [{"index": w.index, "pid": w.pid, "instance_id": w.instance_id} for w in workers]
        )
    else:
        rows = [[str(w.index), str(w.pid), w.instance_id] for w in workers]
        print_table(["index", "pid", "instance id"], rows, sys.stdout)
    return 0


def _model_json(info: ModelInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "description": info.description,
        "input_shape": list(info.input_shape) if info.input_shape is not None else None,
        "dtype": info.dtype,
        "color": info.color,
        "calls": sorted(info.calls),
        "thread_safe": info.thread_safe,
    }


def _shape(shape: tuple[int | None, ...] | None) -> str:
    if shape is None:
        return "any"
    return "x".join("*" if d is None else str(d) for d in shape)


def _calls(info: ModelInfo) -> str:
    return ", ".join(sorted(info.calls))


def _print_json(value: Any) -> None:
    sys.stdout.write(to_json(value, pretty=True) + "\n")
