"""``check_health``: ask a server whether it is up, as a load balancer would.

Health checks (``grpc.health.v1.Health/Check``) are the one call a server with tokens answers
without one, so this needs no token and finds no workers (worker discovery needs a token):
one connection, one worker answers. ``ModelClient.health`` asks the same of a client's
workers, once the client has connected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tms_client import calls
from tms_client.core import PROBE_TIMEOUT, refused_error
from tms_client.exceptions import (
    ConnectError,
    DeadlineExceededError,
    ModelNotFoundError,
    UnavailableError,
)
from tms_client.options import ClientOptions
from tms_client.transport import GrpcTransport, Request

__all__ = ["check_health"]


def check_health(
    target: str | None = None,
    services: Sequence[str] = ("",),
    *,
    options: ClientOptions | None = None,
    **overrides: Any,
) -> dict[str, str]:
    """The health of each of ``services`` ("" for the whole server, else a model's name) at
    the one server of ``target``: SERVING, NOT_SERVING or SERVICE_UNKNOWN.

    Settings as for ModelClient (``options=`` and keyword arguments). It waits for the server
    as a client's start does (``connect_timeout``), then each check gets ``timeout``;
    ConnectError when no server answers.
    """
    options = ClientOptions.of(target, options, overrides)
    if len(options.targets) != 1:
        raise ValueError("check_health asks one server: give one target")
    address = options.targets[0].removeprefix("dns:///")  # gRPC resolves the name itself
    transport = GrpcTransport(options.tls, options.max_message_bytes)
    probe = min(options.connect_timeout, PROBE_TIMEOUT)
    if not options.wait_for_server and transport.refuses(address, probe):
        raise refused_error([address])
    channel = transport.open(address)
    statuses: dict[str, str] = {}
    try:
        for service in services:
            call = calls.health(service)
            timeout = options.timeout if statuses else options.connect_timeout
            request = Request(call.path, call.request, timeout, options.metadata, True)
            try:
                statuses[service] = call.parse(channel.unary(request).data)
            except ModelNotFoundError:
                statuses[service] = "SERVICE_UNKNOWN"
            except (DeadlineExceededError, UnavailableError) as exc:
                if statuses:
                    raise
                raise ConnectError(
                    f"no TMS server answered at {address} within {options.connect_timeout:g}s"
                ) from exc
    finally:
        channel.close()
    return statuses
