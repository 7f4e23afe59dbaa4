"""Dense optical flow between two frames with OpenCV's Farneback method."""

from __future__ import annotations

from typing import Any, ClassVar

import cv2
import numpy as np

import tms_server

# OpenCV's suggested Farneback parameters: a 3-level pyramid halving each level, 15 px windows.
_FARNEBACK = {
    "pyr_scale": 0.5,
    "levels": 3,
    "winsize": 15,
    "iterations": 3,
    "poly_n": 5,
    "poly_sigma": 1.2,
    "flags": 0,
}


class Model(tms_server.Model):
    """Dense Farneback optical flow from the first of two gray frames to the second.

    Returns an (H, W, 2) float32 field of (dx, dy) per pixel of the first frame, and
    {"mean_dx", "mean_dy", "mean_magnitude"} in pixels. Takes no args.
    """

    color = "gray"
    dtype = "uint8"
    output_color = None
    args_schema: ClassVar[dict[str, Any]] = {"type": "object", "maxProperties": 0}
    thread_safe = True  # a pure OpenCV function of its inputs; the instance holds no state

    def run_image_to_image(
        self, images: list[tms_server.Image], args: dict[str, Any]
    ) -> tuple[tms_server.Image, dict[str, float]]:
        if args:
            raise tms_server.InvalidInput(f"optical_flow takes no args, got {sorted(args)}")
        if len(images) != 2:
            raise tms_server.InvalidInput(f"optical_flow needs exactly 2 frames, got {len(images)}")
        first, second = images
        if first.shape != second.shape:
            raise tms_server.InvalidInput(
                f"frames differ in shape: {list(first.shape)} and {list(second.shape)}"
            )
        flow = cv2.calcOpticalFlowFarneback(first, second, None, **_FARNEBACK)
        dx, dy = flow[..., 0], flow[..., 1]
        summary = {
            "mean_dx": float(dx.mean()),
            "mean_dy": float(dy.mean()),
            "mean_magnitude": float(np.hypot(dx, dy).mean()),
        }
        return flow, summary
