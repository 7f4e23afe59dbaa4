"""One worker process: load the models, serve them on the shared port, stop gracefully.

``build_server`` is also what tests use to run a worker inside the test process; the gRPC
server it starts, with its options and services, is made by tms_server.services.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import NoReturn

import grpc
from PIL import Image as PILImage

from tms_server import __version__, logs, oip, security
from tms_server.admin import AdminServicer
from tms_server.admission import CallRunner, limit_arenas
from tms_server.board import WorkerBoard
from tms_server.cpus import limit_loaded_blas, model_threads, thread_environment
from tms_server.devices import VISIBLE, Placement, cuda_visible_devices
from tms_server.health import HealthServicer
from tms_server.http import HttpServer
from tms_server.load import WorkerLoad
from tms_server.metrics import WorkerMetrics
from tms_server.monitor import WorkerMonitor
from tms_server.parts import Reloader, WorkerParts
from tms_server.registry import ModelRegistry, NoModelsError
from tms_server.repeats import FAILURES
from tms_server.rpc import Worker
from tms_server.servicer import ModelServicer, WorkerIdentity
from tms_server.services import grpc_options, new_grpc_server, report_serving
from tms_server.settings import Settings, host_port
from tms_server.shm import Regions
from tms_server.signals import StopFlag, stop_on_signals
from tms_server.stalls import StallWatch

# grpc_options is tms_server.services'; it is importable from here too.
__all__ = [
    "EXIT_HUNG",
    "EXIT_NO_MODELS",
    "RunningServer",
    "build_server",
    "grpc_options",
    "prepare_process",
    "run_worker",
    "worker_placement",
]

log = logging.getLogger("tms_server")

#: Exit code of a worker that stopped because a call ran past the call time limit.
EXIT_HUNG = 3
#: Exit code of a worker that found no model to load (its models folder gone, say).
EXIT_NO_MODELS = 4
#: How long past the grace period a stop waits for the event loop to wind down.
STOP_MARGIN_SECONDS = 5.0
#: How long a stop that waited that long waits once more, for the calls it cut off to end.
CUT_OFF_SECONDS = 1.0
_DRAIN_POLL_SECONDS = 0.01  # how often a stop looks whether the calls in flight have ended


@dataclass
class RunningServer:
    """A started gRPC server of one worker: its event loop runs in a thread of its own. It is
    made on that thread, in the loop: the loop and thread are the current ones, and a task
    on the loop marks the worker's load each time the loop runs (the heartbeat's pulse)."""

    server: grpc.aio.Server
    parts: WorkerParts
    handlers: Worker  # what the handlers of its calls share
    port: int
    runner: CallRunner
    watch: StallWatch
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    thread: threading.Thread = field(default_factory=threading.current_thread, repr=False)
    monitor: WorkerMonitor | None = field(default=None, repr=False)
    http: HttpServer | None = None  # with --http-port
    pulse: asyncio.Task[None] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.pulse = self.loop.create_task(_pulse(self.parts.load), name="tms-pulse")

    def drain(self) -> None:
        """Report NOT_SERVING and refuse new calls with UNAVAILABLE (clients retry on other
        workers); calls in flight go on. Safe from any thread."""
        self.parts.load.draining = True
        self.parts.health.enter_graceful_shutdown()

    def stop(self, grace: float | None) -> None:
        """Drain, then stop; in-flight calls get ``grace`` seconds to finish. Model calls still
        running after that are left to their threads (Python cannot stop a thread), and so is
        an event loop stuck in a model call: the stop gives up on it after the grace period."""
        self.drain()
        if self.thread.is_alive():
            stopping = asyncio.run_coroutine_threadsafe(
                _stop(self.server, grace, self.http, self.handlers, self.parts.index), self.loop
            )
            try:
                stopping.result((grace or 0.0) + STOP_MARGIN_SECONDS)
            except TimeoutError:
                # Calls outlasted the wait: cut them off, so that gRPC's server stops before
                # its loop does (left running, it would try to stop itself on the closed loop
                # when collected). A loop stuck in a model call runs neither.
                asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop)
                with contextlib.suppress(TimeoutError):
                    stopping.result(CUT_OFF_SECONDS)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(STOP_MARGIN_SECONDS)
            if not self.thread.is_alive():
                self.loop.close()
        self.runner.shutdown()
        if self.monitor is not None:
            self.monitor.stop()
        self.parts.board.leave(self.parts.index, os.getpid())


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The worker's event loop: uvloop's where it is installed, else asyncio's own."""
    try:
        import uvloop  # noqa: PLC0415 - optional: not on Windows

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - depends on the platform
        return asyncio.new_event_loop()


