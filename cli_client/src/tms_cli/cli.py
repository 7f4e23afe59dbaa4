"""The command line of ``tms``, on Click: its commands, their options and arguments.

Click only parses: a command returns an ``Invocation`` (which function runs it, the global
options, its arguments), which ``tms_cli.running`` runs. The functions are named, not imported:
completing a word runs ``tms`` too, and loads no more than this module. The global options are
taken before the command and after it (``tms --json models``, ``tms models --json``); each
``TMS_*`` variable is the default of one option.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
from click.core import ParameterSource

from tms_cli import __version__
from tms_cli.completion import SHELLS, complete_folders, complete_models, script
from tms_cli.values import BALANCERS, DEFAULT_SIZE, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, image_size

__all__ = ["DEFAULT_TARGET", "Invocation", "global_params", "global_values", "tms"]

DEFAULT_TARGET = "localhost:50051"


class _Checked(click.ParamType[Any]):
    """Text (as given, or from the environment) that ``parse`` converts; its ValueError says
    what is wrong."""

    def __init__(self, name: str, parse: Callable[[str], Any]) -> None:
        self.name, self._parse = name, parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return self._parse(value) if isinstance(value, str) else value
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
        kind = kinds.get(type(value), "a number")
        raise ValueError(f"must be a JSON object such as '{{\"k\": 1}}', not {kind}: {text!r}")
    return value


class _Seconds(click.FloatRange):
    """Seconds, a finite number of them; ``min`` included unless ``min_open``."""

    name = "number of seconds"  # Click's error: "'soon' is not a valid number of seconds."

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str | None:
        return "SECONDS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"not a number of seconds: {value!r}", param, ctx)
        return seconds


class _Whole(click.IntRange):
    """A whole number in a range, shown in help as ``metavar`` (Click's errors name the
    type, so the name stays "whole number": "'abc' is not a valid whole number.")."""

    name = "whole number"

    def __init__(self, metavar: str, **bounds: Any) -> None:
        super().__init__(**bounds)
        self._metavar = metavar

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str | None:
        return self._metavar


JSON_OBJECT = _Checked("json", _json_object)
POSITIVE_INT = _Whole("N", min=1)
MEGABYTES = _Whole("MB", min=1)
SECONDS = _Seconds(min=0)
POSITIVE_SECONDS = _Seconds(min=0, min_open=True)
SIZE = _Checked("hxwxc", image_size)
TARGET = _Checked("host:port", str)  # any text: the server says if it is none
_PEM = click.Path(dir_okay=False)
_MESSAGE = "Largest request or reply in MiB, as the server's (a larger raw image goes as PNG)."
_SHM = "Pass images to a server on this host through shared memory."
_STREAMS = "Carry calls on streams kept open to each worker (faster than a call each)."
_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100, "show_default": True}
_VERSION = f"%(prog)s %(version)s (tms-client {version('tms-client')})"
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


@dataclass(frozen=True)
class Invocation:
    """A command to run, as the command line asked for it."""

    command: str  # "module:function" in tms_cli; the function takes (Options, args)
    options: dict[str, Any]  # the global options, by name (see tms_cli.connection.Options)
    args: SimpleNamespace
    prog: str  # "tms run": how usage errors name the command


class _Unlisted(click.Option):
    """An option a command's help leaves out (completion still offers it)."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        return None


def global_params(*, listed: bool = True) -> list[click.Parameter]:
    """The options every command takes, as ``tms`` itself does (new objects for each);
    ``listed`` in the help (a command's help points to ``tms --help`` instead)."""

    def option(
        flag: str, help_text: str, kind: Any = None, default: Any = None, **attrs: Any
    ) -> click.Option:
        cls = click.Option if listed else _Unlisted
        attrs.update(type=kind, default=default, show_envvar="envvar" in attrs)
        return cls([flag], help=help_text, **attrs)

    return [
        option("--target", "The server.", TARGET, DEFAULT_TARGET, envvar="TMS_TARGET"),
        option("--timeout", "Deadline of each call; 0: none.", SECONDS, 60.0),
        option("--connect-timeout", "How long to wait for the server.", POSITIVE_SECONDS, 10.0),
        option("--max-message-mb", _MESSAGE, MEGABYTES, 64, envvar="TMS_MAX_MESSAGE_MB"),
        option("--shared-memory/--no-shared-memory", _SHM, None, True, envvar="TMS_SHARED_MEMORY"),
        option("--call-streams/--no-call-streams", _STREAMS, None, True, envvar="TMS_CALL_STREAMS"),
        option("--json", "Machine-readable output.", is_flag=True),
        option("--debug", "Show tracebacks and logs.", is_flag=True),
        option("--tls", "Connect over TLS (implied by --tls-*).", is_flag=True),
        option("--tls-ca", "CA bundle (PEM) to trust, not the system's.", _PEM),
        option("--tls-cert", "Client certificate (PEM), for mutual TLS.", _PEM),
        option("--tls-key", "Private key of --tls-cert.", _PEM),
        option(
            "--tls-server-name",
            "The name the server's certificate must have, if not HOST.",
            metavar="NAME",
        ),
        option(
            "--token",
            "Bearer token for every call (prefer the variable).",
            envvar="TMS_TOKEN",
            metavar="TOKEN",
        ),
    ]


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # in the order they were added: the order of the README


