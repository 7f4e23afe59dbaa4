"""The values options take, checked (a ValueError says what is wrong), and the fixed sets the
command line offers. Nothing heavy is imported here: completing a word runs ``tms`` too, and
must be quick."""

from __future__ import annotations

import json
import math
from typing import Any

import click
from click.core import ParameterSource

__all__ = [
    "BALANCERS",
    "DEFAULT_SIZE",
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "global_values",
    "image_size",
    "json_object",
    "positive_int",
    "positive_seconds",
    "seconds",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
BALANCERS = ("round-robin", "least-loaded", "random")  # the client's balancers, by name
DEFAULT_SIZE = "480x640x3"
_MAX_PIXEL_BYTES = 1 << 30  # a --size larger than this is surely a typo


def json_object(text: str) -> dict[str, Any]:
    """A JSON object, as ``--args`` takes."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
        kind = kinds.get(type(value), "a number")
        raise ValueError(f"must be a JSON object such as '{{\"k\": 1}}', not {kind}: {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise ValueError(f"must be at least 1, not {value}")
    return value


def seconds(text: str) -> float | None:
    """Seconds, 0 or more; 0 means no limit (None)."""
    value = _seconds(text)
    if value < 0:
        raise ValueError(f"must not be negative, not {text}")
    return value or None


def positive_seconds(text: str) -> float:
    """Seconds, more than 0."""
    value = _seconds(text)
    if value <= 0:
        raise ValueError(f"must be more than 0, not {text}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"not a number of seconds: {text!r}")
    return value


def image_size(text: str) -> tuple[int, ...]:
    """``HxW`` (gray) or ``HxWxC`` with C 1, 3 or 4 (gray, RGB, RGBA)."""
    try:
        dims = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) not in (2, 3) or min(dims) < 1:
        raise ValueError(f"expected HxW or HxWxC such as 1080x1920x3, not {text!r}")
    if len(dims) == 3 and dims[2] not in (1, 3, 4):
        raise ValueError(f"channels must be 1, 3 or 4, not {dims[2]}")
    if math.prod(dims) > _MAX_PIXEL_BYTES:
        raise ValueError(f"{text} is more than {_MAX_PIXEL_BYTES >> 30} GiB of pixels")
    return dims


def global_values(ctx: click.Context) -> dict[str, Any]:
    """The global options of the command of ``ctx``: as given after the command, else before
    it, else their defaults."""
    values = dict(ctx.parent.params if ctx.parent is not None else ctx.params)
    for name in values:
        if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE:
            values[name] = ctx.params[name]
    return values
