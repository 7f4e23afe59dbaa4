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


#: A model that raises on every call: a KeyError for "key", a ValueError on another line for
#: "elsewhere", else a ValueError.
BROKEN = """
    import tms_server

    class Model(tms_server.Model):
        inputs = "text"

        def run(self, text, args):
            if text == "key":
                raise KeyError("no such key")
            if text == "elsewhere":
                raise ValueError("broken elsewhere")
            raise ValueError("always broken")
"""


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models(tmp_path_factory.mktemp("models"), {"broken": BROKEN, "also": BROKEN})


def fail(stub: Any, model: str, text: str, request_id: str = "") -> grpc.RpcError:
    metadata = (("x-request-id", request_id),) if request_id else None
    with pytest.raises(grpc.RpcError) as failed:
        stub.RunText(pb.RunTextRequest(model=model, text=text), metadata=metadata)
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    return failed.value


def test_a_model_failing_on_every_call_logs_one_traceback_and_the_count(
    server_process: Callable[..., ServerProcess], broken: Path
) -> None:
    server = server_process(broken, workers=1)
    with grpc.insecure_channel(server.target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        for _ in range(20):
            error = fail(stub, "broken", "x")
            assert error.details() == "model 'broken' raised ValueError: always broken"
    assert server.stop() == 0  # the worker logs the count when it stops, if not before
    logs = server.logs()
    assert logs.count("Traceback (most recent call last)") == 1, logs
    assert logs.count("ValueError: always broken") == 1, logs
    (count,) = [line for line in server.output if "more time" in line]
    assert " ERROR [" in count
    assert "model 'broken' raised ValueError at " in count
    assert "__init__.py:12 19 more times in the 60 s after its traceback above" in count
    assert count.rstrip().endswith("(model=broken)")


def test_each_kind_of_failure_gets_its_own_traceback(
    server_process: Callable[..., ServerProcess], broken: Path
) -> None:
    server = server_process(broken, workers=1)
    kinds = [("broken", "x"), ("broken", "key"), ("broken", "elsewhere"), ("also", "x")]
    with grpc.insecure_channel(server.target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        for _ in range(3):
            for model, text in kinds:
                fail(stub, model, text)
    assert server.stop() == 0
    logs = server.logs()
    # Another exception type, another line that raised, another model: four tracebacks.
    assert logs.count("Traceback (most recent call last)") == 4, logs
    assert logs.count("ValueError: always broken") == 2, logs
    assert logs.count("KeyError: 'no such key'") == 1, logs
    assert logs.count("ValueError: broken elsewhere") == 1, logs
    counts = sorted(line.split(" raised ")[1] for line in server.output if "more time" in line)
    assert [line.split(" at ")[0] for line in counts] == [
        "KeyError",
        "ValueError",
        "ValueError",
        "ValueError",
    ]
    assert all(" 2 more times in the 60 s " in line for line in counts), counts
    assert len([line for line in counts if "__init__.py:12 " in line]) == 2  # broken and also
    assert len({line.split(" at ")[1].split()[0] for line in counts}) == 4  # 3 places x 2 models


def test_a_repeated_failure_in_the_json_log(
    server_process: Callable[..., ServerProcess], broken: Path
) -> None:
    server = server_process(broken, workers=1, args=("--log-format", "json", "--log-requests"))
    with grpc.insecure_channel(server.target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        for i in range(5):
            fail(stub, "broken", "x", request_id=f"fail-{i}")
    assert server.stop() == 0
    logged = [line for line in server.output if not line.startswith("tms-server: ")]
    assert all(line.startswith("{") for line in logged), server.logs()
    # The first call's traceback, under its request id; every call its line of --log-requests.
    (error,) = [line for line in json_lines(server) if "exc" in line]
    assert (error["request_id"], error["model"], error["rpc"]) == ("fail-0", "broken", "RunText")
    assert "ValueError: always broken" in error["exc"]
    for i in range(5):
        assert [line["code"] for line in lines_of(server, f"fail-{i}") if "code" in line] == [
            "INTERNAL"
        ]
    # The count names the model, and no call: it is about four of them.
    (count,) = [line for line in json_lines(server) if "more time" in line["message"]]
    assert count["level"] == "ERROR"
    assert count["model"] == "broken"
    assert "request_id" not in count
    assert "rpc" not in count
    assert count["message"].endswith(" 4 more times in the 60 s after its traceback above")
