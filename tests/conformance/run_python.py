"""The Python client's conformance runner: runs every vector of a vectors file against a live
server and prints one JSON line per vector, ``{"name": ..., "outcome": ...}``, in file order.

    python tests/conformance/run_python.py --target HOST:PORT [--vectors FILE] [--connect-timeout S]

tests/conformance/README.md defines the vectors and the outcomes; the Go, TypeScript and Java
runners print the same lines for the same server.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from tms_client import CallError, ModelClient

HERE = Path(__file__).resolve().parent

#: The value of element i (C order) of a generated image, per dtype (README.md, "Pixels").
FORMULAS: dict[str, Any] = {
    "uint8": lambda i: i % 251,
    "int8": lambda i: i % 251 - 125,
    "uint16": lambda i: i * 257 % 65536,
    "int16": lambda i: i * 257 % 65536 - 32768,
    "int32": lambda i: i * 65537 - 1000000,
    "int64": lambda i: i * 4294967311 - 1099511627776,
    "float16": lambda i: i % 64 * 0.25 - 8,
    "float32": lambda i: i * 0.25 - 8,
    "float64": lambda i: i * 0.125 - 16,
    "bool": lambda i: i % 3 == 0,
}


def generate(dtype: str, shape: list[int]) -> np.ndarray[Any, Any]:
    """The pixels a vector's ``generate`` names."""
    index = np.arange(int(np.prod(shape)), dtype=np.int64)
    values = FORMULAS[dtype](index.astype(object) if dtype == "int64" else index)
    return np.asarray(values).astype(dtype).reshape(shape)


def digest(array: np.ndarray[Any, Any]) -> str:
    """sha256 of an array's elements in C order, little-endian."""
    little = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False)
    return hashlib.sha256(little.tobytes()).hexdigest()


def image_input(spec: dict[str, Any]) -> tuple[Any, str | None]:
    """What the client is given for an image spec, and the colour order to send."""
    if "file" in spec:
        return (HERE / spec["file"]).read_bytes(), None
    pixels = generate(spec["generate"]["dtype"], spec["generate"]["shape"])
    color = spec["color_order"].lower()
    return pixels, None if color in ("unspecified", "gray") else color


def run(client: ModelClient, vector: dict[str, Any]) -> dict[str, Any]:
    call = vector["call"]
    args = vector.get("args")
    if call == "ListModels":
        models = [info.name for info in client.list_models()]
        return {"models": models, "failed": client.failed_models()}
    if call == "Health":
        return {"health": client.health()}
    if call == "GetModelInfo":
        info = client.info()
        return {
            "model": {
                "name": info.name,
                "version": info.version,
                "max_batch_size": info.max_batch_size,
                "max_batch_delay": info.max_batch_delay,
                "args_schema": info.args_schema,
            }
        }
    if call in ("RunText", "RunTextBatch"):
        texts = vector["texts"]
        if call == "RunText":
            return {"result": client.run_text(texts[0], args)}
        return {"results": client.run_texts(texts, args)}
    inputs = [image_input(spec) for spec in vector["images"]]
    color = inputs[0][1]
    images = [image for image, _ in inputs]
    if call == "RunImage":
        return {"result": client.run_image(images[0], args, color=color)}
    if call == "RunImageBatch":
        return {"results": client.run_images(images, args, color=color)}
    if call == "RunImageStream":
        frames = client.run_image_stream(images, args, color=color, errors="yield")
        return {
            "frames": [
                {"result": frame.result} if frame.error is None else failure(frame.error)
                for frame in frames
            ]
        }
    if call == "RunImageToImage":
        answer = client.run_image_to_image(images, args, color=color)
        return {
            "images": [
                {
                    "dtype": str(array.dtype),
                    "shape": list(array.shape),
                    "color_order": (name or "unspecified").upper(),
                    "sha256": digest(array),
                }
                for array, name in zip(answer.images, answer.colors, strict=True)
            ],
            "result": answer.result,
        }
    raise ValueError(f"unknown call {call!r}")


def outcome(target: str, vector: dict[str, Any], connect_timeout: float = 10.0) -> dict[str, Any]:
    """The vector's outcome: of its one call, or, made ``repeat`` times with one client, the
    first that differs from the first call's (else that one)."""
    try:
        model = vector.get("model", "")
        with ModelClient(model, target, timeout=30, connect_timeout=connect_timeout) as client:
            first = attempt(client, vector)
            for _ in range(vector.get("repeat", 1) - 1):
                other = attempt(client, vector)
                if other != first:
                    return other
            return first
    except CallError as error:
        return failure(error)


def attempt(client: ModelClient, vector: dict[str, Any]) -> dict[str, Any]:
    """The outcome of making the vector's call once."""
    try:
        return run(client, vector)
    except CallError as error:
        return failure(error)


def failure(error: CallError) -> dict[str, Any]:
    """The outcome of a call (or a stream's frame) that failed with ``error``."""
    failed: dict[str, Any] = {"code": error.code.name, "reason": error.reason or ""}
    failed["field_violations"] = [field for field, _ in error.field_violations]
    return {"error": failed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--vectors", type=Path, default=HERE / "vectors.json")
    parser.add_argument("--connect-timeout", type=float, default=10.0, help="seconds (10)")
    options = parser.parse_args()
    vectors = json.loads(options.vectors.read_text())["vectors"]
    for vector in vectors:
        found = outcome(options.target, vector, options.connect_timeout)
        line = {"name": vector["name"], "outcome": found}
        print(json.dumps(line, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
