"""Connections the server ends on its own: keepalive reclaiming one whose peer went silent
(a frozen or vanished client), and --max-connection-age-seconds closing old ones while their
callers go on without an error; and which connections gRPC makes through an HTTP proxy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests import test_hostile_input as hostile
from tests.support import wait_for, write_models
from tms.v1 import model_service_pb2
from tms_client import ModelClient
from tms_client.targets import proxied

MODELS = {"probe": hostile.MODELS["probe"]}  # answers the shape of the image it gets

# A client that opens a health Watch stream, says so, and then waits: the test freezes one
# (SIGSTOP: it answers no keepalive ping, while its kernel keeps the TCP connection up).
WATCHER = textwrap.dedent("""
    import sys, time
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = grpc.insecure_channel(sys.argv[1])
    stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
    next(stream)
    print("watching", flush=True)
    time.sleep(600)
""")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models(tmp_path_factory.mktemp("connections"), MODELS)


def watcher(target: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", WATCHER, target], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "watching\n"
    return process


@pytest.mark.slow
def test_keepalive_reclaims_the_connection_of_a_peer_that_went_silent(in_process_server, models):
    server = in_process_server(
        models,
        keepalive_seconds=1,
        keepalive_timeout_seconds=1,
        max_connection_idle_seconds=0,  # only keepalive may close these connections
        slow_client_seconds=0,
    )
    health = server.running.parts.health
    frozen, alive = watcher(server.target), watcher(server.target)
    try:
        assert wait_for(lambda: "watches=2>" in repr(health), 10), repr(health)
        frozen.send_signal(signal.SIGSTOP)
        # The default keepalive (60 s ping, 20 s to answer) would keep it past this bound.
        assert wait_for(lambda: "watches=1>" in repr(health), 30), repr(health)
        time.sleep(3)  # a few more pings: the client that answers them keeps its stream
        assert "watches=1>" in repr(health)
        assert alive.poll() is None
    finally:
        for process in (frozen, alive):
            process.kill()  # SIGKILL ends a stopped process too
            process.wait()
            assert process.stdout is not None
            process.stdout.close()


def test_connections_past_the_maximum_age_are_replaced_without_a_failed_call(
    in_process_server, models
):
    server = in_process_server(
        models, max_connection_age_seconds=1, grace_seconds=1, max_connection_idle_seconds=0
    )
    request = model_service_pb2.RunImageRequest(model="probe")
    request.image.CopyFrom(
        model_service_pb2.RunImageRequest(
            image={"dtype": 1, "shape": [2, 2], "data": b"\0" * 4}
        ).image
    )
    with grpc.insecure_channel(server.target) as channel:
        states: list[grpc.ChannelConnectivity] = []
        channel.subscribe(states.append, try_to_connect=True)
        call = channel.unary_unary(
            "/tms.v1.ModelService/RunImage",
            response_deserializer=model_service_pb2.RunImageResponse.FromString,
        )

        def reconnected() -> bool:
            call(request.SerializeToString(), timeout=10)  # busy: never idle
            ready = [i for i, s in enumerate(states) if s == grpc.ChannelConnectivity.READY]
            return len(ready) >= 2  # a second connection after the first was closed

        assert wait_for(reconnected, 30, interval=0.1), states
        channel.unsubscribe(states.append)
    # A client calling all the while sees no error: it reconnects before its next call.
    with ModelClient("probe", server.target) as client:
        deadline = time.monotonic() + 3  # three maximum ages
        while time.monotonic() < deadline:
            assert client.run_image(np.zeros((2, 2), np.uint8)) == {"shape": [2, 2]}
            time.sleep(0.05)


# What a channel does with a proxy that does not exist: gRPC's own verdict on whether it goes
# through the proxy (the channel never gets ready) or straight to the server.
READY = """
import sys
import grpc

with grpc.insecure_channel(sys.argv[1]) as channel:
    try:
        grpc.channel_ready_future(channel).result(timeout=2)
        print("direct")
    except grpc.FutureTimeoutError:
        print("proxied")
"""


@pytest.mark.parametrize(
    "no_proxy", [None, "127.0.0.1", "0.0.1", "127.0.0.0/8", "10.0.0.0/8", "localhost", "*"]
)
def test_the_client_knows_which_addresses_grpc_reaches_through_a_proxy(
    in_process_server, models, no_proxy
):
    # The fast refusal at start (targets.refused) trusts a direct connection only where gRPC
    # makes one: targets.proxied must read gRPC's variables as gRPC does.
    server = in_process_server(models)
    env = {name: value for name, value in os.environ.items() if "proxy" not in name.lower()}
    env["https_proxy"] = "http://127.0.0.1:9"  # nothing listens there
    if no_proxy is not None:
        env["no_proxy"] = no_proxy
    ran = subprocess.run(
        [sys.executable, "-c", READY, server.target],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert ran.stdout.strip() == ("proxied" if proxied(server.target, env) else "direct")
