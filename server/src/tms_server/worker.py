"""One worker process: load the models, serve them on the shared port, stop gracefully.

``build_server`` is also what tests use to run a worker inside the test process.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from PIL import Image as PILImage

from tms.v1 import model_service_pb2
from tms_server import __version__, oip, security
from tms_server import admin as admin_service
from tms_server.admin import AdminServicer, Reloader
from tms_server.board import WorkerBoard
from tms_server.load import CountingExecutor, WorkerLoad
from tms_server.monitor import WorkerMonitor
from tms_server.registry import ModelRegistry
from tms_server.servicer import ModelServicer, WorkerIdentity, add_to_server
from tms_server.settings import Settings

__all__ = ["EXIT_HUNG", "RunningServer", "build_server", "grpc_options", "run_worker"]

log = logging.getLogger("tms_server")

#: Exit code of a worker that stopped because a call ran past the call time limit.
EXIT_HUNG = 3


@dataclass
class RunningServer:
    """A started gRPC server of one worker, with its health service and bound port."""

    server: grpc.Server
    health: health.HealthServicer
    registry: ModelRegistry
    load: WorkerLoad
    port: int
    monitor: WorkerMonitor | None = field(default=None, repr=False)
    board: WorkerBoard | None = field(default=None, repr=False)
    index: int = 0

    def drain(self) -> None:
        """Report NOT_SERVING and refuse new calls with UNAVAILABLE (clients retry on other
        workers); calls in flight go on."""
        self.load.draining = True
        self.health.enter_graceful_shutdown()

    def stop(self, grace: float | None) -> None:
        """Drain, then stop; in-flight calls get ``grace`` seconds to finish."""
        self.drain()
        self.server.stop(grace).wait()
        if self.monitor is not None:
            self.monitor.stop()
        if self.board is not None:
            self.board.leave(self.index, os.getpid())


def grpc_options(settings: Settings) -> list[tuple[str, Any]]:
    """The gRPC server options: shared port, message size, keepalive and connection limits."""
    options: list[tuple[str, Any]] = [
        ("grpc.so_reuseport", 1),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Ping every connection, idle ones too, and drop those whose peer does not answer.
        ("grpc.keepalive_time_ms", int(settings.keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_seconds * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # A connection that never finishes its handshake (a silent socket) is closed.
        ("grpc.server_handshake_timeout_ms", int(settings.handshake_timeout_seconds * 1000)),
    ]
    if settings.max_connection_idle_seconds:
        idle = int(settings.max_connection_idle_seconds * 1000)
        options.append(("grpc.max_connection_idle_ms", idle))
    if settings.max_connection_age_seconds:
        age = int(settings.max_connection_age_seconds * 1000)
        options.append(("grpc.max_connection_age_ms", age))
        options.append(("grpc.max_connection_age_grace_ms", int(settings.grace_seconds * 1000)))
    return options


def build_server(
    settings: Settings,
    identity: WorkerIdentity,
    *,
    registry: ModelRegistry | None = None,
    address: str | None = None,
    board: WorkerBoard | None = None,
    on_hung: Callable[[], None] | None = None,
) -> RunningServer:
    """Load the models (unless given), then start a gRPC server on ``address``
    (default: settings' host and port, shared with the other workers by SO_REUSEPORT).

    ``board`` is the supervisor's worker board (default: a board of this worker alone);
    ``on_hung`` is called once if a call runs past the call time limit (default: drain).
    """
    # TMS checks --max-pixels itself before decoding; Pillow's own, lower limit would warn.
    PILImage.MAX_IMAGE_PIXELS = None
    index = identity.worker_index if board is not None else 0
    board = board if board is not None else WorkerBoard(1)
    board.join(index, os.getpid())  # before loading: reloads posted from now on are ours too
    if registry is None:
        registry = ModelRegistry.load(settings.models, entry_points=settings.entry_points)
    load = WorkerLoad(identity.key)
    interceptors: list[grpc.ServerInterceptor] = []
    if settings.tokens_file is not None:
        tokens = security.TokenFile(settings.tokens_file, "tokens_file")
        interceptors.append(security.TokenInterceptor(tokens))
    server = grpc.server(
        CountingExecutor(load, settings.threads),
        options=grpc_options(settings),
        interceptors=interceptors,
        maximum_concurrent_rpcs=settings.max_concurrent_calls,
    )
    servicer = ModelServicer(registry, identity, max_pixels=settings.max_pixels, load=load)
    add_to_server(servicer, server)
    oip.add_to_server(oip.InferenceServicer(servicer, registry), server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reloader = Reloader(registry, health_servicer)
    admin_tokens = (
        security.TokenFile(settings.admin_tokens_file, "admin_tokens_file")
        if settings.admin_tokens_file is not None
        else None
    )
    admin = AdminServicer(
        registry=registry,
        reloader=reloader,
        board=board,
        index=index,
        load=load,
        admin_tokens=admin_tokens,
    )
    admin_service.add_to_server(admin, server)
    service_name = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name
    reflection.enable_server_reflection(
        [
            service_name,
            admin_service.SERVICE_NAME,
            oip.SERVICE_NAME,
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    bind = address or f"{settings.host}:{settings.port}"
    if settings.tls:
        port = server.add_secure_port(bind, security.server_credentials(settings))
    else:
        port = server.add_insecure_port(bind)
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
    running = RunningServer(server, health_servicer, registry, load, port, board=board, index=index)
    running.monitor = WorkerMonitor(
        load=load,
        board=board,
        index=index,
        reloader=reloader,
        call_time_limit=settings.call_time_limit,
        on_hung=on_hung if on_hung is not None else running.drain,
    )
    board.post(index, in_flight=0, queued=0, calls=0, serving=True)
    running.monitor.start()
    return running


#: How often a worker checks that its supervisor is still alive.
SUPERVISOR_CHECK_SECONDS = 1.0


def limit_memory(megabytes: int) -> None:
    """Bound this process's address space (RLIMIT_AS): allocations past it fail, and a model
    asking for too much gets MemoryError instead of taking the machine's memory."""
    limit = megabytes * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY and hard < limit:
        limit = hard
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def run_worker(
    settings: Settings,
    index: int,
    instance_id: str,
    *,
    ready: Callable[[], None] | None = None,
    board: WorkerBoard | None = None,
    supervisor: int | None = None,
) -> None:
    """Body of a worker process: serve until SIGTERM or SIGINT, then stop gracefully.

    If a call runs past the call time limit, stop the same way and exit with EXIT_HUNG
    (without waiting for the stuck thread, which Python cannot stop), to be replaced.
    If ``supervisor`` (the pid of the parent process) dies, stop the same way too: a worker
    never outlives the supervisor that would replace and stop it.
    """
    identity = WorkerIdentity(instance_id, index, settings.workers, __version__)
    stop = threading.Event()
    hung = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def on_hung() -> None:
        hung.set()
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if settings.worker_memory_mb:
        limit_memory(settings.worker_memory_mb)
    running = build_server(settings, identity, board=board, on_hung=on_hung)
    log.info(
        "worker %d serving %d model(s) on port %d",
        index,
        len(running.registry.models),
        running.port,
    )
    if ready is not None:
        ready()
    while not stop.wait(SUPERVISOR_CHECK_SECONDS):
        if supervisor is not None and os.getppid() != supervisor:
            log.warning("worker %d: supervisor (pid %d) is gone; stopping", index, supervisor)
            break
    log.info("worker %d stopping; in-flight calls have %.0fs", index, settings.grace_seconds)
    running.stop(settings.grace_seconds)
    if hung.is_set():
        logging.shutdown()
        os._exit(EXIT_HUNG)
