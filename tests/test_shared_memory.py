"""The same-host shared-memory fast path: real servers, real images, /dev/shm watched.

The ``where`` model reports what its input array is a view of: ``mmap`` when the pixels came
through a shared-memory region the worker attached, ``bytes`` when they came in the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import random
import re
import secrets
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from skimage import data

from tests.support import ROOT, start_process, stopped, wait_for, write_models
from tms.v1 import image_pb2, model_service_pb2, model_service_pb2_grpc
from tms_cli.cli import tms
from tms_cli.connection import Options
from tms_client import (
    AsyncModelClient,
    DeadlineExceededError,
    FrameResult,
    ModelClient,
    RetryPolicy,
)
from tms_client import shm as client_shm
from tms_client.exceptions import from_rpc_error
from tms_client.protocol.codec import encode_parts
from tms_client.protocol.methods import IMAGE_FIELD
from tms_client.protocol.wire import join_images
from tms_server import shm as server_shm
from tms_server.errors import Unimplemented
from tms_server.servicer import ModelServicer

pytestmark = [
    pytest.mark.skipif(not client_shm.available(), reason="needs /dev/shm (Linux)"),
    pytest.mark.alone,  # it counts the regions in /dev/shm: no other test's may come and go
]

pb = model_service_pb2
SHM = Path("/dev/shm")

MODELS = {
    "where": """
        import time

        import numpy as np
        import tms_server

        def backing(array):
            base = array
            while isinstance(base, np.ndarray) and base.base is not None:
                base = base.base
            if isinstance(base, memoryview):
                base = base.obj
            return type(base).__name__

        class Model(tms_server.Model):
            thread_safe = True

            def run(self, image, args):
                time.sleep(args.get("sleep", 0))
                if "refuse" in args and image.flat[0] == args["refuse"]:
                    raise tms_server.InvalidInput(f"first pixel {args['refuse']}: refused")
                return {
                    "backing": backing(image),
                    "dtype": str(image.dtype),
                    "shape": list(image.shape),
                    "sum": float(image.astype("float64").sum()),
                    "writeable": bool(image.flags.writeable),  # the caller's memory: never
                }

            def run_batch(self, images, args):
                return [self.run(image, args) for image in images]
    """,
    "flip": """
        import tms_server

        class Model(tms_server.Model):
            thread_safe = True

            def run_image_to_image(self, images, args):
                return [image[::-1].copy() for image in images] + [images[0]], {"n": len(images)}
    """,
    "gray": """
        import tms_server

        class Model(tms_server.Model):
            color = "gray"
            dtype = "float32"

            def run(self, image, args):
                return {"sum": float(image.sum()), "shape": list(image.shape)}
    """,
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models(tmp_path_factory.mktemp("shm-models"), MODELS)


def regions() -> set[str]:
    """The shared-memory names a TMS client makes."""
    return {name for name in os.listdir(SHM) if name.startswith("tms-")}


def none_left(before: set[str], timeout: float = 10.0) -> bool:
    """Whether no region made since ``before`` remains (others' calls leave theirs only for
    the moment of an attach, so wait a little)."""
    return wait_for(lambda: not (regions() - before), timeout)


def images() -> list[np.ndarray]:
    astronaut = data.astronaut()[:, :, ::-1].copy()  # BGR, as OpenCV reads
    camera = data.camera()
    return [
        astronaut,
        camera,  # gray uint8
        camera.astype(np.uint16) * 257,
        camera.astype(np.float32) / 255,
        camera > 128,  # bool
        (camera.astype(np.int16) - 128).astype(np.int8),
    ]


# -- results: the same as bytes, but through a region --------------------------------------------


def test_every_image_call_matches_the_bytes_path(in_process_server, models):
    server = in_process_server(models)
    before = regions()
    with (
        ModelClient("where", server.target) as fast,
        ModelClient("where", server.target, shared_memory=False) as slow,
    ):
        for image in images():
            got, expected = fast.run_image(image), slow.run_image(image)
            assert got.pop("backing") == "mmap"
            assert expected.pop("backing") == "bytes"
            assert got == expected
        batch = images()[:3]
        got_batch, expected_batch = fast.run_images(batch), slow.run_images(batch)
        assert [r.pop("backing") for r in got_batch] == ["mmap"] * 3
        assert [r.pop("backing") for r in expected_batch] == ["bytes"] * 3
        assert got_batch == expected_batch
    with (
        ModelClient("flip", server.target) as fast,
        ModelClient("flip", server.target, shared_memory=False) as slow,
    ):
        for image in images():
            got, expected = fast.run_image_to_image(image), slow.run_image_to_image(image)
            assert len(got.images) == 2
            for a, b in zip(got.images, expected.images, strict=True):
                assert a.dtype == b.dtype
                assert np.array_equal(a, b)
                assert a.flags.writeable
            assert np.array_equal(got.images[0], image[::-1])
            assert (got.result, got.colors) == (expected.result, expected.colors)
        pair = [images()[1], images()[1][:, ::-1].copy()]
        got = fast.run_image_to_image(pair)
        assert np.array_equal(got.images[1], pair[1][::-1])
        assert got.result == {"n": 2}
    with ModelClient("gray", server.target) as converted:  # colour and dtype conversions apply
        astronaut = images()[0]
        result = converted.run_image(astronaut)
        assert result["shape"] == list(astronaut.shape[:2])
    assert none_left(before)


def test_the_asyncio_client_uses_it_too(in_process_server, models):
    server = in_process_server(models)
    before = regions()
    image = images()[0]

    async def main() -> tuple[list[dict], list[np.ndarray]]:
        async with (
            AsyncModelClient("where", server.target) as where,
            AsyncModelClient("flip", server.target) as flip,
        ):
            results = await asyncio.gather(*(where.run_image(image) for _ in range(6)))
            flipped = await flip.run_image_to_image(image)
            return results, flipped.images

    results, outputs = asyncio.run(main())
    assert {r["backing"] for r in results} == {"mmap"}
    assert np.array_equal(outputs[0], image[::-1])
    assert none_left(before)


def test_calls_in_flight_at_once_get_a_region_each(in_process_server, models):
    server = in_process_server(models, threads=8)
    pictures = images()
    with ModelClient("where", server.target) as client:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(client.run_image, pictures * 8))
        (channel,) = [w.channel for w in client._pool.core.workers.workers()]
        assert isinstance(channel, client_shm.AsyncSharedMemoryChannel)
        assert "regions" in repr(channel.lender)
    for image, result in zip(pictures * 8, results, strict=True):
        assert result["sum"] == float(image.astype("float64").sum())
        assert result["backing"] in ("mmap", "bytes")  # more in flight than regions: bytes
    assert sum(r["backing"] == "mmap" for r in results) >= len(results) // 2


def test_a_region_of_an_abandoned_call_is_never_reused(in_process_server, models):
    """A call that timed out may still run on the worker, reading its region: the client
    detaches that region and uses another."""
    server = in_process_server(models)
    image = images()[1]
    before = regions()
    with ModelClient("where", server.target, retry=RetryPolicy.never()) as client:
        assert client.run_image(image)["backing"] == "mmap"
        (channel,) = [w.channel for w in client._pool.core.workers.workers()]
        (region,) = channel.lender._free
        client.timeout = 0.2
        with pytest.raises(DeadlineExceededError):
            client.run_image(image, {"sleep": 1.0})
        client.timeout = 10
        assert channel.lender._doomed == [region]
        result = client.run_image(image)
        assert result["backing"] == "mmap"
        assert result["sum"] == float(image.sum())
        assert region not in channel.lender._free
        assert channel.lender._doomed == []
    assert none_left(before)


# -- streams: each frame through a region, given back with its answer ----------------------------


def video(count: int, shape: tuple[int, ...] = (480, 640, 3)) -> list[np.ndarray]:
    """Distinct frames: a frame read from a region reused too early would show in its sum."""
    rng = np.random.default_rng(7)
    return [rng.integers(1, 256, shape, dtype=np.uint8) for _ in range(count)]


def stream_channel(client: ModelClient | AsyncModelClient) -> client_shm.AsyncSharedMemoryChannel:
    (channel,) = [w.channel for w in client._pool.core.workers.workers()]  # type: ignore[union-attr]
    return channel


def all_back(lender: client_shm.Lender) -> bool:
    """Whether every region the lender has is free (none held by a frame)."""
    return len(lender._free) == lender._count


def answers(results: list[FrameResult]) -> list[tuple[object, ...]]:
    """What a stream answered, less where the pixels came from."""
    out: list[tuple[object, ...]] = []
    for r in results:
        if r.error is not None:
            out.append((r.frame_id, type(r.error).__name__, r.error.reason))
        else:
            out.append((r.frame_id, {k: v for k, v in r.result.items() if k != "backing"}))
    return out


def backings(results: list[FrameResult]) -> list[str | None]:
    return [r.result["backing"] if r.error is None else None for r in results]


def test_a_stream_moves_its_frames_by_reference(in_process_server, models):
    """Frames go through regions (the model sees mmap-backed pixels), with the answers of
    bytes; a bad frame is answered with its error and the stream goes on."""
    server = in_process_server(models)
    frames = video(12)
    frames[5][0, 0, 0] = 1  # refused by the model
    frames.insert(8, np.full((480, 640, 3), 0.5, np.float32))  # larger than the regions: bytes
    before = regions()
    with (
        ModelClient("where", server.target) as fast,
        ModelClient("where", server.target, shared_memory=False) as slow,
    ):
        args = {"refuse": 1}
        got = list(fast.run_image_stream(frames, args, errors="yield", window=4))
        expected = list(slow.run_image_stream(frames, args, errors="yield", window=4))
        assert answers(got) == answers(expected)
        assert [i for i, r in enumerate(got) if r.error is not None] == [5]
        assert backings(got) == ["mmap"] * 5 + [None] + ["mmap"] * 2 + ["bytes"] + ["mmap"] * 4
        assert set(backings(expected)) == {"bytes", None}
        for frame, result in zip(frames, got, strict=True):
            if result.error is None:
                assert result.result["sum"] == float(frame.astype("float64").sum())
        lender = stream_channel(fast).lender
        assert 1 <= lender._count <= 4  # at most a region per frame in flight
        assert all_back(lender)
        assert fast.run_image(frames[0])["backing"] == "mmap"  # the regions serve calls too
    assert none_left(before)


def test_a_stream_with_more_frames_in_flight_than_regions(in_process_server, models, monkeypatch):
    """Frames that find no free region go as bytes; the others still go by reference."""
    monkeypatch.setattr(client_shm, "MAX_REGIONS", 2)
    server = in_process_server(models, threads=4)
    frames = video(16, (120, 160, 3))
    before = regions()
    with ModelClient("where", server.target) as client:
        got = list(client.run_image_stream(frames, {"sleep": 0.02}, window=6))
        assert [r.result["sum"] for r in got] == [float(f.astype("float64").sum()) for f in frames]
        assert "mmap" in backings(got)
        assert "bytes" in backings(got)  # six frames in flight, two regions
        lender = stream_channel(client).lender
        assert lender._count == 2
        assert all_back(lender)
    assert none_left(before)


def test_a_frame_larger_than_the_streams_regions_goes_as_bytes(in_process_server, models):
    server = in_process_server(models)
    small, large = video(1, (64, 64, 3))[0], video(1, (1024, 1024, 3))[0]  # 12 KiB, 3 MiB
    frames = [small, large, small, large]
    before = regions()
    with ModelClient("where", server.target) as client:
        got = list(client.run_image_stream(frames, window=2))
        assert backings(got) == ["mmap", "bytes", "mmap", "bytes"]
        assert [r.result["sum"] for r in got] == [float(f.astype("float64").sum()) for f in frames]
        assert [r.size for r in stream_channel(client).lender._free] == [client_shm.MIN_REGION]
    assert none_left(before)


def test_a_stream_the_caller_leaves_gives_up_its_regions(in_process_server, models):
    """Frames still in flight when the caller stops reading may still run on the worker:
    their regions are detached and never written again; the pool goes on with new ones."""
    server = in_process_server(models, threads=4)
    frames = video(10, (120, 160, 3))
    before = regions()
    with ModelClient("where", server.target) as client:
        stream = client.run_image_stream(frames, {"sleep": 0.05}, window=4)
        assert next(stream).result["backing"] == "mmap"
        stream.close()  # the caller leaves, with frames in flight
        lender = stream_channel(client).lender
        held = list(lender._doomed)  # the objects: ids of freed ones could come back
        assert held  # given up: the worker may still read them
        assert wait_for(lambda: all_back(lender), 10)  # and a frame being sent: never sent
        got = list(client.run_image_stream(frames[:4]))
        assert backings(got) == ["mmap"] * 4
        assert not [r for r in held if any(r is free for free in lender._free)]  # never reused
        assert lender._doomed == []  # detached meanwhile
        assert client.run_image(frames[0])["backing"] == "mmap"
        # Ended by a frame's error it raises: the same.
        frames[2][0, 0, 0] = 1
        with pytest.raises(Exception, match="refused"):
            list(client.run_image_stream(frames, {"refuse": 1}, window=4))
        assert wait_for(lambda: all_back(lender), 10)
        assert backings(list(client.run_image_stream(frames[3:6]))) == ["mmap"] * 3
    assert none_left(before)


def stream_beside_a_call(
    first: ModelClient, second: ModelClient, image: np.ndarray, backing: str
) -> list[FrameResult]:
    """Four frames of ``image`` streamed by ``first`` (window 1), and between the first two a
    call of ``second``'s, which goes by ``backing``."""

    def frames() -> Iterator[np.ndarray]:
        yield image
        assert second.run_image(image)["backing"] == backing
        yield from [image] * 3

    return list(first.run_image_stream(frames(), window=1, errors="yield"))


