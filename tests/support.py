"""Helpers for tests: model folders and TMS servers on loopback, in-process or as processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.exceptions
import h2.settings
import numpy as np

from tms.v1 import model_service_pb2
from tms_server import __version__
from tms_server.servicer import WorkerIdentity
from tms_server.settings import Settings
from tms_server.worker import RunningServer, build_server

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_MODELS = ROOT / "examples" / "models"
#: The names of the bundled example models, sorted: a server on EXAMPLE_MODELS lists them all.
EXAMPLE_NAMES = sorted(path.parent.name for path in EXAMPLE_MODELS.glob("*/__init__.py"))


#: A model whose two calls of one ``args["phase"]`` meet at a barrier: each answers
#: {"together": true} when the worker ran them at once, false after 3 s alone.
MEET = """
import threading
import tms_server

barriers = {}
lock = threading.Lock()

class Model(tms_server.Model):
    thread_safe = True
    args_schema = {"type": "object"}

    def run(self, image, args):
        with lock:
            barrier = barriers.setdefault(args["phase"], threading.Barrier(2))
        try:
            barrier.wait(timeout=3)
        except threading.BrokenBarrierError:
            return {"together": False}
        return {"together": True}
"""


#: An image model that only the first worker to load it has, until its folder holds "ready"
#: (the clients' reload-following tests load it on more workers with a reload).
LATE_IMAGE_MODEL = """
    import os
    from pathlib import Path

    import tms_server

    class Model(tms_server.Model):
        thread_safe = True

        def __init__(self):  # the first worker to load it has it; the others fail to, unless
            here = Path(__file__).parent  # the model's folder holds "ready"
            if not (here / "ready").exists():
                os.close(os.open(here / "taken", os.O_CREAT | os.O_EXCL))

        def run(self, image, args):
            return {"pid": os.getpid()}
"""


def write_models(folder: Path, sources: dict[str, str]) -> Path:
    """Write one model package per (name, source of its __init__.py) into ``folder``."""
    for name, source in sources.items():
        package = folder / name
        package.mkdir(parents=True, exist_ok=True)
        (package / "__init__.py").write_text(textwrap.dedent(source))
    return folder


def write_plugin(folder: Path) -> Path:
    """An installed-looking package, ``tms_test_plugin``, whose ``tms.models`` entry point
    names one text model, ``reverse``; put ``folder`` on the import path to install it."""
    package = folder / "tms_test_plugin"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "import tms_server\n\n"
        "class Reverse(tms_server.Model):\n"
        "    inputs = 'text'\n\n"
        "    def run(self, text, args):\n"
        "        return text[::-1]\n"
    )
    dist_info = folder / "tms_test_plugin-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: tms-test-plugin\nVersion: 1.0\n"
    )
    (dist_info / "entry_points.txt").write_text("[tms.models]\nreverse = tms_test_plugin:Reverse\n")
    return folder


@dataclass
class InProcessServer:
    running: RunningServer
    identity: WorkerIdentity

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"


def digit_scans() -> tuple[list[Any], Any]:
    """scikit-learn's 1,797 scans of handwritten digits (what examples/models/digits learns
    from) as a user would send them: 32x32 grayscale uint8 images, dark ink on white (each 8x8
    count of ink spread back over the 4x4 pixels it counted), and their digits."""
    import sklearn.datasets  # noqa: PLC0415 - seconds to import: only where it is used

    scans = sklearn.datasets.load_digits()
    images = 255 - np.rint(scans.images * (255 / 16)).astype(np.uint8)
    return [np.kron(image, np.ones((4, 4), np.uint8)) for image in images], scans.target


def start_in_process(
    models: Path, *, entry_points: bool = False, **overrides: Any
) -> InProcessServer:
    """One worker's gRPC server inside the test process, on a free loopback port."""
    settings = Settings(models=models, entry_points=entry_points, workers=1, **overrides)
    identity = WorkerIdentity(uuid.uuid4().hex, 0, 1, __version__)
    running = build_server(settings, identity, address="127.0.0.1:0")
    return InProcessServer(running, identity)


