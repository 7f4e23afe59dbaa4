"""Writing what commands produce: JSON, plain tables, and output images as PNG or ``.npy``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt
from PIL import Image

from tms_cli.connection import describe_error
from tms_cli.errors import CliError
from tms_cli.preview import preview

__all__ = [
    "open_output",
    "print_table",
    "readable_json",
    "save_image",
    "save_preview",
    "to_json",
]

#: The widest list ``readable_json`` keeps on one line (a list of plain values always is).
_LINE = 72


def to_json(value: Any, *, pretty: bool = False) -> str:
    """``value`` as JSON text: indented when ``pretty``, else on one line (JSON Lines)."""
    return json.dumps(value, ensure_ascii=False, indent=2 if pretty else None)


def readable_json(value: Any, indent: str = "") -> str:
    """``value`` as indented JSON for people: unlike ``to_json(pretty=True)`` a list of
    plain values (a point, a box) stays on one line, and so does a short list of them."""
    line = to_json(value)
    if isinstance(value, dict) and value:
        inner = indent + "  "
        items = [f"{inner}{to_json(k)}: {readable_json(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    if not isinstance(value, list) or not value:
        return line
    flat = not any(isinstance(item, (dict, list)) for item in value)
    if flat or (len(line) <= _LINE and not any(isinstance(item, dict) for item in value)):
        return line
    inner = indent + "  "
    items = [inner + readable_json(item, inner) for item in value]
    return "[\n" + ",\n".join(items) + f"\n{indent}]"


def open_output(path: Path) -> TextIO:
    """``path`` opened for writing text (``--out``); CliError saying why it cannot be."""
    try:
        return path.open("w", encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write {path}: {describe_error(exc)}") from exc


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]], stream: TextIO) -> None:
    """Left-aligned columns separated by two spaces, the header in capitals."""
    lines = [[h.upper() for h in header], *[list(row) for row in rows]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        stream.write("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        stream.write("\n")


def save_image(image: npt.NDArray[Any], stem: Path) -> Path:
    """Write ``image`` next to ``stem``: uint8 pixels as PNG, anything else as ``.npy``.

    ``image`` comes as RGB(A) when the model named its colour order (it may be gray expanded
    to RGBA); it is stored in the fewest channels that hold the same pixels.
    """
    image = _fewest_channels(image)
    stem.parent.mkdir(parents=True, exist_ok=True)
    if image.dtype == np.uint8 and (image.ndim == 2 or image.shape[2] in (3, 4)):
        path = stem.with_name(stem.name + ".png")
        Image.fromarray(image).save(path)
    else:
        path = stem.with_name(stem.name + ".npy")
        np.save(path, image, allow_pickle=False)
    return path


def save_preview(image: npt.NDArray[Any], stem: Path) -> list[Path]:
    """Write a colour picture of ``image`` as ``<stem>.preview.png`` when it is no picture
    itself (a flow field, a float map; see tms_cli.preview); the paths written."""
    picture = preview(_fewest_channels(image))
    if picture is None:
        return []
    path = stem.with_name(stem.name + ".preview.png")
    Image.fromarray(picture).save(path)
    return [path]


def _fewest_channels(image: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Without an alpha channel that is opaque everywhere, and gray if R, G and B agree."""
    if image.ndim != 3 or image.dtype.kind not in "iufb":
        return image
    if image.shape[2] == 4 and bool((image[..., 3] == _opaque(image.dtype)).all()):
        image = image[..., :3]
    if image.shape[2] == 3 and bool((image[..., 1:] == image[..., :1]).all()):
        image = image[..., :1]
    if image.shape[2] == 1:
        image = image[..., 0]
    return np.ascontiguousarray(image)


def _opaque(dtype: np.dtype[Any]) -> Any:
    if dtype.kind in "iu":
        return np.iinfo(dtype).max
    return True if dtype.kind == "b" else 1.0