def test_a_stream_whose_region_the_worker_dropped_goes_on_as_bytes(
    in_process_server, models, monkeypatch
):
    """A frame whose region the worker dropped (beyond --max-shared-memory-mb, once idle) is
    answered SHARED_MEMORY_NOT_ATTACHED; later frames are on their way, so it is not sent
    again: the rest of the stream goes as bytes."""
    monkeypatch.setattr(server_shm, "IDLE_SECONDS", 0.0)  # every region is idle at once
    server = in_process_server(models, max_shared_memory_mb=1)
    image = images()[1]  # 512 x 512 gray: fits a region of 1 MiB
    before = regions()
    with (
        ModelClient("where", server.target) as first,
        ModelClient("where", server.target) as second,
    ):
        # The first's region dropped for the second's:
        got = stream_beside_a_call(first, second, image, "mmap")
        assert got[1].error is not None
        assert got[1].error.reason == "SHARED_MEMORY_NOT_ATTACHED"
        assert backings(got) == ["mmap", None, "bytes", "bytes"]
        assert [r.result["sum"] for r in got if r.error is None] == [float(image.sum())] * 3
        assert first.run_image(image)["backing"] == "mmap"  # a new region for calls
    assert none_left(before)


def test_a_stream_to_a_worker_without_shared_memory_sends_bytes(in_process_server, models):
    server = in_process_server(models, shared_memory=False)
    frames = video(3, (60, 80, 3))
    with ModelClient("where", server.target) as client:
        assert client.run_image(frames[0])["backing"] == "bytes"  # refused once
        got = list(client.run_image_stream(frames))
        assert backings(got) == ["bytes"] * 3
        assert [r.result["sum"] for r in got] == [float(f.astype("float64").sum()) for f in frames]
        assert backings(list(client.run_image_stream(frames))) == ["bytes"] * 3  # known
    with ModelClient("where", server.target) as client:
        got = list(client.run_image_stream(frames))  # refused by the stream's first frame
        assert backings(got) == ["bytes"] * 3


