"""What the commands take: the kinds of files, the balancers by name, image sizes. Nothing
heavy is imported here: the command line (``tms_cli.cli``) shows and checks them, and
completing a word runs ``tms`` too."""

from __future__ import annotations

import math

__all__ = ["BALANCERS", "DEFAULT_SIZE", "IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "image_size"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
BALANCERS = ("round-robin", "least-loaded", "random")  # the client's balancers, by name
DEFAULT_SIZE = "480x640x3"
_MAX_PIXEL_BYTES = 1 << 30  # a --size larger than this is surely a typo


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
