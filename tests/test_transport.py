"""The real transport (grpcio channels, sync and asyncio) against a real server: replies and
their trailers, errors as the client's exceptions with their trailers, and the streaming form
(the standard health service's Watch, a server-streaming call)."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from google.protobuf import wrappers_pb2

from tests.support import EXAMPLE_MODELS, start_in_process
from tms.v1 import model_service_pb2
from tms_client import ModelClient, ModelNotFoundError, ResourceExhaustedError
from tms_client.protocol.load import read_trailers
from tms_client.protocol.methods import HEALTH_CHECK, method_path
from tms_client.transport import AioTransport, GrpcTransport, Request

pb = model_service_pb2
WATCH = HEALTH_CHECK.replace("Check", "Watch")
SERVING = 1


@pytest.fixture(scope="module")
def target():
    server = start_in_process(EXAMPLE_MODELS)
    yield server.target
    server.running.stop(None)


def info_request(model: str) -> Request:
    data = pb.GetModelInfoRequest(model=model).SerializeToString()
    return Request(method_path("GetModelInfo"), data, timeout=10)


def watch_request() -> Request:
    return Request(WATCH, wrappers_pb2.StringValue(value="").SerializeToString(), timeout=10)


def test_a_sync_channel_returns_reply_and_trailers_and_raises_call_errors(target):
    channel = GrpcTransport().open(target)
    try:
        reply = channel.unary(info_request("mean"))
        assert pb.GetModelInfoResponse.FromString(reply.data).info.name == "mean"
        identity, load = read_trailers(reply.trailers)
        assert identity is not None
        assert load is not None
        with pytest.raises(ModelNotFoundError) as caught:
            channel.unary(info_request("nope"))
        assert read_trailers(caught.value.trailers)[0] == identity  # the same worker
        stream = channel.stream(watch_request())
        first = next(iter(stream))
        assert wrappers_pb2.Int32Value.FromString(first).value == SERVING
    finally:
        channel.close()


def test_an_asyncio_channel_does_the_same(target):
    async def main() -> None:
        channel = AioTransport().open(target)
        try:
            reply = await channel.unary(info_request("mean"))
            assert pb.GetModelInfoResponse.FromString(reply.data).info.name == "mean"
            assert read_trailers(reply.trailers)[0] is not None
            with pytest.raises(ModelNotFoundError) as caught:
                await channel.unary(info_request("nope"))
            assert caught.value.code == grpc.StatusCode.NOT_FOUND
            async for message in channel.stream(watch_request()):
                assert wrappers_pb2.Int32Value.FromString(message).value == SERVING
                break
        finally:
            await channel.close()

    asyncio.run(main())


def test_a_message_above_the_limit_is_refused_by_the_client(target):
    channel = GrpcTransport(max_message_bytes=1024).open(target)
    try:
        data = pb.GetModelInfoRequest(model="x" * 2000).SerializeToString()
        with pytest.raises(ResourceExhaustedError, match="larger than max"):
            channel.unary(Request(method_path("GetModelInfo"), data, timeout=10))
    finally:
        channel.close()


def test_a_reply_larger_than_grpcs_default_limit_arrives_within_the_clients(target):
    # gRPC takes replies of at most 4 MiB unless told otherwise; the client's limit is 64 MiB.
    image = np.zeros((2500, 2000), np.uint8)  # 5 MB each way
    image[1000:1500, 800:1200] = 255
    with ModelClient("edges", target, shared_memory=False) as client:
        edges = client.run_image_to_image(image).image
    assert edges.shape == image.shape
    rows, columns = np.nonzero(edges)
    assert len(rows) > 1000  # the square's outline, and nothing else
    assert rows.min() >= 998
    assert rows.max() <= 1501
    assert columns.min() >= 798
    assert columns.max() <= 1201
    assert not edges[1010:1490, 810:1190].any()
