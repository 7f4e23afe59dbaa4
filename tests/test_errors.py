"""Structured errors (AIP-193): every error status carries a google.rpc.ErrorInfo (domain tms,
a reason), a BadRequest naming the field at fault where there is one, and a RetryInfo where
waiting helps; seen alike by raw grpcio (grpc_status), by ModelClient's exceptions, and by
other tools (``buf curl``, and ``grpcurl``, which decodes them through reflection)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status  # type: ignore[import-untyped]

from tests.support import ROOT, InProcessServer, start_in_process, write_models
from tests.toolchains import find_buf, find_go, run
from tms.v1 import image_pb2, model_service_pb2
from tms_client import (
    AsyncModelClient,
    InvalidInputError,
    ModelClient,
    ModelFailedError,
    ModelNotFoundError,
    ResourceExhaustedError,
    RetryPolicy,
    UnauthenticatedError,
)

pb = model_service_pb2
CODE = grpc.StatusCode
TOKEN = "errors-test-token-0123456789"

MODELS = {
    "probe": """
        import tms_server

        class Model(tms_server.Model):
            thread_safe = True

            def run(self, image, args):
                return {"shape": list(image.shape)}
    """,
    "boom": """
        import tms_server

        class Model(tms_server.Model):
            def run(self, image, args):
                raise RuntimeError("the model broke" + "!" * args.get("shout", 0))
    """,
    "exits": """
        import sys
        import tms_server

        class Model(tms_server.Model):
            def run(self, image, args):
                sys.exit(3)
    """,
    "sleepy": """
        import time
        import tms_server

        class Model(tms_server.Model):
            inputs = "text"
            thread_safe = True

            def run(self, text, args):
                time.sleep(min(float(args.get("seconds", 0)), 10))
                return text
    """,
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models(tmp_path_factory.mktemp("models"), MODELS)


@pytest.fixture(scope="module")
def server(models: Path) -> Iterator[InProcessServer]:
    # One thread and no queue: a second call while one runs is QUEUE_FULL.
    running = start_in_process(models, max_pixels=1_000_000, threads=1, max_queued_calls=0)
    yield running
    running.running.stop(None)


def raw(shape: tuple[int, ...] = (2, 2), data: bytes | None = None) -> image_pb2.Image:
    size = int(np.prod(shape))
    return image_pb2.Image(
        dtype=image_pb2.D_TYPE_UINT8,
        shape=list(shape),
        encoding=image_pb2.ENCODING_RAW,
        data=b"\0" * size if data is None else data,
    )


def failed(target: str, method: str, request: bytes, metadata: Any = None) -> grpc.RpcError:
    """The RpcError of a raw grpcio call that must fail."""
    with grpc.insecure_channel(target) as channel:
        send: grpc.UnaryUnaryMultiCallable[bytes, bytes]
        send = channel.unary_unary(f"/tms.v1.ModelService/{method}")
        with pytest.raises(grpc.RpcError) as info:
            send(request, timeout=10, metadata=metadata)
    return info.value


class Details:
    """The google.rpc.Status of a failed call, read with grpc_status, by kind of detail."""

    def __init__(self, error: Any) -> None:  # a grpc.RpcError that is a grpc.Call
        status = rpc_status.from_call(error)
        assert status is not None, "the status carries no details"
        assert status.code == error.code().value[0]
        assert status.message == error.details()  # the human message, as it was
        found: dict[str, Any] = {}
        for detail in status.details:
            for kind in ("ErrorInfo", "BadRequest", "RetryInfo"):
                message = getattr(error_details_pb2, kind)()
                if detail.Unpack(message):
                    found[kind] = message
        assert "ErrorInfo" in found, "every error status has an ErrorInfo"
        self.info: Any = found["ErrorInfo"]
        self.bad_request: Any = found.get("BadRequest")
        self.retry_info: Any = found.get("RetryInfo")
        assert self.info.domain == "tms"

    @property
    def reason(self) -> str:
        return self.info.reason

    @property
    def fields(self) -> list[str]:
        return [v.field for v in self.bad_request.field_violations] if self.bad_request else []

    @property
    def retry_delay(self) -> float | None:
        if self.retry_info is None:
            return None
        return self.retry_info.retry_delay.ToNanoseconds() / 1e9


# -- each reason, from a real bad request ---------------------------------------------------------


def test_an_unknown_model_is_model_not_found_with_the_model_named(server):
    error = failed(server.target, "RunText", pb.RunTextRequest(model="nope").SerializeToString())
    details = Details(error)
    assert error.code() == CODE.NOT_FOUND
    assert details.reason == "MODEL_NOT_FOUND"
    assert dict(details.info.metadata) == {"model": "nope"}
    assert details.retry_delay is None
    with ModelClient("nope", server.target) as client, pytest.raises(ModelNotFoundError) as info:
        client.run_text("x")
    assert info.value.reason == "MODEL_NOT_FOUND"
    assert info.value.error_metadata == {"model": "nope"}
    assert info.value.details == error.details()


def test_the_asyncio_client_gets_the_details_too(server):
    async def main() -> tuple[ModelNotFoundError, InvalidInputError]:
        async with AsyncModelClient("nope", server.target) as client:
            with pytest.raises(ModelNotFoundError) as missing:
                await client.run_text("x")
        async with AsyncModelClient("probe", server.target) as client:
            with pytest.raises(InvalidInputError) as bad_args:
                await client.run_image(np.zeros((2, 2), np.uint8), {"x": _deep(40)})
        return missing.value, bad_args.value

    missing, bad_args = asyncio.run(main())
    assert (missing.reason, missing.error_metadata) == ("MODEL_NOT_FOUND", {"model": "nope"})
    assert bad_args.reason == "INVALID_ARGS"
    assert [field for field, _ in bad_args.field_violations] == ["args_json"]


def _deep(levels: int) -> Any:
    deep: Any = []
    for _ in range(levels):
        deep = [deep]
    return deep


def test_a_bad_image_is_invalid_image_naming_the_field(server):
    request = pb.RunImageRequest(model="probe", image=raw(data=b"\0" * 5))
    error = failed(server.target, "RunImage", request.SerializeToString())
    details = Details(error)
    assert error.code() == CODE.INVALID_ARGUMENT
    assert details.reason == "INVALID_IMAGE"
    assert details.fields == ["image"]
    assert "needs 4" in details.bad_request.field_violations[0].description
    truncated_png = b"\x89PNG\r\n\x1a\n" + b"\0" * 32
    with ModelClient("probe", server.target) as client, pytest.raises(InvalidInputError) as info:
        client.run_image(truncated_png)
    assert info.value.reason == "INVALID_IMAGE"
    assert [field for field, _ in info.value.field_violations] == ["image"]
    assert info.value.retry_delay is None


def test_a_batch_names_the_image_at_fault(server):
    request = pb.RunImageBatchRequest(model="probe", images=[raw(), raw(data=b"\0")])
    details = Details(failed(server.target, "RunImageBatch", request.SerializeToString()))
    assert details.reason == "INVALID_IMAGE"
    assert details.fields == ["images[1]"]


def test_bad_args_json_is_invalid_args(server):
    request = pb.RunImageRequest(model="probe", image=raw(), args_json="{not json")
    error = failed(server.target, "RunImage", request.SerializeToString())
    details = Details(error)
    assert error.code() == CODE.INVALID_ARGUMENT
    assert details.reason == "INVALID_ARGS"
    assert details.fields == ["args_json"]
    with ModelClient("probe", server.target) as client, pytest.raises(InvalidInputError) as info:
        client.run_image(np.zeros((2, 2), np.uint8), {"deep": _deep(40)})
    assert info.value.reason == "INVALID_ARGS"
    assert info.value.field_violations == [
        ("args_json", "args_json nests 42 levels deep; the limit is 32")
    ]


def test_a_malformed_request_is_invalid_request(server):
    details = Details(failed(server.target, "RunText", b"\xff\xff\xff"))
    assert details.reason == "INVALID_REQUEST"


def test_too_many_pixels_is_image_too_large_and_not_retried(server):
    request = pb.RunImageRequest(model="probe", image=raw((1001, 1000)))
    error = failed(server.target, "RunImage", request.SerializeToString())
    details = Details(error)
    assert details.reason == "IMAGE_TOO_LARGE"
    assert details.fields == ["image"]
    assert details.retry_delay is None
    assert "exceeds the limit of 1000000" in error.details()
    with ModelClient("probe", server.target) as client:
        began = time.monotonic()
        with pytest.raises(InvalidInputError) as info:
            client.run_image(np.zeros((1001, 1000), np.uint8))
        assert info.value.reason == "IMAGE_TOO_LARGE"
        assert info.value.retry_delay is None
        # Once: no retry, so no backoff.
        assert time.monotonic() - began < 1.0


def test_a_model_that_raises_is_model_failed(server):
    error = failed(
        server.target, "RunImage", pb.RunImageRequest(model="boom", image=raw()).SerializeToString()
    )
    details = Details(error)
    assert error.code() == CODE.INTERNAL
    assert details.reason == "MODEL_FAILED"
    assert dict(details.info.metadata) == {"model": "boom"}
    with ModelClient("boom", server.target) as client, pytest.raises(ModelFailedError) as info:
        client.run_image(np.zeros((2, 2), np.uint8))
    assert info.value.reason == "MODEL_FAILED"


def test_a_model_that_calls_sys_exit_fails_its_call_not_its_worker(server_process, models):
    """sys.exit in a model's run ends that call INTERNAL (MODEL_FAILED) at once; the worker
    goes on serving, the same process (it did not stop its event loop and go silent)."""
    server = server_process(models, workers=1)
    image = np.zeros((2, 2), np.uint8)
    with ModelClient("probe", server.target, timeout=10) as probe:
        pids = {w.pid for w in probe.workers()}
        with ModelClient("exits", server.target, timeout=10) as exits:
            for _ in range(3):  # on a thread, then perhaps on the event loop (quick calls)
                began = time.monotonic()
                with pytest.raises(ModelFailedError, match="raised SystemExit: 3") as info:
                    exits.run_image(image)
                assert info.value.reason == "MODEL_FAILED"
                assert time.monotonic() - began < 5
        assert probe.run_image(image) == {"shape": [2, 2]}
        assert {w.pid for w in probe.workers()} == pids
    assert "died" not in server.logs()


def test_a_long_message_is_cut_so_the_status_still_arrives(server):
    # The message goes twice into the trailers, which a client takes 8 KiB of by default.
    request = pb.RunImageRequest(model="boom", image=raw(), args_json='{"shout": 6000}')
    error = failed(server.target, "RunImage", request.SerializeToString())
    assert error.code() == CODE.INTERNAL
    assert Details(error).reason == "MODEL_FAILED"
    assert error.details().endswith("!... (4049 more characters)")
    assert len(error.details()) == 2000 + len("... (4049 more characters)")


def test_a_call_the_model_lacks_is_unsupported_call(server):
    request = pb.RunTextRequest(model="probe", text="x")
    details = Details(failed(server.target, "RunText", request.SerializeToString()))
    assert details.reason == "UNSUPPORTED_CALL"


class Blocker:
    """A call that holds the worker's one thread for ``seconds``."""

    def __init__(self, target: str, seconds: float) -> None:
        args = f'{{"seconds": {seconds}}}'
        request = pb.RunTextRequest(model="sleepy", text="hold", args_json=args)
        self.channel = grpc.insecure_channel(target)
        send: grpc.UnaryUnaryMultiCallable[bytes, bytes]
        send = self.channel.unary_unary("/tms.v1.ModelService/RunText")
        self.future: Any = send.future(request.SerializeToString(), timeout=20)

    def close(self) -> None:
        self.future.result()
        self.channel.close()


