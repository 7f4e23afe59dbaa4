"""The mean pixel value of an image: a model that costs almost nothing, for benchmarks."""

from __future__ import annotations

from typing import Any, ClassVar

import tms_server


class Model(tms_server.Model):
    """Mean of all pixel values of any image, as {"mean": float}; ignores args.

    Measures the server's own overhead: compare it with raw grpcio computing the same np.mean.
    """

    thread_safe = True
    args_schema: ClassVar[dict[str, Any]] = {"type": "object"}  # any args, ignored

    def run(self, image: tms_server.Image, args: dict[str, Any]) -> dict[str, float]:
        return {"mean": float(image.mean())}
