"""The Java client (clients/java, built with Maven) against a real three-worker server: one
client reaches every worker process, loses no call when a worker is killed, lists the server's
models; and codegen/generate.py's drift check covers its generated stubs. Runs the client's
example command, io.tinymodelserver.tms.client.Example."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT, ServerProcess, wait_for, write_models
from tests.toolchains import run
from tms_client import ModelClient

pytestmark = pytest.mark.slow

JAVA_PROJECT = ROOT / "clients" / "java"
JAVA_STUBS = JAVA_PROJECT / "src" / "main" / "java" / "io" / "tinymodelserver" / "tms" / "v1"

MODELS = {
    "whoami": """
        import os, time
        import tms_server

        class Model(tms_server.Model):
            thread_safe = True

            def run(self, image, args):
                time.sleep(0.01)
                return {"pid": os.getpid()}
    """,
}

Start = Callable[..., ServerProcess]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models(tmp_path_factory.mktemp("models"), MODELS)


@pytest.fixture(scope="module")
def example() -> list[str]:
    """``mvn package`` in clients/java; the command that runs its Example main."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError("Maven (mvn) is needed to build clients/java")
    run([mvn, "-q", "-B", "package"], cwd=JAVA_PROJECT, timeout=600)
    classpath = (JAVA_PROJECT / "target" / "classpath.txt").read_text().strip()
    classes = str(JAVA_PROJECT / "target" / "classes")
    return [
        "java",
        "-cp",
        os.pathsep.join([classes, classpath]),
        "io.tinymodelserver.tms.client.Example",
    ]


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (the supervisor's workers)."""
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def three_workers(server_process: Start, models: Path) -> ServerProcess:
    server = server_process(models, workers=3)
    assert wait_for(lambda: len(children(server.process.pid)) == 3, 30)
    return server


def load(example: list[str], target: str, *args: str) -> dict[str, Any]:
    result = subprocess.run(
        [*example, target, "load", "whoami", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def test_calls_land_on_every_worker(server_process: Start, models, example):
    server = three_workers(server_process, models)
    answer = load(example, server.target, "--threads", "6", "--calls", "300")
    assert answer["failures"] == []
    assert answer["calls"] == 300
    assert answer["workers"] == 3
    assert set(answer["pids"]) == set(children(server.process.pid))


def test_a_killed_worker_costs_no_call(server_process: Start, models, example):
    server = three_workers(server_process, models)
    supervisor = server.process.pid
    before = set(children(supervisor))
    command = [*example, server.target, "load", "whoami", "--threads", "6", "--seconds", "8"]
    calls = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert calls.stderr is not None
        assert calls.stderr.readline() == "calls flowing\n"
        time.sleep(1)  # calls on every worker
        victim = sorted(before)[0]
        os.kill(victim, signal.SIGKILL)
        stdout, stderr = calls.communicate(timeout=120)
    finally:
        if calls.poll() is None:
            calls.kill()
            calls.wait()
    assert calls.returncode == 0, stderr
    answer = json.loads(stdout)
    assert answer["failures"] == []
    assert answer["calls"] > 50
    assert victim in answer["pids"]
    after = set(children(supervisor))
    assert victim not in after
    assert set(answer["pids"]) & (after - before), "the restarted worker was found and called"


def test_list_models_matches_the_server(server_process: Start, models, example):
    server = three_workers(server_process, models)
    listed = run([*example, server.target, "models"], cwd=ROOT, timeout=120).split()
    with ModelClient("whoami", server.target) as client:
        assert listed == [info.name for info in client.list_models()]
    assert listed == ["whoami"]


def test_drift_check_covers_the_java_stubs(tmp_path):
    """generate.py --check names a Java stub that differs from what the proto generates."""
    stub = JAVA_STUBS / "ImageProto.java"
    assert stub.is_file()
    saved = tmp_path / stub.name
    shutil.copy2(stub, saved)
    command = [sys.executable, str(ROOT / "codegen" / "generate.py"), "--check"]
    try:
        stub.write_text(stub.read_text() + "// drift\n")
        drifted = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
        )
    finally:
        shutil.copy2(saved, stub)
    assert drifted.returncode == 1, drifted.stdout + drifted.stderr
    assert "differs: clients/java/src/main/java/io/tinymodelserver/tms/v1/ImageProto.java" in (
        drifted.stdout
    )
    clean = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert clean.returncode == 0, clean.stdout + clean.stderr
