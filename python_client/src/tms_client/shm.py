"""Images in shared memory, for workers on the same host: the fast path past the transport.

Moving a 1080p frame through gRPC costs several copies and milliseconds; writing it into
memory the worker has mapped costs one copy. So the pool wraps each worker's channel in a
``SharedMemoryChannel`` (``AsyncSharedMemoryChannel`` for asyncio). The first image call to
a worker makes a region in ``/dev/shm`` (mode 0600, an unguessable name), writes a random
proof at its start and asks the worker to attach it (``AttachSharedMemory``); the worker
checks the proof (an address never proves a shared host, reading the region does) and
removes the name, and so does the client. From then on a call's images are written into a
region and the request carries only references (``Image.shared_memory``), and an
image-to-image call's outputs come back the same way (``output_shared_memory``).

Regions are reused across calls: each worker gets up to ``MAX_REGIONS`` (one per call in
flight to it), grown when an image outgrows them. Whatever goes wrong falls back to bytes,
transparently: a worker that refuses the region (another host, another user, shared memory
turned off, an older server) gets bytes from then on; a worker that restarted and no longer
knows the region (SHARED_MEMORY_NOT_ATTACHED) gets the call again as bytes, and a new region
with the next one. ``close`` detaches and unmaps the regions. Only Linux has ``/dev/shm``;
elsewhere every call sends bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import mmap
import os
import secrets
import sys
import threading
from collections.abc import Iterable
from typing import Any

import grpc

from tms.v1 import image_pb2, model_service_pb2
from tms_client.exceptions import CallError
from tms_client.protocol.methods import OUTPUT_FIELD, method_path
from tms_client.protocol.wire import ImageMessage, ImageParts, join_images, split_images
from tms_client.transport import (
    AsyncChannel,
    AsyncStream,
    Channel,
    Metadata,
    Reply,
    Request,
    Stream,
)

__all__ = [
    "MAX_REGIONS",
    "SHM_DIR",
    "AsyncSharedMemoryChannel",
    "Lender",
    "Region",
    "SharedMemoryChannel",
    "available",
]

log = logging.getLogger("tms_client")
pb = model_service_pb2

#: Where POSIX shared memory lives on Linux.
SHM_DIR = "/dev/shm"  # noqa: S108 - the shm_open namespace, not a temporary file
#: Regions lent to one worker at most: calls in flight to it that use shared memory at once.
MAX_REGIONS = 8
#: The smallest region made; larger ones are a power of two.
MIN_REGION = 1 << 20
ATTACH_TIMEOUT = 5.0
DETACH_TIMEOUT = 1.0
_ALIGN = 64  # each image starts at a multiple of it
_ATTACH = method_path("AttachSharedMemory")
_DETACH = method_path("DetachSharedMemory")
#: Why a worker cannot take regions at all: it will get bytes from then on.
_REFUSED = "SHARED_MEMORY_UNAVAILABLE"
_NOT_ATTACHED = "SHARED_MEMORY_NOT_ATTACHED"
#: Codes of calls the worker may not have finished: it may still read or write their region,
#: so the region is detached and never used again.
_ABANDONED = frozenset(
    {
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNKNOWN,
    }
)
#: The reply that answers a request with output_shared_memory, by request type.
_REPLIES: dict[str, type[Any]] = {
    pb.RunImageToImageRequest.DESCRIPTOR.full_name: pb.RunImageToImageResponse,
}


def available() -> bool:
    """Whether this host has POSIX shared memory as the fast path uses it (Linux)."""
    return sys.platform == "linux" and os.path.isdir(SHM_DIR)


def _aligned(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN


class Region:
    """One region this client made, mapped here, and (once ``id`` is set) by one worker."""

    def __init__(self, size: int) -> None:
        self.name = f"/tms-{secrets.token_hex(16)}"
        self.size = size
        self.proof = secrets.token_bytes(32)
        self.id = ""  # the worker's id for it, once attached
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(SHM_DIR + self.name, flags, 0o600)
        try:
            os.ftruncate(fd, size)
            self.memory = mmap.mmap(fd, size)
        except BaseException:
            self.unlink()
            raise
        finally:
            os.close(fd)
        self.memory[: len(self.proof)] = self.proof
        self.view = memoryview(self.memory)

    def __repr__(self) -> str:
        return f"<Region {self.id or 'unattached'} {self.size} bytes>"

    def attach_request(self) -> bytes:
        request = pb.AttachSharedMemoryRequest(name=self.name, size=self.size, proof=self.proof)
        return request.SerializeToString()

    def unlink(self) -> None:
        """Remove the name (the worker removes it too: whoever comes second finds none)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(SHM_DIR + self.name)

    def close(self) -> None:
        """Unmap it here."""
        try:
            self.view.release()
            self.memory.close()
        except BufferError:  # a caller still holds a view: unmapped when it goes
            pass


