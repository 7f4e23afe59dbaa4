"""The worker board: a small table in shared memory, one row per worker process.

Each worker posts its pid and load to its row a few times a second, so any worker can answer
AdminService.ListWorkers for all of them; and a reload asked of one worker reaches the others
through the board's reload slot. The supervisor makes the board before it forks the workers
(they inherit the same memory); a server run inside a test process gets a board of one row.

Each row has one writer, its worker; the reload slot is written under ``reload_lock``. A row
also says which models failed to load in its worker, and why (the first FAILED_SLOTS of them),
so that every worker lists them and is unready while they last, whichever worker failed. The
board also holds the model calls each worker runs, and the inputs that crashed workers
(``crashes``, tms_server.crashes).
A reload is posted there and every worker, the one asked included, follows it on a thread its
monitor starts (tms_server.monitor); the heartbeat goes on meanwhile.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import multiprocessing
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tms_server.crashes import CrashBoard

__all__ = ["BoardRow", "WorkerBoard"]

_NAME_BYTES = 65
_ERROR_BYTES = 512
#: The failures to load a worker posts for the others; any more, it alone lists.
FAILED_SLOTS = 8
#: A row not updated for this long belongs to a worker that is gone or stuck.
STALE_SECONDS = 3.0
#: A worker serving for this long has been found by every client that looks for workers.
SETTLED_SECONDS = 2.0


def _running(pid: int) -> bool:
    """Whether process ``pid`` runs: it exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


class _Failure(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char * _NAME_BYTES), ("reason", ctypes.c_char * _ERROR_BYTES)]


class _Row(ctypes.Structure):
    _fields_ = [
        ("pid", ctypes.c_int64),
        ("started", ctypes.c_double),
        ("beat", ctypes.c_double),
        ("in_flight", ctypes.c_int32),
        ("queued", ctypes.c_int32),
        ("calls", ctypes.c_int64),
        ("serving", ctypes.c_bool),
        ("failed", ctypes.c_int32),  # how many models failed to load in this worker
        ("failures_version", ctypes.c_uint64),  # odd while its worker writes ``failures``
        ("failures", _Failure * FAILED_SLOTS),  # the first of them, and why
        ("reload_taken", ctypes.c_int64),
        ("reload_done", ctypes.c_int64),
        ("reload_ok", ctypes.c_bool),
        ("reload_error", ctypes.c_char * _ERROR_BYTES),
    ]


class _Header(ctypes.Structure):
    _fields_ = [
        ("reload_seq", ctypes.c_int64),
        ("reload_model", ctypes.c_char * _NAME_BYTES),
    ]


@dataclass(frozen=True)
class BoardRow:
    """What one row says about its worker."""

    index: int
    pid: int
    uptime: float
    in_flight: int
    queued: int
    calls: int
    serving: bool
    fresh: bool  # updated within STALE_SECONDS
    reloading: bool  # it has taken a reload it has not finished
    reload_done: int
    reload_ok: bool
    reload_error: str