def test_the_asyncio_client_streams_through_regions(in_process_server, models):
    server = in_process_server(models, threads=4)
    frames = video(8, (240, 320, 3))
    frames[3][0, 0, 0] = 1
    before = regions()

    async def main() -> tuple[list, list, list, client_shm.Lender]:
        async with (
            AsyncModelClient("where", server.target) as fast,
            AsyncModelClient("where", server.target, shared_memory=False) as slow,
        ):

            async def camera():  # an async source, read on the event loop
                for frame in frames:
                    yield frame

            args = {"refuse": 1}
            got = [r async for r in fast.run_image_stream(camera(), args, errors="yield")]
            expected = [r async for r in slow.run_image_stream(frames, args, errors="yield")]
            stream = fast.run_image_stream(frames, {"sleep": 0.05}, window=4)
            async with contextlib.aclosing(stream):  # type: ignore[type-var]
                async for _ in stream:
                    break  # the caller leaves, with frames in flight
            lender = stream_channel(fast).lender
            assert lender._doomed
            again = [r async for r in fast.run_image_stream(frames[4:])]
            assert lender._doomed == []
            assert all_back(lender)
            return got, expected, again, lender

    got, expected, again, lender = asyncio.run(main())
    assert answers(got) == answers(expected)
    assert backings(got) == ["mmap"] * 3 + [None] + ["mmap"] * 4
    assert backings(expected) == ["bytes"] * 3 + [None] + ["bytes"] * 4
    assert backings(again) == ["mmap"] * 4
    assert lender.closed
    assert none_left(before)


