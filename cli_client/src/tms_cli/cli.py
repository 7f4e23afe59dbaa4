"""The command line of ``tms``, on Click: its commands, their options and arguments.

Click only parses: a command's callback returns an ``Invocation`` (which function runs it, the
global options, its arguments), which ``tms_cli.running`` runs, turning errors into one line
and an exit code. The functions are named, not imported: completing a word runs ``tms`` too,
and loads no more than this module. Global options (server, output, security) are taken
before the command and after it, ``tms --json models`` as ``tms models --json``; each
``TMS_*`` variable is the default of one option.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click

from tms_cli import __version__
from tms_cli.completion import SHELLS, complete_folders, complete_models, script
from tms_cli.values import (
    BALANCERS,
    DEFAULT_SIZE,
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    global_values,
    image_size,
    json_object,
    positive_int,
    positive_seconds,
    seconds,
)

__all__ = ["DEFAULT_TARGET", "Invocation", "global_params", "print_completion", "tms"]

DEFAULT_TARGET = "localhost:50051"


@dataclass(frozen=True)
class Invocation:
    """A command to run, as the command line asked for it."""

    command: str  # "module:function" in tms_cli; the function takes (Options, args)
    options: dict[str, Any]  # the global options, by name (see tms_cli.connection.Options)
    args: SimpleNamespace
    prog: str  # "tms run": how usage errors name the command


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # in the order they were added: the order of the README


_EPILOG = """\b
Examples:
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


