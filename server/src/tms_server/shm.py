"""Shared-memory regions lent to one worker by callers on the same host (the fast path).

A caller on the same host creates a POSIX shared-memory region (mode 0600, an unguessable
name), writes a random proof at its start and asks the worker to attach it
(``AttachSharedMemory``). The worker opens it through ``/dev/shm`` without following links,
checks that it is a regular file of the caller's user of exactly the size claimed (within
``--max-shared-memory-mb``) whose first bytes are the proof, maps it, and removes its name:
from then on only the two processes hold it, and it vanishes with the last of them, however
they end. Images then travel as ``Image.shared_memory`` references (region, offset, size),
which ``Regions.view`` turns into read-only views of the mapping, bounds-checked.

The proof is what shows the caller shares the host: a region of the same name on another
host has other bytes (or none). Requiring the worker's own user stops a worker run as root
from reading another user's region, and limits what a hostile caller can do to what that
user could do to the worker anyway (shrinking the region under it would kill it by SIGBUS).
Requiring a TMS region's name ("/tms-..."), and a file of one name, keeps a worker from
opening any other file of its user's in ``/dev/shm`` (another program's of root's, whose
first bytes a caller could guess, for a worker run as root).

Beyond the limits a worker drops the least recently used region to attach another, but
only one unused for ``IDLE_SECONDS`` (left by a caller that died, say): a region used more
recently may be a stream's, whose next frame would fail for want of it. With none idle the
new region is refused (RESOURCE_EXHAUSTED, RetryInfo) and its caller sends bytes meanwhile.
Detaching, or dropping a region, only forgets it: the views calls still hold keep its
mapping alive until they are released, so no view ever outlives its memory.
"""

from __future__ import annotations

import collections
import errno
import hmac
import mmap
import os
import re
import secrets
import stat
import threading
import time
from dataclasses import dataclass, field

from tms.v1 import image_pb2
from tms_server.errors import FailedPrecondition, InvalidArgument, Reason, ResourceExhausted

__all__ = ["IDLE_SECONDS", "MAX_REGIONS", "NAME", "SHM_DIR", "Regions"]

#: Where POSIX shared memory lives on Linux (shm_open's files).
SHM_DIR = "/dev/shm"  # noqa: S108 - the shm_open namespace, not a temporary file
#: What a region's name may be: "/tms-", then 16 to 200 of [A-Za-z0-9_.-]. Only regions so
#: named are attached: a worker run as root never opens another program's files.
NAME = re.compile(r"/tms-[A-Za-z0-9_.-]{16,200}")
#: Regions one worker keeps attached at most; beyond it the least recently used is dropped
#: (once idle).
MAX_REGIONS = 64
#: A region unused this long may be dropped to make room for another.
IDLE_SECONDS = 10.0
_MIN_PROOF, _MAX_PROOF = 16, 64


def _unavailable(message: str) -> FailedPrecondition:
    return FailedPrecondition(message, reason=Reason.SHARED_MEMORY_UNAVAILABLE)


@dataclass
class _Region:
    memory: mmap.mmap
    size: int
    view: memoryview  # read-write, of the whole mapping
    used: float = field(default_factory=time.monotonic)  # when a call last named it


