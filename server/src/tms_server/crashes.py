"""Inputs that crash workers: remembered across the server, and refused once they crash two.

A model call whose input crashes its worker (a native library's segfault, say) ends
UNAVAILABLE for its caller, and clients retry UNAVAILABLE on another worker, which the same
input crashes too; a caller looping over a dataset with it would go on killing workers. So:

- while a worker runs a model call (a unary one: streams are left out), it notes the call in
  a slot of its row in shared memory: the model, and a fingerprint of its input (the request,
  or its message and images wherever they are: tms_server.rpc's Method.content), made of the
  method, the length and a strided sample of SAMPLE_BYTES (a few microseconds; a full hash
  would cost a 6 MB request milliseconds on every call);
- when a worker crashes (a crash signal such as SIGSEGV or SIGABRT, or an exit code the worker
  does not use itself: see ``crashed``), the supervisor makes the calls it was running
  *suspects*: their fingerprints go into a table every worker reads;
- a call whose fingerprint matches a suspect gets its input hashed in full (blake2b), noted
  in its slot too. If a worker crashes while calls of one such hash run (and of no other,
  nor a call of a suspect's fingerprint let in before it was one, so not hashed, nor more
  calls than its SLOTS), that input has crashed two workers, and is *poison*: every worker
  refuses it from then on, at once, with INTERNAL (MODEL_FAILED, which clients do not retry)
  and a message saying which workers it crashed.

Only an input whose full hash was running when a worker crashed is refused, so another input
(one pixel apart) never is; a crash while two suspect inputs run makes neither poison. Not
crashes: SIGKILL (the supervisor sends it to a stuck worker, operators and the kernel's OOM
killer send it too: the calls in flight then say nothing of their inputs), stop signals, and
a call past --call-time-limit (its caller is told INTERNAL already, and its worker exits with
its own code).

The supervisor alone writes the tables, under a version number workers read to tell when
their copy is stale. They hold SUSPECTS and POISON entries, the oldest replaced when full; a
reload of a model forgets that model's entries, and a restart of the server all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import logging
import multiprocessing
import signal
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeAlias, TypeVar

import numpy as np

from tms_server.errors import Internal, Reason

__all__ = ["UNWATCHED", "Buffer", "CrashBoard", "CrashGuard", "crashed", "fingerprint"]

log = logging.getLogger("tms_server")
T = TypeVar("T")
#: A request, or a part of its input (an image's bytes in shared memory).
Buffer: TypeAlias = bytes | bytearray | memoryview

#: Model calls one worker notes at once; calls beyond run unnoted (and a crash then makes no
#: input poison).
SLOTS = 64
#: Inputs running when a worker crashed, remembered across the server.
SUSPECTS = 64
#: Inputs that crashed two workers, refused.
POISON = 32
#: Bytes of a request its fingerprint reads (every n-th byte, n its length over this).
SAMPLE_BYTES = 1024
#: How workers end their processes: signals that say a native library crashed.
CRASH_SIGNALS = frozenset(
    {signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGFPE, signal.SIGILL, signal.SIGSYS}
)
_U32 = 0xFFFFFFFF
#: What a call not watched notes (an HTTP call, a stream's): something else may crash it.
UNWATCHED = (0, 0, 0)
_TEXT = 400  # bytes of the exit descriptions an entry keeps
_MAX_SAID = 1024  # poison inputs a worker remembers having logged a refusal of
#: How long a call waits to learn whether the worker that ran its input before crashed.
PENDING_SECONDS = 5.0
_PENDING_POLL = 0.005


def crashed(code: int, own_codes: frozenset[int]) -> bool:
    """Whether a worker that ended with exit ``code`` (negative: killed by that signal)
    crashed: a crash signal, or an exit code other than 0 and the worker's ``own_codes``."""
    if code < 0:
        return -code in CRASH_SIGNALS
    return code != 0 and code not in own_codes


