"""One worker process: load the models, serve them on the shared port, stop gracefully.

``build_server`` is also what tests use to run a worker inside the test process.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from PIL import Image as PILImage

from tms.v1 import model_service_pb2
from tms_server import __version__, oip
from tms_server.load import CountingExecutor, WorkerLoad
from tms_server.registry import ModelRegistry
from tms_server.servicer import ModelServicer, WorkerIdentity, add_to_server
from tms_server.settings import Settings

__all__ = ["RunningServer", "build_server", "run_worker"]

log = logging.getLogger("tms_server")


@dataclass
class RunningServer:
    """A started gRPC server of one worker, with its health service and bound port."""

    server: grpc.Server
    health: health.HealthServicer
    registry: ModelRegistry
    load: WorkerLoad
    port: int

    def stop(self, grace: float | None) -> None:
        """Drain: report NOT_SERVING and refuse new calls with UNAVAILABLE (clients retry on
        other workers), then stop; in-flight calls get ``grace`` seconds to finish."""
        self.load.draining = True
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


def build_server(
    settings: Settings,
    identity: WorkerIdentity,
    *,
    registry: ModelRegistry | None = None,
    address: str | None = None,
) -> RunningServer:
    """Load the models (unless given), then start a gRPC server on ``address``
    (default: settings' host and port, shared with the other workers by SO_REUSEPORT)."""
    # TMS checks --max-pixels itself before decoding; Pillow's own, lower limit would warn.
    PILImage.MAX_IMAGE_PIXELS = None
    if registry is None:
        registry = ModelRegistry.load(settings.models, entry_points=settings.entry_points)
    options = [
        ("grpc.so_reuseport", 1),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
    ]
    load = WorkerLoad(identity.key)
    server = grpc.server(CountingExecutor(load, settings.threads), options=options)
    servicer = ModelServicer(registry, identity, max_pixels=settings.max_pixels, load=load)
    add_to_server(servicer, server)
    oip.add_to_server(oip.InferenceServicer(servicer, registry), server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service_name = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name
    reflection.enable_server_reflection(
        [service_name, oip.SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    port = server.add_insecure_port(address or f"{settings.host}:{settings.port}")
    server.start()
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    for name in registry.models:
        health_servicer.set(name, serving)
    for name in registry.failed:
        health_servicer.set(name, not_serving)
    health_servicer.set(service_name, serving)
    health_servicer.set(oip.SERVICE_NAME, serving)
    health_servicer.set("", serving)
    return RunningServer(server, health_servicer, registry, load, port)


def run_worker(
    settings: Settings, index: int, instance_id: str, ready: Callable[[], None] | None = None
) -> None:
    """Body of a worker process: serve until SIGTERM or SIGINT, then stop gracefully."""
    identity = WorkerIdentity(instance_id, index, settings.workers, __version__)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    running = build_server(settings, identity)
    log.info(
        "worker %d serving %d model(s) on port %d",
        index,
        len(running.registry.models),
        running.port,
    )
    if ready is not None:
        ready()
    while not stop.wait(3600):
        pass
    log.info("worker %d stopping; in-flight calls have %.0fs", index, settings.grace_seconds)
    running.stop(settings.grace_seconds)
