"""The port belongs to one server: a second one, or any other program on it, stops the start."""

from __future__ import annotations

import socket
import subprocess
import sys
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