# -- turned off ------------------------------------------------------------------------------------


def test_the_client_option_turns_it_off(in_process_server, models):
    server = in_process_server(models)
    before = regions()
    with ModelClient("where", server.target, shared_memory=False) as client:
        assert client.run_image(images()[0])["backing"] == "bytes"
    assert regions() - before == set()


def test_the_server_flag_turns_it_off(in_process_server, models):
    server = in_process_server(models, shared_memory=False)
    before = regions()
    with ModelClient("where", server.target) as client:
        for _ in range(3):
            assert client.run_image(images()[0])["backing"] == "bytes"
        (channel,) = [w.channel for w in client._pool.core.workers.workers()]
        assert channel.lender.refused  # asked once, then bytes without asking
    assert none_left(before)
    with grpc.insecure_channel(server.target) as channel, Lent(1 << 20) as region:
        error = attach_error(channel, region.name, region.size, region.proof)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "turned off" in error.details()
        assert reason(error) == "SHARED_MEMORY_UNAVAILABLE"


# -- safety, over raw gRPC ------------------------------------------------------------------------


class Lent:
    """A region made by hand, as a client would, removed on exit."""

    def __init__(self, size: int, *, mode: int = 0o600) -> None:
        self.name = f"/tms-test-{secrets.token_hex(8)}"
        self.path = SHM / self.name[1:]
        self.size = size
        self.proof = secrets.token_bytes(32)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
        os.ftruncate(fd, size)
        os.pwrite(fd, self.proof, 0)
        self.fd = fd

    def __enter__(self) -> Lent:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()


def stub(channel: grpc.Channel) -> model_service_pb2_grpc.ModelServiceStub:
    return model_service_pb2_grpc.ModelServiceStub(channel)


def attach_error(channel: grpc.Channel, name: str, size: int, proof: bytes) -> grpc.RpcError:
    request = pb.AttachSharedMemoryRequest(name=name, size=size, proof=proof)
    with pytest.raises(grpc.RpcError) as caught:
        stub(channel).AttachSharedMemory(request, timeout=10)
    return caught.value


def reason(error: grpc.RpcError) -> str | None:
    return from_rpc_error(error).reason


