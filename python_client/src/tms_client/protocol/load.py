"""Load reports: what a worker says about itself in the trailing metadata of every response.

Two keys, written by the server and read by the client's pool:

- ``tms-load-bin``: an ORCA load report (``xds.data.orca.v3.OrcaLoadReport``, the format of
  gRPC's own load reporting) whose ``named_metrics`` hold ``in_flight`` (calls the worker is
  running, this one included) and ``queued`` (calls waiting for one of its threads). ORCA's own
  key, ``endpoint-load-metrics-bin``, is not used: grpcio takes that trailer for itself and
  never hands it to the application.
  After a reload they also hold ``reload``, the number of the last reload the worker has
  done (``GetWorkerInfoResponse.reload``).
- ``tms-worker``: ``<instance id>/<pid>``, which worker answered.

Only the ORCA fields used here are written and read (``named_metrics``, field 8, a
``map<string, double>``); any other field is skipped, as protobuf would.
"""

from __future__ import annotations

import functools
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from tms_client.protocol.wire import LENGTH_DELIMITED, WireError, fields, varint

__all__ = [
    "LOAD_KEY",
    "WORKER_KEY",
    "LoadReport",
    "decode_orca",
    "encode_orca",
    "read_trailers",
]

LOAD_KEY = "tms-load-bin"
WORKER_KEY = "tms-worker"

_NAMED_METRICS = 8  # OrcaLoadReport.named_metrics
_I64 = 1  # the wire type of a double


@dataclass(frozen=True)
class LoadReport:
    """A worker's load as it last reported it."""

    in_flight: int
    queued: int
    reload: int = 0
    received: float = field(default_factory=time.monotonic, compare=False)

    @property
    def total(self) -> int:
        return self.in_flight + self.queued


def encode_orca(metrics: dict[str, float]) -> bytes:
    """An OrcaLoadReport holding ``metrics`` as its named metrics."""
    out = bytearray()
    for name, value in metrics.items():
        key = name.encode()
        entry = b"\x0a" + varint(len(key)) + key + b"\x11" + struct.pack("<d", value)
        out += varint((_NAMED_METRICS << 3) | LENGTH_DELIMITED) + varint(len(entry)) + entry
    return bytes(out)


def decode_orca(data: bytes) -> dict[str, float]:
    """The named metrics of an OrcaLoadReport."""
    view = memoryview(data)
    metrics: dict[str, float] = {}
    for number, wire_type, _, start, end in fields(view):
        if number == _NAMED_METRICS and wire_type == LENGTH_DELIMITED:
            name, value = _map_entry(view[start:end])
            metrics[name] = value
    return metrics


def _map_entry(view: memoryview) -> tuple[str, float]:
    name, value = "", 0.0
    for number, wire_type, _, start, end in fields(view):
        if (number, wire_type) == (1, LENGTH_DELIMITED):
            name = bytes(view[start:end]).decode(errors="replace")
        elif (number, wire_type) == (2, _I64):
            (value,) = struct.unpack_from("<d", view, start)
        else:
            raise WireError(f"unexpected field in a named metric: number {number}")
    return name, value


def read_trailers(
    metadata: Iterable[tuple[str, str | bytes]] | None,
) -> tuple[str | None, LoadReport | None]:
    """The worker identity and load report in a call's trailing metadata, where present."""
    identity: str | None = None
    report: LoadReport | None = None
    for key, value in metadata or ():
        if key == WORKER_KEY:
            identity = value if isinstance(value, str) else value.decode()
        elif key == LOAD_KEY and isinstance(value, bytes):
            counts = _counts(value)
            if counts is not None:
                report = LoadReport(*counts)
    return identity, report


@functools.lru_cache(maxsize=1024)
def _counts(value: bytes) -> tuple[int, int, int] | None:
    # Workers send the same few reports over and over: decode each once.
    try:
        metrics = decode_orca(value)
    except WireError:
        return None
    counts = (metrics.get("in_flight", 0), metrics.get("queued", 0), metrics.get("reload", 0))
    return int(counts[0]), int(counts[1]), int(counts[2])
