"""The real launcher: a supervisor and worker processes sharing one port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.support import EXAMPLE_MODELS, EXAMPLE_NAMES, alive, refusing_target, write_models
from tms_client import (
    ConnectError,
    DeadlineExceededError,
    ModelClient,
    RetryPolicy,
    RoundRobin,
    UnavailableError,
)

pytestmark = pytest.mark.slow

MODELS = {
    "whoami": """
        import os, threading, time
        import tms_server

        class Model(tms_server.Model):
            thread_safe = True

            def run(self, image, args):
                if args.get("hang"):
                    threading.Event().wait()  # never returns
                time.sleep(args.get("sleep", 0))
                return {"pid": os.getpid(), "sum": int(image.sum())}
    """,
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return write_models(tmp_path_factory.mktemp("models"), MODELS)


def test_client_finds_every_worker_and_calls_reach_each(server_process, models):
    server = server_process(models, workers=3)
    with ModelClient("whoami", server.target, balancer=RoundRobin()) as client:
        pids = {w.pid for w in client.workers()}
        assert len(pids) == 3
        results = [client.run_image(np.full((4, 4), i, np.uint8)) for i in range(30)]
        assert [r["sum"] for r in results] == [16 * i for i in range(30)]
        assert {r["pid"] for r in results} == pids
        assert [w.calls for w in client.workers()] == [10, 10, 10]
        instance_ids = {w.instance_id for w in client.workers()}
        assert len(instance_ids) == 1


def test_sigterm_lets_in_flight_calls_finish(server_process, models):
    server = server_process(models, workers=2)
    outcome: dict[str, object] = {}
    with ModelClient("whoami", server.target) as client:

        def slow_call():
            try:
                outcome["result"] = client.run_image(np.ones((2, 2), np.uint8), {"sleep": 1.5})
            except Exception as exc:
                outcome["error"] = exc

        caller = threading.Thread(target=slow_call)
        caller.start()
        time.sleep(0.5)
        started = time.monotonic()
        assert server.stop(signal.SIGTERM) == 0
        caller.join(10)
    assert "error" not in outcome, outcome
    assert outcome["result"]["sum"] == 4
    assert time.monotonic() - started < 10
    assert "stopped" in server.logs()


def test_calls_cut_off_at_the_end_of_the_grace_period_are_said(server_process, models):
    """An operator whose callers saw UNAVAILABLE during a rollout reads in the log that the
    grace period was too short for the calls in flight, and how many it cut off."""
    server = server_process(models, workers=1, args=("--grace-seconds", "1"))
    failed: list[Exception] = []
    with ModelClient("whoami", server.target, retry=RetryPolicy.never()) as client:

        def slow_call() -> None:
            try:
                client.run_image(np.ones((2, 2), np.uint8), {"sleep": 5})
            except Exception as exc:
                failed.append(exc)

        callers = [threading.Thread(target=slow_call) for _ in range(2)]
        for caller in callers:
            caller.start()
        time.sleep(0.5)
        assert server.stop(signal.SIGTERM) == 0
        for caller in callers:
            caller.join(10)
    assert len(failed) == 2, failed
    assert all(isinstance(exc, UnavailableError) for exc in failed), failed
    said = [line for line in server.logs().splitlines() if "grace period" in line]
    assert len(said) == 1, server.logs()
    assert " WARNING [" in said[0]
    assert said[0].endswith(
        "worker 0: 2 call(s) still running at the end of the grace period (1s, "
        "--grace-seconds) are cut off; their callers get UNAVAILABLE"
    )


def test_a_worker_that_dies_is_replaced(server_process, models):
    server = server_process(models, workers=2)
    with ModelClient("whoami", server.target) as client:
        victim = client.workers()[0].pid
        os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    pids: set[int] = set()
    while time.monotonic() < deadline:
        with ModelClient("whoami", server.target) as client:
            pids = {w.pid for w in client.workers()}
        if len(pids) == 2 and victim not in pids:
            break
        time.sleep(0.2)
    assert len(pids) == 2
    assert victim not in pids
    assert f"pid {victim}) died: killed by SIGKILL" in server.logs()


def test_workers_stop_when_the_supervisor_is_killed(server_process, models):
    server = server_process(models, workers=2)
    with ModelClient("whoami", server.target) as client:
        pids = {w.pid for w in client.workers()}
    assert len(pids) == 2
    server.process.kill()  # SIGKILL: the supervisor cannot stop its workers itself
    server.process.wait()
    deadline = time.monotonic() + 15
    while pids and time.monotonic() < deadline:
        pids = {pid for pid in pids if alive(pid)}
        time.sleep(0.2)
    assert not pids, f"workers {pids} outlived their supervisor"
    assert "supervisor (pid" in server.logs()


@pytest.mark.parametrize("warm", [False, True], ids=["on-a-thread", "on-the-event-loop"])
def test_a_worker_with_a_hung_call_stops_when_the_supervisor_is_killed(
    server_process, models, warm
):
    server = server_process(models, workers=1, args=("--grace-seconds", "1"))
    with ModelClient("whoami", server.target, timeout=1, retry=RetryPolicy.never()) as client:
        (pid,) = {w.pid for w in client.workers()}
        for _ in range(40 if warm else 0):  # proven quick: its calls run on the event loop
            client.run_image(np.zeros((2, 2), np.uint8))
        with pytest.raises(DeadlineExceededError):
            client.run_image(np.zeros((2, 2), np.uint8), {"hang": True})
    server.process.kill()
    server.process.wait()
    deadline = time.monotonic() + 15
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(pid), "a worker with a hung model call outlived its supervisor"


def test_settings_from_environment(server_process, models):
    server = server_process(models, workers=None, env={"TMS_WORKERS": "3", "TMS_THREADS": "2"})
    with ModelClient("whoami", server.target) as client:
        assert len(client.workers()) == 3


def test_example_models_in_worker_processes(server_process, astronaut_bgr):
    server = server_process(EXAMPLE_MODELS, workers=2)
    with ModelClient("face", server.target, balancer=RoundRobin()) as client:
        assert len(client.workers()) == 2
        for _ in range(2):  # once per worker
            faces = client.run_image(astronaut_bgr)["faces"]
            assert len(faces) == 1
        names = [m.name for m in client.list_models()]
    assert names == EXAMPLE_NAMES


def test_help_documents_every_environment_variable():
    output = subprocess.run(
        [sys.executable, "-m", "tms_server", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in ("HOST", "PORT", "WORKERS", "THREADS", "MODELS", "MAX_MESSAGE_MB", "LOG_LEVEL"):
        assert f"TMS_{name}" in output


def test_bad_settings_stop_the_server_with_a_message():
    result = subprocess.run(
        [sys.executable, "-m", "tms_server", "--workers", "0"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == "tms-server: error: --workers must be between 1 and 256, not 0\n"


def test_connect_timeout_when_nothing_listens():
    started = time.monotonic()
    with refusing_target() as target, pytest.raises(ConnectError, match="connection refused"):
        ModelClient("face", target, connect_timeout=0.5)
    assert time.monotonic() - started < 5