def fingerprint(data: Buffer, seed: int) -> int:
    """A 32-bit fingerprint of ``data`` (``seed``: of a method, or of the parts before): its
    length and every n-th byte, SAMPLE_BYTES of them; a few microseconds whatever its size."""
    if isinstance(data, bytes):
        size = len(data)
        step = size // SAMPLE_BYTES or 1
        sample: Any = data[::step] if step > 1 else data
    else:  # a view of a request's image, or of shared memory: strided by numpy, not item by item
        size = memoryview(data).nbytes
        step = size // SAMPLE_BYTES or 1
        sample = np.frombuffer(data, np.uint8)[::step].copy() if step > 1 else data
    return zlib.crc32(sample, (seed + size) & _U32)


def _full_hash(parts: Sequence[Buffer], seed: int) -> int:
    digest = hashlib.blake2b(digest_size=8, salt=seed.to_bytes(8, "little"))
    for part in parts:
        digest.update(part)
    return int.from_bytes(digest.digest(), "little") or 1  # 0 is "not hashed"


class _Running(ctypes.Structure):
    """A model call a worker runs (one writer: that worker)."""

    _fields_ = [
        ("busy", ctypes.c_bool),
        ("model", ctypes.c_uint32),  # crc32 of the model's name
        ("sample", ctypes.c_uint32),  # fingerprint()
        ("full", ctypes.c_uint64),  # the full hash, or 0 unless it is a suspect's
    ]


class _Suspect(ctypes.Structure):
    _fields_ = [
        ("used", ctypes.c_bool),
        ("model", ctypes.c_uint32),
        ("sample", ctypes.c_uint32),
        ("crash", ctypes.c_char * _TEXT),  # "worker 1: killed by SIGSEGV"
    ]


class _Poison(ctypes.Structure):
    _fields_ = [
        ("used", ctypes.c_bool),
        ("confirmed", ctypes.c_bool),  # the last worker's exit was a crash (else: not known yet)
        ("model", ctypes.c_uint32),
        ("sample", ctypes.c_uint32),
        ("full", ctypes.c_uint64),
        ("workers", ctypes.c_int32),  # it crashed
        ("crashes", ctypes.c_char * _TEXT),  # "worker 1: killed by SIGSEGV; worker 3: ..."
    ]


class _Tables(ctypes.Structure):
    _fields_ = [
        ("version", ctypes.c_uint64),  # odd while the supervisor writes
        ("suspects", _Suspect * SUSPECTS),
        ("next_suspects", ctypes.c_uint32),
        ("poison", _Poison * POISON),
        ("next_poison", ctypes.c_uint32),
    ]


_Row = _Running * SLOTS


def _model_key(model: str) -> int:
    return zlib.crc32(model.encode())


