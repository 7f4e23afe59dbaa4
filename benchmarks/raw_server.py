"""The baseline for ``bench_mean.py``: raw grpcio computing the mean of an image, nothing else.

Shaped like ``tms-server`` so the two compare fairly: a parent reserves the port with
SO_REUSEPORT, forks N worker processes before any gRPC object exists, and each worker serves
on that port with its own ``grpc.server`` (8 threads by default). The service is generic,
with identity serializers (raw bytes in, raw bytes out):

- ``/bench.Raw/Mean``: request = shape header (3 x uint32 little-endian: H, W, C) + uint8
  pixels; response = the mean as one little-endian float64.
- ``/bench.Raw/Echo``: request as for Mean; response = the mean (float64) followed by the
  pixels, sent back (the baseline of an image-to-image call, for ``bench_shm.py``).
- ``/bench.Raw/Pid``: the worker's pid as text, so a client can hold one channel per worker.

With ``--aio`` each worker serves with grpc.aio instead, on uvloop where it is installed, the
handlers running on the event loop: the transport tms-server's workers use, with nothing else
of TMS (report.py's "where a small call's time goes" compares the two).

Run ``python benchmarks/raw_server.py --port 0``; when every worker is serving it prints
``raw-server: serving on HOST:PORT with N worker(s)`` and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import multiprocessing
import os
import signal
import socket
import struct
import threading
from collections.abc import Callable
from concurrent import futures
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
import numpy as np

__all__ = ["ECHO_METHOD", "HEADER", "MEAN_METHOD", "PID_METHOD", "RESULT", "main", "pixel_mean"]

SERVICE = "bench.Raw"
MEAN_METHOD = f"/{SERVICE}/Mean"
PID_METHOD = f"/{SERVICE}/Pid"
ECHO_METHOD = f"/{SERVICE}/Echo"
HEADER = struct.Struct("<3I")  # H, W, C of the uint8 pixels that follow
RESULT = struct.Struct("<d")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # as tms-server's default --max-message-mb
_READY_TIMEOUT = 60.0
MEAN_MODEL = Path(__file__).resolve().parent.parent / "examples" / "models" / "mean"


def _example_mean() -> Any:
    """The ``pixel_mean`` of the example ``mean`` model: the baseline does the model's work."""
    spec = importlib.util.spec_from_file_location("mean_model", MEAN_MODEL / "__init__.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {MEAN_MODEL}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.pixel_mean


pixel_mean = _example_mean()


def mean(request: bytes, context: grpc.ServicerContext) -> bytes:
    """The mean of the pixels of a request (a view of its bytes: no copy)."""
    shape = HEADER.unpack_from(request)
    pixels = np.frombuffer(request, dtype=np.uint8, offset=HEADER.size).reshape(shape)
    return RESULT.pack(pixel_mean(pixels))


def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    """The mean of the pixels of a request, then the pixels (one copy, into the response)."""
    shape = HEADER.unpack_from(request)
    pixels = np.frombuffer(request, dtype=np.uint8, offset=HEADER.size).reshape(shape)
    return b"".join((RESULT.pack(pixel_mean(pixels)), pixels.data.cast("B")))


def pid(request: bytes, context: grpc.ServicerContext) -> bytes:
    return str(os.getpid()).encode()


FUNCTIONS = {"Mean": mean, "Echo": echo, "Pid": pid}
OPTIONS = [
    ("grpc.so_reuseport", 1),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


def _serve(host: str, port: int, threads: int, ready: Connection) -> None:
    """Body of one worker process: serve on the shared port until SIGTERM/SIGINT."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=OPTIONS)
    handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
        name: grpc.unary_unary_rpc_method_handler(function) for name, function in FUNCTIONS.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"{host}:{port}")
    server.start()
    ready.send(os.getpid())
    ready.close()
    while not stop.wait(3600):
        pass
    server.stop(1.0).wait()


def _serve_aio(host: str, port: int, threads: int, ready: Connection) -> None:
    """Body of one worker process with grpc.aio: the same handlers, on the event loop."""

    def on_loop(function: Callable[[bytes, Any], bytes]) -> Any:
        async def handle(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            return function(request, context)

        return handle

    async def serve() -> None:
        server = grpc.aio.server(options=OPTIONS)
        handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
            name: grpc.unary_unary_rpc_method_handler(on_loop(function))
            for name, function in FUNCTIONS.items()
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        server.add_insecure_port(f"{host}:{port}")
        await server.start()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        ready.send(os.getpid())
        ready.close()
        await stop.wait()
        await server.stop(1.0)

    try:
        import uvloop  # noqa: PLC0415 - as tms-server's workers: uvloop where installed

        uvloop.run(serve())
    except ImportError:
        asyncio.run(serve())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--threads", type=int, default=8, help="threads per worker process")
    parser.add_argument("--aio", action="store_true", help="grpc.aio workers (see above)")
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    # Hold the port (bound, not listening) so --port 0 works and workers can share it.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((args.host, args.port))
    port = sock.getsockname()[1]
    context = multiprocessing.get_context("fork")
    processes = []
    try:
        receivers = []
        for index in range(args.workers):
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(
                target=_serve_aio if args.aio else _serve,
                args=(args.host, port, args.threads, sender),
                name=f"raw-worker-{index}",
            )
            process.start()
            sender.close()
            processes.append(process)
            receivers.append(receiver)
        for receiver in receivers:
            if not receiver.poll(_READY_TIMEOUT):
                raise SystemExit("raw-server: a worker did not start in time")
            receiver.recv()
        print(
            f"raw-server: serving on {args.host}:{port} with {args.workers} worker(s)", flush=True
        )
        while not stop.wait(0.2):
            if any(p.exitcode is not None for p in processes):
                raise SystemExit("raw-server: a worker died")
    finally:
        for process in processes:
            if process.exitcode is None and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            process.join(5.0)
            if process.exitcode is None:
                process.kill()
                process.join()
        sock.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
