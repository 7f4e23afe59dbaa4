"""OpenTelemetry spans for the calls a worker serves, when the ``otel`` extra is installed.

A call is one SERVER span, the child of the caller's span when the call's metadata carries
a W3C ``traceparent`` (tms_client sends one), and the time inside the model is a child span
of it. The worker traces once its process has a tracer provider: run the server under
``opentelemetry-instrument``, or set one in code that runs in every worker. Until then
nothing is done, not even a no-op span.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import grpc

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
except ImportError:  # pragma: no cover - the otel extra is not installed
    trace = None  # type: ignore[assignment]

__all__ = ["end_call_span", "model_span", "start_call_span"]

_NO_SPAN = contextlib.nullcontext()


def _on() -> bool:
    return trace is not None and not isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider
    )


def start_call_span(path: str, metadata: Iterable[tuple[str, str | bytes]] | None) -> Any:
    """Start the span of a call to ``path`` and make it current for the rest of the call (the
    handler's task, and the worker thread that runs it); None when tracing is off."""
    if not _on():
        return None
    carrier = {k: v for k, v in metadata or () if isinstance(v, str)}
    service, _, method = path.strip("/").rpartition("/")
    span = trace.get_tracer("tms_server").start_span(
        f"{service}/{method}",
        context=propagate.extract(carrier),
        kind=trace.SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
    )
    # Each call runs in a task of its own, so its context ends with it: no detach needed.
    otel_context.attach(trace.set_span_in_context(span))
    return span


def end_call_span(span: Any, code: grpc.StatusCode, model: str) -> None:
    """End the span of a call that ended with ``code``."""
    if model:
        span.set_attribute("tms.model", model)
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code != grpc.StatusCode.OK:
        span.set_status(trace.Status(trace.StatusCode.ERROR, code.name))
    span.end()


def model_span(model: str, traced: bool = True) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current call for the time inside ``model``; none for a call that
    is not ``traced`` (it began without a span: no tracer provider to ask again)."""
    if not traced or not _on():
        return _NO_SPAN
    return trace.get_tracer("tms_server").start_as_current_span(
        f"model {model}", attributes={"tms.model": model}
    )
