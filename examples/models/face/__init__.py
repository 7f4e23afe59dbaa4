"""Face detection with the frontal-face Haar cascade that ships with OpenCV."""

from __future__ import annotations

from typing import Any, ClassVar

import cv2

import tms_server

_CASCADE = "haarcascade_frontalface_default.xml"
_DEFAULTS = {"scale_factor": 1.1, "min_neighbors": 5, "min_size": 30}


class Model(tms_server.Model):
    """Finds frontal faces with OpenCV's Haar cascade.

    Args: scale_factor (> 1, default 1.1), min_neighbors (>= 0, default 5), min_size (smallest
    face side in pixels, >= 1, default 30). Returns {"faces": [{"x", "y", "width", "height"}]}.
    """

    color = "bgr"
    dtype = "uint8"
    version = "1.0"
    args_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "scale_factor": {
                "description": "how much the image shrinks between scales",
                "type": "number",
                "exclusiveMinimum": 1,
                "maximum": 10,
                "default": _DEFAULTS["scale_factor"],
            },
            "min_neighbors": {
                "description": "neighbouring detections a face needs to be kept",
                "type": "integer",
                "minimum": 0,
                "default": _DEFAULTS["min_neighbors"],
            },
            "min_size": {
                "description": "smallest face side, in pixels",
                "type": "integer",
                "minimum": 1,
                "default": _DEFAULTS["min_size"],
            },
        },
        "additionalProperties": False,
    }
    result_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "faces": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        key: {"type": "integer"} for key in ("x", "y", "width", "height")
                    },
                    "required": ["x", "y", "width", "height"],
                },
            }
        },
        "required": ["faces"],
    }
    # thread_safe stays False: a cascade keeps the image being scanned in its own state.

    def __init__(self) -> None:
        path = cv2.data.haarcascades + _CASCADE
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise RuntimeError(f"cannot load the Haar cascade {path}")

    def run(self, image: tms_server.Image, args: dict[str, Any]) -> dict[str, Any]:
        scale_factor, min_neighbors, min_size = _parse_args(args)
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        boxes = self.cascade.detectMultiScale(
            gray, scaleFactor=scale_factor, minNeighbors=min_neighbors, minSize=(min_size, min_size)
        )
        faces = [
            {"x": int(x), "y": int(y), "width": int(w), "height": int(h)} for x, y, w, h in boxes
        ]
        return {"faces": faces}


def _parse_args(args: dict[str, Any]) -> tuple[float, int, int]:
    unknown = sorted(set(args) - set(_DEFAULTS))
    if unknown:
        raise tms_server.InvalidInput(f"unknown args {unknown}; face takes {', '.join(_DEFAULTS)}")
    values = {**_DEFAULTS, **args}
    scale_factor = values["scale_factor"]
    if isinstance(scale_factor, bool) or not isinstance(scale_factor, (int, float)):
        raise tms_server.InvalidInput(f"scale_factor must be a number, not {scale_factor!r}")
    if not 1 < scale_factor <= 10:
        raise tms_server.InvalidInput(f"scale_factor must be > 1 and <= 10, not {scale_factor}")
    for name, low in (("min_neighbors", 0), ("min_size", 1)):
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise tms_server.InvalidInput(f"{name} must be an integer >= {low}, not {value!r}")
    return float(scale_factor), values["min_neighbors"], values["min_size"]
