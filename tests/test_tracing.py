"""OpenTelemetry: one trace spans the client's call, the server's handling of it and the time
in the model, joined by the W3C trace context the client sends in the call's metadata.

A tracer provider is set once per process and for good, so the scenario runs in a fresh
Python process of its own (with the SDK's in-memory exporter), which prints the spans.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT, write_models

pytestmark = pytest.mark.slow

MODELS = {
    "brightness": """
        import tms_server

        class Model(tms_server.Model):
            def run(self, image, args):
                return {"mean": float(image.mean())}
    """,
}

SCENARIO = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    import numpy as np
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from tms_client import AsyncModelClient, ModelClient, ModelNotFoundError
    from tests.support import start_in_process

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    server = start_in_process(Path(sys.argv[1]))
    image = np.full((8, 8), 3, np.uint8)
    with ModelClient("brightness", server.target) as client:
        with trace.get_tracer("test").start_as_current_span("caller"):
            assert client.run_image(image) == {"mean": 3.0}
        assert client.run_image(image) == {"mean": 3.0}  # the same stream, a trace of its own
    with ModelClient("nope", server.target) as missing:
        try:
            missing.run_image(image)
        except ModelNotFoundError:
            pass

    async def from_asyncio():
        async with AsyncModelClient("brightness", server.target) as client:
            return await client.run_image(image)

    assert asyncio.run(from_asyncio()) == {"mean": 3.0}
    server.running.stop(None)
    spans = [
        {
            "name": s.name,
            "kind": s.kind.name,
            "trace": s.context.trace_id,
            "id": s.context.span_id,
            "parent": s.parent.span_id if s.parent else None,
            "status": s.status.status_code.name,
            "attributes": dict(s.attributes or {}),
        }
        for s in exporter.get_finished_spans()
    ]
    print(json.dumps(spans))
    """
)


def run_scenario(models: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-c", SCENARIO, str(models)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    spans: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return spans


def test_one_trace_spans_the_client_the_server_and_the_model(tmp_path):
    spans = run_scenario(write_models(tmp_path, MODELS))
    by_id = {span["id"]: span for span in spans}
    servers = [s for s in spans if s["kind"] == "SERVER" and s["name"].endswith("/RunImage")]
    assert len(servers) == 4  # the sync calls, the unknown model, the asyncio call
    parents = [server["parent"] for server in servers]
    assert len(set(parents)) == 4  # each call's own client span, though calls share a stream
    for server in servers:
        client = by_id[server["parent"]]  # the server span is the client span's child
        assert client["kind"] == "CLIENT"
        assert client["trace"] == server["trace"]
        assert client["name"] == server["name"] == "tms.v1.ModelService/RunImage"
        assert server["attributes"]["rpc.system"] == "grpc"

    first = next(s for s in servers if s["attributes"].get("tms.model") == "brightness")
    caller = by_id[by_id[first["parent"]]["parent"]]  # the application's own span
    assert caller["name"] == "caller"
    models = [s for s in spans if s["parent"] == first["id"]]
    assert [s["name"] for s in models] == ["model brightness"]
    assert models[0]["trace"] == caller["trace"]

    failed = next(s for s in servers if s["attributes"].get("tms.model") == "nope")
    assert failed["status"] == "ERROR"
    assert by_id[failed["parent"]]["status"] == "ERROR"  # the client saw it fail too
    assert failed["attributes"]["rpc.grpc.status_code"] == 5  # NOT_FOUND


def test_without_a_tracer_provider_nothing_is_traced(tmp_path):
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        import numpy as np
        from opentelemetry import trace
        from tms_client import ModelClient
        from tms_client.tracing import call_span
        from tests.support import start_in_process

        server = start_in_process(Path(sys.argv[1]))
        with ModelClient("brightness", server.target) as client:
            client.run_image(np.zeros((2, 2), np.uint8))
        with call_span("/tms.v1.ModelService/RunImage", "brightness") as metadata:
            assert metadata == (), metadata
        assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
        server.running.stop(None)
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(write_models(tmp_path, MODELS))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")
