"""Shared fixtures: TMS servers on loopback, in this process or as real processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from skimage import data

from tests.support import (
    EXAMPLE_MODELS,
    InProcessServer,
    ServerProcess,
    start_in_process,
    start_process,
)


@pytest.fixture(scope="session")
def example_server() -> Iterator[InProcessServer]:
    """The bundled example models, served in this process."""
    server = start_in_process(EXAMPLE_MODELS)
    yield server
    server.running.stop(None)


@pytest.fixture
def in_process_server() -> Iterator[Callable[..., InProcessServer]]:
    """A factory of in-process servers, all stopped after the test."""
    started: list[InProcessServer] = []

    def start(models: Path, **overrides: Any) -> InProcessServer:
        server = start_in_process(models, **overrides)
        started.append(server)
        return server

    yield start
    for server in started:
        server.running.stop(None)


@pytest.fixture
def server_process() -> Iterator[Callable[..., ServerProcess]]:
    """A factory of real server processes, all stopped (and if need be killed) after the test."""
    started: list[ServerProcess] = []

    def start(models: Path, **kwargs: object) -> ServerProcess:
        server = start_process(models, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def astronaut_bgr() -> object:
    """A real photograph with one face, as OpenCV would read it (BGR)."""
    return data.astronaut()[:, :, ::-1].copy()