async def _pulse(load: WorkerLoad) -> None:
    """Note, a few times a second, that the event loop runs (the monitor's heartbeat needs it)."""
    while True:
        load.pulse = time.monotonic()
        await asyncio.sleep(0.2)


async def _stop(
    server: grpc.aio.Server,
    grace: float | None,
    http: HttpServer | None,
    handlers: Worker,
    index: int,
) -> None:
    """Let the calls in flight finish within ``grace`` (None: however long they take) while the
    drained worker refuses new ones with UNAVAILABLE and its health says NOT_SERVING (clients
    and load balancers go elsewhere), then stop gRPC and HTTP, cancelling what is left."""
    loop = asyncio.get_running_loop()
    deadline = None if grace is None else loop.time() + grace
    handlers.end_idle_carriers()
    load = handlers.load
    while load.in_flight + load.queued and (deadline is None or loop.time() < deadline):
        await asyncio.sleep(_DRAIN_POLL_SECONDS)
    if load.in_flight + load.queued:
        log.warning(
            "worker %d: %d call(s) still running at the end of the grace period (%gs, "
            "--grace-seconds) are cut off; their callers get UNAVAILABLE",
            index,
            load.in_flight + load.queued,
            grace,
        )
    left = None if deadline is None else max(0.0, deadline - loop.time())
    await asyncio.gather(server.stop(left), *([http.stop()] if http is not None else []))
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_asyncgens()


def build_server(
    settings: Settings,
    identity: WorkerIdentity,
    *,
    registry: ModelRegistry | None = None,
    address: str | None = None,
    board: WorkerBoard | None = None,
    on_hung: Callable[[], None] | None = None,
    placement: Placement | None = None,
) -> RunningServer:
    """Load the models (unless given), then start a gRPC server on ``address``
    (default: settings' host and port, shared with the other workers by SO_REUSEPORT),
    served by an event loop in a new thread.

    ``board`` is the supervisor's worker board (default: a board of this worker alone);
    ``on_hung`` is called once if a call runs past the call time limit (default: drain);
    ``placement`` says which models this worker loads and what they are told (default: this
    worker's, by the settings). With ``settings.metrics_port`` set, the worker records its
    metrics (tms_server.metrics).
    """
    # TMS checks --max-pixels itself before decoding; Pillow's own, lower limit would warn.
    PILImage.MAX_IMAGE_PIXELS = None
    index = identity.worker_index if board is not None else 0
    if placement is None:
        placement = worker_placement(settings, index)
    board = board if board is not None else WorkerBoard(1)
    # Before loading: reloads posted from now on are ours too, the last one is in our models.
    reload = board.join(index, os.getpid())
    metrics = WorkerMetrics(index, placement.device) if settings.metrics_port is not None else None
    if registry is None:
        registry = ModelRegistry.load(
            settings.models,
            entry_points=settings.entry_points,
            on_load=metrics.model_loaded if metrics is not None else None,
            placement=placement,
            max_batch_size=settings.max_batch_size,
            batching=settings.batching
            if metrics is None
            else replace(settings.batching, observe=metrics.batched),
        )
    registry.settled = board.settled  # whether the workers of models placed elsewhere are up
    registry.failed_elsewhere = lambda: board.failures_elsewhere(index)
    loop = new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="tms-loop", daemon=True)
    thread.start()
    bind = address or host_port(settings.host, settings.port)
    start = _start(
        settings,
        identity=identity,
        registry=registry,
        board=board,
        index=index,
        bind=bind,
        metrics=metrics,
        reload=reload,
    )
    running = asyncio.run_coroutine_threadsafe(start, loop).result()
    running.monitor = WorkerMonitor(
        running.parts,
        call_time_limit=settings.call_time_limit,
        on_hung=on_hung if on_hung is not None else running.drain,
        runner=running.runner,
        metrics=metrics,
    )
    board.post_failures(index, registry.failed)
    board.post(index, in_flight=0, queued=0, calls=0, serving=True)
    running.monitor.start()
    return running


