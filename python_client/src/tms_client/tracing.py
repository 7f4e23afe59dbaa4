"""OpenTelemetry spans for the client's calls, when the ``otel`` extra is installed.

Each call of ``ModelClient`` and ``AsyncModelClient`` becomes one CLIENT span (retries
included), and its trace context travels to the server in the call's gRPC metadata
(``traceparent``, W3C Trace Context), so the server's spans join the same trace. Nothing is
done, not even a no-op span, until the application sets a tracer provider (the SDK's, say):
without one a call costs what it costs without OpenTelemetry.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

try:
    from opentelemetry import propagate, trace
except ImportError:  # pragma: no cover - the otel extra is not installed
    trace = None  # type: ignore[assignment]

__all__ = ["call_span"]

Metadata = tuple[tuple[str, str], ...]
_NO_SPAN: contextlib.nullcontext[Metadata] = contextlib.nullcontext(())


def call_span(path: str, model: str) -> contextlib.AbstractContextManager[Metadata]:
    """A span around one call to ``path`` (``/package.Service/Method``) for ``model``; it
    gives the metadata that carries its context to the server."""
    if trace is None or isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return _NO_SPAN
    return _span(path, model)


@contextlib.contextmanager
def _span(path: str, model: str) -> Iterator[Metadata]:
    service, _, method = path.strip("/").rpartition("/")
    attributes: dict[str, Any] = {
        "rpc.system": "grpc",
        "rpc.service": service,
        "rpc.method": method,
    }
    if model:
        attributes["tms.model"] = model
    tracer = trace.get_tracer("tms_client")
    with tracer.start_as_current_span(
        f"{service}/{method}", kind=trace.SpanKind.CLIENT, attributes=attributes
    ):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield tuple(carrier.items())
