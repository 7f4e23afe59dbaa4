"""Calls a TMS server through Triton's own client, ``tritonclient.grpc``.

Run by tests/test_oip.py with the Python of a virtual environment holding tritonclient (never
TMS's environment): ``python tritonclient_calls.py TARGET PHOTO.npy EDGES_OUT``. PHOTO.npy is an
RGB uint8 photo. Prints one JSON object with what the server answered; writes the edges image's
raw pixels to EDGES_OUT.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as triton  # type: ignore[import-not-found]
from tritonclient.utils import InferenceServerException  # type: ignore[import-not-found]


def image_input(pixels: np.ndarray) -> Any:
    tensor = triton.InferInput("IMAGE", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    return tensor


def main() -> None:
    target, photo_path, edges_path = sys.argv[1:]
    photo = np.load(photo_path)
    client = triton.InferenceServerClient(url=target)
    out: dict[str, Any] = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "face_ready": client.is_model_ready("face"),
        "unknown_ready": client.is_model_ready("no_such_model"),
        "server": client.get_server_metadata(as_json=True),
        "face_metadata": client.get_model_metadata("face", as_json=True),
        "edges_config": client.get_model_config("edges", as_json=True),
    }

    # One RGB image; face wants BGR, so say what the tensor holds.
    result = client.infer("face", [image_input(photo)], parameters={"color_order": "rgb"})
    out["faces"] = json.loads(result.as_numpy("RESULT")[0])
    out["faces_shape"] = list(result.get_output("RESULT").shape)

    # A batch of two, run through run_batch, with model args.
    batch = np.stack([photo, photo[:, ::-1]])
    result = client.infer(
        "face",
        [image_input(batch)],
        outputs=[triton.InferRequestedOutput("RESULT")],
        parameters={"color_order": "rgb", "args": json.dumps({"min_neighbors": 3})},
    )
    out["batch_faces"] = [json.loads(row[0]) for row in result.as_numpy("RESULT")]

    result = client.infer("edges", [image_input(photo)], parameters={"color_order": "rgb"})
    edges = result.as_numpy("OUTPUT_IMAGE")
    out["edges"] = {"shape": list(edges.shape), "dtype": str(edges.dtype)}
    with open(edges_path, "wb") as file:
        file.write(np.ascontiguousarray(edges).tobytes())

    text = triton.InferInput("TEXT", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"one two two"], dtype=object))
    result = client.infer("text_stats", [text])
    out["text_stats"] = json.loads(result.as_numpy("RESULT")[0])

    errors: dict[str, dict[str, Any] | None] = {}
    for name, call in {
        "unknown_model": lambda: client.infer("no_such_model", [image_input(photo)]),
        "unknown_model_metadata": lambda: client.get_model_metadata("no_such_model"),
        "wrong_input_name": lambda: client.infer(
            "face",
            [triton.InferInput("PIXELS", [1], "UINT8").set_data_from_numpy(np.zeros(1, np.uint8))],
        ),
    }.items():
        try:
            call()
        except InferenceServerException as exc:
            errors[name] = {"status": exc.status(), "message": exc.message()}
        else:
            errors[name] = None
    out["errors"] = errors
    client.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
