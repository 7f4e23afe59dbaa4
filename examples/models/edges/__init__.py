"""Canny edge detection with OpenCV: an image-to-image model."""

from __future__ import annotations

from typing import Any, ClassVar

import cv2

import tms_server

_DEFAULTS = {"low": 100.0, "high": 200.0}


class Model(tms_server.Model):
    """Canny edges of gray images: 255 on an edge, 0 elsewhere, one uint8 (H, W) per input.

    Args: low and high hysteresis thresholds, 0 <= low <= high (defaults 100 and 200).
    """

    color = "gray"
    dtype = "uint8"
    output_color = "gray"
    # low <= high is beyond a schema: run() checks it.
    args_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "low": {"type": "number", "minimum": 0, "default": _DEFAULTS["low"]},
            "high": {"type": "number", "minimum": 0, "default": _DEFAULTS["high"]},
        },
        "additionalProperties": False,
    }
    thread_safe = True  # a pure OpenCV function of its inputs; the instance holds no state

    def run_image_to_image(
        self, images: list[tms_server.Image], args: dict[str, Any]
    ) -> list[tms_server.Image]:
        low, high = _parse_args(args)
        return [cv2.Canny(image, low, high) for image in images]


def _parse_args(args: dict[str, Any]) -> tuple[float, float]:
    unknown = sorted(set(args) - set(_DEFAULTS))
    if unknown:
        raise tms_server.InvalidInput(f"unknown args {unknown}; edges takes low, high")
    values = {**_DEFAULTS, **args}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise tms_server.InvalidInput(f"{name} must be a number, not {value!r}")
    low, high = float(values["low"]), float(values["high"])
    if not 0 <= low <= high:
        raise tms_server.InvalidInput(
            f"thresholds need 0 <= low <= high, got low={low}, high={high}"
        )
    return low, high
