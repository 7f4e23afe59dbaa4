"""Colour orders: their names, the channels each holds, and converting pixels between them.

Shared by the TMS client and server (a model declares the order it wants; the server converts
what the client sent).
"""

from __future__ import annotations

from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from tms.v1 import image_pb2

__all__ = [
    "COLOR_ORDERS",
    "LAYOUT",
    "RGB_OF",
    "ColorValue",
    "color_name",
    "color_order",
    "convert_color",
]

ColorValue: TypeAlias = image_pb2.ColorOrder.ValueType

# Channel letters of each colour order; "L" is one channel of intensity.
LAYOUT: dict[ColorValue, str] = {
    image_pb2.COLOR_ORDER_GRAY: "L",
    image_pb2.COLOR_ORDER_RGB: "RGB",
    image_pb2.COLOR_ORDER_BGR: "BGR",
    image_pb2.COLOR_ORDER_RGBA: "RGBA",
    image_pb2.COLOR_ORDER_BGRA: "BGRA",
}
#: The RGB order with the same channels as a BGR one.
RGB_OF = {
    image_pb2.COLOR_ORDER_BGR: image_pb2.COLOR_ORDER_RGB,
    image_pb2.COLOR_ORDER_BGRA: image_pb2.COLOR_ORDER_RGBA,
}


#: Colour orders by the names models and clients use for them.
COLOR_ORDERS: dict[str | None, ColorValue] = {
    None: image_pb2.COLOR_ORDER_UNSPECIFIED,
    "gray": image_pb2.COLOR_ORDER_GRAY,
    "rgb": image_pb2.COLOR_ORDER_RGB,
    "bgr": image_pb2.COLOR_ORDER_BGR,
    "rgba": image_pb2.COLOR_ORDER_RGBA,
    "bgra": image_pb2.COLOR_ORDER_BGRA,
}


def color_order(name: str | None) -> ColorValue:
    """The ``tms.v1.ColorOrder`` of a name: gray, rgb, bgr, rgba, bgra or None."""
    key = name.lower() if name is not None else None
    if key not in COLOR_ORDERS:
        raise ValueError(f"unknown colour order {name!r}; use gray, rgb, bgr, rgba, bgra or None")
    return COLOR_ORDERS[key]


def color_name(order: ColorValue) -> str | None:
    """The name of a ``tms.v1.ColorOrder`` (``"bgr"``...), None for UNSPECIFIED or unknown."""
    for name, value in COLOR_ORDERS.items():
        if value == order:
            return name
    return None


def convert_color(
    array: npt.NDArray[Any], source: ColorValue, target: ColorValue
) -> npt.NDArray[Any]:
    """``array`` in colour order ``source`` converted to ``target``.

    Returns ``array`` itself when nothing needs converting or either order is unspecified.
    Gray comes out as (H, W); colour to gray uses the ITU-R BT.601 luma weights.
    """
    if source == target or image_pb2.COLOR_ORDER_UNSPECIFIED in (source, target):
        if source == target == image_pb2.COLOR_ORDER_GRAY and array.ndim == 3:
            return array[..., 0]  # (H, W, 1)
        return array
    src, dst = LAYOUT[source], LAYOUT[target]
    if src == "L":
        gray = array if array.ndim == 2 else array[..., 0]
        channels = {"R": gray, "G": gray, "B": gray}
    else:
        channels = {letter: array[..., i] for i, letter in enumerate(src)}
    if dst == "L":
        luma = (
            0.299 * channels["R"].astype(np.float64)
            + 0.587 * channels["G"].astype(np.float64)
            + 0.114 * channels["B"].astype(np.float64)
        )
        if array.dtype.kind in "iu":
            info = np.iinfo(array.dtype)
            top = float(info.max)
            if int(top) > info.max:  # float64 rounds int64's largest value up past it
                top = float(np.nextafter(top, 0.0))
            luma = np.clip(np.rint(luma), info.min, top)
        converted: npt.NDArray[Any] = luma.astype(array.dtype)
        return converted
    out = np.empty((*array.shape[:2], len(dst)), dtype=array.dtype)
    for i, letter in enumerate(dst):
        out[..., i] = channels.get(letter, _opaque(array.dtype))
    return out


def _opaque(dtype: np.dtype[Any]) -> Any:
    if dtype.kind in "iu":
        return np.iinfo(dtype).max
    return True if dtype.kind == "b" else 1.0
