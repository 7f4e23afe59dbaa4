"""Text detection and recognition with RapidOCR: PP-OCRv4 ONNX models run by onnxruntime."""

from __future__ import annotations

from typing import Any, ClassVar

from rapidocr_onnxruntime import RapidOCR

import tms_server


class Model(tms_server.Model):
    """Reads lines of text (Latin letters, digits, Chinese) in a photo or a scan.

    Args: min_score, the lowest recognition confidence kept, 0 to 1 (default 0.5). Returns
    {"lines": [{"text", "score", "box": four [x, y] corners clockwise from top left}]}, top to
    bottom.
    """

    color = "bgr"
    dtype = "uint8"
    args_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "min_score": {
                "description": "the lowest recognition confidence kept",
                "type": "number",
                "minimum": 0,
                "maximum": 1,
                "default": 0.5,
            }
        },
        "additionalProperties": False,
    }
    # thread_safe stays False: RapidOCR keeps per-call state (its detector's resize step).

    def __init__(self) -> None:
        self.engine = RapidOCR(
            intra_op_num_threads=self.threads,  # the worker's share of the CPUs
            inter_op_num_threads=1,
            det_limit_type="max",  # scale big images down only; the default scales small ones up
            text_score=0.0,  # run() filters by the caller's min_score
        )

    def run(self, image: tms_server.Image, args: dict[str, Any]) -> dict[str, Any]:
        min_score = _parse_args(args)
        found, _elapsed = self.engine(image)
        lines = [
            {
                "text": text,
                "score": float(score),
                "box": [[round(x), round(y)] for x, y in box],
            }
            for box, text, score in found or []
            if score >= min_score
        ]
        return {"lines": lines}


def _parse_args(args: dict[str, Any]) -> float:
    unknown = sorted(set(args) - {"min_score"})
    if unknown:
        raise tms_server.InvalidInput(f"unknown args {unknown}; ocr takes min_score")
    min_score = args.get("min_score", 0.5)
    if isinstance(min_score, bool) or not isinstance(min_score, (int, float)):
        raise tms_server.InvalidInput(f"min_score must be a number, not {min_score!r}")
    if not 0 <= min_score <= 1:
        raise tms_server.InvalidInput(f"min_score must be between 0 and 1, not {min_score}")
    return float(min_score)
