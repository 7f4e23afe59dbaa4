"""The command line of ``tms``: its options and subcommands."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from tms_cli import __version__
from tms_cli.bench import BALANCERS, DEFAULT_SIZE, bench, image_size
from tms_cli.completion import SHELLS, script
from tms_cli.connection import Options
from tms_cli.inputs import IMAGE_EXTENSIONS
from tms_cli.query import list_models, show_health, show_model, show_workers
from tms_cli.run import run_images, run_images_to_images, run_text
from tms_cli.video import VIDEO_EXTENSIONS
from tms_client import __version__ as client_version

__all__ = ["DEFAULT_TARGET", "build_parser"]

DEFAULT_TARGET = "localhost:50051"

_EPILOG = """\
examples:
  tms models                                  the models of the server at $TMS_TARGET
  tms --target gpu-box:50051 info face
  tms run face photo.jpg                      one result, as JSON
  tms run face photos/ --out faces.jsonl      one JSON line per image
  tms run face video.mp4                      one JSON line per frame (needs OpenCV)
  tms run-i2i edges photos/ --out-dir edges/
  tms run-i2i optical_flow a.png b.png --together --preview --out-dir flow/
  tms text text_stats "Hello, world"
  tms bench mean --size 1080x1920x3 --concurrency 8 --duration 10
  source <(tms completion bash)               shell completion (bash, zsh, fish)
"""


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``tms`` parser and its subcommands' parsers by name. Each subcommand sets
    ``command`` to the function ``(Options, Namespace) -> exit code`` that runs it."""
    parser = argparse.ArgumentParser(
        prog="tms",
        description="Call the models of a TMS server (Tiny Model Server).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"tms {__version__} (tms-client {client_version})"
    )
    _add_global_options(parser, suppress=False)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    commands: dict[str, argparse.ArgumentParser] = {}

    def add(name: str, command: Any, help_text: str) -> argparse.ArgumentParser:
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        # Global options are accepted after the command too: ``tms models --json``.
        _add_global_options(sub, suppress=True)
        sub.set_defaults(command=command, command_name=name)
        commands[name] = sub
        return sub

    models = add("models", list_models, "list the models the server has loaded")
    models.add_argument(
        "--names", action="store_true", help="only their names, one a line (for scripts)"
    )
    info = add("info", show_model, "show one model in detail")
    info.add_argument("model", metavar="MODEL")
    health = add(
        "health", show_health, "the server's health and each model's (exit 1 if any is not SERVING)"
    )
    health.add_argument("models", metavar="MODEL", nargs="*", help="only these models")
    add("workers", show_workers, "list the worker processes behind the target")

    images = f"image files, folders (searched for {' '.join(IMAGE_EXTENSIONS)}) or - for stdin"
    run = add("run", run_images, "run an image model; JSON for one image, JSON Lines for more")
    run.add_argument("model", metavar="MODEL")
    run.add_argument(
        "paths",
        metavar="PATH",
        nargs="+",
        help=f"{images}; or video files ({' '.join(VIDEO_EXTENSIONS)}), frame by frame",
    )
    run.add_argument("--out", type=Path, metavar="FILE", help="write results here, not stdout")
    _add_run_options(run)

    i2i = add("run-i2i", run_images_to_images, "run an image-to-image model; write its images")
    i2i.add_argument("model", metavar="MODEL")
    i2i.add_argument("paths", metavar="PATH", nargs="+", help=images)
    i2i.add_argument(
        "--out-dir",
        type=Path,
        metavar="DIR",
        help="where output images go (uint8 as PNG, other dtypes as .npy), named after inputs "
        "(default: next to each input as NAME.MODEL.png; stdin's in the current folder)",
    )
    i2i.add_argument(
        "--together",
        action="store_true",
        help="send all images in one call (e.g. two frames for optical flow)",
    )
    i2i.add_argument(
        "--preview",
        action="store_true",
        help="also write NAME.preview.png, a picture of outputs that are none: flow as a "
        "colour wheel (hue: direction, brightness: length), other maps colour-mapped",
    )
    _add_run_options(i2i)

    text = add("text", run_text, "run a text model on one text; prints its result as JSON")
    text.add_argument("model", metavar="MODEL")
    text.add_argument("text", metavar="TEXT", help="the text, or - to read it from stdin")
    text.add_argument("--args", type=json_object, default=None, metavar="JSON", help=_ARGS_HELP)

    load = add(
        "bench",
        bench,
        "load a model with calls for a while; show requests/s, MB/s, latency and workers",
    )
    load.add_argument("model", metavar="MODEL")
    payload = load.add_mutually_exclusive_group()
    payload.add_argument(
        "--image", type=Path, metavar="FILE", help="send this image file in every call"
    )
    payload.add_argument(
        "--size",
        type=image_size,
        metavar="HxWxC",
        help=f"send random uint8 pixels of this size: HxW (gray) or HxWxC, C 1, 3 or 4 "
        f"(default for image models: {DEFAULT_SIZE})",
    )
    payload.add_argument("--text", metavar="TEXT", help="the text to send to a text model")
    load.add_argument(
        "--concurrency",
        type=positive_int,
        default=4,
        metavar="N",
        help="calls in flight at once, each thread sending the next when one ends (default: 4)",
    )
    load.add_argument(
        "--duration",
        type=positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="how long to send calls (default: 10)",
    )
    load.add_argument(
        "--balancer",
        choices=list(BALANCERS),
        default="least-loaded",
        help="how calls are spread over the workers (default: least-loaded, as in the client)",
    )
    load.add_argument("--args", type=json_object, default=None, metavar="JSON", help=_ARGS_HELP)

    completion = add("completion", None, "print a shell completion script: bash, zsh or fish")
    completion.add_argument("shell", choices=SHELLS, help="the shell")

    def print_completion(options: Options, args: argparse.Namespace) -> int:
        sys.stdout.write(script(args.shell, parser))
        return 0

    completion.set_defaults(command=print_completion)
    return parser, commands


