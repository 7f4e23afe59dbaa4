"""The Open Inference Protocol (KServe v2) on TMS's models: ``inference.GRPCInferenceService``.

Served on the same port as tms.v1.ModelService, so clients written for Triton or KServe
(``tritonclient``, KServe's SDK, perf tools) call TMS unchanged. Each TMS model is one OIP model
with the single version ``"1"``:

- image models take one input ``IMAGE``: one image ``[H, W, C]`` (or ``[H, W]``) or a batch
  ``[N, H, W, C]``, of datatype UINT8, FP32 or any other that TMS images hold, checked and
  converted exactly as for tms.v1 (dtype casts only without loss, colour order, shape,
  ``--max-pixels``). Tensors carry no colour order: the model's own is assumed (gray for one
  channel), unless the ``color_order`` parameter of the input or of the request names it
  (``"rgb"``, ``"bgr"``, ``"gray"``, ``"rgba"`` or ``"bgra"``).
- a model with ``run`` answers ``RESULT``: its JSON result as a BYTES tensor, shape ``[1]`` for
  one image, ``[N, 1]`` for a batch (run through ``run_batch``).
- a model with ``run_image_to_image`` answers ``OUTPUT_IMAGE``, the image it returns (a batch
  input, or several returned images, give a stacked ``[K, ...]`` tensor), and ``RESULT``, its
  structured result as JSON (``null`` when none). A model with both calls runs
  ``run_image_to_image`` unless only ``RESULT`` is requested.
- text models take one BYTES input ``TEXT`` of shape ``[N]`` or ``[N, 1]`` (UTF-8), run through
  ``run_batch``; ``RESULT`` has the same shape.

The request parameter ``args`` (a JSON object as a string) is the model's args. Inputs arrive
in ``raw_input_contents`` (what tritonclient sends) or typed ``contents``; outputs always go out
in ``raw_output_contents`` (what tritonclient reads). Errors are status codes, as for tms.v1:
NOT_FOUND for an unknown model or version, INVALID_ARGUMENT for a malformed request, and so on.
"""

from tms_server.oip.servicer import (
    SERVICE,
    SERVICE_NAME,
    InferenceServicer,
    declared_pixels,
    input_pixels,
)

__all__ = ["SERVICE", "SERVICE_NAME", "InferenceServicer", "declared_pixels", "input_pixels"]
