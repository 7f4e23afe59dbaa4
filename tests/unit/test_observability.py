"""The settings of metrics and logs, request ids, the two log formats, and failures that
repeat counted, not logged one by one."""

from __future__ import annotations

import json
import logging
import sys
import uuid

import grpc
import pytest

from tms_server.callinfo import CURRENT, MAX_REQUEST_ID, CallInfo, new_request_id, request_id
from tms_server.logs import JsonFormatter, PlainFormatter, log_call
from tms_server.repeats import RepeatedFailures
from tms_server.settings import Settings, parse_settings


def test_metrics_and_logs_are_off_and_plain_by_default() -> None:
    settings = parse_settings([], {})
    assert settings.metrics_port is None
    assert settings.log_format == "plain"
    assert settings.log_requests is False


def test_metrics_and_log_settings_from_flags_and_environment() -> None:
    argv = ["--metrics-port", "9100", "--log-format", "json", "--log-requests"]
    assert parse_settings(argv, {}) == Settings(
        metrics_port=9100, log_format="json", log_requests=True
    )
    environ = {"TMS_METRICS_PORT": "0", "TMS_LOG_FORMAT": "json", "TMS_LOG_REQUESTS": "yes"}
    assert parse_settings([], environ) == Settings(
        metrics_port=0, log_format="json", log_requests=True
    )
    assert parse_settings(["--log-requests=false"], environ).log_requests is False


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--log-format=xml"], "--log-format must be plain or json, not xml"),
        (["--metrics-port=65536"], "--metrics-port must be between 0 and 65535, not 65536"),
        (["--metrics-port=-1"], "--metrics-port must be between 0 and 65535, not -1"),
    ],
)
def test_bad_metrics_and_log_settings_are_refused(
    capsys: pytest.CaptureFixture[str], argv: list[str], error: str
) -> None:
    with pytest.raises(SystemExit):
        parse_settings(argv, {})
    assert capsys.readouterr().err.strip().endswith(f"tms-server: error: {error}")


@pytest.mark.parametrize(
    "given", ["abc123", "0af7651916cd43dd8448eb211c80319c", "a" * MAX_REQUEST_ID, "x/y:z"]
)
def test_a_callers_request_id_is_kept(given: str) -> None:
    assert request_id((("user-agent", "grpc"), ("x-request-id", given))) == given


@pytest.mark.parametrize(
    "given", ["", "two words", "line\nbreak", "é", "a" * (MAX_REQUEST_ID + 1), b"bytes"]
)
def test_a_request_id_a_log_line_cannot_hold_is_replaced(given: str | bytes) -> None:
    made = request_id((("x-request-id", given),))
    assert made != given
    assert uuid.UUID(made).version == 4


def test_made_request_ids_are_uuid4_hex_and_differ() -> None:
    made = {request_id(None) for _ in range(100)} | {new_request_id() for _ in range(100)}
    assert len(made) == 200
    for text in made:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, parsed.hex) == (4, uuid.RFC_4122, text)


def record(message: str = "hello", **extra: object) -> logging.LogRecord:
    line = logging.LogRecord("tms_server", logging.INFO, __file__, 1, message, (), None)
    line.__dict__.update(extra)
    return line


def test_plain_lines_name_the_process_and_the_call() -> None:
    formatter = PlainFormatter(worker=3)
    assert formatter.format(record()).endswith(
        f"INFO [{record().process} worker 3] tms_server: hello"
    )
    token = CURRENT.set(CallInfo("RunImage", "abc123", model="face"))
    try:
        line = formatter.format(record())
    finally:
        CURRENT.reset(token)
    assert line.endswith("tms_server: hello (rpc=RunImage model=face request_id=abc123)")
    assert f"[{record().process} supervisor]" in PlainFormatter(None).format(record())


