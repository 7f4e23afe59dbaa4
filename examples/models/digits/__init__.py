"""Which handwritten digit is this? A scikit-learn random forest, trained as the worker starts on
the 1,797 scans of handwritten digits scikit-learn ships."""

from __future__ import annotations

from typing import Any, ClassVar

import cv2
import numpy as np
import sklearn.datasets
import sklearn.ensemble

import tms_server

# scikit-learn's digits: each a 32x32 scan of a digit that fills it, cut into 8x8 blocks of 4x4
# pixels, each block counting its inked pixels (0 to 16).
_SIDE, _INK = 8, 16


class Model(tms_server.Model):
    """Reads one handwritten digit, dark on light, that fills a grayscale image of any size.

    A random forest of 100 trees (scikit-learn), trained as each worker starts on scikit-learn's
    digits (about 92% right on scans it has not seen). The image is scaled to 8x8 as those
    were. Concurrent calls run as one batch: the forest costs about as much for sixteen digits
    as for one. No args. Returns {"digit": 0 to 9, "score": the forest's probability}.
    """

    color = "gray"
    dtype = "uint8"
    args_schema: ClassVar[dict[str, Any]] = {"type": "object", "maxProperties": 0}
    thread_safe = True  # a fitted forest only reads itself
    # Dynamic batching: RunImage calls that come within 2 ms of each other in a worker run as
    # one batch through run_batch, one predict_proba over all their digits.
    max_batch_size = 16
    max_batch_delay = 0.002

    def __init__(self) -> None:
        digits = sklearn.datasets.load_digits()
        self.forest = sklearn.ensemble.RandomForestClassifier(n_estimators=100, random_state=0)
        self.forest.fit(digits.data, digits.target)

    def run(self, image: tms_server.Image, args: dict[str, Any]) -> dict[str, Any]:
        return self.run_batch([image], args)[0]

    def run_batch(self, images: list[tms_server.Image], args: dict[str, Any]) -> list[Any]:
        if args:
            raise tms_server.InvalidInput(f"unknown args {sorted(args)}; digits takes none")
        probabilities = self.forest.predict_proba(np.stack([features(image) for image in images]))
        return [
            {"digit": int(self.forest.classes_[row.argmax()]), "score": float(row.max())}
            for row in probabilities
        ]


def features(image: tms_server.Image) -> np.ndarray[Any, np.dtype[np.float64]]:
    """The forest's 64 inputs: ``image`` scaled to 8x8 by averaging, as ink from 0 to 16."""
    if image.ndim != 2:
        raise tms_server.InvalidInput(f"expected a grayscale image, not one of shape {image.shape}")
    if not image.size:
        raise tms_server.InvalidInput(f"empty image of shape {image.shape}")
    small = cv2.resize(image, (_SIDE, _SIDE), interpolation=cv2.INTER_AREA)
    ink: np.ndarray[Any, np.dtype[np.float64]] = (255 - small.astype(np.float64)) * (_INK / 255)
    return ink.ravel()