class Lender:
    """The regions lent to one worker, and whether it takes them; safe to share between
    threads. It makes regions, and writes and reads them, but calls nobody: the channels do.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.refused = False  # the worker takes no regions: send bytes
        self.closed = False
        self.output_hint = 0  # bytes of the largest outputs seen: room to leave for them
        self._free: list[Region] = []
        self._count = 0  # regions made (or being made) and not given up
        self._doomed: list[Region] = []  # attached regions to detach
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = "refused" if self.refused else f"{self._count} regions, {len(self._free)} free"
        return f"<Lender {state}>"

    def need(self, message: ImageMessage) -> int:
        """Bytes a region needs to hold ``message``'s images (and room for its outputs)."""
        total = sum(_aligned(memoryview(image.data).nbytes) for image in message.images)
        if message.head.DESCRIPTOR.full_name in _REPLIES:
            total += max(total, self.output_hint)
        return total

    def take(self, need: int) -> Region | int | None:
        """A free region of at least ``need`` bytes; or the size of a region to make and
        attach (``failed`` if that fails); or None: send bytes."""
        with self._lock:
            if self.refused or self.closed or need > self.max_bytes:
                return None
            fitting = [r for r in self._free if r.size >= need]
            if fitting:
                region = min(fitting, key=lambda r: r.size)
                self._free.remove(region)
                return region
            if self._count >= MAX_REGIONS:
                if not self._free:
                    return None
                smallest = min(self._free, key=lambda r: r.size)  # outgrown: replace it
                self._free.remove(smallest)
                self._doomed.append(smallest)
                self._count -= 1
            self._count += 1
            return min(max(MIN_REGION, 1 << (need - 1).bit_length()), self.max_bytes)

    def failed(self, *, refused: bool) -> None:
        """Making or attaching a region failed; ``refused``: the worker will take none."""
        with self._lock:
            self._count -= 1
            self.refused = self.refused or refused

    def give_back(self, region: Region) -> None:
        with self._lock:
            if not self.closed:
                self._free.append(region)
                return
        region.close()

    def retire(self, region: Region) -> None:
        """Give up ``region``, which the worker may still be using (a call it may not have
        finished): detached with the next call (or by ``close``), never written again."""
        with self._lock:
            self._count -= 1
            if not self.closed:
                self._doomed.append(region)
                return
        region.close()

    def discard(self, region: Region) -> None:
        """Give up ``region``: the worker no longer knows it."""
        with self._lock:
            self._count -= 1
        region.close()

    def doomed(self) -> list[Region]:
        """Attached regions given up: to detach, then close."""
        with self._lock:
            doomed, self._doomed = self._doomed, []
        return doomed

    def close(self) -> list[Region]:
        """Stop lending; the free regions (to detach, then close). Busy ones are closed
        when their calls give them back."""
        with self._lock:
            self.closed = True
            regions = self._free + self._doomed
            self._free, self._doomed = [], []
        return regions

    def write(self, region: Region, message: ImageMessage) -> bytes:
        """The request ``message`` with its images written into ``region`` and referenced
        (and the rest of the region offered for the outputs, if the call has any)."""
        view, offset, parts = region.view, 0, []
        for image in message.images:
            data = memoryview(image.data).cast("B")
            size = data.nbytes
            view[offset : offset + size] = data
            meta = image_pb2.Image()
            meta.CopyFrom(image.meta)
            meta.shared_memory.region = region.id
            meta.shared_memory.offset = offset
            meta.shared_memory.size = size
            parts.append(ImageParts(meta, b""))
            offset = _aligned(offset + size)
        head = message.head
        if head.DESCRIPTOR.full_name in _REPLIES and offset < region.size:
            head = type(head)()
            head.CopyFrom(message.head)
            span = head.output_shared_memory  # type: ignore[attr-defined]
            span.region, span.offset, span.size = region.id, offset, region.size - offset
        return join_images(head, message.field, parts)

    def read(self, message: ImageMessage, reply: bytes, region: Region) -> bytes:
        """``reply`` with the output images it left in ``region`` copied in as bytes."""
        reply_class = _REPLIES.get(message.head.DESCRIPTOR.full_name)
        if reply_class is None:
            return reply
        response, outputs = split_images(reply_class, reply, OUTPUT_FIELD)
        total = sum(memoryview(o.data).nbytes or o.meta.shared_memory.size for o in outputs)
        self.output_hint = max(self.output_hint, total)
        if not any(o.meta.HasField("shared_memory") for o in outputs):
            return reply
        parts = []
        for output in outputs:
            if output.meta.HasField("shared_memory"):
                where = output.meta.shared_memory
                end = where.offset + where.size
                if where.region != region.id or end > region.size:
                    raise CallError(
                        grpc.StatusCode.INTERNAL,
                        f"the worker answered with an output at bytes {where.offset}-{end} of "
                        f"region {where.region!r}, outside the span it was given",
                    )
                meta = image_pb2.Image()
                meta.CopyFrom(output.meta)
                meta.ClearField("shared_memory")
                parts.append(ImageParts(meta, region.view[where.offset : end]))
            else:
                parts.append(output)
        return join_images(response, OUTPUT_FIELD, parts)