async def _start(
    settings: Settings,
    *,
    identity: WorkerIdentity,
    registry: ModelRegistry,
    board: WorkerBoard,
    index: int,
    bind: str,
    metrics: WorkerMetrics | None,
    reload: int,
) -> RunningServer:
    """Make and start the server, on the event loop that is to serve it."""
    loop = asyncio.get_running_loop()
    load = WorkerLoad(identity.key)
    load.reload = reload
    held = None if settings.allow_failed_models else lambda: board.failed_elsewhere(index)
    health = HealthServicer(loop, max_watches=settings.max_health_watches, held=held)
    parts = WorkerParts(
        index=index,
        registry=registry,
        load=load,
        health=health,
        board=board,
        reloader=Reloader(registry, health),
    )
    runner = CallRunner(
        load,
        threads=settings.threads,
        max_queued=settings.max_queued_calls,
        max_pixels=settings.max_pixels_in_flight,
    )
    watch = StallWatch(settings.slow_client_seconds, settings.max_untaken_mb * 1024 * 1024)
    worker = Worker(
        load,
        runner,
        watch,
        metrics=metrics,
        log_requests=settings.log_requests,
        max_streams=settings.max_streams,
        crashes=board.crashes.guard(index),
    )
    models = ModelServicer(
        registry,
        identity,
        max_pixels=settings.max_pixels,
        max_batch_size=settings.max_batch_size,
        load=load,
        regions=Regions(
            enabled=settings.shared_memory, max_bytes=settings.max_shared_memory_mb * 1024 * 1024
        ),
    )
    inference = oip.InferenceServicer(models, registry, health)
    admin_tokens = security.token_file(settings, "admin_tokens_file")
    admin = AdminServicer(parts, admin_tokens=admin_tokens)
    server, port = new_grpc_server(
        settings, bind, worker, models=models, inference=inference, admin=admin, health=health
    )
    watch.port = port
    await server.start()
    http = None
    if settings.http_port is not None:
        http = await HttpServer.start(
            settings,
            settings.http_port,
            worker=worker,
            models=models,
            inference=inference,
            registry=registry,
            health=health,
        )
    report_serving(health, registry, allow_failed_models=settings.allow_failed_models)
    watch.start()
    return RunningServer(
        server=server,
        parts=parts,
        handlers=worker,
        port=port,
        runner=runner,
        watch=watch,
        http=http,
    )


#: How often a worker checks that its supervisor is still alive.
SUPERVISOR_CHECK_SECONDS = 1.0


def worker_placement(settings: Settings, index: int) -> Placement:
    """Where worker ``index`` stands: every worker's device, and its models' thread count."""
    devices = settings.worker_devices
    threads = model_threads(settings.model_threads, len(devices), os.environ)
    return Placement(index, devices, threads)


def prepare_process(settings: Settings, placement: Placement) -> dict[str, str]:
    """Set, in this worker process and before any model is imported, the variables that
    libraries read when they load: CUDA_VISIBLE_DEVICES (the worker's GPU alone; none on cpu)
    and the thread counts of the numerical libraries (tms_server.cpus). Returns what it set."""
    inherited = os.environ.get(VISIBLE)
    environment = {VISIBLE: cuda_visible_devices(placement.device, inherited)}
    environment.update(thread_environment(placement.threads, settings.model_threads, os.environ))
    os.environ.update(environment)
    if "OPENBLAS_NUM_THREADS" in environment:  # numpy's OpenBLAS loaded before the fork
        limit_loaded_blas(placement.threads)
    return environment