def _parsed(parse: Callable[[str], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """An option's callback: its value (a string, as given or from the environment) checked
    and converted by ``parse``, whose ValueError says what is wrong."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:  # not given, and no default
            return None
        try:
            return parse(str(value))
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None

    return callback


class _Unlisted(click.Option):
    """An option a command's help leaves out (completion still offers it)."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        return None


def _option(*flags: str, cls: type[click.Option] = click.Option, **attrs: Any) -> click.Option:
    if "callback" in attrs:  # the callback converts: Click is to pass the text as given
        attrs.setdefault("type", str)
    return cls(list(flags), **attrs)


def global_params(*, listed: bool = True) -> list[click.Parameter]:
    """The options every command takes, as ``tms`` itself does (new objects for each);
    ``listed`` in the help (a command's help points to ``tms --help`` instead)."""
    option = functools.partial(_option, cls=click.Option if listed else _Unlisted)
    return [
        option(
            "--target",
            envvar="TMS_TARGET",
            default=DEFAULT_TARGET,
            metavar="HOST:PORT",
            help=f"The server (default: $TMS_TARGET, else {DEFAULT_TARGET}).",
        ),
        option(
            "--timeout",
            callback=_parsed(seconds),
            default=60.0,
            metavar="SECONDS",
            help="Deadline of each call; 0 for none (default: 60).",
        ),
        option(
            "--connect-timeout",
            callback=_parsed(positive_seconds),
            default=10.0,
            metavar="SECONDS",
            help="How long to wait for the server (default: 10).",
        ),
        option(
            "--max-message-mb",
            callback=_parsed(positive_int),
            envvar="TMS_MAX_MESSAGE_MB",
            default=64,
            metavar="MB",
            help="Largest request or reply, in MiB, as the server's --max-message-mb (default: "
            "$TMS_MAX_MESSAGE_MB, else 64); a larger raw image is sent as PNG if that fits.",
        ),
        option(
            "--shared-memory/--no-shared-memory",
            envvar="TMS_SHARED_MEMORY",
            default=True,
            help="Pass images to a server on this host through shared memory (default: "
            "$TMS_SHARED_MEMORY, else on; --no-shared-memory always sends bytes).",
        ),
        option("--json", is_flag=True, help="Machine-readable output."),
        option("--debug", is_flag=True, help="Show tracebacks and logs."),
        option(
            "--tls",
            is_flag=True,
            help="Connect over TLS, trusting the system's root certificates (implied by --tls-*).",
        ),
        option("--tls-ca", metavar="FILE", type=click.Path(), help="CA bundle (PEM) to trust."),
        option(
            "--tls-cert",
            metavar="FILE",
            type=click.Path(),
            help="Client certificate (PEM), for servers that require mutual TLS.",
        ),
        option("--tls-key", metavar="FILE", type=click.Path(), help="Private key of --tls-cert."),
        option(
            "--tls-server-name",
            metavar="NAME",
            help="The name the server's certificate must carry, if not the target's host.",
        ),
        option(
            "--token",
            envvar="TMS_TOKEN",
            metavar="TOKEN",
            help="Bearer token sent with every call (default: $TMS_TOKEN; prefer the variable, "
            "since other users can see command lines).",
        ),
    ]


@click.group(
    cls=_Group,
    params=global_params(),
    epilog=_EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(
    __version__,
    prog_name="tms",
    message=f"%(prog)s %(version)s (tms-client {version('tms-client')})",
)
def tms(**_: Any) -> None:
    """Call the models of a TMS server (Tiny Model Server)."""


def _command(name: str, command: str, help_text: str, *params: click.Parameter) -> None:
    """Add ``tms NAME``, which runs ``command`` with the global options and its arguments."""

    def invocation(**args: Any) -> Invocation:
        ctx = click.get_current_context()
        return Invocation(command, global_values(ctx), SimpleNamespace(**args), ctx.command_path)

    tms.add_command(
        click.Command(
            name,
            callback=invocation,
            params=[*params, *global_params(listed=False)],
            help=help_text,
            short_help=help_text.split("\n", maxsplit=1)[0],
            epilog="The options of tms (--target, --json, ...; see tms --help) go here too.",
        )
    )


def _model() -> click.Argument:
    return click.Argument(["model"], metavar="MODEL", shell_complete=complete_models)


def _paths() -> click.Argument:
    # Click's arguments carry no help: the command's help says what PATH is.
    return click.Argument(["paths"], metavar="PATH...", nargs=-1, required=True, type=click.Path())


def _args() -> click.Option:
    return _option(
        "--args",
        callback=_parsed(json_object),
        metavar="JSON",
        help="""Arguments for the model, as a JSON object: '{"threshold": 0.5}'.""",
    )


def _concurrency(help_text: str) -> click.Option:
    return _option(
        "--concurrency", callback=_parsed(positive_int), default=4, metavar="N", help=help_text
    )


_IMAGES = f"PATH: image files, folders (searched for {' '.join(IMAGE_EXTENSIONS)}) or - for stdin"

_command(
    "models",
    "query:list_models",
    "List the models the server has loaded.",
    _option("--names", is_flag=True, help="Only their names, one a line (for scripts)."),
)
_command("info", "query:show_model", "Show one model in detail.", _model())
_command(
    "health",
    "query:show_health",
    "The server's health and each model's (exit 1 if any is not SERVING).",
    click.Argument(["models"], metavar="[MODEL]...", nargs=-1, shell_complete=complete_models),
)
_command("workers", "query:show_workers", "List the worker processes behind the target.")
_command(
    "run",
    "run:run_images",
    f"Run an image model; JSON for one image, JSON Lines for more.\n\n{_IMAGES}; or video "
    f"files ({' '.join(VIDEO_EXTENSIONS)}), frame by frame.",
    _model(),
    _paths(),
    _option(
        "--out",
        type=click.Path(path_type=Path),
        metavar="FILE",
        help="Write results here, not stdout.",
    ),
    _args(),
    _concurrency("Images in flight at once (default: 4)."),
)
_command(
    "run-i2i",
    "run:run_images_to_images",
    f"Run an image-to-image model; write its images.\n\n{_IMAGES}.",
    _model(),
    _paths(),
    _option(
        "--out-dir",
        type=click.Path(path_type=Path),
        shell_complete=complete_folders,
        metavar="DIR",
        help="Where output images go (uint8 as PNG, other dtypes as .npy), named after inputs "
        "(default: next to each input as NAME.MODEL.png; stdin's in the current folder).",
    ),
    _option(
        "--together",
        is_flag=True,
        help="Send all images in one call (e.g. two frames for optical flow).",
    ),
    _option(
        "--preview",
        is_flag=True,
        help="Also write NAME.preview.png, a picture of outputs that are none: flow as a "
        "colour wheel (hue: direction, brightness: length), other maps colour-mapped.",
    ),
    _args(),
    _concurrency("Images in flight at once (default: 4)."),
)
_command(
    "text",
    "run:run_text",
    "Run a text model on one text (TEXT, or - for stdin); prints its result as JSON.",
    _model(),
    click.Argument(["text"], metavar="TEXT"),
    _args(),
)
_command(
    "bench",
    "bench:bench",
    "Load a model with calls for a while; show requests/s, MB/s, latency and workers.\n\n"
    "Give one of --image, --size and --text.",
    _model(),
    _option(
        "--image",
        type=click.Path(path_type=Path),
        metavar="FILE",
        help="Send this image file in every call.",
    ),
    _option(
        "--size",
        callback=_parsed(image_size),
        metavar="HxWxC",
        help="Send random uint8 pixels of this size: HxW (gray) or HxWxC, C 1, 3 or 4 "
        f"(default for image models: {DEFAULT_SIZE}).",
    ),
    _option("--text", metavar="TEXT", help="The text to send to a text model."),
    _concurrency("Calls in flight at once, each thread sending the next as one ends (default: 4)."),
    _option(
        "--duration",
        callback=_parsed(positive_seconds),
        default=10.0,
        metavar="SECONDS",
        help="How long to send calls (default: 10).",
    ),
    _option(
        "--balancer",
        type=click.Choice(BALANCERS),
        default="least-loaded",
        help="How calls are spread over the workers (default: least-loaded, as in the client).",
    ),
    _args(),
)


def print_completion(options: object, args: SimpleNamespace) -> int:
    """``tms completion SHELL``: print the completion script of ``tms`` for SHELL."""
    sys.stdout.write(script(args.shell, tms))
    return 0


_command(
    "completion",
    "cli:print_completion",
    "Print a shell completion script: bash, zsh or fish.",
    click.Argument(["shell"], type=click.Choice(SHELLS)),
)