def test_attach_refuses_what_it_must(in_process_server, models):
    server = in_process_server(models, max_shared_memory_mb=4)
    with grpc.insecure_channel(server.target) as channel, Lent(1 << 20) as region:
        cases = {
            "bad name": (("tms-no-slash", region.size, region.proof), "INVALID_REQUEST"),
            "dotdot": (("/..", region.size, region.proof), "INVALID_REQUEST"),
            "nested": (("/a/b", region.size, region.proof), "INVALID_REQUEST"),
            # Another program's file (a worker run as root would read root's): not a region.
            "not a TMS name": (
                ("/victim_app_0123456789", region.size, region.proof),
                "INVALID_REQUEST",
            ),
            "guessable": (("/tms-short", region.size, region.proof), "INVALID_REQUEST"),
            "short proof": ((region.name, region.size, b"x"), "INVALID_REQUEST"),
            "wrong proof": ((region.name, region.size, secrets.token_bytes(32)), "UNAVAILABLE"),
            "wrong size": ((region.name, region.size * 2, region.proof), "UNAVAILABLE"),
            "too large": ((region.name, 8 << 20, region.proof), "UNAVAILABLE"),
            "missing": (("/tms-test-" + secrets.token_hex(8), region.size, region.proof), "no"),
        }
        for case, ((name, size, proof), expected) in cases.items():
            error = attach_error(channel, name, size, proof)
            if expected == "INVALID_REQUEST":
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, case
            else:
                assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, case
                assert reason(error) == "SHARED_MEMORY_UNAVAILABLE", case
        assert (
            "another host"
            in attach_error(channel, "/tms-test-gone-0123456789", 1 << 20, region.proof).details()
        )
        assert region.path.exists()  # refused regions keep their names: the caller owns them
        # A symbolic link is not followed, whatever it points to.
        link = SHM / f"tms-test-{secrets.token_hex(8)}"
        link.symlink_to(region.path)
        try:
            error = attach_error(channel, "/" + link.name, region.size, region.proof)
            assert reason(error) == "SHARED_MEMORY_UNAVAILABLE"
            assert "symbolic link" in error.details()
        finally:
            link.unlink()
        # Nor a second name of a file (another file of the worker's user, linked in).
        hard = SHM / f"tms-test-{secrets.token_hex(8)}"
        os.link(region.path, hard)
        try:
            error = attach_error(channel, "/" + hard.name, region.size, region.proof)
            assert "not a regular file of one name" in error.details()
        finally:
            hard.unlink()
        # Nor is anything but a regular file.
        fifo = SHM / f"tms-test-{secrets.token_hex(8)}"
        os.mkfifo(fifo, 0o600)
        try:
            error = attach_error(channel, "/" + fifo.name, region.size, region.proof)
            assert "not a regular file" in error.details()
        finally:
            fifo.unlink()


def test_a_worker_attaches_at_most_max_regions(in_process_server, models):
    server = in_process_server(models)
    most = server_shm.MAX_REGIONS
    with grpc.insecure_channel(server.target) as channel, contextlib.ExitStack() as stack:
        lent = [stack.enter_context(Lent(1 << 16)) for _ in range(most + 1)]
        for region in lent[:most]:
            request = pb.AttachSharedMemoryRequest(
                name=region.name, size=region.size, proof=region.proof
            )
            stub(channel).AttachSharedMemory(request, timeout=10)
        error = attach_error(channel, lent[most].name, lent[most].size, lent[most].proof)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"has {most} regions attached" in error.details()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a region to another user")
def test_a_region_of_another_user_is_refused(in_process_server, models):
    server = in_process_server(models)
    nobody = pwd.getpwnam("nobody").pw_uid
    with grpc.insecure_channel(server.target) as channel, Lent(1 << 20) as region:
        os.chown(region.path, nobody, -1)
        error = attach_error(channel, region.name, region.size, region.proof)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason(error) == "SHARED_MEMORY_UNAVAILABLE"
        assert "another user" in error.details()
        assert region.path.exists()


def run_image_request(where: image_pb2.SharedMemory, image: np.ndarray, data: bytes = b"") -> bytes:
    parts = encode_parts(image)
    meta = image_pb2.Image()
    meta.CopyFrom(parts.meta)
    meta.shared_memory.CopyFrom(where)
    head = pb.RunImageRequest(model="where")
    return join_images(head, IMAGE_FIELD, [type(parts)(meta, data)])


def raw_call(channel: grpc.Channel, method: str, request: bytes) -> bytes:
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        f"/tms.v1.ModelService/{method}"
    )
    return call(request, timeout=10)


