"""The gRPC server of one worker: its options, the services on it, and their health at start.

One ``grpc.aio`` server serves tms.v1.ModelService, the Open Inference Protocol,
tms.v1.AdminService, gRPC health and reflection, on the port the worker shares with the
others (SO_REUSEPORT). tms_server.worker makes the servicers, and starts and stops the server.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tms.v1 import model_service_pb2
from tms_server import admin as admin_service
from tms_server import oip, security
from tms_server.admin import AdminServicer
from tms_server.health import SERVICE_NAME as HEALTH_SERVICE_NAME
from tms_server.health import HealthServicer
from tms_server.registry import ModelRegistry
from tms_server.rpc import Worker, add_service
from tms_server.servicer import MODEL_CALLS, RAW_REQUESTS, RAW_RESPONSES, ModelServicer
from tms_server.settings import Settings

__all__ = ["MODEL_SERVICE", "grpc_options", "new_grpc_server", "report_serving"]

MODEL_SERVICE = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"]


def grpc_options(settings: Settings) -> list[tuple[str, Any]]:
    """The gRPC server options: shared port, message size, keepalive and connection limits."""
    options: list[tuple[str, Any]] = [
        ("grpc.so_reuseport", 1),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Ping every connection, idle ones too, and drop those whose peer does not answer.
        ("grpc.keepalive_time_ms", int(settings.keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_seconds * 1000)),
        # grpcio drops a connection whose ping goes unanswered after the ping timeout (60 s by
        # default), whatever keepalive_timeout_ms says: give both the same value.
        ("grpc.http2.ping_timeout_ms", int(settings.keepalive_timeout_seconds * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # A connection that never finishes its handshake (a silent socket) is closed.
        ("grpc.server_handshake_timeout_ms", int(settings.handshake_timeout_seconds * 1000)),
        ("grpc.max_allowed_incoming_connections", settings.max_connections),
        ("grpc.max_concurrent_streams", settings.max_streams_per_connection),
    ]
    if settings.max_connection_idle_seconds:
        idle = int(settings.max_connection_idle_seconds * 1000)
        options.append(("grpc.max_connection_idle_ms", idle))
    if settings.max_connection_age_seconds:
        age = int(settings.max_connection_age_seconds * 1000)
        options.append(("grpc.max_connection_age_ms", age))
        options.append(("grpc.max_connection_age_grace_ms", int(settings.grace_seconds * 1000)))
    return options


def new_grpc_server(
    settings: Settings,
    bind: str,
    worker: Worker,
    *,
    models: ModelServicer,
    inference: oip.InferenceServicer,
    admin: AdminServicer,
    health: HealthServicer,
) -> tuple[grpc.aio.Server, int]:
    """A server (not started) with every service on it, bound to ``bind``; and its port.

    Make it on the event loop that is to serve it. With ``--tokens-file`` every call but
    health checks and admin calls must bear a call token (security.TokenInterceptor).
    """
    interceptors: list[grpc.aio.ServerInterceptor] = []
    worker.tokens = security.token_file(settings, "tokens_file")
    if worker.tokens is not None:
        interceptors.append(security.TokenInterceptor(worker.tokens))
    server = grpc.aio.server(options=grpc_options(settings), interceptors=interceptors)
    add_service(
        server,
        MODEL_SERVICE,
        models,
        worker,
        raw_requests=RAW_REQUESTS,
        raw_responses=RAW_RESPONSES,
        weighers=models.weighers(),
        contents=models.contents(),
        model_calls=MODEL_CALLS,
        carrier="Calls",
    )
    add_service(
        server,
        oip.SERVICE,
        inference,
        worker,
        weighers={"ModelInfer": oip.declared_pixels},
        model_calls={"ModelInfer"},
    )
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    add_service(server, admin_service.SERVICE, admin, worker)
    reflection.enable_server_reflection(
        [
            MODEL_SERVICE.full_name,
            admin_service.SERVICE_NAME,
            oip.SERVICE_NAME,
            HEALTH_SERVICE_NAME,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    if settings.tls:
        port = server.add_secure_port(bind, security.server_credentials(settings))
    else:
        port = server.add_insecure_port(bind)
    return server, port


def report_serving(
    health: HealthServicer, registry: ModelRegistry, *, allow_failed_models: bool = False
) -> None:
    """The health of a server that has just started: each model loaded SERVING, each that
    failed to load NOT_SERVING, and so is each placed on other workers (this worker does not
    serve it: its calls get FAILED_PRECONDITION here); then the model services SERVING (they
    answer: what a liveness probe asks), and last the server as a whole (""): SERVING only if
    every model loaded, or with ``allow_failed_models`` (what a readiness probe asks, so that
    a deploy with a broken model never takes traffic). A reload that loads every failed model
    makes it SERVING (tms_server.parts.Reloader)."""
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    for name in registry.models:
        health.set(name, serving)
    for name in [*registry.failed, *registry.elsewhere]:
        health.set(name, not_serving)
    for name in (MODEL_SERVICE.full_name, oip.SERVICE_NAME):
        health.set(name, serving)
    ready = allow_failed_models or not registry.failed
    health.set("", serving if ready else not_serving)
