"""Server settings from flags over ``TMS_*`` environment variables over defaults."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from tms_server.cpus import available_cpus
from tms_server.settings import Settings, parse_settings

ARGPARSE_ERROR = 2


def parse_error(
    capsys: pytest.CaptureFixture[str], argv: list[str], environ: dict[str, str] | None = None
) -> str:
    """The one line ``parse_settings`` prints when it refuses its input (no usage text)."""
    with pytest.raises(SystemExit) as exited:
        parse_settings(argv, environ or {})
    assert exited.value.code == ARGPARSE_ERROR
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("tms-server: error: ")
    return line


def test_defaults() -> None:
    settings = parse_settings([], {})
    assert settings == Settings()
    assert settings.host == "0.0.0.0"
    assert settings.port == 50051
    assert settings.workers == available_cpus()  # the affinity count, within the cgroup quota
    assert settings.workers <= len(os.sched_getaffinity(0))
    assert settings.devices == ("cpu",)
    assert settings.worker_devices == ("cpu",) * settings.workers
    assert settings.workers_per_device is None
    assert settings.model_threads is None
    assert settings.threads == 8
    assert settings.models == Path("models")
    assert settings.entry_points is True
    assert settings.max_message_mb == 64
    assert settings.max_message_bytes == 64 * 1024 * 1024
    assert settings.max_pixels == 50_000_000
    assert settings.grace_seconds == 10.0
    assert settings.log_level == "INFO"


def test_unrelated_environment_variables_are_ignored() -> None:
    assert parse_settings([], {"PORT": "1", "TMS": "x", "TMS_UNKNOWN": "y"}) == Settings()


def test_environment_variables_set_every_setting() -> None:
    environ = {
        "TMS_HOST": "127.0.0.1",
        "TMS_PORT": "0",
        "TMS_WORKERS": "3",
        "TMS_THREADS": "16",
        "TMS_MODELS": "/srv/models",
        "TMS_ENTRY_POINTS": "false",
        "TMS_MAX_MESSAGE_MB": "1",
        "TMS_MAX_PIXELS": "1000",
        "TMS_GRACE_SECONDS": "2.5",
        "TMS_LOG_LEVEL": "debug",
    }
    assert parse_settings([], environ) == Settings(
        host="127.0.0.1",
        port=0,
        workers=3,
        threads=16,
        models=Path("/srv/models"),
        entry_points=False,
        max_message_mb=1,
        max_pixels=1000,
        grace_seconds=2.5,
        log_level="DEBUG",
    )


def test_flags_set_every_setting() -> None:
    argv = [
        "--host=::",
        "--port=8000",
        "--workers=2",
        "--threads=1",
        "--models=examples/models",
        "--entry-points=no",
        "--max-message-mb=2047",
        f"--max-pixels={2**31 - 1}",
        "--grace-seconds=0",
        "--log-level=WARNING",
    ]
    settings = parse_settings(argv, {})
    assert settings == Settings(
        host="::",
        port=8000,
        workers=2,
        threads=1,
        models=Path("examples/models"),
        entry_points=False,
        max_message_mb=2047,
        max_pixels=2**31 - 1,
        grace_seconds=0.0,
        log_level="WARNING",
    )
    assert settings.max_message_bytes == 2047 * 1024 * 1024


def test_worker_timeout_seconds_from_flag_and_environment() -> None:
    assert Settings().worker_timeout_seconds == 30.0
    environ = {"TMS_WORKER_TIMEOUT_SECONDS": "2.5"}
    assert parse_settings([], environ).worker_timeout_seconds == 2.5
    assert parse_settings(["--worker-timeout-seconds", "1"], environ).worker_timeout_seconds == 1.0
    assert parse_settings(["--worker-timeout-seconds=3600"], {}).worker_timeout_seconds == 3600.0


def test_flag_beats_environment_beats_default() -> None:
    environ = {"TMS_PORT": "7000", "TMS_THREADS": "4", "TMS_LOG_LEVEL": "ERROR"}
    settings = parse_settings(["--port", "9000"], environ)
    assert settings.port == 9000  # flag over environment
    assert settings.threads == 4  # environment over default
    assert settings.log_level == "ERROR"
    assert settings.workers == Settings().workers  # default
    assert parse_settings(["--entry-points", "true"], {"TMS_ENTRY_POINTS": "0"}).entry_points


def test_an_empty_environment_variable_counts_as_unset() -> None:
    assert parse_settings([], {"TMS_PORT": "", "TMS_LOG_LEVEL": ""}) == Settings()


def test_os_environ_is_the_default_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMS_THREADS", "5")
    assert parse_settings([]).threads == 5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        (" on ", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
    ],
)
def test_booleans_from_flags_and_environment(text: str, expected: bool) -> None:
    assert parse_settings([f"--entry-points={text}"], {}).entry_points is expected
    assert parse_settings([], {"TMS_ENTRY_POINTS": text}).entry_points is expected


@pytest.mark.parametrize(
    ("argv", "setting", "low", "high", "value"),
    [
        (["--port=-1"], "port", 0, 65535, "-1"),
        (["--port=65536"], "port", 0, 65535, "65536"),
        (["--workers=0"], "workers", 1, 256, "0"),
        (["--workers=257"], "workers", 1, 256, "257"),
        (["--threads=0"], "threads", 1, 1024, "0"),
        (["--threads=1025"], "threads", 1, 1024, "1025"),
        (["--max-message-mb=0"], "max_message_mb", 1, 2047, "0"),
        (["--max-message-mb=2048"], "max_message_mb", 1, 2047, "2048"),
        (["--max-pixels=0"], "max_pixels", 1, 2147483647, "0"),
        (["--max-pixels=2147483648"], "max_pixels", 1, 2147483647, "2147483648"),
        (["--grace-seconds=-0.5"], "grace_seconds", 0, 3600, "-0.5"),
        (["--grace-seconds=3600.5"], "grace_seconds", 0, 3600, "3600.5"),
        (["--grace-seconds=nan"], "grace_seconds", 0, 3600, "nan"),
        (["--grace-seconds=inf"], "grace_seconds", 0, 3600, "inf"),
        (["--worker-timeout-seconds=0"], "worker_timeout_seconds", 1, 3600, "0.0"),
        (["--worker-timeout-seconds=3600.5"], "worker_timeout_seconds", 1, 3600, "3600.5"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_flags_out_of_bounds_name_the_flag(
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    setting: str,
    low: int,
    high: int,
    value: str,
) -> None:
    """They named the field (max_pixels), which is neither what the user typed nor a flag."""
    flag = "--" + setting.replace("_", "-")
    error = parse_error(capsys, argv)
    assert error == f"tms-server: error: {flag} must be between {low} and {high}, not {value}"


@pytest.mark.parametrize(
    ("name", "text", "setting"),
    [
        ("TMS_PORT", "100000", "port"),
        ("TMS_WORKERS", "0", "workers"),
        ("TMS_THREADS", "-4", "threads"),
        ("TMS_MAX_MESSAGE_MB", "4096", "max_message_mb"),
        ("TMS_MAX_PIXELS", "0", "max_pixels"),
        ("TMS_GRACE_SECONDS", "-1", "grace_seconds"),
    ],
)
def test_environment_out_of_bounds_names_the_variable(
    capsys: pytest.CaptureFixture[str], name: str, text: str, setting: str
) -> None:
    """They named the field (max_message_mb): no flag was given, and no such variable is set."""
    error = parse_error(capsys, [], {name: text})
    assert error.startswith(f"tms-server: error: {name} must be between ")
    assert error.endswith(f", not {float(text) if setting == 'grace_seconds' else text}")


WHOLE = "a whole number"
BOOL = "true or false (yes, no, on, off, 1, 0)"


@pytest.mark.parametrize(
    ("name", "text", "setting", "expected"),
    [
        ("TMS_PORT", "http", "port", WHOLE),
        ("TMS_PORT", "80.5", "port", WHOLE),
        (
            "TMS_PORT",
            "tcp://10.0.0.3:50051",  # a Kubernetes service link, said as such
            "port",
            WHOLE + " (a Kubernetes service link for a Service named tms? set "
            "enableServiceLinks: false in the pod spec, as deploy/ does)",
        ),
        ("TMS_WORKERS", "many", "workers", WHOLE),
        ("TMS_METRICS_PORT", "off", "metrics_port", WHOLE),
        ("TMS_GRACE_SECONDS", "soon", "grace_seconds", "a number"),
        ("TMS_WORKER_TIMEOUT_SECONDS", "never", "worker_timeout_seconds", "a number"),
        ("TMS_ENTRY_POINTS", "maybe", "entry_points", BOOL),
        ("TMS_ENTRY_POINTS", "2", "entry_points", BOOL),
        ("TMS_LOG_REQUESTS", "sometimes", "log_requests", BOOL),
    ],
)
def test_bad_environment_values_name_the_variable_and_what_it_takes(
    capsys: pytest.CaptureFixture[str], name: str, text: str, setting: str, expected: str
) -> None:
    error = parse_error(capsys, [], {name: text})
    assert error == (
        f"tms-server: error: {name}={text!r} is not a valid {setting}; expected {expected}"
    )


@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        (["--port=http"], "argument --port: invalid int value: 'http'"),
        (["--threads=2.5"], "argument --threads: invalid int value: '2.5'"),
        (
            ["--entry-points=maybe"],
            "argument --entry-points: expected true or false (yes, no, on, off, 1, 0), not 'maybe'",
        ),
        (["--grace-seconds=soon"], "argument --grace-seconds: invalid float value: 'soon'"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_bad_flags_are_argparse_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str], pattern: str
) -> None:
    assert parse_error(capsys, argv) == (
        f"tms-server: error: {pattern} (tms-server --help lists every flag)"
    )


def test_a_bad_flag_wins_over_a_good_environment(capsys: pytest.CaptureFixture[str]) -> None:
    error = parse_error(capsys, ["--port=70000"], {"TMS_PORT": "8000"})
    assert error == "tms-server: error: --port must be between 0 and 65535, not 70000"


def test_a_good_flag_hides_a_bad_environment_value() -> None:
    assert parse_settings(["--port=8000"], {"TMS_PORT": "http"}).port == 8000


@pytest.mark.parametrize("level", ["debug", "Info", "WARNING", "error"])
def test_log_level_is_case_insensitive(level: str) -> None:
    assert parse_settings([f"--log-level={level}"], {}).log_level == level.upper()


@pytest.mark.parametrize("level", ["TRACE", "CRITICAL", "verbose", "10"])
def test_unknown_log_levels_are_rejected(capsys: pytest.CaptureFixture[str], level: str) -> None:
    error = parse_error(capsys, [], {"TMS_LOG_LEVEL": level})
    assert error == (
        f"tms-server: error: TMS_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, not {level}"
    )


def test_bounds_are_checked_when_settings_are_built_directly() -> None:
    with pytest.raises(ValueError, match="threads must be between 1 and 1024, not 0"):
        Settings(threads=0)
    assert Settings(threads=1024).threads == 1024


def test_settings_are_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().port = 1  # type: ignore[misc]


def test_help_documents_every_setting_and_its_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_settings(["--help"], {})
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for spec in dataclasses.fields(Settings):
        assert "--" + spec.name.replace("_", "-") in text
        default = spec.metadata["shown"] or spec.default
        assert f"[TMS_{spec.name.upper()}; default: {default}]" in text
        assert " ".join(spec.metadata["help"].split()) in text


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from tms_server import __version__  # noqa: PLC0415

    with pytest.raises(SystemExit) as exited:
        parse_settings(["--version"], {})
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"tms-server {__version__}\n"
