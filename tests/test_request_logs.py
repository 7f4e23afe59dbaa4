"""Request ids and the per-call log: a real server with --log-format json --log-requests,
called over real gRPC with and without ``x-request-id``."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.support import ServerProcess, wait_for, write_models
from tms.v1 import model_service_pb2, model_service_pb2_grpc

pytestmark = pytest.mark.slow

pb = model_service_pb2
MODELS = {
    "words": """
        import tms_server

        class Model(tms_server.Model):
            inputs = "text"

            def run(self, text, args):
                if args.get("crash"):
                    raise ZeroDivisionError("the model broke")
                return {"words": len(text.split())}
    """,
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models(tmp_path_factory.mktemp("models"), MODELS)


def json_lines(server: ServerProcess) -> list[dict[str, Any]]:
    """Every log line the server wrote as JSON (the stdout lines for scripts are plain)."""
    return [json.loads(line) for line in server.output if line.startswith("{")]


def request_id_of(metadata: Any) -> str:
    """The ``x-request-id`` of a call's trailing metadata."""
    (value,) = [value for key, value in metadata if key == "x-request-id"]
    assert isinstance(value, str)
    return value


def lines_of(server: ServerProcess, request_id: str) -> list[dict[str, Any]]:
    return [line for line in json_lines(server) if line.get("request_id") == request_id]


def test_request_ids_reach_the_trailers_and_the_json_log(
    server_process: Callable[..., ServerProcess], models: Path
) -> None:
    server = server_process(models, workers=1, args=("--log-format", "json", "--log-requests"))
    with grpc.insecure_channel(server.target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        pid = stub.GetWorkerInfo(pb.GetWorkerInfoRequest()).pid
        request = pb.RunTextRequest(model="words", text="a b c")

        reply, call = stub.RunText.with_call(request, metadata=(("x-request-id", "abc123"),))
        assert json.loads(reply.result_json) == {"words": 3}
        assert request_id_of(call.trailing_metadata()) == "abc123"

        _, call = stub.RunText.with_call(request)
        made = request_id_of(call.trailing_metadata())
        assert uuid.UUID(made).version == 4
        assert made == uuid.UUID(made).hex

        crash = pb.RunTextRequest(model="words", text="x", args_json='{"crash": true}')
        with pytest.raises(grpc.RpcError) as failed:
            stub.RunText(crash, metadata=(("x-request-id", "boom-1"),))
        assert failed.value.code() == grpc.StatusCode.INTERNAL
        assert request_id_of(failed.value.trailing_metadata()) == "boom-1"

    assert wait_for(lambda: len(lines_of(server, "boom-1")) >= 2, timeout=10), server.logs()
    (given,) = lines_of(server, "abc123")
    assert given["logger"] == "tms_server.access"
    assert given["rpc"] == "RunText"
    assert given["model"] == "words"
    assert given["code"] == "OK"
    assert given["pid"] == pid
    assert given["worker"] == 0
    assert given["ms"] >= 0
    (generated,) = lines_of(server, made)
    assert generated["model"] == "words"
    assert generated["pid"] == pid
    # The model's error is logged, with its traceback, under the call's request id.
    error, access = lines_of(server, "boom-1")
    assert error["level"] == "ERROR"
    assert error["model"] == "words"
    assert "ZeroDivisionError: the model broke" in error["exc"]
    assert access["code"] == "INTERNAL"
    # Every line names its process; a worker's lines name the worker too.
    assert server.stop() == 0  # the supervisor says it stopped
    lines = json_lines(server)
    assert all("pid" in line and "time" in line and "message" in line for line in lines)
    assert any(line["pid"] == server.process.pid and "worker" not in line for line in lines)


def test_a_request_id_a_log_line_cannot_hold_is_replaced(
    server_process: Callable[..., ServerProcess], models: Path
) -> None:
    server = server_process(models, workers=1, args=("--log-requests",))
    request = pb.RunTextRequest(model="words", text="a")
    with grpc.insecure_channel(server.target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        _, call = stub.RunText.with_call(request, metadata=(("x-request-id", "two words"),))
        made = request_id_of(call.trailing_metadata())
    assert made != "two words"
    assert uuid.UUID(made).version == 4
    # The plain format: the call's fields close the line.
    assert wait_for(lambda: f"request_id={made})" in server.logs(), timeout=10), server.logs()
    (line,) = [line for line in server.output if made in line]
    assert "INFO [" in line
    assert " worker 0] tms_server.access: RunText words OK in " in line
    assert line.rstrip().endswith(f"(rpc=RunText model=words request_id={made})")


def test_the_call_lines_asked_for_are_written_at_any_log_level(
    server_process: Callable[..., ServerProcess], models: Path
) -> None:
    args = ("--log-requests", "--log-level", "WARNING")
    server = server_process(models, workers=1, args=args)
    request = pb.RunTextRequest(model="words", text="a")
    with grpc.insecure_channel(server.target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        stub.RunText(request, metadata=(("x-request-id", "at-warning"),))
    assert wait_for(lambda: "request_id=at-warning)" in server.logs(), timeout=10), server.logs()
    (line,) = [line for line in server.output if "at-warning" in line]
    assert " INFO [" in line
    assert "tms_server.access: RunText words OK in " in line
    # The level holds for every other line: the worker's INFO lines at start are not written.
    assert not [line for line in server.output if " INFO [" in line and "access" not in line]


WARNS = """
    import warnings

    import tms_server

    warnings.warn("weights were saved by an older version", UserWarning)

    class Model(tms_server.Model):
        inputs = "text"

        def run(self, text, args):
            warnings.warn(f"{text} is short", RuntimeWarning)
            return {"words": len(text.split())}
"""


def test_warnings_of_models_are_json_lines_that_name_their_call(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """Libraries warn (scikit-learn, PyTorch, ONNX Runtime): under --log-format json, their
    warnings are log lines like any other, not text among the JSON."""
    models = write_models(tmp_path / "models", {"warns": WARNS})
    server = server_process(models, workers=1, args=("--log-format", "json"))
    with grpc.insecure_channel(server.target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        request = pb.RunTextRequest(model="warns", text="hi")
        stub.RunText(request, metadata=(("x-request-id", "warned-1"),))
    assert wait_for(lambda: lines_of(server, "warned-1"), timeout=10), server.logs()
    assert server.stop() == 0
    logged = [line for line in server.output if not line.startswith("tms-server: ")]
    assert all(line.startswith("{") for line in logged), server.logs()
    assert all(json.loads(line) for line in logged)
    (warned,) = lines_of(server, "warned-1")
    assert warned["level"] == "WARNING"
    assert warned["model"] == "warns"
    assert "RuntimeWarning: hi is short" in warned["message"]
    loading = [line for line in json_lines(server) if "older version" in line["message"]]
    assert len(loading) == 1
    assert loading[0]["level"] == "WARNING"
    assert loading[0]["worker"] == 0
