"""Pictures of model outputs that are no pictures: flow fields and maps of numbers.

``preview(image)`` turns an (H, W, 2) field into a colour wheel picture (the hue is the
direction of each vector, the brightness its length) and a one-channel map of numbers into
a viridis-like colour map; numbers in [0, 1] (probabilities, masks) keep that scale, others
are stretched from their minimum to their maximum. NaN shows black. Images that already are
pictures (uint8 gray, RGB or RGBA) get no preview.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["colormap", "flow_to_rgb", "preview"]

# Nine stops of matplotlib's viridis (dark blue → green → yellow), interpolated linearly:
# perceptually ordered and readable in gray and by colour-blind readers.
_VIRIDIS = np.array(
    [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ],
    dtype=np.float64,
)

Image = npt.NDArray[Any]


def preview(image: Image) -> npt.NDArray[np.uint8] | None:
    """A uint8 RGB(A) picture of ``image``, or None when it is a picture already or has a
    shape no preview is made for (more than three dimensions, or 5+ channels)."""
    if image.dtype.kind not in "biuf" or image.ndim not in (2, 3):
        return None
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.dtype == np.uint8 and (image.ndim == 2 or image.shape[2] in (3, 4)):
        return None
    if image.ndim == 2:
        return colormap(image)
    if image.shape[2] == 2:
        return flow_to_rgb(image)
    if image.shape[2] in (3, 4):
        return _to_uint8(image.astype(np.float64, copy=False))
    return None


def colormap(values: Image) -> npt.NDArray[np.uint8]:
    """An (H, W, 3) uint8 picture of an (H, W) map of numbers, dark blue (low) to yellow."""
    scaled = _unit_scale(values.astype(np.float64, copy=False))
    stops = np.linspace(0.0, 1.0, len(_VIRIDIS))
    finite = np.isfinite(scaled)
    position = np.where(finite, scaled, 0.0)
    rgb = np.stack([np.interp(position, stops, _VIRIDIS[:, c]) for c in range(3)], axis=-1)
    rgb[~finite] = 0
    return np.rint(rgb).astype(np.uint8)


def flow_to_rgb(flow: Image, max_magnitude: float | None = None) -> npt.NDArray[np.uint8]:
    """An (H, W, 3) uint8 picture of an (H, W, 2) field of (dx, dy) vectors.

    The hue is the direction (red: right, yellow-green: down, cyan: left, blue-violet: up, as
    image y grows downward), the brightness the length relative to ``max_magnitude`` (by
    default the field's 99th percentile, so a few outliers do not darken the rest).
    """
    dx = flow[..., 0].astype(np.float64)
    dy = flow[..., 1].astype(np.float64)
    finite = np.isfinite(dx) & np.isfinite(dy)
    dx, dy = np.where(finite, dx, 0.0), np.where(finite, dy, 0.0)
    magnitude = np.hypot(dx, dy)
    if max_magnitude is None:
        max_magnitude = float(np.percentile(magnitude, 99)) if magnitude.size else 0.0
    value = np.clip(magnitude / max_magnitude, 0.0, 1.0) if max_magnitude > 0 else magnitude * 0
    hue = (np.arctan2(dy, dx) / (2 * np.pi)) % 1.0
    rgb = _hsv_to_rgb(hue, np.ones_like(hue), value)
    rgb[~finite] = 0
    return np.rint(rgb * 255).astype(np.uint8)


def _hsv_to_rgb(
    hue: npt.NDArray[np.float64],
    saturation: npt.NDArray[np.float64],
    value: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """HSV in [0, 1] to RGB in [0, 1], elementwise (the standard six-sector formula)."""
    sector = np.floor(hue * 6.0)
    fraction = hue * 6.0 - sector
    p = value * (1.0 - saturation)
    q = value * (1.0 - saturation * fraction)
    t = value * (1.0 - saturation * (1.0 - fraction))
    sector = sector.astype(np.int64) % 6
    conditions = [sector == i for i in range(6)]
    red = np.select(conditions, [value, q, p, p, t, value])
    green = np.select(conditions, [t, value, value, q, p, p])
    blue = np.select(conditions, [p, p, t, value, value, q])
    return np.stack([red, green, blue], axis=-1)


def _unit_scale(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``values`` in [0, 1]: as they are if they lie there already, else stretched from their
    minimum to their maximum (a constant map is all 0). Non-finite values stay non-finite."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return values
    low, high = float(finite.min()), float(finite.max())
    if low >= 0.0 and high <= 1.0:
        return values
    if high == low:
        return np.where(np.isfinite(values), 0.0, values)
    return (values - low) / (high - low)


def _to_uint8(image: npt.NDArray[np.float64]) -> npt.NDArray[np.uint8]:
    scaled = np.clip(_unit_scale(image), 0.0, 1.0)
    return np.rint(np.nan_to_num(scaled) * 255).astype(np.uint8)
