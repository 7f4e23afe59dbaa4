"""Is a line of text upright or upside down? PP-OCR's text direction classifier, an ONNX model,
on ONNX Runtime: on the worker's GPU through the CUDA provider when it can, else on the CPU."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import onnxruntime as ort
import rapidocr_onnxruntime

import tms_server

log = logging.getLogger(__name__)

# The classifier RapidOCR ships (585 kB): a BGR line of text, 48 pixels high, at most 192 wide.
WEIGHTS = (
    Path(rapidocr_onnxruntime.__file__).parent / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
)
_HEIGHT, _WIDTH = 48, 192
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


def providers_for(device: str) -> list[Any]:
    """ONNX Runtime's providers, best first, for a worker on ``device`` ("cuda:0" or "cpu"):
    CUDA when the worker has a GPU and this ONNX Runtime has the CUDA provider (the
    onnxruntime-gpu package), and the CPU always, as the fallback."""
    if device.startswith("cuda") and CUDA in ort.get_available_providers():
        return [(CUDA, {"device_id": int(device.partition(":")[2] or 0)}), CPU]
    return [CPU]


class Model(tms_server.Model):
    """Tells whether a cropped line of text is upright (angle 0) or upside down (angle 180).

    PP-OCR's text direction classifier on ONNX Runtime: on the worker's GPU (CUDA provider)
    when onnxruntime-gpu is installed and the server runs it on a GPU (--devices cuda:0,...),
    else on the CPU with the worker's share of threads. No args. Returns {"angle": 0 or 180,
    "score": its probability, "provider": the ONNX Runtime provider that ran it}.
    """

    color = "bgr"
    dtype = "uint8"
    args_schema: ClassVar[dict[str, Any]] = {"type": "object", "maxProperties": 0}
    thread_safe = True  # an InferenceSession runs calls from several threads at once
    # Dynamic batching: RunImage calls that come within 2 ms of each other in a worker run as
    # one batch through run_batch, one session.run over the batch dimension.
    max_batch_size = 16
    max_batch_delay = 0.002

    def __init__(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads  # the worker's share of the CPUs
        options.inter_op_num_threads = 1
        providers = providers_for(self.device)
        self.session = ort.InferenceSession(str(WEIGHTS), options, providers=providers)
        self.input = self.session.get_inputs()[0].name
        # What ONNX Runtime took, not what was asked: it falls back to the CPU by itself.
        self.provider = self.session.get_providers()[0]
        wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
        if self.provider != wanted:
            log.warning(
                "upright: worker %d asked ONNX Runtime for %s on %s and got %s",
                self.worker_index,
                wanted,
                self.device,
                self.provider,
            )
        log.info(
            "upright: worker %d runs on %s (device %s, %d thread(s))",
            self.worker_index,
            self.provider,
            self.device,
            self.threads,
        )

    def run(self, image: tms_server.Image, args: dict[str, Any]) -> dict[str, Any]:
        return self.run_batch([image], args)[0]

    def run_batch(self, images: list[tms_server.Image], args: dict[str, Any]) -> list[Any]:
        if args:
            raise tms_server.InvalidInput(f"unknown args {sorted(args)}; upright takes none")
        batch = np.stack([_prepare(image) for image in images])
        (probabilities,) = self.session.run(None, {self.input: batch})
        return [
            {
                "angle": 180 if upside_down > upright else 0,
                "score": float(max(upright, upside_down)),
                "provider": self.provider,
            }
            for upright, upside_down in probabilities
        ]


def _prepare(image: tms_server.Image) -> np.ndarray:
    """The classifier's input: the line scaled to 48 pixels high (at most 192 wide), values
    in [-1, 1], channels first, padded with zeros on the right to 192."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise tms_server.InvalidInput(f"expected a BGR image, not one of shape {image.shape}")
    height, width = image.shape[:2]
    if not height or not width:
        raise tms_server.InvalidInput(f"empty image of shape {image.shape}")
    resized_width = min(_WIDTH, math.ceil(_HEIGHT * width / height))
    resized = cv2.resize(image, (resized_width, _HEIGHT)).astype(np.float32)
    padded = np.zeros((3, _HEIGHT, _WIDTH), np.float32)
    padded[:, :, :resized_width] = (resized.transpose(2, 0, 1) / 255 - 0.5) / 0.5
    return padded