def test_a_full_queue_is_queue_full_with_retry_info_and_the_client_retries(server):
    blocker = Blocker(server.target, 2.0)
    try:
        time.sleep(0.3)  # the blocker runs
        request = pb.RunTextRequest(model="sleepy", text="x").SerializeToString()
        error = failed(server.target, "RunText", request)
        details = Details(error)
        assert error.code() == CODE.RESOURCE_EXHAUSTED
        assert details.reason == "QUEUE_FULL"
        assert details.retry_delay == pytest.approx(0.1)
        assert "this worker is busy" in error.details()

        never = RetryPolicy().with_retry_info(False)
        with (
            ModelClient("sleepy", server.target, retry=never) as client,
            pytest.raises(ResourceExhaustedError) as info,
        ):
            client.run_text("x")
        assert info.value.reason == "QUEUE_FULL"
        assert info.value.retry_delay == pytest.approx(0.1)

        # By default the client retries it: RetryInfo makes RESOURCE_EXHAUSTED retriable.
        policy = RetryPolicy().with_attempts(50).with_backoff(0.05, 0.2)
        with ModelClient("sleepy", server.target, retry=policy, timeout=10) as client:
            assert client.run_text("after the wait") == "after the wait"
    finally:
        blocker.close()


# -- tokens ---------------------------------------------------------------------------------------


