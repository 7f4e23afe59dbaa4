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

The port is served by a few threads at most (``MAX_SCRAPES``; one more connection is closed
as it comes), each giving a scraper ``SCRAPE_TIMEOUT`` seconds in all to send its request (a
deadline, not a time between bytes: one that trickles in a byte at a time is cut off too), then
as long for each part of the answer: connections held open cost the supervisor no more than that.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import socketserver
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

__all__ = ["MULTIPROC_DIR_VARIABLE", "MetricsExporter"]

MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
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

    def __repr__(self) -> str:
        return f"<MetricsExporter port={self.port} directory={self.directory}>"

    @property
    def port(self) -> int:
        """The port /metrics is served on (0 before ``start``)."""
        return self._server.server_port if self._server is not None else 0

    @classmethod
    def start(cls, host: str, port: int) -> MetricsExporter:
        """Make the directory, set the variable, serve /metrics on host:port (0: a free one)
        in a daemon thread. Call it before forking any worker."""
        exporter = cls(Path(tempfile.mkdtemp(prefix="tms-metrics-")))
        os.environ[MULTIPROC_DIR_VARIABLE] = str(exporter.directory)
        try:
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
            _remove(exporter.directory)
            reason = (exc.strerror or str(exc)).lower()
            where = host_port(host, port)
            raise OSError(exc.errno, f"cannot serve metrics on {where}: {reason}") from None
        except BaseException:
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


def _remove(directory: Path) -> None:
    if os.environ.get(MULTIPROC_DIR_VARIABLE) == str(directory):
        del os.environ[MULTIPROC_DIR_VARIABLE]
    shutil.rmtree(directory, ignore_errors=True)


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
