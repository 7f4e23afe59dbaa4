"""Describes the array it receives, exactly as the server decoded it: dtype, shape, and a digest
of its bytes in C order, little-endian. Image-to-image mirrors each image left to right."""

import hashlib
from typing import Any, ClassVar

import numpy as np

import tms_server


def digest(image):
    little = np.ascontiguousarray(image).astype(image.dtype.newbyteorder("<"), copy=False)
    return hashlib.sha256(little.tobytes()).hexdigest()


class Model(tms_server.Model):
    thread_safe = True
    version = "1.0"
    args_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "label": {"type": "string", "maxLength": 8},
            "scale": {"type": "number", "minimum": 0},
        },
        "additionalProperties": False,
    }

    def run(self, image, args):
        return {
            "dtype": str(image.dtype),
            "shape": list(image.shape),
            "sha256": digest(image),
            "args": args,
        }

    def run_image_to_image(self, images, args):
        return [np.ascontiguousarray(image[:, ::-1]) for image in images], {"count": len(images)}
