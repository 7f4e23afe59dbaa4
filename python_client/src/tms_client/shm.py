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
turned off, an older server) gets bytes from then on; a worker with no room for another
region (RESOURCE_EXHAUSTED: its regions are all in use) gets bytes until its retry delay has
passed; a worker that restarted and no longer knows the region (SHARED_MEMORY_NOT_ATTACHED)
gets the call again as bytes, and a new region with the next one. ``close`` detaches and
unmaps the regions. Only Linux has ``/dev/shm``; elsewhere every call sends bytes.

A stream of frames (RunImageStream) borrows a region for each frame it sends and gives it
back when that frame's answer comes: the worker reads a frame only after answering the one
before, and answers a frame only once its model is done with it (tms_server.streams), so a
stream with ``window`` frames unanswered holds at most ``window`` regions, reused in turn.
Its regions are all of the size its first frame needed; a larger frame, a frame that finds
no free region (more in flight than ``MAX_REGIONS``), or any frame to a worker that refuses
regions goes as bytes. A frame answered SHARED_MEMORY_NOT_ATTACHED (the worker dropped the
region beyond its limits) cannot be sent again in its place, since later frames are on
their way and a tracker must see frames in order: its answer is that error, and the rest of
the stream goes as bytes. When the stream ends with frames unanswered, their regions go
back if the worker is done with the stream (an error status it ended with), and are
given up as for a call (``_ABANDONED``) if it may still run one: cancelled, timed out, or
the caller stopped reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import mmap
import os
import re
import secrets
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Generator, Iterator
from typing import Any, TypeVar

import grpc

