"""Helpers for tests: model folders and TMS servers on loopback, in-process or as processes."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tms_server import __version__
from tms_server.servicer import WorkerIdentity
from tms_server.settings import Settings
from tms_server.worker import RunningServer, build_server

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_MODELS = ROOT / "examples" / "models"


def write_models(folder: Path, sources: dict[str, str]) -> Path:
    """Write one model package per (name, source of its __init__.py) into ``folder``."""
    for name, source in sources.items():
        package = folder / name
        package.mkdir(parents=True, exist_ok=True)
        (package / "__init__.py").write_text(textwrap.dedent(source))
    return folder


@dataclass
class InProcessServer:
    running: RunningServer
    identity: WorkerIdentity

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"


def start_in_process(
    models: Path, *, entry_points: bool = False, **overrides: Any
) -> InProcessServer:
    """One worker's gRPC server inside the test process, on a free loopback port."""
    settings = Settings(models=models, entry_points=entry_points, workers=1, **overrides)
    identity = WorkerIdentity(uuid.uuid4().hex, 0, 1, __version__)
    running = build_server(settings, identity, address="127.0.0.1:0")
    return InProcessServer(running, identity)


@dataclass
class ServerProcess:
    """A real ``tms-server`` (supervisor and workers) started as a subprocess."""

    process: subprocess.Popen[str]
    target: str
    output: list[str] = field(default_factory=list)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the supervisor and wait for it (killing it after ``timeout``)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.logs()
        assert self.process.stdout is not None
        self.process.stdout.close()
        return code

    def logs(self) -> str:
        """Everything the server has written so far (stdout and stderr)."""
        assert self.process.stdout is not None
        while not self.process.stdout.closed and select.select([self.process.stdout], [], [], 0)[0]:
            line = self.process.stdout.readline()
            if not line:
                break
            self.output.append(line)
        return "".join(self.output)


def start_process(
    models: Path,
    *,
    workers: int | None = 2,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> ServerProcess:
    """Start ``python -m tms_server`` on a free loopback port and wait until it serves."""
    command = [sys.executable, "-m", "tms_server", "--host", "127.0.0.1", "--port", "0"]
    command += ["--models", str(models), *args]
    if workers is not None:
        command += ["--workers", str(workers)]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert process.stdout is not None
    output: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not select.select([process.stdout], [], [], 0.5)[0]:
            if process.poll() is not None:
                break
            continue
        line = process.stdout.readline()
        if not line:
            break
        output.append(line)
        if line.startswith("tms-server: serving on "):
            address = line.split()[3]
            return ServerProcess(process, address, output)
    process.kill()
    process.wait()
    process.stdout.close()
    raise RuntimeError("tms-server did not start:\n" + "".join(output))
