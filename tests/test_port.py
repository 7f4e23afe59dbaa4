"""The port belongs to one server: a second one, or any other program on it, stops the start."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.support import write_models
from tms_client import ModelClient, RoundRobin

pytestmark = pytest.mark.slow

ECHO = """
    import os
    import tms_server

    class Model(tms_server.Model):
        inputs = "text"
        thread_safe = True

        def run(self, text, args):
            return {"text": text, "pid": os.getpid()}
"""


@pytest.fixture
def models(tmp_path: Path) -> Path:
    return write_models(tmp_path / "models", {"echo": ECHO})


def serve_on(port: int, models: Path) -> subprocess.CompletedProcess[str]:
    """Run a second server on ``port`` to its end (it should not get to serve)."""
    command = [sys.executable, "-m", "tms_server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--models", str(models), "--workers", "1"]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=20)


def assert_refused(result: subprocess.CompletedProcess[str], port: int) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        f"tms-server: error: cannot listen on 127.0.0.1:{port}: address already in use"
    ]
    assert "serving" not in result.stdout


def test_a_second_server_on_a_taken_port_stops_at_start(server_process, models):
    first = server_process(models, workers=2)
    port = int(first.target.rsplit(":", 1)[1])
    assert_refused(serve_on(port, models), port)
    with ModelClient("echo", first.target, connect_timeout=5, balancer=RoundRobin()) as client:
        pids = {w.pid for w in client.workers()}
        assert len(pids) == 2
        assert {client.run_text("x")["pid"] for _ in range(6)} <= pids  # its workers alone


def test_a_port_another_program_listens_on_is_refused(models):
    with socket.create_server(("127.0.0.1", 0)) as other:
        port = other.getsockname()[1]
        assert_refused(serve_on(port, models), port)


def test_a_server_restarts_on_the_port_a_stopped_one_served(server_process, models):
    first = server_process(models, workers=1)
    port = first.target.rsplit(":", 1)[1]
    with ModelClient("echo", first.target, connect_timeout=5) as client:
        assert client.run_text("before")["text"] == "before"
        assert first.stop() == 0  # closes the open connection: TIME_WAIT on the server's side
    second = server_process(models, workers=1, args=("--port", port))
    assert second.target == first.target
    with ModelClient("echo", second.target, connect_timeout=5) as client:
        assert client.run_text("after")["text"] == "after"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--http-port", "{port}"), "--port and --http-port are both {port}"),
        (("--metrics-port", "{port}"), "--port and --metrics-port are both {port}"),
        (
            ("--port", "0", "--http-port", "{port}", "--metrics-port", "{port}"),
            "--http-port and --metrics-port are both {port}",
        ),
    ],
)
def test_two_of_the_servers_ports_the_same_stop_the_start(models, flags, message):
    """The same number for two of the server's own ports is said as such, not as a port in
    use by another program (which the second to bind would report), before any worker."""
    with socket.socket() as probe:  # a port free now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = subprocess.run(
        [sys.executable, "-m", "tms_server", "--host", "127.0.0.1", "--port", str(port)]
        + ["--models", str(models), "--workers", "1"]
        + [flag.format(port=port) for flag in flags],
        capture_output=True,
        text=True,
        check=False,
        timeout=20,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        f"tms-server: error: {message.format(port=port)}: give each its own port "
        "(0 picks a free one)"
    ]
    assert "serving" not in result.stdout


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
@pytest.mark.parametrize("host", ["::1", "::"])
def test_an_ipv6_host_serves_and_is_written_in_brackets(server_process, models, host):
    """--host :: (every IPv6 address) reserved its port, then every worker failed to bind
    ':::PORT' (gRPC wants brackets) and the server did not start."""
    server = server_process(models, workers=1, args=("--host", host, "--http-port", "0"))
    assert re.fullmatch(rf"\[{re.escape(host)}\]:\d+", server.target), server.target
    assert re.search(
        rf"^tms-server: HTTP on http://\[{re.escape(host)}\]:\d+/$", server.logs(), re.M
    )
    port = server.target.rsplit(":", 1)[1]
    with ModelClient("echo", f"[::1]:{port}", connect_timeout=5) as client:
        assert client.run_text("over IPv6")["text"] == "over IPv6"


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_metrics_on_an_ipv6_host_are_served_and_written_in_brackets(server_process, models):
    """/metrics on --host ::1 is scraped over IPv6 at the URL the server prints; a metrics
    port taken there was "cannot serve metrics on ::1:PORT", no address anyone can use."""
    server = server_process(models, workers=1, args=("--host", "::1", "--metrics-port", "0"))
    found = re.search(
        r"^tms-server: metrics on (http://\[::1\]:(\d+)/metrics)$", server.logs(), re.M
    )
    assert found, server.logs()
    with urllib.request.urlopen(found[1], timeout=10) as answer:
        assert "tms_workers 1.0" in answer.read().decode()
    port = int(found[2])
    command = [sys.executable, "-m", "tms_server", "--host", "::1", "--port", "0"]
    command += ["--metrics-port", str(port), "--models", str(models), "--workers", "1"]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=20)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        f"tms-server: error: cannot serve metrics on [::1]:{port}: address already in use"
    ]