def test_references_are_checked(in_process_server, models):
    server = in_process_server(models)
    image = np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)
    before = regions()
    with grpc.insecure_channel(server.target) as channel, Lent(1 << 16) as region:
        attached = stub(channel).AttachSharedMemory(
            pb.AttachSharedMemoryRequest(name=region.name, size=region.size, proof=region.proof)
        )
        assert not region.path.exists()  # attached: the name is gone, the memory is not
        os.pwrite(region.fd, image.tobytes(), 128)
        ok = image_pb2.SharedMemory(region=attached.region, offset=128, size=image.nbytes)
        reply = pb.RunImageResponse.FromString(
            raw_call(channel, "RunImage", run_image_request(ok, image))
        )
        assert '"backing":"mmap"' in reply.result_json

        both = run_image_request(ok, image, data=image.tobytes())  # which would it be?
        with pytest.raises(grpc.RpcError) as caught:
            raw_call(channel, "RunImage", both)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "data or shared_memory, not both" in caught.value.details()

        past = image_pb2.SharedMemory(region=attached.region, offset=region.size - 10, size=4096)
        with pytest.raises(grpc.RpcError) as caught:
            raw_call(channel, "RunImage", run_image_request(past, image))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason(caught.value) == "INVALID_IMAGE"
        assert "image.shared_memory" in caught.value.details()

        unknown = image_pb2.SharedMemory(region="no-such-region", offset=0, size=image.nbytes)
        with pytest.raises(grpc.RpcError) as caught:
            raw_call(channel, "RunImage", run_image_request(unknown, image))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason(caught.value) == "SHARED_MEMORY_NOT_ATTACHED"

        # Outputs by reference: written into the span offered, answered as references.
        head = pb.RunImageToImageRequest(model="flip")
        head.output_shared_memory.region = attached.region
        head.output_shared_memory.offset = 8192
        head.output_shared_memory.size = region.size - 8192
        parts = encode_parts(image)
        request = join_images(head, IMAGE_FIELD, [parts])
        reply = pb.RunImageToImageResponse.FromString(raw_call(channel, "RunImageToImage", request))
        first, second = reply.images
        assert first.data == b""
        assert first.shared_memory.region == attached.region
        assert first.shared_memory.offset == 8192
        assert first.shared_memory.size == image.nbytes
        written = os.pread(region.fd, image.nbytes, 8192)
        assert written == image[::-1].tobytes()
        assert second.shared_memory.offset == 8192 + image.nbytes
        # A span too small for the outputs: they come back as bytes.
        head.output_shared_memory.size = 10
        request = join_images(head, IMAGE_FIELD, [parts])
        reply = pb.RunImageToImageResponse.FromString(raw_call(channel, "RunImageToImage", request))
        assert [i.data for i in reply.images] == [image[::-1].tobytes(), image.tobytes()]
        assert not reply.images[0].HasField("shared_memory")

        stub(channel).DetachSharedMemory(pb.DetachSharedMemoryRequest(region=attached.region))
        with pytest.raises(grpc.RpcError) as caught:
            raw_call(channel, "RunImage", run_image_request(ok, image))
        assert reason(caught.value) == "SHARED_MEMORY_NOT_ATTACHED"
        stub(channel).DetachSharedMemory(pb.DetachSharedMemoryRequest(region=attached.region))
    assert none_left(before)


def test_an_older_server_gets_bytes(in_process_server, models, monkeypatch):
    """A worker that does not know AttachSharedMemory (UNIMPLEMENTED) gets bytes."""

    def unimplemented(self, request, context):
        raise Unimplemented("no such method")

    unimplemented.quick = True
    monkeypatch.setattr(ModelServicer, "AttachSharedMemory", unimplemented)
    server = in_process_server(models)
    before = regions()
    with ModelClient("where", server.target) as client:
        assert client.run_image(images()[0])["backing"] == "bytes"
        assert client.run_image(images()[0])["backing"] == "bytes"
    assert none_left(before)


def test_a_region_the_worker_dropped_is_replaced_transparently(
    in_process_server, models, monkeypatch
):
    """Beyond --max-shared-memory-mb a worker drops the least recently used region, once
    idle; the client it belonged to gets its call answered (as bytes), then attaches a new
    region."""
    monkeypatch.setattr(server_shm, "IDLE_SECONDS", 0.0)  # every region is idle at once
    server = in_process_server(models, max_shared_memory_mb=1)
    image = images()[1]  # 512 x 512 gray: fits a region of 1 MiB
    before = regions()
    with (
        ModelClient("where", server.target) as first,
        ModelClient("where", server.target) as second,
    ):
        assert first.run_image(image)["backing"] == "mmap"
        assert second.run_image(image)["backing"] == "mmap"  # the first's region is dropped
        again = first.run_image(image)
        assert again["backing"] == "bytes"  # SHARED_MEMORY_NOT_ATTACHED, sent again as bytes
        assert again["sum"] == float(image.sum())
        assert first.run_image(image)["backing"] == "mmap"  # a new region
    assert none_left(before)


def test_a_region_in_use_is_not_dropped_for_another(in_process_server, models, monkeypatch):
    """Beyond --max-shared-memory-mb a worker drops only a region unused for a while: a
    stream's, in use, stays (else its next frame would fail), and the caller that finds no
    room sends bytes, asking again only once the worker's RetryInfo has passed."""
    server = in_process_server(models, max_shared_memory_mb=1)
    image = images()[1]  # 512 x 512 gray: fits a region of 1 MiB
    before = regions()
    with (
        ModelClient("where", server.target) as first,
        ModelClient("where", server.target) as second,
    ):
        got = stream_beside_a_call(first, second, image, "bytes")  # no room: refused
        assert [r.error for r in got] == [None] * 4
        assert backings(got) == ["mmap"] * 4
        lender = stream_channel(second).lender
        assert not lender.refused
        assert lender.full_until > time.monotonic() + server_shm.IDLE_SECONDS - 5
        assert second.run_image(image)["backing"] == "bytes"  # without asking meanwhile
        # Once the first's region is idle, and the wait over, it makes room.
        monkeypatch.setattr(server_shm, "IDLE_SECONDS", 0.0)
        lender.full_until = 0.0
        assert second.run_image(image)["backing"] == "mmap"
        assert first.run_image(image)["sum"] == float(image.sum())  # as bytes, then a region
    assert none_left(before)


# -- nothing left behind ------------------------------------------------------------------------

