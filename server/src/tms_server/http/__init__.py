"""HTTP/JSON on ``--http-port``: the Open Inference Protocol's REST form and a page to try models.

- ``GET /v2/health/live``, ``GET /v2/health/ready`` (200, or 503 while the worker's gRPC health
  is not SERVING), open to probes without a token;
- ``GET /v2`` (server metadata), ``GET /v2/models`` (every model's metadata: a TMS extension),
  ``GET /v2/models/{name}[/versions/{version}]``, ``.../ready`` and ``.../config`` (Triton's
  model configuration);
- ``POST /v2/models/{name}[/versions/{version}]/infer``: OIP's JSON tensors (and the binary
  tensor data extension), mapped onto TMS's models exactly as the OIP gRPC service maps them
  (tms_server.oip): input ``IMAGE`` or ``TEXT``, outputs ``RESULT`` and ``OUTPUT_IMAGE``;
- ``POST /v2/models/{name}/run``: a TMS extension for people, pages and ``curl``: an image file
  (PNG or JPEG) as the body, or a text for a text model, ``?args=`` as JSON; the answer is the
  model's result as JSON (and an image-to-image model's images, as PNG in base64);
- ``GET /``: a page that lists the models and runs one on an image picked or dropped.

Errors are HTTP status codes with ``{"error": "...", "reason": "..."}``: 400 for bad input,
401 for a missing or wrong token, 404 for an unknown model, 413 for too large, 415 for a
compressed body (never inflated), 429 while the worker's queue is full, 503 while it drains.
"""

from tms_server.http.server import HttpServer

__all__ = ["HttpServer"]