def limit_memory(megabytes: int) -> None:
    """Bound this process's address space (RLIMIT_AS): allocations past it fail, and a model
    asking for too much gets MemoryError instead of taking the machine's memory."""
    limit = megabytes * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY and hard < limit:
        limit = hard
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def run_worker(
    settings: Settings,
    index: int,
    instance_id: str,
    *,
    ready: Callable[[dict[str, str]], None] | None = None,
    board: WorkerBoard | None = None,
    supervisor: int | None = None,
) -> None:
    """Body of a worker process: serve until SIGTERM, SIGINT or SIGHUP, then stop gracefully and
    exit; the process ends here, without waiting for model calls still running (Python cannot
    stop a thread, and a hung one would keep the process alive).

    Once serving it calls ``ready`` with the models that failed to load and why: the
    supervisor says each failure once, for all workers.

    If a call runs past the call time limit, stop the same way and exit with EXIT_HUNG, to be
    replaced. If ``supervisor`` (the pid of the parent process) dies, stop the same way too:
    a worker never outlives the supervisor that would replace and stop it. If it finds no
    model to load (the models folder gone since the server started), it says why and exits
    with EXIT_NO_MODELS, to be started again after a delay.
    """
    placement = worker_placement(settings, index)
    identity = WorkerIdentity(
        instance_id, index, len(placement.devices), __version__, device=placement.device
    )
    stop = StopFlag()
    hung = threading.Event()

    def on_hung() -> None:
        hung.set()
        stop.set("a call past the call time limit")

    stop_on_signals(stop)
    logs.configure(settings.log_level, settings.log_format, worker=index)  # its lines name it
    # A crash (a native library's SIGSEGV, SIGABRT, SIGBUS) writes the crashing thread's
    # stack to stderr, as text: the supervisor's line can say how the worker died, not where.
    faulthandler.enable(all_threads=False)
    limit_arenas()
    if settings.worker_memory_mb:
        limit_memory(settings.worker_memory_mb)
    try:
        environment = prepare_process(settings, placement)
        log.info(
            "worker %d on %s (%s=%r), model threads %d",
            index,
            placement.device,
            VISIBLE,
            environment[VISIBLE],
            placement.threads,
        )
        running = build_server(
            settings, identity, board=board, on_hung=on_hung, placement=placement
        )
    except NoModelsError as exc:
        # Serving nothing would take calls it can only refuse: exit, and the supervisor
        # starts it again after a delay that grows while the folder stays empty.
        log.error("worker %d has no model to serve: %s; exiting", index, exc)
        _exit(EXIT_NO_MODELS)
    except (MemoryError, RuntimeError) as exc:
        out = isinstance(exc, MemoryError) or "can't start new thread" in str(exc)
        if not (out and settings.worker_memory_mb):
            raise
        log.debug("worker %d failed to start", index, exc_info=True)
        log.error(
            "worker %d cannot start: --worker-memory-mb %d is too low for the worker itself "
            "(%s: %s); leave room for its threads, gRPC and libraries besides the models",
            index,
            settings.worker_memory_mb,
            type(exc).__name__,
            exc,
        )
        _exit(1)
    registry = running.parts.registry
    log.info(
        "worker %d serving %d model(s) on port %d%s%s",
        index,
        len(registry.models),
        running.port,
        f" ({len(registry.elsewhere)} more on other workers)" if registry.elsewhere else "",
        f"; {len(registry.failed)} failed to load" if registry.failed else "",
    )
    if ready is not None:
        ready(registry.failed)
    while not stop.wait(SUPERVISOR_CHECK_SECONDS):
        FAILURES.flush()  # how often a failure repeated, once its window is over
        if supervisor is not None and os.getppid() != supervisor:
            log.warning("worker %d: supervisor (pid %d) is gone; stopping", index, supervisor)
            break
    log.info("worker %d stopping; in-flight calls have %.0fs", index, settings.grace_seconds)
    running.stop(settings.grace_seconds)
    _exit(EXIT_HUNG if hung.is_set() else 0)


def _exit(code: int) -> NoReturn:
    """End the worker process at once, its log written out."""
    FAILURES.flush(everything=True)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