def test_a_wrong_token_is_unauthenticated(models, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    server = start_in_process(models, tokens_file=tokens)
    try:
        request = pb.RunTextRequest(model="sleepy", text="x").SerializeToString()
        for metadata in (None, (("authorization", "Bearer wrong-token"),)):
            error = failed(server.target, "RunText", request, metadata)
            assert error.code() == CODE.UNAUTHENTICATED
            assert Details(error).reason == "UNAUTHENTICATED"
        with (
            pytest.raises(UnauthenticatedError) as info,
            ModelClient("sleepy", server.target, token="wrong-token") as client,
        ):
            client.run_text("x")
        assert info.value.reason == "UNAUTHENTICATED"
        with ModelClient("sleepy", server.target, token=TOKEN) as client:
            assert client.run_text("x") == "x"
    finally:
        server.running.stop(None)


# -- other tools ----------------------------------------------------------------------------------


def test_buf_curl_shows_the_error_info(server):
    buf = find_buf()
    result = subprocess.run(
        [
            buf,
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "-d",
            '{"model": "nope", "text": "x"}',
            f"http://{server.target}/tms.v1.ModelService/RunText",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert result.returncode != 0
    # buf curl prints the error as JSON, each detail as its type and its bytes (base64).
    error = json.loads(result.stdout or result.stderr)
    assert error["code"] == "not_found"
    assert error["message"] == "no model named 'nope'; models: boom, exits, probe, sleepy"
    [detail] = error["details"]
    assert detail["type"] == "google.rpc.ErrorInfo"
    value = detail["value"]
    info = error_details_pb2.ErrorInfo.FromString(base64.b64decode(value + "=" * (-len(value) % 4)))
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "MODEL_NOT_FOUND",
        "tms",
        {"model": "nope"},
    )


def test_grpcurl_shows_the_error_reason(server, tmp_path):
    """grpcurl (tests/tools/go.mod pins it) decodes the details through server reflection and
    prints the reason as text, as a stranger debugging a call sees it."""
    grpcurl = tmp_path / "grpcurl"
    run(
        [find_go(), "build", "-o", str(grpcurl), "github.com/fullstorydev/grpcurl/cmd/grpcurl"],
        cwd=ROOT / "tests" / "tools",
        timeout=300,
    )
    request = '{"model": "nope", "text": "x"}'
    result = subprocess.run(
        [str(grpcurl), "-plaintext", "-d", request, server.target, "tms.v1.ModelService/RunText"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "Code: NotFound" in result.stderr, result.stderr
    assert '"@type": "type.googleapis.com/google.rpc.ErrorInfo"' in result.stderr
    assert '"reason": "MODEL_NOT_FOUND"' in result.stderr
    assert '"domain": "tms"' in result.stderr