CLIENT = """
import sys, time
import numpy as np
from tms_client import ModelClient

image = np.zeros((1080, 1920, 3), np.uint8)
with ModelClient("where", sys.argv[1]) as client:
    print(client.run_image(image)["backing"], flush=True)
    while True:
        client.run_image(image)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("abandoned", [0, 4], ids=["first-attach", "detaches-pending"])
@pytest.mark.parametrize("kind", ["thread", "asyncio"])
def test_a_call_through_shared_memory_keeps_to_its_timeout(server_process, models, abandoned, kind):
    # Attaching a region, detaching those of calls abandoned earlier and falling back to
    # bytes all come out of the call's own timeout: a stalled worker (stopped here; frozen
    # or wedged in real life) costs a caller its timeout, no more.
    server = server_process(models, workers=1, args=("--worker-timeout-seconds", "600"))
    image = np.zeros((64, 64, 3), np.uint8)
    options = {"timeout": 2.0, "retry": RetryPolicy.never()}

    async def from_asyncio() -> float:
        async with AsyncModelClient("where", server.target, **options) as client:
            (worker,) = await client.workers()
            calls = [client.run_image(image, {"sleep": 3}) for _ in range(abandoned)]
            for outcome in await asyncio.gather(*calls, return_exceptions=True):
                assert isinstance(outcome, DeadlineExceededError)
            with stopped(worker.pid):
                began = time.monotonic()
                with pytest.raises(DeadlineExceededError):
                    await client.run_image(image)
                return time.monotonic() - began

    def from_threads() -> float:
        with ModelClient("where", server.target, **options) as client:
            (worker,) = client.workers()
            with ThreadPoolExecutor(4) as pool:  # abandoned at their timeout: regions to detach
                calls = [
                    pool.submit(client.run_image, image, {"sleep": 3}) for _ in range(abandoned)
                ]
                for call in calls:
                    with pytest.raises(DeadlineExceededError):
                        call.result()
            with stopped(worker.pid):
                began = time.monotonic()
                with pytest.raises(DeadlineExceededError):
                    client.run_image(image)
                return time.monotonic() - began

    took = asyncio.run(from_asyncio()) if kind == "asyncio" else from_threads()
    assert took < 3.0  # 2 s and what a busy machine adds; 4 s and more before


def test_a_client_killed_mid_run_leaves_nothing(models):
    server = start_process(models, workers=2)
    before = regions()
    try:
        client = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(CLIENT), server.target],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            assert client.stdout is not None
            assert client.stdout.readline().strip() == "mmap"
            time.sleep(0.5)  # calls back to back
        finally:
            client.send_signal(signal.SIGKILL)
            client.wait(10)
            if client.stdout is not None:
                client.stdout.close()
        assert none_left(before)
    finally:
        server.stop()
    assert none_left(before)


def test_a_server_restart_leaves_nothing(models):
    port = str(free_port())
    image = images()[0]
    before = regions()
    first = start_process(models, workers=2, args=("--port", port))
    try:
        client = ModelClient("where", first.target, refresh_interval=0.2, timeout=30)
        for _ in range(4):
            assert client.run_image(image)["backing"] == "mmap"
    finally:
        first.stop()
    assert none_left(before)
    second = start_process(models, workers=2, args=("--port", port))
    try:
        assert wait_for(lambda: len(client.workers()) == 2, 20)
        results = [client.run_image(image) for _ in range(8)]
        assert {r["sum"] for r in results} == {float(image.astype("float64").sum())}
        assert results[-1]["backing"] == "mmap"  # attached again to the new workers
        client.close()
        assert none_left(before)
    finally:
        second.stop()
    assert none_left(before)


# -- the client's parts ---------------------------------------------------------------------------


def test_a_region_is_private_to_its_user_and_its_name_unguessable():
    old_umask = os.umask(0)  # even with no umask, nobody else may read or write it
    try:
        regions = [client_shm.Region(1 << 20) for _ in range(2)]
    finally:
        os.umask(old_umask)
    try:
        for region in regions:
            status = (SHM / region.name.lstrip("/")).stat()
            assert stat.S_IMODE(status.st_mode) == 0o600
            assert status.st_uid == os.getuid()
            assert re.fullmatch(r"/tms-[0-9a-f]{32}", region.name)  # 128 random bits
            assert status.st_size == region.size  # never read beyond: the worker checks it
            assert bytes(region.view[:32]) == region.proof  # what the worker must find there
        assert regions[0].name != regions[1].name
        assert regions[0].proof != regions[1].proof
    finally:
        for region in regions:
            region.unlink()
            region.close()


def test_a_lender_reuses_grows_and_bounds_its_regions(monkeypatch):
    made: list[int] = []

    class FakeRegion:
        def __init__(self, size: int) -> None:
            self.size = size
            made.append(size)

        def close(self) -> None:
            pass

    lender = client_shm.Lender(max_bytes=64 << 20)
    first = lender.take(1000)
    assert first == client_shm.MIN_REGION  # make one
    region = FakeRegion(first)
    lender.give_back(region)
    assert lender.take(1000) is region  # reused
    lender.give_back(region)
    assert lender.take(3 << 20) == 4 << 20  # too small: another, a power of two
    assert lender.take(65 << 20) is None  # beyond the largest message: bytes
    taken = [lender.take(100) for _ in range(client_shm.MAX_REGIONS)]
    assert taken[0] is region
    assert taken[-1] is None
    lender.failed(refused=True)
    assert lender.refused
    assert lender.take(10) is None
    assert "refused" in repr(lender)


def test_the_cli_flag_and_variable(monkeypatch):
    def shared_memory(*argv: str) -> bool:
        parsed = tms.main([*argv, "models"], standalone_mode=False)  # parsed, not run
        return Options.from_values(parsed.options).client.shared_memory

    monkeypatch.delenv("TMS_SHARED_MEMORY", raising=False)
    assert shared_memory()
    assert not shared_memory("--no-shared-memory")
    monkeypatch.setenv("TMS_SHARED_MEMORY", "false")
    assert not shared_memory()
    assert shared_memory("--shared-memory")


def test_a_client_inherited_through_fork_answers_rightly(in_process_server, models):
    # The child's regions would be the parent's too (the mapping is shared): each process
    # would write its images into the same memory. The child's copy sends bytes instead,
    # and every answer, the parent's and the child's, is its own image's.
    server = in_process_server(models)
    with ModelClient("where", server.target) as client:
        assert client.run_image(np.full((480, 640, 3), 1, np.uint8))["backing"] == "mmap"

        def wrong_answers(value: int) -> int:
            image = np.full((480, 640, 3), value, np.uint8)
            return sum(client.run_image(image)["sum"] != float(image.sum()) for _ in range(150))

        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report its wrong answers, and leave without cleaning up
            code = 1
            try:
                os.write(write, str(wrong_answers(200)).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        try:
            assert wrong_answers(7) == 0
        finally:
            _, status = os.waitpid(pid, 0)
        with os.fdopen(read) as reply:
            assert reply.read() == "0"
        assert os.waitstatus_to_exitcode(status) == 0
        assert client.run_image(np.full((480, 640, 3), 3, np.uint8))["backing"] == "mmap"


FULL_SHM = """
import numpy as np
from tests.support import start_in_process, write_models
from tests.test_shared_memory import MODELS
from tms_client import ModelClient
import tempfile, pathlib