class CrashBoard:
    """The calls running in ``workers`` worker processes, and the suspect and poison tables,
    in memory shared across ``fork`` (made with the WorkerBoard, before the workers)."""

    def __init__(self, workers: int) -> None:
        context = multiprocessing.get_context("fork")
        self._rows: Any = context.RawArray(_Row, workers)
        self._tables: Any = context.RawValue(_Tables)
        self._dying: dict[int, list[Any]] = {}  # the supervisor's: entries worker_died settles

    def __repr__(self) -> str:
        tables = self._tables
        suspects = sum(entry.used for entry in tables.suspects)
        poison = sum(entry.used for entry in tables.poison)
        return f"<CrashBoard suspects={suspects} poison={poison}>"

    def guard(self, index: int) -> CrashGuard:
        """What worker ``index`` (just started) notes its calls with; its row emptied."""
        row = self._rows[index]
        for slot in row:
            slot.busy = False
        return CrashGuard(row, self._tables)

    # -- the supervisor ------------------------------------------------------------------------

    def worker_dying(self, index: int) -> None:
        """Worker ``index`` is exiting (its connections are closed, its exit code not known
        yet): make the calls it ran suspects, and the one input of them already suspect
        poison, unconfirmed (workers wait to see); ``worker_died`` confirms or withdraws
        them. Only the supervisor calls it."""
        if index in self._dying:
            return
        busy = [s for s in self._rows[index] if s.busy]
        running = {(s.model, s.sample, s.full) for s in busy}
        unwatched = UNWATCHED in running  # an HTTP call or a stream's, whose input is not known
        running.discard(UNWATCHED)
        # Every slot taken: calls beyond ran unnoted (CrashGuard.run), one of which may be
        # the input that crashed it.
        crowded = len(busy) == SLOTS
        for slot in self._rows[index]:
            slot.busy = False
        tables, added = self._tables, []
        with self._writing():
            known = {(e.model, e.sample) for e in tables.suspects if e.used}
            # A call of a suspect's fingerprint not hashed was let in before it was one (its
            # input may be that suspect or another): one more input that may have crashed it.
            unhashed = any(not full and (model, sample) in known for model, sample, full in running)
            for model, sample, _ in running:
                if (model, sample) not in known:
                    known.add((model, sample))
                    added.append(_put(tables, "suspects", model, sample, crash=b""))
            hashed = {entry for entry in running if entry[2]}
            if len(hashed) == 1 and not (unhashed or crowded or unwatched):  # else: next crash
                ((model, sample, full),) = hashed
                if not any(e.used and e.full == full for e in tables.poison):
                    earlier = [
                        e.crash
                        for e in tables.suspects
                        if e.used and (e.model, e.sample) == (model, sample) and e.crash
                    ]
                    crashes = b"".join(earlier[:1])
                    fields = {"full": full, "workers": 2, "crashes": crashes, "confirmed": False}
                    added.append(_put(tables, "poison", model, sample, **fields))
        self._dying[index] = added

    def worker_died(self, index: int, how: str, *, crashed: bool) -> str | None:
        """Worker ``index`` has exited (``how``: its exit described): keep what
        ``worker_dying`` made of its calls if it ``crashed``, else withdraw it. Returns what
        the poison entry made of an input says, if one was."""
        self.worker_dying(index)
        crash, said = f"worker {index}: {how}", None
        with self._writing():
            for entry in self._dying.pop(index):
                if not crashed:
                    entry.used = False
                elif isinstance(entry, _Suspect):
                    entry.crash = _text(crash)
                else:
                    entry.crashes = _text("; ".join(filter(None, [_read(entry.crashes), crash])))
                    entry.confirmed = True
                    said = _read(entry.crashes)
        return said

    def forget(self, model: str | None) -> None:
        """Forget the entries of ``model`` (reloaded), or all of them (None)."""
        key = None if model is None else _model_key(model)
        with self._writing():
            for table in (self._tables.suspects, self._tables.poison):
                for entry in table:
                    if key is None or entry.model == key:
                        entry.used = False

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Write the tables: their version is odd meanwhile, and workers wait."""
        self._tables.version += 1
        try:
            yield
        finally:
            self._tables.version += 1


def _text(text: str) -> bytes:
    return text.encode("utf-8", "replace")[: _TEXT - 1]


def _read(text: bytes) -> str:
    return text.decode("utf-8", "replace")


def _put(tables: Any, name: str, model: int, sample: int, **fields: Any) -> Any:
    """Fill the next entry of ring ``name`` of ``tables`` (the oldest goes once it is full);
    returns it."""
    table = getattr(tables, name)
    at = getattr(tables, f"next_{name}")
    entry = table[at]
    entry.model, entry.sample = model, sample
    for field, value in fields.items():
        setattr(entry, field, value)
    entry.used = True
    setattr(tables, f"next_{name}", (at + 1) % len(table))
    return entry


class CrashGuard:
    """One worker's side: ``check`` a model call's request before it runs (refusing poison),
    then ``run`` it with its slot noted. The worker's call threads share it."""

    def __init__(self, row: Any, tables: Any) -> None:
        self._slots = list(row)
        self._free = list(range(SLOTS))  # list.pop and append hold the GIL: no lock
        self._tables = tables
        self._seen = -1  # the tables' version of the copy below
        self._suspects: frozenset[tuple[int, int]] = frozenset()  # (model, sample)
        # full hash: (workers, crashes), or None while the crash is not confirmed
        self._poison: dict[int, tuple[int, str] | None] = {}
        self._said: set[int] = set()
        self._seeds: dict[str, int] = {}  # by method (a few)

    def __repr__(self) -> str:
        return f"<CrashGuard suspects={len(self._suspects)} poison={len(self._poison)}>"

    async def admit(
        self, method: str, model: str, request: bytes, content: Sequence[Buffer] | None = None
    ) -> tuple[int, int, int]:
        """``check``, waiting (on the event loop) while a worker that ran this input exits
        and whether it crashed is not known yet, up to PENDING_SECONDS."""
        mark = self.check(method, model, request, content)
        waited = 0.0
        while mark is None:
            await asyncio.sleep(_PENDING_POLL)
            waited += _PENDING_POLL
            mark = self.check(method, model, request, content, wait=waited < PENDING_SECONDS)
        return mark

    def check(
        self,
        method: str,
        model: str,
        request: bytes,
        content: Sequence[Buffer] | None = None,
        *,
        wait: bool = True,
    ) -> tuple[int, int, int] | None:
        """What ``run`` notes of a call of ``method`` to ``model``: (model key, fingerprint,
        full hash or 0). Its input is ``content`` (Method.content), or else ``request``.
        Raises Internal if that input is poison; None (if ``wait``) while a worker that ran
        it exits, and whether it crashed is not known yet, or while the supervisor writes the
        tables (``admit`` waits on the event loop, which must not sleep)."""
        seed = self._seeds.get(method)
        if seed is None:
            seed = self._seeds[method] = zlib.crc32(method.encode())
        parts: Sequence[Buffer] = (request,) if content is None else content
        sample = seed
        for part in parts:
            sample = fingerprint(part, sample)
        key = _model_key(model)
        if self._tables.version != self._seen and not self._refresh() and wait:
            return None
        if (key, sample) not in self._suspects:
            return key, sample, 0
        full = _full_hash(parts, seed)
        if full not in self._poison:
            return key, sample, full
        poison = self._poison[full]
        if poison is None:
            return None if wait else (key, sample, full)
        workers, crashes = poison
        if full not in self._said:
            if len(self._said) >= _MAX_SAID:
                self._said.clear()
            self._said.add(full)
            log.warning(
                "refusing an input of model %r that crashed %d workers (%s)",
                model,
                workers,
                crashes,
            )
        raise Internal(
            f"this input crashed {workers} workers ({crashes}); it is not run again until the "
            "model is reloaded or the server restarts",
            reason=Reason.MODEL_FAILED,
        )

    def run(self, mark: tuple[int, int, int], function: Callable[..., T], *args: Any) -> T:
        """``function(*args)``, noted as running ``mark`` (what ``check`` returned)."""
        try:
            index = self._free.pop()
        except IndexError:  # SLOTS calls at once already
            return function(*args)
        slot = self._slots[index]
        slot.model, slot.sample, slot.full = mark
        slot.busy = True
        try:
            return function(*args)
        finally:
            slot.busy = False
            self._free.append(index)

    def _refresh(self) -> bool:
        """Copy the tables; False if the supervisor writes them meanwhile (try again later)."""
        tables = self._tables
        version = tables.version
        if version % 2:
            return False
        suspects = {(e.model, e.sample) for e in tables.suspects if e.used}
        poison: dict[int, tuple[int, str] | None] = {}
        for e in tables.poison:
            if e.used:
                suspects.add((e.model, e.sample))
                poison[e.full] = (e.workers, _read(e.crashes)) if e.confirmed else None
        if tables.version != version:
            return False
        self._suspects, self._poison = frozenset(suspects), poison
        self._seen = version
        return True
