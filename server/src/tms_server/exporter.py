"""/metrics for the whole server, served by the supervisor (``--metrics-port``).

The workers write their metrics (tms_server.metrics) with prometheus_client's multiprocess
mode into a directory the supervisor makes, fresh and private, before it forks the first
worker, so no file of an earlier run ever counts; it sets ``PROMETHEUS_MULTIPROC_DIR`` first,
because prometheus_client reads it once, when it is first imported. A scrape sums every
process's files (MultiProcessCollector): counters and histograms of a worker that died stay
in its files and keep counting, so the totals never go back; the ``live`` gauges of a dead
worker (calls in flight and queued) are dropped when the supervisor notes its death
(``process_gone``). The supervisor's own metrics, workers running and workers replaced, are
read from it at each scrape and write no file. On exit the directory is removed.

A supervisor killed with SIGKILL cannot remove its directory, so each one holds a lock on a
marker file in it (``MARKER``) for as long as it lives, and a supervisor starting removes the
directories of this user whose marker nobody holds any more: the kernel drops the lock when
the supervisor and the workers it forked have exited, whatever their pids or pid namespace.
A directory with no marker, or of another user, is left alone.

The port is served by a few threads at most (``MAX_SCRAPES``; one more connection is closed
as it comes), each giving a scraper ``SCRAPE_TIMEOUT`` seconds in all to send its request (a
deadline, not a time between bytes: one that trickles in a byte at a time is cut off too), then
as long for each part of the answer: connections held open cost the supervisor no more than that.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import shutil
import socket
import socketserver
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from tms_server.settings import host_port

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Metric

__all__ = ["MARKER", "MULTIPROC_DIR_VARIABLE", "PREFIX", "MetricsExporter"]

log = logging.getLogger("tms_server")

MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
#: How the names of metrics directories, in the temporary directory, begin.
PREFIX = "tms-metrics-"
#: The file in a metrics directory its supervisor holds locked (not ``*.db``: no metrics).
MARKER = "supervisor"
#: Scrapes served at once; one more connection is closed at once.
MAX_SCRAPES = 8
#: Seconds a scraper has to send its whole request, and to take each part of the answer.
SCRAPE_TIMEOUT = 10.0


class MetricsExporter:
    """The metrics directory and the HTTP server of /metrics; ``workers`` and ``restarts``
    are the supervisor's to keep up to date."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.workers = 0  # worker processes running
        self.restarts = 0  # workers the supervisor replaced
        self._server: WSGIServer | None = None
        self._marker: int | None = None  # the descriptor holding MARKER locked

    def __repr__(self) -> str:
        return f"<MetricsExporter port={self.port} directory={self.directory}>"

    @property
    def port(self) -> int:
        """The port /metrics is served on (0 before ``start``)."""
        return self._server.server_port if self._server is not None else 0

    @classmethod
    def start(cls, host: str, port: int) -> MetricsExporter:
        """Remove the directories killed servers left, make this one's and lock its marker,
        set the variable, serve /metrics on host:port (0: a free one) in a daemon thread.
        Call it before forking any worker."""
        temp = Path(tempfile.gettempdir())
        for directory in _remove_leftovers(temp):
            log.info("removed %s, the metrics directory of a server no longer running", directory)
        exporter = cls(Path(tempfile.mkdtemp(prefix=PREFIX, dir=temp)))
        os.environ[MULTIPROC_DIR_VARIABLE] = str(exporter.directory)
        try:
            exporter._marker = _lock_marker(exporter.directory)
            from prometheus_client import CollectorRegistry, values  # noqa: PLC0415
            from prometheus_client.multiprocess import MultiProcessCollector  # noqa: PLC0415

            if not getattr(values.ValueClass, "_multiprocess", False):
                raise RuntimeError(
                    "prometheus_client was imported before the metrics directory was set; "
                    "the workers' metrics would not reach /metrics"
                )
            registry = CollectorRegistry()
            # prometheus_client.multiprocess has no annotations.
            MultiProcessCollector(registry, path=str(exporter.directory))  # type: ignore[no-untyped-call]
            registry.register(_SupervisorCollector(exporter))
            exporter._server = _serve(host, port, registry)
        except OSError as exc:
            exporter._unlock()
            _remove(exporter.directory)
            reason = (exc.strerror or str(exc)).lower()
            where = host_port(host, port)
            raise OSError(exc.errno, f"cannot serve metrics on {where}: {reason}") from None
        except BaseException:
            exporter._unlock()
            _remove(exporter.directory)
            raise
        return exporter

    def process_gone(self, pid: int) -> None:
        """Drop the live gauges of worker process ``pid``, which has exited."""
        from prometheus_client import multiprocess  # noqa: PLC0415

        multiprocess.mark_process_dead(pid, str(self.directory))  # type: ignore[no-untyped-call]

    def close_in_worker(self) -> None:
        """In a worker just forked: close its copy of the listening socket, so that workers
        never hold the metrics port (only the supervisor's thread answers on it)."""
        if self._server is not None:
            self._server.socket.close()

    def stop(self) -> None:
        """Stop serving and remove the directory."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        _remove(self.directory)
        self._unlock()

    def _unlock(self) -> None:
        if self._marker is not None:
            os.close(self._marker)
            self._marker = None


def _remove(directory: Path) -> None:
    if os.environ.get(MULTIPROC_DIR_VARIABLE) == str(directory):
        del os.environ[MULTIPROC_DIR_VARIABLE]
    shutil.rmtree(directory, ignore_errors=True)


def _lock_marker(directory: Path) -> int | None:
    """Write MARKER (the supervisor's pid, for people to read) into ``directory`` and hold it
    locked: the descriptor returned. The workers inherit it, so the directory stays while any
    of them may still write into it. It gets its name only once locked, so a server starting
    meanwhile never takes it for one left behind. None, and no marker, where files cannot be
    locked: the directory is then left to stay."""
    fd, path = tempfile.mkstemp(dir=directory)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.rename(path, directory / MARKER)
    except OSError:
        os.close(fd)
        os.unlink(path)
        return None
    return fd


def _remove_leftovers(temp: Path) -> list[Path]:
    """Remove, and list, the metrics directories in ``temp`` of this user whose MARKER nobody
    holds locked: their server is gone. Those of another user, with no marker (one just being
    made) or whose marker cannot be locked stay."""
    removed = []
    for directory in sorted(temp.glob(PREFIX + "*")):
        try:
            info = directory.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
                continue
            with open(directory / MARKER, "rb") as marker:
                fcntl.flock(marker, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: held
                shutil.rmtree(directory, ignore_errors=True)
        except OSError:
            continue
        removed.append(directory)
    return removed


class _SupervisorCollector:
    """``tms_workers`` and ``tms_worker_restarts_total``, read from the exporter at each
    scrape (the supervisor keeps them; no file is written for them)."""

    def __init__(self, exporter: MetricsExporter) -> None:
        self._exporter = exporter

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # noqa: PLC0415

        exporter = self._exporter
        yield GaugeMetricFamily("tms_workers", "Worker processes running.", exporter.workers)
        yield CounterMetricFamily(
            "tms_worker_restarts", "Workers the supervisor replaced.", exporter.restarts
        )


def _serve(host: str, port: int, registry: CollectorRegistry) -> WSGIServer:
    """Serve ``registry`` on host:port from a daemon thread, as prometheus_client's
    start_http_server does, within MAX_SCRAPES and SCRAPE_TIMEOUT."""
    from prometheus_client import make_wsgi_app  # noqa: PLC0415

    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    server_class = type("_Server", (_BoundedServer,), {"address_family": family})
    app = make_wsgi_app(registry)
    server: WSGIServer = make_server(str(address[0]), port, app, server_class, _Quiet)
    threading.Thread(target=server.serve_forever, name="tms-metrics", daemon=True).start()
    return server


class _BoundedServer(socketserver.ThreadingMixIn, WSGIServer):
    """A thread per connection, MAX_SCRAPES at once."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(MAX_SCRAPES)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Quiet(WSGIRequestHandler):
    """No log line per scrape; SCRAPE_TIMEOUT to send the whole request (each read of it
    waits only for what is left), then SCRAPE_TIMEOUT on each send of the answer. A scraper
    too slow, or gone, just has its connection closed."""

    timeout = SCRAPE_TIMEOUT

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the socket's own file: reads go through the deadline instead
        self.rfile = io.BufferedReader(_Deadline(self.connection, SCRAPE_TIMEOUT))

    def handle(self) -> None:
        with contextlib.suppress(OSError):  # TimeoutError included
            super().handle()

    def parse_request(self) -> bool:
        parsed = super().parse_request()  # the request line and headers are in
        self.connection.settimeout(SCRAPE_TIMEOUT)
        return parsed

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Deadline(io.RawIOBase):
    """Reads from ``connection`` that together take at most ``seconds``: TimeoutError after."""

    def __init__(self, connection: socket.socket, seconds: float) -> None:
        self._connection = connection
        self._deadline = time.monotonic() + seconds

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request took too long")
        self._connection.settimeout(left)
        return self._connection.recv_into(buffer)