folder = pathlib.Path(tempfile.mkdtemp())
server = start_in_process(write_models(folder, {"where": MODELS["where"]}))
with ModelClient("where", server.target) as client:
    image = np.full((1080, 1920, 3), 2, np.uint8)  # 6 MB: more than /dev/shm has room for
    print(client.run_image(image)["sum"] == float(image.sum()), flush=True)
server.running.stop(None)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small /dev/shm")
def test_a_full_dev_shm_sends_bytes(tmp_path):
    # Making a region only reserves it in /dev/shm: with no room left, the first write into
    # it killed the client with SIGBUS. Its pages are now taken when it is made, or the call
    # goes as bytes.
    script = tmp_path / "full.py"
    script.write_text(FULL_SHM)
    mount = f"mount -t tmpfs -o size=4m tmpfs /dev/shm && exec {sys.executable} {script}"
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", mount],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])},
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "True"


def test_cancelled_asyncio_calls_give_their_regions_back(in_process_server, models):
    # Calls cancelled at any moment, while their regions were detached among them, kept the
    # regions (or their slots) for good: after a while every call to the worker went as
    # bytes. Each now gives back what it took.
    server = in_process_server(models)
    image = np.full((480, 640, 3), 1, np.uint8)
    rng = random.Random(7)

    async def main() -> list[str]:
        async with AsyncModelClient("where", server.target) as client:
            for _ in range(150):
                tasks = [asyncio.create_task(client.run_image(image)) for _ in range(4)]
                await asyncio.sleep(rng.uniform(0, 0.004))
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            return [(await client.run_image(image))["backing"] for _ in range(4)]

    assert asyncio.run(main()) == ["mmap"] * 4


SWEEP = """
import sys
import numpy as np
from tms_client import ModelClient

with ModelClient("where", sys.argv[1]) as client:
    print(client.run_image(np.zeros((64, 64), np.uint8))["backing"])
"""


def test_a_new_client_removes_the_regions_a_killed_one_left(in_process_server, models, tmp_path):
    # A client killed between making a region and its worker's attaching it left the name in
    # /dev/shm. The next client of the user on the host removes such names once they are a
    # minute old (a live one's lasts until its attach is answered).
    server = in_process_server(models)
    old = SHM / f"tms-{secrets.token_hex(16)}"
    fresh = SHM / f"tms-{secrets.token_hex(16)}"
    other = SHM / "tms-another-programs-file"  # not a name a client makes: never removed
    theirs = SHM / f"tms-{secrets.token_hex(16)}"  # another user's (when run as root)
    for path in (old, fresh, other, theirs):
        path.write_bytes(bytes(4096))
    if os.geteuid() == 0:
        os.chown(theirs, pwd.getpwnam("nobody").pw_uid, -1)
    for path in (old, other, theirs):
        os.utime(path, (time.time() - 120, time.time() - 120))
    try:
        script = tmp_path / "sweep.py"
        script.write_text(SWEEP)
        done = subprocess.run(
            [sys.executable, str(script), server.target],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.stdout.strip() == "mmap", done.stderr[-2000:]
        assert not old.exists()
        assert fresh.exists()
        assert other.exists()
        assert theirs.exists() == (os.geteuid() == 0)  # a user removes only its own
    finally:
        for path in (old, fresh, other, theirs):
            path.unlink(missing_ok=True)
