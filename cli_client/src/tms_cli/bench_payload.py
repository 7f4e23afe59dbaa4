"""What every call of a ``tms bench`` run sends: random pixels, an image file, or a text."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from tms_cli.connection import describe_error
from tms_cli.errors import CliError

__all__ = ["Payload", "image_file", "random_pixels", "text_payload"]

_COLOR_OF_CHANNELS = {1: "gray", 3: "rgb", 4: "rgba"}
_SENT_ENCODED = ("PNG", "JPEG")  # image files sent as they are; others decoded here once


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


def random_pixels(size: tuple[int, ...]) -> Payload:
    """Random uint8 pixels of ``size`` (the same every run: seeded)."""
    pixels = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)
    color = "gray" if len(size) == 2 else _COLOR_OF_CHANNELS[size[2]]
    shape = "x".join(map(str, size))
    return Payload(pixels, f"{shape} uint8 random pixels", pixels.nbytes, color)


def image_file(path: Path) -> Payload:
    """The image at ``path``: PNG and JPEG as they are, other formats as raw pixels."""
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


def text_payload(text: str) -> Payload:
    """A text, for a text model."""
    encoded = len(text.encode())
    return Payload(text, f"a text of {len(text)} characters", encoded)
