"""The load test, deploy/locustfile.py: Locust run headless against a real two-worker server.

Locust runs as a subprocess (importing it patches the standard library for gevent, which must
not happen to the test process); its final statistics come from ``--json-file``, and each
client's calls per worker process from the lines the locustfile logs when the test stops.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import EXAMPLE_MODELS, ROOT, ServerProcess, start_process, wait_for
from tms_client import ModelClient

pytestmark = pytest.mark.slow

LOCUSTFILE = ROOT / "deploy" / "locustfile.py"
STARTUP = 120.0  # seconds Locust may take to start (importing it is slow on a busy machine)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """The example models served by two worker processes, shared by the tests here."""
    server = start_process(EXAMPLE_MODELS, workers=2)
    try:
        yield server
    finally:
        server.stop()


def worker_pids(target: str) -> set[int]:
    with ModelClient("mean", target) as client:
        return {worker.pid for worker in client.workers()}


class Locust:
    """``locust --headless`` on the locustfile, its output in ``folder``."""

    def __init__(
        self,
        folder: Path,
        host: str,
        *args: str,
        models: str = "",
        users: int = 4,
        run_time: str = "5s",
    ) -> None:
        self.folder = folder
        command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless"]
        command += ["-u", str(users), "-r", str(users), "-t", run_time, "--host", host]
        command += ["--only-summary", "--json-file", str(folder / "stats"), "--loglevel", "INFO"]
        command += args
        with open(folder / "locust.log", "w") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "TMS_LOCUST_MODELS": models},
            )

    def log(self) -> str:
        return (self.folder / "locust.log").read_text()

    def wait(self, timeout: float) -> int:
        """Locust's exit code, once it has exited (killed after ``timeout`` seconds)."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError("locust did not finish:\n" + self.log()) from None

    def stats(self) -> dict[str, dict[str, Any]]:
        """Locust's final statistics, by request name."""
        entries = json.loads((self.folder / "stats.json").read_text())
        return {entry["name"]: entry for entry in entries}

    def calls_per_worker(self, model: str) -> dict[int, int]:
        """The calls the process's client of ``model`` sent to each worker (by pid)."""
        line = re.search(rf"tms-locust: {model}: calls per worker process: (.*)", self.log())
        assert line is not None, self.log()
        return {int(pid): int(n) for pid, n in re.findall(r"pid (\d+): (\d+)", line.group(1))}


def assert_calls_without_failures(locust: Locust, models: set[str]) -> None:
    stats = locust.stats()
    assert set(stats) == models, locust.log()
    for name, entry in stats.items():
        assert entry["method"] == "grpc"
        assert entry["num_requests"] > 0, name
        assert entry["num_failures"] == 0, locust.log()


def test_default_mix_calls_each_model_on_every_worker(server, tmp_path):
    locust = Locust(tmp_path, server.target)
    assert locust.wait(STARTUP + 60) == 0, locust.log()
    assert_calls_without_failures(locust, {"mean", "text_stats", "edges", "face"})
    pids = worker_pids(server.target)
    for model in ("mean", "text_stats", "edges", "face"):
        # Each client found both workers: its discovery ran in greenlets, as Locust runs it.
        assert set(locust.calls_per_worker(model)) == pids


def test_models_and_weights_from_the_environment(server, tmp_path):
    mix = "ocr:1, optical_flow:2, digits:1, upright:1"
    locust = Locust(tmp_path, server.target, models=mix)
    assert locust.wait(STARTUP + 60) == 0, locust.log()
    assert_calls_without_failures(locust, {"ocr", "optical_flow", "digits", "upright"})


def test_worker_killed_mid_run_is_replaced_and_called_without_failures(server, tmp_path):
    before = worker_pids(server.target)
    locust = Locust(tmp_path, server.target, models="mean,text_stats", run_time="10m")
    try:
        assert wait_for(lambda: "All users spawned" in locust.log(), STARTUP), locust.log()
        time.sleep(1)  # calls under way
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        assert wait_for(lambda: len(worker_pids(server.target) - before) == 1, 60, 0.5)
        time.sleep(3)  # the clients' background search finds the new worker and calls it
    finally:
        locust.process.send_signal(signal.SIGTERM)  # ends the run as --run-time would
        code = locust.wait(60)
    assert code == 0, locust.log()
    assert_calls_without_failures(locust, {"mean", "text_stats"})
    (replacement,) = worker_pids(server.target) - before
    for model in ("mean", "text_stats"):
        calls = locust.calls_per_worker(model)
        assert victim not in calls
        assert calls.get(replacement, 0) > 0, locust.log()


@pytest.mark.parametrize(
    ("host", "models", "args", "message"),
    [
        ("127.0.0.1:1", "mean,nope", (), "argument --tms-models: unknown model 'nope'"),
        ("127.0.0.1:1", "mean:0", (), "the weight of mean must be a whole number >= 1, not '0'"),
        ("http://127.0.0.1:1", "", (), "--host takes host:port without a scheme"),
        ("127.0.0.1:1", "", ("--processes", "2"), "--processes hangs gRPC"),
    ],
)
def test_bad_options_stop_locust_before_the_run(tmp_path, host, models, args, message):
    locust = Locust(tmp_path, host, *args, models=models)
    assert locust.wait(STARTUP) != 0
    assert message in locust.log()
    assert "All users spawned" not in locust.log()