def _refuses(error: CallError) -> bool:
    """Whether an Attach failed because the worker will take no region (not just now)."""
    return error.reason == _REFUSED or error.code == grpc.StatusCode.UNIMPLEMENTED


def _made(size: int) -> Region | None:
    try:
        return Region(size)
    except OSError as exc:
        log.warning("cannot make a shared-memory region of %d bytes: %s", size, exc)
        return None


class SharedMemoryChannel:
    """A channel to one worker that sends images through shared memory when it can (see
    the module docstring); every other call goes through as it is."""

    def __init__(self, inner: Channel, *, max_bytes: int, metadata: Metadata = ()) -> None:
        self.inner = inner
        self.lender = Lender(max_bytes)
        self._metadata = metadata  # the client's (its token), for Attach and Detach

    def __repr__(self) -> str:
        return f"<SharedMemoryChannel {self.lender!r}>"

    def unary(self, request: Request) -> Reply:
        message = request.data
        if not isinstance(message, ImageMessage):
            return self.inner.unary(request)
        region = self._borrow(self.lender.need(message), request.timeout)
        if region is None:
            return self.inner.unary(request)
        try:
            data = self.lender.write(region, message)
            try:
                reply = self.inner.unary(dataclasses.replace(request, data=data))
            except CallError as error:
                if error.reason != _NOT_ATTACHED:
                    if error.code in _ABANDONED:
                        self.lender.retire(region)  # the worker may still use it
                        region = None
                    raise
                self.lender.discard(region)  # the worker restarted: bytes now, a region next
                region = None
                return self.inner.unary(request)
            except BaseException:
                self.lender.retire(region)
                region = None
                raise
            return Reply(self.lender.read(message, reply.data, region), reply.trailers)
        finally:
            if region is not None:
                self.lender.give_back(region)

    def _borrow(self, need: int, timeout: float | None) -> Region | None:
        taken = self.lender.take(need)
        self._detach(self.lender.doomed())
        if not isinstance(taken, int):
            return taken
        region = _made(taken)
        if region is None:
            self.lender.failed(refused=True)
            return None
        try:
            attach = Request(_ATTACH, region.attach_request(), _within(timeout), self._metadata)
            reply = self.inner.unary(attach)
        except CallError as error:
            region.close()
            self.lender.failed(refused=_refuses(error))
            return None
        except BaseException:
            region.close()
            self.lender.failed(refused=False)
            raise
        finally:
            region.unlink()
        region.id = pb.AttachSharedMemoryResponse.FromString(reply.data).region
        return region

    def _detach(self, regions: Iterable[Region]) -> None:
        for region in regions:
            detach = pb.DetachSharedMemoryRequest(region=region.id).SerializeToString()
            try:
                self.inner.unary(Request(_DETACH, detach, DETACH_TIMEOUT, self._metadata))
            except CallError as error:  # gone with its worker, or dropped already
                log.debug("detaching %r failed: %s", region, error)
            region.close()

    def stream(self, *args: Any, **kwargs: Any) -> Stream:
        return self.inner.stream(*args, **kwargs)  # streams send bytes

    def close(self) -> None:
        self._detach(self.lender.close())
        self.inner.close()


