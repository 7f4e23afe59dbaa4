"""Writing the images a model returns: uint8 pictures as PNG, anything else as ``.npy``, and
pictures of what is no picture (``tms run-i2i --preview``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from tms_cli.preview import preview

__all__ = ["save_image", "save_preview"]


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