def test_json_lines_are_one_object_with_the_call_and_the_traceback() -> None:
    formatter = JsonFormatter(worker=1)
    try:
        raise ValueError("broken")
    except ValueError:
        failed = record("model 'face' raised", exc_info=sys.exc_info())
    failed.levelname = "ERROR"
    token = CURRENT.set(CallInfo("RunImage", "abc123", model="face"))
    try:
        line = formatter.format(failed)
    finally:
        CURRENT.reset(token)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "model 'face' raised"
    assert parsed["level"] == "ERROR"
    assert (parsed["pid"], parsed["worker"]) == (failed.process, 1)
    assert (parsed["rpc"], parsed["model"], parsed["request_id"]) == ("RunImage", "face", "abc123")
    assert "ValueError: broken" in parsed["exc"]
    outside = json.loads(JsonFormatter(worker=None).format(record()))
    assert set(outside) == {"time", "level", "logger", "message", "pid"}


def test_the_call_line_carries_its_fields(caplog: pytest.LogCaptureFixture) -> None:
    call = CallInfo("RunText", "abc123", model="words")
    with caplog.at_level(logging.INFO, logger="tms_server.access"):
        log_call(call, grpc.StatusCode.NOT_FOUND, 0.0012345)
    (line,) = caplog.records
    assert line.getMessage() == "RunText words NOT_FOUND in 1.234 ms"
    parsed = json.loads(JsonFormatter(worker=0).format(line))
    assert parsed["code"] == "NOT_FOUND"
    assert parsed["ms"] == 1.234
    assert (parsed["rpc"], parsed["model"], parsed["request_id"]) == ("RunText", "words", "abc123")


def raised(kind: type[Exception] = ValueError, where: int = 0) -> Exception:
    """An exception of ``kind`` raised on one of two lines, with its traceback."""
    try:
        if where:
            raise kind("elsewhere")
        raise kind("here")
    except Exception as exc:
        return exc


def logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The lines logged since the last look."""
    lines = [record.getMessage() for record in caplog.records]
    caplog.clear()
    return lines


def test_a_failure_is_logged_once_a_window_and_its_repeats_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    failures = RepeatedFailures(window=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.ERROR, logger="tms_server"):
        assert failures.first(raised(), "model 'face'", model="face")
        assert not any(failures.first(raised(), "model 'face'") for _ in range(3))
        failures.flush()  # the window is not over
        assert logged(caplog) == []
        now[0] += 60.0
        assert failures.first(raised(), "model 'face'")  # a new window, a new traceback
        assert getattr(caplog.records[0], "model", None) == "face"  # in JSON lines too
        (line,) = logged(caplog)
        assert line.startswith(f"model 'face' raised ValueError at {__file__}:")
        assert line.endswith(" 3 more times in the 60 s after its traceback above")
        assert not failures.first(raised(), "model 'face'")
        now[0] += 60.0
        failures.flush()  # its window is over: the count, once
        failures.flush()
        (line,) = logged(caplog)
        assert line.endswith(" 1 more time in the 60 s after its traceback above")
    assert failures.first(raised(), "model 'face'")


def test_another_source_type_or_line_is_another_failure() -> None:
    failures = RepeatedFailures(clock=lambda: 0.0)
    assert failures.first(raised(), "model 'face'")
    assert failures.first(raised(), "model 'eyes'")
    assert failures.first(raised(KeyError), "model 'face'")
    assert failures.first(raised(where=1), "model 'face'")
    assert not failures.first(raised(where=1), "model 'face'")


def test_failures_kept_are_bounded_and_no_count_is_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures = RepeatedFailures(size=2, clock=lambda: 0.0)
    with caplog.at_level(logging.ERROR, logger="tms_server"):
        for source in ("a", "a", "b", "b", "b"):
            failures.first(raised(), source)
        assert logged(caplog) == []
        assert failures.first(raised(), "c")  # a, the oldest, is dropped with its count
        assert [line.split(" raised ")[0] for line in logged(caplog)] == ["a"]
        assert failures.first(raised(), "a")  # forgotten: logged in full again; b dropped
        (line,) = logged(caplog)
        assert line.startswith("b raised ")
        assert " 2 more times " in line
        assert not failures.first(raised(), "c")
        failures.flush(everything=True)  # as the worker stops
        (line,) = logged(caplog)
        assert line.startswith("c raised ")
        assert " 1 more time " in line