class AsyncSharedMemoryChannel:
    """As ``SharedMemoryChannel``, for asyncio."""

    def __init__(self, inner: AsyncChannel, *, max_bytes: int, metadata: Metadata = ()) -> None:
        self.inner = inner
        self.lender = Lender(max_bytes)
        self._metadata = metadata

    def __repr__(self) -> str:
        return f"<AsyncSharedMemoryChannel {self.lender!r}>"

    async def unary(self, request: Request) -> Reply:
        message = request.data
        if not isinstance(message, ImageMessage):
            return await self.inner.unary(request)
        region = await self._borrow(self.lender.need(message), request.timeout)
        if region is None:
            return await self.inner.unary(request)
        try:
            data = self.lender.write(region, message)
            try:
                reply = await self.inner.unary(dataclasses.replace(request, data=data))
            except CallError as error:
                if error.reason != _NOT_ATTACHED:
                    if error.code in _ABANDONED:
                        self.lender.retire(region)  # the worker may still use it
                        region = None
                    raise
                self.lender.discard(region)
                region = None
                return await self.inner.unary(request)
            except BaseException:
                self.lender.retire(region)
                region = None
                raise
            return Reply(self.lender.read(message, reply.data, region), reply.trailers)
        finally:
            if region is not None:
                self.lender.give_back(region)

    async def _borrow(self, need: int, timeout: float | None) -> Region | None:
        taken = self.lender.take(need)
        await self._detach(self.lender.doomed())
        if not isinstance(taken, int):
            return taken
        region = _made(taken)
        if region is None:
            self.lender.failed(refused=True)
            return None
        try:
            attach = Request(_ATTACH, region.attach_request(), _within(timeout), self._metadata)
            reply = await self.inner.unary(attach)
        except CallError as error:
            region.close()
            self.lender.failed(refused=_refuses(error))
            return None
        except BaseException:  # cancelled: give the slot up
            region.close()
            self.lender.failed(refused=False)
            raise
        finally:
            region.unlink()
        region.id = pb.AttachSharedMemoryResponse.FromString(reply.data).region
        return region

    async def _detach(self, regions: Iterable[Region]) -> None:
        for region in regions:
            detach = pb.DetachSharedMemoryRequest(region=region.id).SerializeToString()
            try:
                await self.inner.unary(Request(_DETACH, detach, DETACH_TIMEOUT, self._metadata))
            except CallError as error:
                log.debug("detaching %r failed: %s", region, error)
            region.close()

    def stream(self, *args: Any, **kwargs: Any) -> AsyncStream:
        return self.inner.stream(*args, **kwargs)  # streams send bytes

    async def close(self) -> None:
        await self._detach(self.lender.close())
        await self.inner.close()


def _within(timeout: float | None) -> float:
    return ATTACH_TIMEOUT if timeout is None else min(timeout, ATTACH_TIMEOUT)
