"""What a worker knows about the call it is running: its RPC, model and request id, and what
the call has cost so far (time in the model, image bytes received).

The handler of every call (tms_server.rpc) makes one ``CallInfo`` and puts it in the context
variable ``CURRENT``; grpc.aio runs each call in a task of its own, and the worker's threads
run a call in a copy of its context (tms_server.admission), so the code on the call's path
reaches it without passing it along: log lines name the call (tms_server.logs), the model's
time and the image bytes add up in it (tms_server.invoke, tms_server.servicer), and the
handler hands it to the metrics (tms_server.metrics) when the call is over.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

__all__ = ["CURRENT", "REQUEST_ID_KEY", "CallInfo", "new_request_id", "request_id"]

#: The metadata key of a call's request id: read from the caller's metadata, and sent back in
#: the trailing metadata of every call.
REQUEST_ID_KEY = "x-request-id"
#: A caller's request id is kept when it is 1 to this many printable ASCII characters, no space.
MAX_REQUEST_ID = 128


@dataclass(slots=True)
class CallInfo:
    """One call, as its logs and metrics see it."""

    rpc: str  # the method's name, e.g. RunImage
    request_id: str
    model: str = ""  # the model the request names ("" for RPCs that name none)
    model_seconds: float | None = None  # time inside the model's methods, once it ran
    image_bytes: int = 0  # bytes of the images the request carried
    span: Any = None  # its OpenTelemetry span, when tracing is on (tms_server.tracing)
    read: tuple[bytes, Any] | None = None  # its request, and what the servicer read in it
    via: str | None = None  # the stream that carried it ("Calls"), if not a call of its own

    def ran_model(self, seconds: float) -> None:
        self.model_seconds = (self.model_seconds or 0.0) + seconds


#: The call the running code serves (None outside calls: at start, in the monitor thread).
CURRENT: ContextVar[CallInfo | None] = ContextVar("tms_call", default=None)


def new_request_id() -> str:
    """A random request id in uuid4's hex form (version and variant bits set), made without
    a ``uuid.UUID`` object: a third of the time of ``uuid.uuid4().hex``, on every call."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    return raw.hex()


def request_id(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The caller's ``x-request-id``, if it sent a usable one (kept to printable ASCII, so it
    can go into a plain log line as it is), else a new one."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY:
            if (
                isinstance(value, str)
                and 0 < len(value) <= MAX_REQUEST_ID
                and value.isascii()
                and value.isprintable()
                and " " not in value
            ):
                return value
            break
    return new_request_id()