class Regions:
    """The regions attached to one worker, by id; safe to use from several threads."""

    def __init__(self, *, enabled: bool = True, max_bytes: int = 1 << 30) -> None:
        self.enabled = enabled and os.path.isdir(SHM_DIR)
        self.max_bytes = max_bytes
        self._regions: collections.OrderedDict[str, _Region] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Regions {len(self._regions)} attached, {self._bytes} bytes>"

    def attach(self, name: str, size: int, proof: bytes) -> str:
        """Map the caller's region ``name`` and remove its name; its new id.

        FailedPrecondition (SHARED_MEMORY_UNAVAILABLE) when it cannot: turned off, not on this
        host, another user's, not of ``size`` bytes, or not starting with ``proof``;
        ResourceExhausted while the regions attached fill the limits and none is idle."""
        if not self.enabled:
            raise _unavailable("shared memory is turned off on this server (--shared-memory)")
        if not NAME.fullmatch(name):
            raise InvalidArgument(
                'a region name is "/tms-", then 16 to 200 of A-Z a-z 0-9 _ . -', field="name"
            )
        if not _MIN_PROOF <= len(proof) <= _MAX_PROOF:
            raise InvalidArgument(
                f"proof must be {_MIN_PROOF} to {_MAX_PROOF} bytes, not {len(proof)}",
                field="proof",
            )
        if not len(proof) <= size <= self.max_bytes:
            raise _unavailable(
                f"a region of {size} bytes is outside what this worker attaches "
                f"({len(proof)} to {self.max_bytes} bytes, --max-shared-memory-mb)"
            )
        memory = self._open(name, size, proof)
        region = _Region(memory, size, memoryview(memory))
        key = secrets.token_urlsafe(12)
        with self._lock:
            dropped, fits = self._room(size)
            if fits:
                self._regions[key] = region
                self._bytes += size
            else:
                dropped.append(region)  # refused: unmapped with those dropped
        for old in dropped:
            _release(old)
        if not fits:
            raise ResourceExhausted(
                f"this worker has {len(self._regions)} regions attached ({self._bytes} bytes), "
                f"all used in the last {IDLE_SECONDS:g}s (--max-shared-memory-mb, at most "
                f"{MAX_REGIONS}): send the bytes, and attach again later",
                retry_after=IDLE_SECONDS,
            )
        return key

    def _open(self, name: str, size: int, proof: bytes) -> mmap.mmap:
        path = SHM_DIR + name
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            raise _unavailable(_cannot_open(name, exc)) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                raise _unavailable(f"region {name} is not a regular file of one name")
            if info.st_uid != os.geteuid():
                raise _unavailable(
                    f"region {name} belongs to another user (uid {info.st_uid}); a worker "
                    "attaches only regions of its own user"
                )
            if info.st_size != size:
                raise _unavailable(f"region {name} has {info.st_size} bytes, not {size}")
            try:
                memory = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            except OSError as exc:
                raise _unavailable(f"cannot map region {name}: {exc.strerror}") from None
        finally:
            os.close(fd)
        if not hmac.compare_digest(memory[: len(proof)], proof):
            memory.close()
            raise _unavailable(f"region {name} does not start with the proof")
        try:
            os.unlink(path)  # the mapping stays; the name goes
        except FileNotFoundError:
            pass  # the caller removed it first
        except OSError as exc:
            memory.close()
            raise _unavailable(f"cannot remove the name of region {name}: {exc.strerror}") from None
        return memory

    def _room(self, size: int) -> tuple[list[_Region], bool]:
        """Drop the least recently used regions, while idle, until one of ``size`` bytes fits
        in the limits; those dropped, and whether it fits."""
        dropped = []
        idle = time.monotonic() - IDLE_SECONDS
        while not self._fits(size) and self._regions:
            oldest = next(iter(self._regions))
            if self._regions[oldest].used > idle:
                break  # the rest were used later still
            region = self._regions.pop(oldest)
            self._bytes -= region.size
            dropped.append(region)
        return dropped, self._fits(size)

    def _fits(self, size: int) -> bool:
        return len(self._regions) < MAX_REGIONS and self._bytes + size <= self.max_bytes

    def detach(self, key: str) -> None:
        """Forget region ``key`` (nothing when it is not attached)."""
        with self._lock:
            region = self._regions.pop(key, None)
            if region is not None:
                self._bytes -= region.size
        if region is not None:
            _release(region)

    def _find(self, where: image_pb2.SharedMemory, field: str) -> memoryview:
        with self._lock:  # sliced under the lock: a detach cannot release it meanwhile
            region = self._regions.get(where.region)
            if region is not None:
                self._regions.move_to_end(where.region)
                region.used = time.monotonic()
                end = where.offset + where.size
                if end <= region.size:
                    return region.view[where.offset : end]
        if region is None:
            raise FailedPrecondition(
                f"{field} names region {where.region!r}, which this worker has not attached "
                "(it may have restarted): attach it again, or send the bytes",
                reason=Reason.SHARED_MEMORY_NOT_ATTACHED,
                field=field,
            )
        raise InvalidArgument(
            f"{field} ends at byte {where.offset + where.size}, past the end of its region "
            f"({region.size} bytes)",
            reason=Reason.INVALID_IMAGE,
            field=field,
        )

    def view(self, where: image_pb2.SharedMemory, field: str) -> memoryview:
        """The bytes ``where`` names, read-only (errors name ``field``)."""
        return self._find(where, field).toreadonly()

    def span(self, where: image_pb2.SharedMemory, field: str) -> memoryview:
        """The bytes ``where`` names, writable (for a call's output images)."""
        return self._find(where, field)


def _release(region: _Region) -> None:
    """Unmap ``region`` once nothing uses it: now, or when the last view of it goes."""
    try:
        region.view.release()
        region.memory.close()
    except BufferError:
        pass  # a call still holds a view: the mapping goes with the last of them


def _cannot_open(name: str, exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return f"no region {name} on this host: the caller runs on another host, or removed it"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"region {name} belongs to another user; a worker attaches only its user's"
    if exc.errno == errno.ELOOP:
        return f"region {name} is a symbolic link"
    return f"cannot open region {name}: {exc.strerror}"