_ARGS_HELP = """arguments for the model, as a JSON object: '{"threshold": 0.5}'"""


def _env_flag(name: str, *, default: bool) -> bool:
    """A yes/no environment variable (1/0, true/false, yes/no, on/off); ``default`` unset."""
    text = os.environ.get(name, "").strip().lower()
    if not text:
        return default
    return text not in ("0", "false", "no", "off")


def _add_global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    target = os.environ.get("TMS_TARGET") or DEFAULT_TARGET
    group = parser.add_argument_group("server options")
    group.add_argument(
        "--target",
        default=default(target),
        metavar="HOST:PORT",
        help=f"the server (default: $TMS_TARGET, else {DEFAULT_TARGET})",
    )
    group.add_argument(
        "--timeout",
        type=seconds,
        default=default(60.0),
        metavar="SECONDS",
        help="deadline of each call; 0 for none (default: 60)",
    )
    group.add_argument(
        "--connect-timeout",
        type=positive_seconds,
        default=default(10.0),
        metavar="SECONDS",
        help="how long to wait for the server (default: 10)",
    )
    group.add_argument(
        "--max-message-mb",
        type=positive_int,
        # A string default goes through ``type`` as a value given would: checked the same.
        default=default(os.environ.get("TMS_MAX_MESSAGE_MB") or "64"),
        metavar="MB",
        help="largest request or reply, in MiB, as the server's --max-message-mb (default: "
        "$TMS_MAX_MESSAGE_MB, else 64); a larger raw image is sent as PNG if that fits",
    )
    group.add_argument(
        "--shared-memory",
        action=argparse.BooleanOptionalAction,
        default=default(_env_flag("TMS_SHARED_MEMORY", default=True)),
        help="pass images to a server on this host through shared memory (default: "
        "$TMS_SHARED_MEMORY, else on; --no-shared-memory always sends bytes)",
    )
    group.add_argument(
        "--json", action="store_true", default=default(False), help="machine-readable output"
    )
    group.add_argument(
        "--debug", action="store_true", default=default(False), help="show tracebacks and logs"
    )
    security = parser.add_argument_group("security options (see the README's Security section)")
    security.add_argument(
        "--tls",
        action="store_true",
        default=default(False),
        help="connect over TLS, trusting the system's root certificates (implied by --tls-*)",
    )
    security.add_argument(
        "--tls-ca", default=default(None), metavar="FILE", help="CA bundle (PEM) to trust"
    )
    security.add_argument(
        "--tls-cert",
        default=default(None),
        metavar="FILE",
        help="client certificate (PEM), for servers that require mutual TLS",
    )
    security.add_argument(
        "--tls-key", default=default(None), metavar="FILE", help="private key of --tls-cert"
    )
    security.add_argument(
        "--tls-server-name",
        default=default(None),
        metavar="NAME",
        help="the name the server's certificate must carry, if not the target's host",
    )
    security.add_argument(
        "--token",
        default=default(os.environ.get("TMS_TOKEN") or None),
        metavar="TOKEN",
        help="bearer token sent with every call (default: $TMS_TOKEN; prefer the variable, "
        "since other users can see command lines)",
    )


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--args", type=json_object, default=None, metavar="JSON", help=_ARGS_HELP)
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=4,
        metavar="N",
        help="images in flight at once (default: 4)",
    )


_JSON_KINDS = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def json_object(text: str) -> dict[str, Any]:
    """An argparse type: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        kind = _JSON_KINDS.get(type(value), type(value).__name__)
        raise argparse.ArgumentTypeError(
            f"must be a JSON object such as '{{\"k\": 1}}', not {kind}: {text!r}"
        )
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def seconds(text: str) -> float | None:
    """An argparse type: seconds, 0 or more; 0 means no limit (None)."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {text}")
    return value or None


def positive_seconds(text: str) -> float:
    """An argparse type: seconds, more than 0."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    return value
