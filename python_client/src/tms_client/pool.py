"""The worker pool: one gRPC channel per worker process behind an address.

A TMS server runs several worker processes on one port (SO_REUSEPORT); the kernel hands each
new TCP connection to one of them. The pool opens connections, each with a subchannel of its
own, and asks every one who answers (``GetWorkerInfo``: instance id and pid) until it holds one
connection to each of the server's workers, within a bounded number of attempts. Calls are
then spread over those connections by a balancer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from tms.v1 import model_service_pb2
from tms_client.balancers import Balancer, RoundRobin
from tms_client.exceptions import ConnectError, from_rpc_error, status_of

__all__ = ["Worker", "WorkerPool"]

log = logging.getLogger("tms_client")

_INFO_TIMEOUT = 5.0  # one GetWorkerInfo during discovery
_SERVICE = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"]


def _response_parser(method: str) -> Callable[[bytes], Any] | None:
    """How the response of ``method`` is parsed; None keeps the bytes (RunImageToImage's
    images are read in place by tms_client.wire)."""
    if method == "RunImageToImage":
        return None
    output = _SERVICE.methods_by_name[method].output_type.name
    parser: Callable[[bytes], Any] = getattr(model_service_pb2, output).FromString
    return parser


def _calls(channel: grpc.Channel) -> dict[str, grpc.UnaryUnaryMultiCallable[bytes, Any]]:
    """A callable per method of the service; each takes the request already serialized."""
    return {
        name: channel.unary_unary(
            f"/{_SERVICE.full_name}/{name}",
            request_serializer=None,
            response_deserializer=_response_parser(name),
        )
        for name in _SERVICE.methods_by_name
    }


@dataclass(eq=False)
class Worker:
    """One worker process and the channel connected to it."""

    target: str
    instance_id: str
    pid: int
    index: int
    count: int
    channel: grpc.Channel = field(repr=False)
    methods: dict[str, grpc.UnaryUnaryMultiCallable[bytes, Any]] = field(repr=False)
    calls: int = 0

    @property
    def key(self) -> tuple[str, int]:
        """What tells workers apart: (server instance id, pid)."""
        return (self.instance_id, self.pid)


class WorkerPool:
    """Discovers the workers behind ``target`` and picks one for each call."""

    def __init__(
        self,
        target: str,
        *,
        connect_timeout: float = 10.0,
        balancer: Balancer | None = None,
        max_message_bytes: int = 64 * 1024 * 1024,
        discovery_attempts: int | None = None,
    ) -> None:
        self.target = target
        self.connect_timeout = connect_timeout
        self.balancer: Balancer = balancer if balancer is not None else RoundRobin()
        self.discovery_attempts = discovery_attempts
        self._options: list[tuple[str, Any]] = [
            # A private subchannel pool gives every channel its own TCP connection, and so
            # a chance to land on another worker process.
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        self._lock = threading.Lock()
        self._workers: list[Worker] = []
        self._closed = False

    def __repr__(self) -> str:
        workers = ", ".join(f"pid {w.pid}: {w.calls} calls" for w in self._workers)
        return f"<WorkerPool target={self.target!r} workers=[{workers}]>"

    @property
    def workers(self) -> list[Worker]:
        return list(self._workers)

    def _open(self) -> grpc.Channel:
        return grpc.insecure_channel(self.target, options=self._options)

    def _identify(self, channel: grpc.Channel, timeout: float) -> Worker:
        methods = _calls(channel)
        info = methods["GetWorkerInfo"](b"", timeout=timeout, wait_for_ready=True)
        return Worker(
            target=self.target,
            instance_id=info.instance_id,
            pid=info.pid,
            index=info.worker_index,
            count=info.worker_count,
            channel=channel,
            methods=methods,
        )

    def start(self) -> None:
        """Wait for the server (up to the connect timeout), then find its workers."""
        channel = self._open()
        try:
            first = self._identify(channel, self.connect_timeout)
        except grpc.RpcError as exc:
            channel.close()
            if status_of(exc)[0] in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            ):
                raise ConnectError(
                    f"no TMS server answered at {self.target} within {self.connect_timeout:g}s"
                ) from exc
            raise from_rpc_error(exc) from exc
        found = {first.key: first}
        attempts = self.discovery_attempts
        if attempts is None:
            attempts = 10 * first.count + 10
        for _ in range(attempts):
            if len(found) >= first.count:
                break
            channel = self._open()
            try:
                worker = self._identify(channel, _INFO_TIMEOUT)
            except grpc.RpcError as exc:
                channel.close()
                log.warning("worker discovery at %s: %s", self.target, exc)
                continue
            if worker.key in found:
                channel.close()
            else:
                found[worker.key] = worker
        if len(found) < first.count:
            log.warning(
                "found %d of %d workers at %s after %d attempts",
                len(found),
                first.count,
                self.target,
                attempts,
            )
        with self._lock:
            self._workers = sorted(found.values(), key=lambda w: w.index)

    def pick(self) -> Worker:
        """The worker for the next call, chosen by the balancer."""
        workers = self._workers
        if not workers:
            raise ConnectError(f"no workers known at {self.target}; is the pool started?")
        worker = self.balancer.pick(workers)
        worker.calls += 1
        return worker

    def call(
        self,
        method: str,
        request: bytes,
        *,
        timeout: float | None,
        metadata: tuple[tuple[str, str | bytes], ...] | None = None,
    ) -> Any:
        """Send the serialized ``request`` to ``method`` of one worker; the parsed response."""
        worker = self.pick()
        try:
            return worker.methods[method](request, timeout=timeout, metadata=metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc

    def close(self) -> None:
        with self._lock:
            workers, self._workers = self._workers, []
            self._closed = True
        for worker in workers:
            worker.channel.close()