class _Command(click.Command):
    """A command of ``tms``: its own parameters and the global options; it returns the
    Invocation of ``run``, a "module:function" in tms_cli."""

    def __init__(self, *args: Any, run: str, **attrs: Any) -> None:
        attrs["epilog"] = "The options of tms (--target, --json, ...; see tms --help) go here too."
        super().__init__(*args, **attrs)
        self.params.extend(global_params(listed=False))
        self.run = run

    def invoke(self, ctx: click.Context) -> Invocation:
        args = SimpleNamespace(**ctx.params)
        return Invocation(self.run, global_values(ctx), args, ctx.command_path)


@click.group(cls=_Group, params=global_params(), epilog=_EPILOG, context_settings=_SETTINGS)
@click.version_option(__version__, prog_name="tms", message=_VERSION)
def tms(**_: Any) -> None:
    """Call the models of a TMS server (Tiny Model Server)."""


_model = click.argument("model", shell_complete=complete_models)
_paths = click.argument("paths", metavar="PATH...", nargs=-1, required=True, type=click.Path())
_args = click.option("--args", type=JSON_OBJECT, help="""Args for the model: '{"k": 1}'.""")
_concurrency = click.option("--concurrency", type=POSITIVE_INT, default=4, help="Calls at once.")
_file = click.Path(path_type=Path)
_images = f"PATH: image files, folders (searched for {' '.join(IMAGE_EXTENSIONS)}) or - for stdin"
_videos = f"or video files ({' '.join(VIDEO_EXTENSIONS)}), frame by frame"


@tms.command(cls=_Command, run="query:list_models")
@click.option(
    "--names", is_flag=True, help="Only the loaded models' names, one a line (for scripts)."
)
def models() -> None:
    """List the models the server has loaded, then those that failed to load, with why."""


@tms.command(cls=_Command, run="query:show_model")
@_model
def info() -> None:
    """Show one model in detail."""


@tms.command(cls=_Command, run="query:show_health")
@click.argument("models", metavar="[MODEL]...", nargs=-1, shell_complete=complete_models)
def health() -> None:
    """The server's health and each model's (exit 1 if any is not SERVING)."""


@tms.command(cls=_Command, run="query:show_workers")
def workers() -> None:
    """List the worker processes behind the target."""


@tms.command(
    cls=_Command,
    run="run:run_images",
    help=f"Run an image model; JSON for one image, JSON Lines for more.\n\n{_images}; {_videos}.",
)
@_model
@_paths
@click.option("--out", type=_file, metavar="FILE", help="Write results here, not stdout.")
@_args
@_concurrency
def run() -> None: ...


@tms.command(
    cls=_Command,
    run="run:run_images_to_images",
    help=f"Run an image-to-image model; write its images.\n\n{_images}.",
)
@_model
@_paths
@click.option(
    "--out-dir",
    type=_file,
    metavar="DIR",
    shell_complete=complete_folders,
    help="Where output images go (uint8 as PNG, other dtypes as .npy), named after inputs "
    "(default: next to each input as NAME.MODEL.png; stdin's in the current folder).",
)
@click.option(
    "--together",
    is_flag=True,
    help="Send all the images in one call, for a model that takes several at once (optical "
    "flow's two frames); its outputs are named after the first image. Without it each image "
    "is a call of its own.",
)
@click.option(
    "--preview",
    is_flag=True,
    help="Also write NAME.preview.png, a picture of outputs that are none: flow as a colour "
    "wheel (hue: direction, brightness: length), other maps colour-mapped.",
)
@_args
@_concurrency
def run_i2i() -> None: ...


@tms.command(cls=_Command, run="run:run_text")
@_model
@click.argument("text")
@_args
def text() -> None:
    """Run a text model on one text (TEXT, or - for stdin); prints its result as JSON."""


@tms.command(cls=_Command, run="bench:bench")
@_model
@click.option("--image", type=_file, metavar="FILE", help="Send this image file in every call.")
@click.option(
    "--size",
    type=SIZE,
    help=f"Send random uint8 pixels of this size: HxW (gray) or HxWxC, C 1, 3 or 4 (default "
    f"for image models: {DEFAULT_SIZE}).",
)
@click.option("--text", help="The text to send to a text model.")
@_concurrency
@click.option("--duration", type=POSITIVE_SECONDS, default=10, help="Seconds to send calls for.")
@click.option(
    "--balancer",
    type=click.Choice(BALANCERS),
    default="least-loaded",
    help="How calls are spread over the workers.",
)
@_args
def bench() -> None:
    """Load a model with calls for a while; show requests/s, MB/s, latency and workers.

    Give at most one of --image, --size and --text (random pixels of --size by default)."""


@tms.command(cls=_Command, run="cli:print_completion")
@click.argument("shell", type=click.Choice(SHELLS))
def completion() -> None:
    """Print a shell completion script: bash, zsh or fish."""


def print_completion(options: object, args: SimpleNamespace) -> int:
    """``tms completion SHELL``: print the completion script of ``tms`` for SHELL."""
    sys.stdout.write(script(args.shell, tms))
    return 0


def global_values(ctx: click.Context) -> dict[str, Any]:
    """The global options of the command of ``ctx``: as given after the command, else before
    it, else their defaults."""
    values = dict(ctx.parent.params if ctx.parent is not None else ctx.params)
    for name in values:
        if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE:
            values[name] = ctx.params[name]
    return values
