"""The gRPC paths of the tms.v1 ModelService methods and the field numbers of the images in
the messages that carry them, computed once from the generated descriptors; and gRPC metadata
as a Calls stream's messages carry it (``MetadataEntry``)."""

from __future__ import annotations

import functools
from collections.abc import Iterable

from tms.v1 import model_service_pb2 as pb

__all__ = [
    "HEALTH_CHECK",
    "IMAGE_FIELD",
    "OUTPUT_FIELD",
    "PER_CALL_METADATA",
    "SERVICE",
    "from_entries",
    "method_path",
    "to_entries",
]

#: The tms.v1.ModelService descriptor.
SERVICE = pb.DESCRIPTOR.services_by_name["ModelService"]
#: Metadata that belongs to one call: a call carried on a Calls stream has its own or none,
#: never the stream's (its request id, its trace context).
PER_CALL_METADATA = frozenset({"x-request-id", "traceparent", "tracestate"})
#: The standard health check, open to callers without credentials.
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
#: Field number of the image(s) in RunImageRequest, RunImageBatchRequest, RunImageToImageRequest.
IMAGE_FIELD = pb.RunImageRequest.DESCRIPTOR.fields_by_name["image"].number
#: Field number of the images in RunImageToImageResponse.
OUTPUT_FIELD = pb.RunImageToImageResponse.DESCRIPTOR.fields_by_name["images"].number
assert pb.RunImageBatchRequest.DESCRIPTOR.fields_by_name["images"].number == IMAGE_FIELD
assert pb.RunImageToImageRequest.DESCRIPTOR.fields_by_name["images"].number == IMAGE_FIELD


@functools.cache  # called for every call the client makes
def method_path(name: str) -> str:
    """The gRPC path of a ModelService method, e.g. ``/tms.v1.ModelService/RunImage``."""
    return f"/{SERVICE.full_name}/{name}"


def to_entries(metadata: Iterable[tuple[str, str | bytes]]) -> list[pb.MetadataEntry]:
    """gRPC ``metadata`` as MetadataEntry messages (text values UTF-8)."""
    return [
        pb.MetadataEntry(key=key, value=value if isinstance(value, bytes) else value.encode())
        for key, value in metadata
    ]


def from_entries(entries: Iterable[pb.MetadataEntry]) -> tuple[tuple[str, str | bytes], ...]:
    """MetadataEntry messages as gRPC metadata: the values of ``-bin`` keys bytes, the others
    text."""
    return tuple(
        (
            entry.key,
            entry.value if entry.key.endswith("-bin") else entry.value.decode("utf-8", "replace"),
        )
        for entry in entries
    )
