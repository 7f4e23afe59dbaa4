"""The supervisor: the parent process that owns the port, the workers and the signals.

It reserves the port with SO_REUSEPORT (so ``--port 0`` works and the port stays taken while
workers come and go; a port something else holds stops it at start), forks the workers before
any gRPC object exists, restarts a worker that dies (with backoff), kills and replaces one that
stops sending heartbeats, remembers the inputs a worker that crashed was running (an input
that crashes two workers is refused from then on: tms_server.crashes), and on a stop signal
(SIGTERM, SIGINT, SIGHUP: tms_server.signals, caught by ``__main__`` before anything else)
asks every worker to stop gracefully. With ``--metrics-port`` it also serves /metrics for all
of them (tms_server.exporter).

It refuses to start a server with no model to load (tms_server.registry.find_models), and
says each model that failed to load once, for all workers: every worker reports its failures
when it is ready, and the line that says the server serves names them.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import signal
import socket
import time
import uuid
from dataclasses import dataclass, replace
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess

from tms_server.board import WorkerBoard
from tms_server.crashes import crashed
from tms_server.devices import CPU, check_visible
from tms_server.exporter import MetricsExporter
from tms_server.monitor import RELOAD_TIME_LIMIT
from tms_server.registry import find_models
from tms_server.settings import DEFAULT_MODELS, Settings, host_port
from tms_server.signals import STOP_SIGNALS, StopFlag
from tms_server.worker import EXIT_HUNG, EXIT_NO_MODELS, run_worker

__all__ = ["Supervisor"]

log = logging.getLogger("tms_server")

_READY_TIMEOUT = 600.0  # loading models can take a while
_BACKOFF_MAX = 10.0

# A worker that loaded its models and then served this long is replaced at once when it dies;
# one that dies sooner (a crash while loading, say) is replaced after a growing delay.
_HEALTHY_AFTER = 1.0
# A worker still starting that has held nearly all of --worker-memory-mb this long is said to
# be short of it: some libraries (OpenBLAS, say) retry a failed allocation for ever.
_AT_LIMIT_SAID_AFTER = 10.0
# The exit codes a worker ends with itself; any other, or a crash signal, is a crash.
_OWN_EXIT_CODES = frozenset({EXIT_HUNG, EXIT_NO_MODELS})
# How a library that finds no memory left often ends a process.
_CRASH_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS})
# Seconds between rounds while a worker exits: its exit code is looked for this often.
_DYING_TICK = 0.005


def _backoff(failures: int) -> float:
    """Seconds before a worker that failed ``failures`` times in a row is started again: none
    after none, then 0.1 s, doubling each time, up to _BACKOFF_MAX."""
    return min(_BACKOFF_MAX, 0.1 * 2 ** (failures - 1)) if failures else 0.0


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """A socket bound (not listening) to host:port with SO_REUSEPORT, and the bound port;
    OSError saying "cannot listen on host:port: address already in use" if something holds it.

    SO_REUSEPORT would let a second server join a port in use and take half its connections,
    so the port is first bound without it: that fails if any socket holds the port (another
    server's reservation or workers, any listener), while SO_REUSEADDR lets it past the
    TIME_WAIT connections a server that just stopped leaves behind.
    """
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        if port:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise OSError(exc.errno, f"cannot listen on {host_port(host, port)}: {reason}") from None
    return sock, sock.getsockname()[1]


@dataclass
class _Slot:
    process: BaseProcess | None = None
    started: float = 0.0
    ready_at: float | None = None  # when the current process reported ready
    failures: int = 0
    restart_at: float = 0.0
    # The current process's last heartbeat on the board (its wall clock, only compared for
    # change) and when the supervisor saw it change (time.monotonic): silence is measured on
    # the supervisor's monotonic clock, so a jump of the wall clock kills no one.
    beat: float = 0.0
    beat_seen: float = 0.0
    silent_for: float | None = None  # set when the supervisor kills it for going silent
    at_limit_since: float | None = None  # since when, starting, it has held its memory limit
    short_said: bool = False  # that it may be short of memory
    dying: bool = False  # the process is exiting: its sentinel is readable, it is not reaped


class Supervisor:
    """Runs ``settings.workers`` worker processes, on ``settings.worker_devices``, until
    ``stop`` (which the stop signals raise) is raised."""

    def __init__(self, settings: Settings, stop: StopFlag) -> None:
        self.settings = settings
        self.instance_id = uuid.uuid4().hex
        self._stop = stop
        self._context = multiprocessing.get_context("fork")
        self._ready = self._context.Queue()
        self._slots = [_Slot() for _ in settings.worker_devices]
        # Shared memory the workers inherit: their pids and load, and reloads for all.
        self._board = WorkerBoard(len(self._slots))
        self._metrics: MetricsExporter | None = None
        self._failed: dict[str, str] = {}  # models that failed to load in a worker, and why
        self._reload_seen = 0  # the last reload whose model's crashed inputs were forgotten

    def __repr__(self) -> str:
        return (
            f"<Supervisor workers={self._running()}/{len(self._slots)} port={self.settings.port}>"
        )

    def _running(self) -> int:
        return sum(1 for s in self._slots if s.process is not None and s.process.exitcode is None)

    def _start(self, index: int) -> None:
        ready, board, supervisor, metrics = self._ready, self._board, os.getpid(), self._metrics

        def body() -> None:
            # The supervisor's handlers came along with fork; the worker installs its own.
            # (A signal it ignores, as SIGHUP under nohup, stays ignored.)
            for signum in STOP_SIGNALS:
                if callable(signal.getsignal(signum)):
                    signal.signal(signum, signal.SIG_DFL)
            if metrics is not None:
                metrics.close_in_worker()
            run_worker(
                self.settings,
                index,
                self.instance_id,
                ready=lambda failed: ready.put((index, os.getpid(), failed)),
                board=board,
                supervisor=supervisor,
            )

        process = self._context.Process(target=body, name=f"tms-worker-{index}", daemon=False)
        process.start()
        slot = self._slots[index]
        slot.process, slot.started, slot.ready_at = process, time.monotonic(), None
        slot.at_limit_since, slot.short_said, slot.dying = None, False, False
        if self._metrics is not None:
            self._metrics.workers = self._running()

    def run(self) -> int:
        """Serve until a stop signal; returns the process exit code."""
        check_visible(self.settings.devices, os.environ)  # DeviceError before anything starts
        given = self.settings.models != DEFAULT_MODELS  # the default may be missing
        find_models(self.settings.models, self.settings.entry_points, folder_given=given)
        if self._stop.is_set():  # before any worker, port or metrics directory
            log.info("received %s while starting; stopping", self._stop.reason)
            return 0
        sock, port = reserve_port(self.settings.host, self.settings.port)
        with sock, contextlib.ExitStack() as cleanup:
            self.settings = replace(self.settings, port=port)
            if self.settings.http_port is not None:  # reserved like the gRPC port
                http_sock, http_port = reserve_port(self.settings.host, self.settings.http_port)
                cleanup.enter_context(http_sock)
                self.settings = replace(self.settings, http_port=http_port)
            if self.settings.metrics_port is not None:  # before the workers fork: they need it
                self._metrics = MetricsExporter.start(
                    self.settings.host, self.settings.metrics_port
                )
                cleanup.callback(self._metrics.stop)
                where = host_port(self.settings.host, self._metrics.port)
                print(f"tms-server: metrics on http://{where}/metrics", flush=True)
            if self.settings.devices != (CPU,):
                log.info(
                    "workers on devices: %s",
                    ", ".join(f"{i} {d}" for i, d in enumerate(self.settings.worker_devices)),
                )
            for index in range(len(self._slots)):
                self._start(index)
            if not self._wait_ready():
                self._shutdown()
                return 0 if self._stop.is_set() else 1  # asked to stop, or failed to start
            if self.settings.http_port is not None:
                scheme = "http" if self.settings.tls_cert is None else "https"
                where = host_port(self.settings.host, self.settings.http_port)
                print(f"tms-server: HTTP on {scheme}://{where}/", flush=True)
            # One line on stdout that scripts and tests can wait for.
            print(
                f"tms-server: serving on {host_port(self.settings.host, port)} "
                f"with {len(self._slots)} worker(s){self._failures()}",
                flush=True,
            )
            # Woken at once when a worker exits, not up to 0.1 s later: its death is seen to
            # (the inputs it crashed on made suspect: tms_server.crashes) before its callers
            # retry on the other workers.
            while not self._stop.wait(self._tick(), self._sentinels()):
                self._reap()
            log.info("received %s; stopping", self._stop.reason)
            self._shutdown()
        return 0  # stop signals sent again meanwhile were ignored (see stop_on_signals)

    def _sentinels(self) -> list[int]:
        """Descriptors that become readable when a running worker exits."""
        return [
            slot.process.sentinel
            for slot in self._slots
            if slot.process is not None and slot.process.exitcode is None and not slot.dying
        ]

    def _tick(self) -> float:
        """How long to wait between rounds: briefly while a worker is exiting (calls may wait
        to learn whether it crashed: tms_server.crashes), else 0.1 s."""
        return _DYING_TICK if any(slot.dying for slot in self._slots) else 0.1

    def _collect_ready(self, timeout: float) -> None:
        """Note which workers reported ready (waiting up to ``timeout`` for the first), and
        log each model failure they report that no worker reported before."""
        block = True
        while True:
            try:
                index, pid, failed = self._ready.get(block, timeout)
            except queue.Empty:
                return
            slot = self._slots[index]
            if slot.process is not None and slot.process.pid == pid:
                slot.ready_at = time.monotonic()
            for name, reason in failed.items():
                if self._failed.get(name) != reason:
                    log.error("model %r failed to load: %s", name, reason)
                    self._failed[name] = reason
            block = False

    def _failures(self) -> str:
        """What the line saying the server serves adds about models that failed to load."""
        if not self._failed:
            return ""
        if self.settings.allow_failed_models:
            health = "health SERVING all the same (--allow-failed-models)"
        else:
            health = "health NOT_SERVING until they load (or --allow-failed-models)"
        return (
            f"; {len(self._failed)} model(s) failed to load: {', '.join(sorted(self._failed))} "
            f"(see above; --log-level DEBUG shows tracebacks); {health}"
        )

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + _READY_TIMEOUT
        while not self._stop.is_set():
            self._collect_ready(0.2)
            if all(slot.ready_at is not None for slot in self._slots):
                return True
            for index, slot in enumerate(self._slots):
                if slot.process is not None and slot.process.exitcode is not None:
                    code = slot.process.exitcode
                    log.error(
                        "worker %d exited while starting: %s%s",
                        index,
                        _describe_exit(code),
                        _short(code, self.settings.worker_memory_mb),
                    )
                    return False
            self._watch_memory()
            if time.monotonic() > deadline:
                pending = [i for i, slot in enumerate(self._slots) if slot.ready_at is None]
                log.error("workers %s not ready after %.0fs", pending, _READY_TIMEOUT)
                return False
        log.info("received %s while starting; stopping", self._stop.reason)
        return False

    def _reap(self) -> None:
        """Kill workers that stopped sending heartbeats; replace workers that died: at once if
        they had served a while, otherwise after a delay that doubles with each quick death."""
        self._collect_ready(0.0)
        now = time.monotonic()
        for index, slot in enumerate(self._slots):
            if slot.process is None:
                continue
            if slot.process.exitcode is None:
                if not slot.dying and wait([slot.process.sentinel], 0):
                    # Exiting: its connections are closed, and callers retry elsewhere before
                    # its exit code is known (a large process takes a while to end).
                    slot.dying = True
                    self._board.crashes.worker_dying(index)
                self._check_heartbeat(index, slot, now)
                continue
            if slot.restart_at == 0.0:
                healthy = slot.ready_at is not None and now - slot.ready_at >= _HEALTHY_AFTER
                slot.failures = 0 if healthy else slot.failures + 1
                delay = _backoff(slot.failures)
                code = slot.process.exitcode
                log.error(
                    "worker %d (pid %s) died: %s%s; restarting in %.1fs",
                    index,
                    slot.process.pid,
                    _describe_exit(code, slot.silent_for),
                    "" if slot.ready_at else _short(code, self.settings.worker_memory_mb),
                    delay,
                )
                slot.restart_at = now + delay
                self._note_crash(index, code)
                slot.dying = False  # reaped: the supervisor's pace is its idle one again
                slot.beat = slot.beat_seen = 0.0
                slot.silent_for = None
                if slot.process.pid is not None:
                    self._board.leave(index, slot.process.pid)
                    if self._metrics is not None:
                        self._metrics.process_gone(slot.process.pid)
            if now >= slot.restart_at:
                try:
                    self._start(index)
                except OSError as exc:  # no descriptors or processes left, for now
                    slot.failures += 1
                    delay = _backoff(slot.failures)
                    log.error(
                        "cannot start worker %d: %s; trying again in %.1fs", index, exc, delay
                    )
                    slot.restart_at = now + delay
                    continue
                slot.restart_at = 0.0
                if self._metrics is not None:
                    self._metrics.restarts += 1
        self._follow_reloads()
        self._watch_memory()
        if self._metrics is not None:
            self._metrics.workers = self._running()

    def _note_crash(self, index: int, code: int) -> None:
        """Remember the inputs worker ``index``, which ended with ``code``, was running, if it
        crashed: an input that crashes two workers is refused from then on."""
        how, was_crash = _describe_exit(code), crashed(code, _OWN_EXIT_CODES)
        poison = self._board.crashes.worker_died(index, how, crashed=was_crash)
        if poison is not None:
            log.error(
                "an input crashed workers (%s); it is refused from now on, until its model is "
                "reloaded or the server restarts",
                poison,
            )

    def _follow_reloads(self) -> None:
        """Forget the crashed inputs of a model reloaded since last time (of every model if
        reloads came faster than that: a reload takes a monitor round, longer than ours)."""
        seq, model = self._board.last_reload()
        if seq != self._reload_seen:
            self._board.crashes.forget(model if seq == self._reload_seen + 1 else None)
            self._reload_seen = seq

    def _watch_memory(self) -> None:
        """Say once of each worker still starting that has held nearly all of its
        --worker-memory-mb for _AT_LIMIT_SAID_AFTER seconds that it may be short of it."""
        limit = self.settings.worker_memory_mb * 1024 * 1024
        if not limit:
            return
        now = time.monotonic()
        for index, slot in enumerate(self._slots):
            process = slot.process
            if (
                process is None
                or process.pid is None
                or slot.ready_at is not None
                or slot.short_said
            ):
                continue
            held = _address_space(process.pid)
            if held is None or held < limit - min(limit // 20, 256 * 1024 * 1024):
                slot.at_limit_since = None
            elif slot.at_limit_since is None:
                slot.at_limit_since = now
            elif now - slot.at_limit_since >= _AT_LIMIT_SAID_AFTER:
                log.warning(
                    "worker %d has held all of --worker-memory-mb %d for %.0fs while starting; "
                    "a library may be retrying an allocation that cannot succeed: if it is "
                    "not ready soon, give it a larger limit",
                    index,
                    self.settings.worker_memory_mb,
                    now - slot.at_limit_since,
                )
                slot.short_said = True

    def _check_heartbeat(self, index: int, slot: _Slot, now: float) -> None:
        """SIGKILL the running worker of ``slot`` (a signal even a stopped process obeys) if it
        has served and then sent no heartbeat for ``--worker-timeout-seconds``: it is frozen,
        stopped or stuck, and the calls the kernel still hands it would wait in vain.

        Silence counts from the last change of its heartbeat, or from when it reported ready;
        a worker still loading its models is left alone. A reload runs beside the heartbeat
        (tms_server.monitor bounds it)."""
        process = slot.process
        if process is None or process.pid is None or slot.ready_at is None:
            return
        if slot.silent_for is not None:  # killed already; its death is on the way
            return
        beat = self._board.beat(index, process.pid)
        if beat is not None and beat != slot.beat:
            slot.beat, slot.beat_seen = beat, now
            return
        silent = now - max(slot.ready_at, slot.beat_seen)
        limit = self.settings.worker_timeout_seconds
        if silent < limit:
            return
        log.error(
            "worker %d (pid %d) sent no heartbeat for %.1fs (--worker-timeout-seconds %g); "
            "killing it",
            index,
            process.pid,
            silent,
            limit,
        )
        slot.silent_for = silent
        process.kill()

    def _shutdown(self) -> None:
        processes = [s.process for s in self._slots if s.process is not None]
        for process in processes:
            if process.exitcode is None and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.grace_seconds + 5.0
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                log.warning("worker pid %s did not stop in time; killing it", process.pid)
                process.kill()
                process.join()
        log.info("stopped")


def _address_space(pid: int) -> int | None:
    """Bytes of address space process ``pid`` holds (what RLIMIT_AS bounds); None if gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _short(code: int, memory_mb: int) -> str:
    """What the line of a worker that died while starting adds when it crashed under a memory
    limit (empty otherwise)."""
    if not memory_mb or code >= 0 or -code not in _CRASH_SIGNALS:
        return ""
    return (
        f"; with --worker-memory-mb {memory_mb}, a library that found no memory left may have "
        "crashed it: try a larger limit"
    )


def _describe_exit(code: int, silent_for: float | None = None) -> str:
    """Why a worker exited; ``silent_for`` is set if the supervisor killed it for that many
    seconds without a heartbeat."""
    if code == -signal.SIGKILL and silent_for is not None:
        return (
            f"killed by SIGKILL from the supervisor after {silent_for:.1f}s without a heartbeat "
            "(--worker-timeout-seconds)"
        )
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    if code == EXIT_HUNG:
        return (
            f"exit code {code}: a call ran past --call-time-limit, or a reload past "
            f"{RELOAD_TIME_LIMIT:g}s"
        )
    if code == EXIT_NO_MODELS:
        return f"exit code {code}: it found no model to load (see above)"
    return f"exit code {code}"