from tms.v1 import image_pb2, model_service_pb2
from tms_client.exceptions import CallError, from_status
from tms_client.protocol.methods import OUTPUT_FIELD, method_path
from tms_client.protocol.wire import ImageMessage, ImageParts, join_images, split_images
from tms_client.transport import (
    AsyncChannel,
    AsyncStream,
    Channel,
    Metadata,
    More,
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
R = TypeVar("R")

#: Where POSIX shared memory lives on Linux.
SHM_DIR = "/dev/shm"  # noqa: S108 - the shm_open namespace, not a temporary file
#: Regions lent to one worker at most: calls in flight to it that use shared memory at once.
MAX_REGIONS = 8
#: The smallest region made; larger ones are a power of two.
MIN_REGION = 1 << 20
ATTACH_TIMEOUT = 5.0
DETACH_TIMEOUT = 1.0
_ALIGN = 64  # each image starts at a multiple of it
_NAME_BYTES = 16  # random bytes in a region's name: "/tms-" and their 32 hex digits
_ATTACH = method_path("AttachSharedMemory")
_STREAM = method_path("RunImageStream")
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


#: Every Lender of this process, for fork (see Lender.forked).
_LENDERS: weakref.WeakSet[Lender] = weakref.WeakSet()


def _forked() -> None:
    for lender in list(_LENDERS):
        lender.forked()


os.register_at_fork(after_in_child=_forked)


def available() -> bool:
    """Whether this host has POSIX shared memory as the fast path uses it (Linux)."""
    return sys.platform == "linux" and os.path.isdir(SHM_DIR)


def _aligned(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN


def _region_size(need: int) -> int:
    """The size of a region made for ``need`` bytes: a power of two, at least MIN_REGION."""
    return max(MIN_REGION, 1 << (need - 1).bit_length())


class Region:
    """One region this client made, mapped here, and (once ``id`` is set) by one worker."""

    def __init__(self, size: int) -> None:
        self.name = f"/tms-{secrets.token_hex(_NAME_BYTES)}"
        self.size = size
        self.proof = secrets.token_bytes(32)
        self.id = ""  # the worker's id for it, once attached
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(SHM_DIR + self.name, flags, 0o600)
        try:
            os.ftruncate(fd, size)
            # Its pages now, or ENOSPC: a full /dev/shm would kill this process with SIGBUS
            # at the first write into the mapping (its caller sends bytes instead).
            os.posix_fallocate(fd, 0, size)
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

    def attach(self, timeout: float, metadata: Metadata) -> _Attach:
        """The request asking the worker to attach this region."""
        request = pb.AttachSharedMemoryRequest(name=self.name, size=self.size, proof=self.proof)
        return _Attach(_ATTACH, request.SerializeToString(), timeout, metadata, region=self)

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
        self.full_until = 0.0  # the worker has no room for another region until then (or
        # until this client detaches one)
        self._free: list[Region] = []
        self._count = 0  # regions made (or being made) and not given up
        self._doomed: list[Region] = []  # attached regions to detach
        self._lock = threading.Lock()
        _LENDERS.add(self)

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
            if time.monotonic() < self.full_until:
                return None
            if self._count >= MAX_REGIONS:
                if not self._free:
                    return None
                smallest = min(self._free, key=lambda r: r.size)  # outgrown: replace it
                self._free.remove(smallest)
                self._doomed.append(smallest)
                self._count -= 1
            self._count += 1
            return min(_region_size(need), self.max_bytes)

    def failed(self, *, refused: bool, wait: float | None = None) -> None:
        """Making or attaching a region failed; ``refused``: the worker will take none;
        ``wait``: seconds it has no room for another (its regions all in use)."""
        with self._lock:
            self._count -= 1
            self.refused = self.refused or refused
            if wait is not None:
                self.full_until = time.monotonic() + wait

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
        self.doom([region])

    def discard(self, region: Region) -> None:
        """Give up ``region``: the worker no longer knows it."""
        with self._lock:
            self._count -= 1
        region.close()

    def settle(self, region: Region, error: BaseException) -> bool:
        """``region``'s call failed with ``error``: the region goes back to the free ones,
        is given up if the worker may still use it (a call it may not have finished), or is
        discarded if the worker no longer knows it; True in that last case, when the call
        may go again as bytes."""
        if isinstance(error, CallError) and error.reason == _NOT_ATTACHED:
            self.discard(region)
            return True
        if _finished(error):
            self.give_back(region)
        else:
            self.retire(region)
        return False

    def doom(self, regions: list[Region]) -> None:
        """Put ``regions``, given up already, to be detached with the next call."""
        if not regions:
            return
        with self._lock:
            if not self.closed:
                self._doomed.extend(regions)
                return
        for region in regions:
            region.close()

    def doomed(self) -> list[Region]:
        """Attached regions given up: to detach, then close."""
        with self._lock:
            doomed, self._doomed = self._doomed, []
        return doomed

    def forked(self) -> None:
        """In a child made by fork: the regions are the parent's too (its calls write them
        as well), so this copy of the client sends bytes from now on, and forgets them."""
        self._lock = threading.Lock()  # a thread of the parent may have held it: none here
        self.refused = True
        self._free, self._doomed = [], []

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


def _finished(error: BaseException) -> bool:
    """Whether the worker is done with a call that failed with ``error``: it answered it with
    a status (not one of ``_ABANDONED``), so it reads and writes its region no more."""
    return isinstance(error, CallError) and error.code not in _ABANDONED


def _refuses(error: CallError) -> bool:
    """Whether an Attach failed because the worker will take no region (not just now)."""
    return error.reason == _REFUSED or error.code == grpc.StatusCode.UNIMPLEMENTED


def _full(error: CallError) -> float | None:
    """How long an Attach refused for want of room says to wait before the next (None: it
    was refused for another reason)."""
    if error.code != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    return error.retry_delay or 1.0


#: A region's name exists only until its worker answers the Attach (ATTACH_TIMEOUT at most):
#: a name older than this is a leftover of a client killed in between.
LEFTOVER_SECONDS = 60.0
#: The names ``Region`` makes, as /dev/shm lists them.
_OURS = re.compile(rf"tms-[0-9a-f]{{{2 * _NAME_BYTES}}}")


def sweep() -> list[str]:
    """Remove the region names of this user's that are older than LEFTOVER_SECONDS: left by
    a client killed (SIGKILL) between making a region and its worker's attaching it. The
    names removed."""
    now = time.time()
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(SHM_DIR):
            if not _OURS.fullmatch(entry.name):  # a name this client makes, no other's
                continue
            with contextlib.suppress(OSError):
                info = entry.stat(follow_symlinks=False)
                old = now - info.st_mtime > LEFTOVER_SECONDS
                if old and info.st_uid == os.geteuid() and entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
                    removed.append(entry.name)
    if removed:
        log.info("removed %d shared-memory regions left by killed clients", len(removed))
    return removed


@functools.cache
def _sweep_once() -> None:
    """``sweep``, once a process: its first region made."""
    sweep()


def _made(size: int) -> Region | None:
    _sweep_once()
    try:
        return Region(size)
    except OSError as exc:
        log.warning("cannot make a shared-memory region of %d bytes: %s", size, exc)
        return None


class _Spans:
    """The regions one stream's frames were written into, in the order they were sent, and
    whether the stream still uses shared memory; safe to share between the thread that sends
    the frames and the one that reads the answers. It borrows nothing and calls nobody: the
    channel does. See the module docstring for when a region goes back."""

    def __init__(self, lender: Lender) -> None:
        self.lender = lender
        self.span = 0  # bytes of the stream's regions, set by its first frame
        self.bytes_only = False  # from now on every frame goes as bytes
        self.ended = False
        self._sent: deque[Region | None] = deque()  # one per message sent, not yet answered
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        how = "bytes" if self.bytes_only else f"spans of {self.span} bytes"
        return f"<_Spans {how}, {len(self._sent)} unanswered{' ended' if self.ended else ''}>"

    def size(self, message: bytes | ImageMessage) -> int | None:
        """The size of region to borrow for ``message``; None: send it as bytes."""
        if not isinstance(message, ImageMessage) or self.bytes_only or self.ended:
            return None
        need = self.lender.need(message)
        if not self.span:
            self.span = _region_size(need)
        return self.span if need <= self.span else None

    def send(
        self, message: bytes | ImageMessage, region: Region | None
    ) -> bytes | ImageMessage | None:
        """``message`` as it goes (written into ``region`` if any), counted as unanswered;
        None if the stream has ended meanwhile (it is not sent)."""
        payload: bytes | ImageMessage = message
        if region is not None:
            try:
                assert isinstance(message, ImageMessage)  # only images get a region
                payload = self.lender.write(region, message)
            except BaseException:
                self.lender.give_back(region)
                raise
        with self._lock:
            if not self.ended:
                self._sent.append(region)
                return payload
        if region is not None:
            self.lender.give_back(region)  # never sent
        return None

    def answered(self, reply: bytes) -> None:
        """The oldest frame's answer came: the worker is done with its region."""
        with self._lock:
            region = self._sent.popleft() if self._sent else None
        if region is None:
            return
        failed = pb.RunImageStreamResponse.FromString(reply).error_status
        if failed and from_status(failed).reason == _NOT_ATTACHED:
            log.info("the worker dropped %r: the rest of the stream goes as bytes", region)
            self.bytes_only = True
            self.lender.discard(region)
        else:
            self.lender.give_back(region)

    def end(self, error: BaseException | None) -> None:
        """The stream ended (with ``error``): the regions of frames never answered go back,
        or are given up if the worker may still read them."""
        with self._lock:
            self.ended = True
            left, self._sent = [r for r in self._sent if r is not None], deque()
        done = error is None or _finished(error)
        for region in left:
            if done:
                self.lender.give_back(region)
            else:
                self.lender.retire(region)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Attach(Request):
    """The Attach of ``region``: the asyncio channel lets it end without a caller that was
    cancelled, since only its answer says whether the worker holds the region."""

    region: Region


#: One job of a channel, apart from its I/O: a generator that yields each request to send to
#: the worker and is sent its reply (or has its error thrown in), as tms_client.core's plans.
_Plan = Generator[Request, Reply, R]


class _Lending:
    """What both channels do, as plans; ``SharedMemoryChannel`` sends what they ask for with
    a thread, ``AsyncSharedMemoryChannel`` on the event loop."""

    def __init__(self, inner: Any, *, max_bytes: int, metadata: Metadata = ()) -> None:
        self.inner = inner
        self.lender = Lender(max_bytes)
        self._metadata = metadata  # the client's (its token), for Attach and Detach

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.lender!r}>"

    def _through_regions(self, request: Request) -> bool:
        """Whether ``request`` opens a stream whose frames may go through regions."""
        return request.path == _STREAM and not self.lender.refused and not self.lender.closed

    def _call(self, request: Request, message: ImageMessage) -> _Plan[Reply]:
        deadline = _deadline(request.timeout)  # the call's, for every step it takes
        region = yield from self._borrow(self.lender.need(message), deadline)
        if region is None:
            return (yield _left(request, deadline))
        try:
            data = self.lender.write(region, message)
            try:
                reply = yield _left(request, deadline, data)
            except BaseException as error:
                lost, region = self.lender.settle(region, error), None
                if lost:  # the worker restarted: bytes now, a region next
                    return (yield _left(request, deadline))
                raise
            return Reply(self.lender.read(message, reply.data, region), reply.trailers)
        finally:
            if region is not None:
                self.lender.give_back(region)

    def _borrow(self, need: int, deadline: float | None) -> _Plan[Region | None]:
        """An attached region of at least ``need`` bytes; None: send bytes."""
        # Detach first: a call interrupted meanwhile then holds nothing it took.
        doomed = self.lender.doomed()
        if doomed:
            yield from self._detach(doomed, deadline)
        taken = self.lender.take(need)
        if not isinstance(taken, int):
            return taken
        region = _made(taken)
        if region is None:
            self.lender.failed(refused=True)
            return None
        try:
            reply = yield region.attach(_within(deadline, ATTACH_TIMEOUT), self._metadata)
        except CallError as error:
            region.close()
            self.lender.failed(refused=_refuses(error), wait=_full(error))
            return None
        except asyncio.CancelledError:
            raise  # the Attach goes on (AsyncSharedMemoryChannel._abandoned)
        except BaseException:
            region.close()
            self.lender.failed(refused=False)
            raise
        finally:
            region.unlink()
        region.id = pb.AttachSharedMemoryResponse.FromString(reply.data).region
        return region

    def _detach(self, regions: list[Region], deadline: float | None) -> _Plan[None]:
        """Detach, then close, ``regions``; those left when interrupted go with the next call."""
        try:
            while regions:
                region = regions[0]
                timeout = _within(deadline, DETACH_TIMEOUT)
                if timeout:
                    detach = pb.DetachSharedMemoryRequest(region=region.id).SerializeToString()
                    try:
                        yield Request(_DETACH, detach, timeout, self._metadata)
                        self.lender.full_until = 0.0  # room for another
                    except CallError as error:  # gone with its worker, or dropped already
                        log.debug("detaching %r failed: %s", region, error)
                region.close()
                regions.pop(0)
        finally:
            self.lender.doom(regions)

    def _frame(
        self, spans: _Spans, message: bytes | ImageMessage, timeout: float | None
    ) -> _Plan[bytes | ImageMessage | None]:
        """``message`` as ``spans`` sends it, through a region if it can; None once the
        stream has ended."""
        size = spans.size(message)
        region = None if size is None else (yield from self._borrow(size, _deadline(timeout)))
        return spans.send(message, region)

    def _closing(self) -> _Plan[None]:
        return self._detach(self.lender.close(), _deadline(DETACH_TIMEOUT))  # all in one timeout


class SharedMemoryChannel(_Lending):
    """A channel to one worker that sends images through shared memory when it can (see
    the module docstring); every other call goes through as it is."""

    inner: Channel

    def unary(self, request: Request) -> Reply:
        if not isinstance(request.data, ImageMessage):
            return self.inner.unary(request)
        return self._run(self._call(request, request.data))

    def _run(self, plan: _Plan[R]) -> R:
        """Carry out ``plan``: send each request it yields, and hand it the reply or error."""
        reply: Any = None
        error: BaseException | None = None
        while True:
            try:
                request = plan.send(reply) if error is None else plan.throw(error)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            try:
                reply, error = self.inner.unary(request), None
            except BaseException as exc:
                reply, error = None, exc

    def stream(self, request: Request, more: More = ()) -> Stream:
        if not self._through_regions(request):
            return self.inner.stream(request, more)
        return _FrameStream(self, request, more)

    def _frames(
        self, spans: _Spans, more: More, timeout: float | None
    ) -> Iterator[bytes | ImageMessage]:
        """Each of ``more`` (read by a gRPC thread) as ``spans`` sends it; until the stream ends."""
        for message in more:
            payload = self._run(self._frame(spans, message, timeout))
            if payload is None:
                return
            yield payload

    def close(self) -> None:
        self._run(self._closing())
        self.inner.close()


class AsyncSharedMemoryChannel(_Lending):
    """As ``SharedMemoryChannel``, for asyncio."""

    inner: AsyncChannel

    async def unary(self, request: Request) -> Reply:
        if not isinstance(request.data, ImageMessage):
            return await self.inner.unary(request)
        return await self._run(self._call(request, request.data))

    async def _run(self, plan: _Plan[R]) -> R:
        """As ``SharedMemoryChannel._run``, awaiting each reply."""
        reply: Any = None
        error: BaseException | None = None
        while True:
            try:
                request = plan.send(reply) if error is None else plan.throw(error)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            try:
                if isinstance(request, _Attach):
                    reply = await self._attach(request)
                else:
                    reply = await self.inner.unary(request)
                error = None
            except BaseException as exc:
                reply, error = None, exc

    async def _attach(self, attach: _Attach) -> Reply:
        call = asyncio.ensure_future(self.inner.unary(attach))
        try:
            return await asyncio.shield(call)
        except asyncio.CancelledError:
            # The worker may attach it all the same, and only its answer says under what id:
            # let the Attach end, then give the region up (detached with the next call), or
            # it would hold a place in the worker until idle.
            call.add_done_callback(functools.partial(self._abandoned, attach.region))
            raise

    def _abandoned(self, region: Region, call: asyncio.Future[Reply]) -> None:
        """The Attach of ``region``, whose caller was cancelled, is over."""
        if call.cancelled() or call.exception() is not None:
            region.close()
            self.lender.failed(refused=False)
            return
        region.id = pb.AttachSharedMemoryResponse.FromString(call.result().data).region
        self.lender.retire(region)

    def stream(
        self, request: Request, more: More | AsyncIterable[bytes | ImageMessage] = ()
    ) -> AsyncStream:
        if not self._through_regions(request) or not isinstance(more, AsyncIterable):
            return self.inner.stream(request, more)
        return _AsyncFrameStream(self, request, more)

    async def _frames(
        self, spans: _Spans, more: AsyncIterable[bytes | ImageMessage], timeout: float | None
    ) -> AsyncIterator[bytes | ImageMessage]:
        """As ``SharedMemoryChannel._frames``, read on the event loop."""
        async for message in more:
            payload = await self._run(self._frame(spans, message, timeout))
            if payload is None:
                return
            yield payload

    async def close(self) -> None:
        await self._run(self._closing())
        await self.inner.close()


class _Frames:
    """A RunImageStream whose frames go through ``channel``'s regions (see ``_Spans``);
    opened when it is first read."""

    def __init__(self, channel: Any, request: Request, more: Any) -> None:
        self._channel = channel
        self._request = request
        self._more = more
        self._spans = _Spans(channel.lender)
        self._inner: Any = None

    def _open(self, first: bytes | ImageMessage | None, frames: Any) -> Any:
        """The inner stream, ``first`` its request's frame and ``frames`` the rest."""
        request = self._request
        data = request.data if first is None else first
        self._inner = self._channel.inner.stream(dataclasses.replace(request, data=data), frames)
        return self._inner


class _FrameStream(_Frames):
    _channel: SharedMemoryChannel
    _inner: Stream | None

    def __iter__(self) -> Iterator[bytes]:
        channel, request, spans = self._channel, self._request, self._spans
        error: BaseException | None = None
        try:
            first = channel._run(channel._frame(spans, request.data, request.timeout))
            replies = iter(self._open(first, channel._frames(spans, self._more, request.timeout)))
            try:
                for reply in replies:
                    spans.answered(reply)  # before the caller sees it: room for the next frame
                    yield reply
            finally:
                close = getattr(replies, "close", None)
                if close is not None:
                    close()  # ends the call if the caller stopped reading
        except BaseException as exc:
            error = exc
            raise
        finally:
            spans.end(error)

    def trailers(self) -> Metadata:
        assert self._inner is not None, "read the stream first"
        return self._inner.trailers()


class _AsyncFrameStream(_Frames):
    """As ``_FrameStream``, for asyncio."""

    _channel: AsyncSharedMemoryChannel
    _inner: AsyncStream | None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        channel, request, spans = self._channel, self._request, self._spans
        error: BaseException | None = None
        try:
            first = await channel._run(channel._frame(spans, request.data, request.timeout))
            replies = aiter(self._open(first, channel._frames(spans, self._more, request.timeout)))
            try:
                async for reply in replies:
                    spans.answered(reply)
                    yield reply
            finally:
                close = getattr(replies, "aclose", None)
                if close is not None:
                    await close()
        except BaseException as exc:
            error = exc
            raise
        finally:
            spans.end(error)

    async def trailers(self) -> Metadata:
        assert self._inner is not None, "read the stream first"
        return await self._inner.trailers()


def _deadline(timeout: float | None) -> float | None:
    """When a call of ``timeout`` seconds (None: none) must be over, on the monotonic clock."""
    return None if timeout is None else time.monotonic() + timeout


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _left(request: Request, deadline: float | None, data: Any = None) -> Request:
    """``request`` (with ``data`` instead of its own) given what is left of its timeout: a
    call's attach, detaches and fallback to bytes all come out of the one timeout."""
    data = request.data if data is None else data
    return Request(
        request.path, data, _remaining(deadline), request.metadata, request.wait_for_ready
    )


def _within(deadline: float | None, most: float) -> float:
    """The timeout of an Attach (``most``: ATTACH_TIMEOUT) or a Detach (DETACH_TIMEOUT) within
    a call's ``deadline``; 0: none is left (a Detach is skipped: the worker drops a region it
    is not told to when it needs the room, or when it exits)."""
    remaining = _remaining(deadline)
    return most if remaining is None else min(remaining, most)