class ServerProcess:
    """A real ``tms-server`` (supervisor and workers) started as a subprocess.

    A thread reads everything the server writes (stdout and stderr) as it comes, so the
    server never blocks on a full pipe and no line waits unseen in a read buffer.
    """

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.target = ""
        self.output: list[str] = []
        self._started = threading.Event()
        self._reader = threading.Thread(target=self._read, name="tms-server-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:  # until every process holding the pipe has exited
            for line in self.process.stdout:
                self.output.append(line)
                if not self._started.is_set() and line.startswith("tms-server: serving on "):
                    self.target = line.split()[3]
                    self._started.set()
        self._started.set()  # the server exited: stop waiting for it

    def wait_started(self, timeout: float) -> bool:
        """Whether the server said it serves within ``timeout`` seconds."""
        self._started.wait(timeout)
        return bool(self.target)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the supervisor and wait for it (killing it after ``timeout``)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._reader.join(timeout)
        return code

    def logs(self) -> str:
        """Everything the server has written so far (stdout and stderr)."""
        return "".join(self.output)


def start_process(
    models: Path,
    *,
    workers: int | None = 2,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
) -> ServerProcess:
    """Start ``python -m tms_server`` on a free loopback port and wait until it serves (a
    server that exits ends the wait at once; the example models alone took up to a minute
    to start on a busy 2-core machine)."""
    command = [sys.executable, "-m", "tms_server", "--host", "127.0.0.1", "--port", "0"]
    command += ["--models", str(models), *args]
    if workers is not None:
        command += ["--workers", str(workers)]
    server = ServerProcess(
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
    )
    if server.wait_started(timeout):
        return server
    server.stop(signal.SIGKILL, timeout=10)
    raise RuntimeError("tms-server did not start:\n" + server.logs())


@contextlib.contextmanager
def refusing_target() -> Iterator[str]:
    """A target on 127.0.0.1 where nothing listens, for the block: connections are refused.

    The port stays bound (not listening) meanwhile. A port found free and then let go may be
    taken by any other process on the machine (a server, another test's), or be picked as the
    source port of a connection to it, which then reaches itself: neither is refused.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """SIGSTOP ``pid`` for the block (a wedged process, to its peers), once all its threads
    have stopped; SIGCONT it afterwards if it still exists. A stop is not done when ``kill``
    returns: one thread of the process takes the signal when it next runs and stops the
    others, and on a busy machine the rest go on for milliseconds meanwhile."""
    os.kill(pid, signal.SIGSTOP)
    try:
        assert wait_for(lambda: _all_stopped(pid), 10, interval=0.001), f"{pid} did not stop"
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def _all_stopped(pid: int) -> bool:
    """Whether every thread of process ``pid`` is stopped (state T in /proc)."""
    try:
        threads = list(Path(f"/proc/{pid}/task").iterdir())
        return all(_state(thread / "stat") == "T" for thread in threads)
    except (FileNotFoundError, ProcessLookupError):  # a thread ended while they were read
        return False


def _state(stat: Path) -> str:
    """The state letter of a process or thread, from its /proc stat file."""
    return stat.read_text().rpartition(")")[2].split()[0]


def answer_once_started(command: list[str], start: Callable[[], object]) -> Any:
    """Run ``command``, a client told to wait for a server at a port where none listens yet;
    two seconds in, when it must still be waiting, ``start`` the server there. The client's
    JSON answer (it must exit 0)."""
    client = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2)
        assert client.poll() is None  # still waiting, where it would have failed at once
        start()
        stdout, stderr = client.communicate(timeout=60)
    finally:
        client.kill()
        client.wait()
    assert client.returncode == 0, stderr
    return json.loads(stdout)


def wait_for(condition: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    """Whether ``condition`` came true within ``timeout`` seconds (polled every ``interval``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


def alive(pid: int) -> bool:
    """Whether a process that is not our child still runs (zombies count as gone)."""
    try:
        return _state(Path(f"/proc/{pid}/stat")) != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or before the read
        return False


def memory_mb(pid: int, field: str = "VmRSS") -> float:
    """A memory figure of process ``pid`` from /proc (VmRSS now, VmHWM its peak), in MiB."""
    return status_of(pid, field) / 1024


def status_of(pid: int, field: str) -> int:
    """A number of process ``pid``'s /proc status: VmRSS (KiB), Threads..."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


def closed_by_peer(connection: socket.socket, timeout: float | None = None) -> bool:
    """Whether the other end closes ``connection`` (an end of stream or a reset) within
    ``timeout`` seconds (None: the socket's own timeout)."""
    if timeout is not None:
        connection.settimeout(timeout)
    try:
        return connection.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` holds a listening socket on (from /proc, Linux)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:["):
                inodes.add(link[len("socket:[") : -1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/net/{table}") as rows:
            next(rows)  # the header
            for row in rows:
                fields = row.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@contextlib.contextmanager
def early_ending_server() -> Iterator[str]:
    """A stand-in server on loopback (none of TMS's does this), its target: a worker that
    reads two frames of a stream, answers the first and ends the stream well, so the second
    frame is lost. A client must fail such a stream (INTERNAL), not end it quietly."""
    pb = model_service_pb2

    def worker_info(request: bytes, context: grpc.ServicerContext) -> bytes:
        info = pb.GetWorkerInfoResponse(instance_id="early", pid=1, worker_index=0, worker_count=1)
        return info.SerializeToString()

    def stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        next(requests)
        next(requests)
        yield pb.RunImageStreamResponse(frame_id=0, result_json="{}").SerializeToString()

    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "GetWorkerInfo": grpc.unary_unary_rpc_method_handler(worker_info),
        "RunImageStream": grpc.stream_stream_rpc_method_handler(stream),
    }
    fake = grpc.server(ThreadPoolExecutor(4))
    fake.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("tms.v1.ModelService", handlers),)
    )
    port = fake.add_insecure_port("127.0.0.1:0")
    fake.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        fake.stop(None)


def _grpc_frame(message: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(message)) + message


class NonReadingCaller:
    """A raw HTTP/2 client that sends calls and never opens its flow-control window, so the
    server can send it nothing; it answers pings, as a live peer does."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        self.sock.sendall(self.conn.data_to_send())

    def call(self, path: str, message: bytes) -> None:
        stream = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "tms"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        self.conn.send_headers(stream, headers)
        self.conn.send_data(stream, _grpc_frame(message), end_stream=True)
        self.sock.sendall(self.conn.data_to_send())

    def closed_by_server(self, timeout: float) -> bool:
        """Read (answering pings, never opening a window) until the server closes the
        connection or ``timeout`` passes; whether it closed it."""
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionError:
                return True
            if not data:
                return True
            try:
                self.conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                return True
            self.sock.sendall(self.conn.data_to_send())
        return False

    def close(self) -> None:
        self.sock.close()