class WorkerBoard:
    """Rows for ``workers`` worker processes, in memory shared across ``fork``."""

    def __init__(self, workers: int) -> None:
        context = multiprocessing.get_context("fork")
        self.size = workers
        self._rows: Any = context.RawArray(_Row, workers)
        self._header: Any = context.RawValue(_Header)
        self.crashes = CrashBoard(workers)
        self._posting = threading.Lock()
        #: Held by the worker that runs a reload across the server, one at a time.
        self.reload_lock = ReloadLock(shared=workers > 1)

    def __repr__(self) -> str:
        pids = [row.pid for row in self._rows]
        return f"<WorkerBoard pids={pids} reload={self._header.reload_seq}>"

    # -- a worker's own row -------------------------------------------------------------------

    def join(self, index: int, pid: int) -> int:
        """Claim row ``index`` for a (re)started worker; returns the current reload number,
        which a worker loading its models now need not follow."""
        row = self._rows[index]
        seq = int(self._header.reload_seq)
        row.pid, row.started, row.beat = pid, time.time(), time.time()
        row.in_flight = row.queued = row.calls = 0
        row.serving = False
        row.failures_version += row.failures_version % 2  # its last worker died writing them
        self.post_failures(index, {})
        row.reload_taken = row.reload_done = seq
        row.reload_ok, row.reload_error = True, b""
        return seq

    def leave(self, index: int, pid: int) -> None:
        """Free row ``index`` if ``pid`` still holds it."""
        row = self._rows[index]
        if row.pid == pid:
            row.pid, row.serving = 0, False

    def post(self, index: int, *, in_flight: int, queued: int, calls: int, serving: bool) -> None:
        row = self._rows[index]
        row.in_flight, row.queued, row.calls, row.serving = in_flight, queued, calls, serving
        row.beat = time.time()

    def post_failures(self, index: int, failed: dict[str, str]) -> None:
        """Say in row ``index`` which models failed to load (or reload) in its worker, and
        why. A name that does not fit its slot (not ASCII, too long) is no model's name: every
        worker finds that failure itself."""
        row = self._rows[index]
        posted = [
            (name.encode(), reason.encode("utf-8", "replace")[: _ERROR_BYTES - 1])
            for name, reason in failed.items()
            if name.isascii() and 0 < len(name) < _NAME_BYTES
        ][:FAILED_SLOTS]
        with self._posting:  # the monitor's thread and a reload's
            if row.failed == len(failed) and _posted(row) == posted:
                return  # as it was: readers need not wait
            row.failures_version += 1
            padded = posted + [(b"", b"")] * (FAILED_SLOTS - len(posted))
            for slot, (name, reason) in zip(row.failures, padded, strict=True):
                slot.name, slot.reason = name, reason
            row.failed = len(failed)
            row.failures_version += 1

    def failed_elsewhere(self, index: int) -> bool:
        """Whether a model failed to load in a running worker other than ``index``: then the
        server as a whole is not ready, whichever worker is asked."""
        return any(self._failing(index))

    def failures_elsewhere(self, index: int) -> dict[str, str]:
        """The models that failed to load in running workers other than ``index``, and why
        (as the lowest such worker says)."""
        found: dict[str, str] = {}
        for row in reversed(list(self._failing(index))):
            found.update((n.decode(), r.decode("utf-8", "replace")) for n, r in _read(row))
        return found

    def _failing(self, index: int) -> Iterator[Any]:
        """The rows of running workers other than ``index`` where a model failed to load."""
        return (
            row for other, row in enumerate(self._rows) if other != index and row.pid and row.failed
        )

    # -- reloads ------------------------------------------------------------------------------

    def pending_reload(self, index: int) -> tuple[int, str] | None:
        """(number, model) of a reload row ``index`` has not taken yet; marks it taken."""
        row = self._rows[index]
        seq = int(self._header.reload_seq)
        if seq <= row.reload_taken:
            return None
        row.reload_taken = seq
        return seq, self._header.reload_model.decode()

    def last_reload(self) -> tuple[int, str]:
        """(number, model) of the last reload announced; (0, "") before any."""
        return int(self._header.reload_seq), self._header.reload_model.decode()

    def announce_reload(self, model: str) -> int:
        """Post a reload of ``model`` for every worker to follow; hold ``reload_lock``.
        Returns its number."""
        seq = int(self._header.reload_seq) + 1
        self._header.reload_model = model.encode()[: _NAME_BYTES - 1]
        self._header.reload_seq = seq
        return seq

    def finish_reload(self, index: int, seq: int, error: str | None) -> None:
        row = self._rows[index]
        row.reload_ok = error is None
        row.reload_error = (error or "").encode("utf-8", "replace")[: _ERROR_BYTES - 1]
        row.reload_done = seq

    # -- reading ------------------------------------------------------------------------------

    def beat(self, index: int, pid: int) -> float | None:
        """The last heartbeat (``time.time()`` of the worker) in row ``index``; None unless
        ``pid`` holds the row."""
        row = self._rows[index]
        if row.pid != pid:
            return None
        return float(row.beat)

    def settled(self, indices: tuple[int, ...]) -> bool:
        """Whether the workers of these indices have all served for SETTLED_SECONDS (clients
        have found them by then), beat lately and still run."""
        now = time.time()
        for index in indices:
            row = self._rows[index]
            pid = int(row.pid)
            if not (pid and row.serving and now - row.started >= SETTLED_SECONDS):
                return False
            if now - row.beat >= STALE_SECONDS or not _running(pid):
                return False
        return True

    def rows(self) -> list[BoardRow]:
        """The rows of the workers running now (or lately), by index."""
        now = time.time()
        found = []
        for index, row in enumerate(self._rows):
            if row.pid == 0:
                continue
            found.append(
                BoardRow(
                    index=index,
                    pid=int(row.pid),
                    uptime=max(0.0, now - row.started),
                    in_flight=int(row.in_flight),
                    queued=int(row.queued),
                    calls=int(row.calls),
                    serving=bool(row.serving),
                    fresh=now - row.beat < STALE_SECONDS,
                    reloading=row.reload_taken > row.reload_done,
                    reload_done=int(row.reload_done),
                    reload_ok=bool(row.reload_ok),
                    reload_error=row.reload_error.decode("utf-8", "replace"),
                )
            )
        return found


def _posted(row: Any) -> list[tuple[bytes, bytes]]:
    """The failures row ``row`` holds, as written."""
    return [(slot.name, slot.reason) for slot in row.failures if slot.name]


def _read(row: Any) -> list[tuple[bytes, bytes]]:
    """The failures row ``row`` holds, read between its worker's writes; none if it is being
    written all the while (its worker died writing, and its successor will write them anew)."""
    for _ in range(_READ_TRIES):
        version = row.failures_version
        if not version % 2:
            posted = _posted(row)
            if row.failures_version == version:
                return posted
        time.sleep(0.001)
    return []


class ReloadLock:
    """One reload across the server at a time, whatever becomes of the worker that holds it.

    Between worker processes: a POSIX record lock (``lockf``) on a file they inherit from the
    supervisor, which the kernel lets go of when its holder exits, however it exits (a worker
    killed during a reload leaves no lock behind). Record locks belong to a process, so the
    threads of one worker take a thread lock first.
    """

    def __init__(self, *, shared: bool) -> None:
        self._threads = threading.Lock()
        self._fd: int | None = None
        if shared:  # where multiprocessing's locks live too: writable in any container
            where = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108
            self._fd, path = tempfile.mkstemp(prefix="reload-lock-", dir=where)
            os.unlink(path)  # the descriptor is all the workers need

    def acquire(self, timeout: float) -> bool:
        """Whether the lock was taken within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        if not self._threads.acquire(timeout=max(0.0, timeout)):
            return False
        if self._fd is None:
            return True
        while True:
            with contextlib.suppress(BlockingIOError, PermissionError):
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            if time.monotonic() >= deadline:
                self._threads.release()
                return False
            time.sleep(_LOCK_POLL)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
        self._threads.release()


_READ_TRIES = 50  # a millisecond apart
_LOCK_POLL = 0.05  # seconds between tries for a reload lock another worker holds
