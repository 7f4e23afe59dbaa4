"""Callers that stall a call: slow to send its request, or never taking its answer.

A worker's event loop reads requests and sends answers, so such a caller holds no thread; but a
stalled call keeps what it has received, or is to send, until its connection ends, and gRPC
Python cannot cancel one call of a server. So the StallWatch ends the *connection*: it finds the
connection's socket among the process's file descriptors by its two addresses and shuts it down,
and gRPC drops every call on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import urllib.parse
from typing import Any

import grpc

__all__ = ["Context", "StallWatch", "close_connection"]

log = logging.getLogger("tms_server")
Context = grpc.aio.ServicerContext[Any, Any]


class StallWatch:
    """Closes the connections of callers that stall: a call waits more than ``limit`` seconds
    for its caller to send the request or to take the answer, or the answers waiting to be
    taken add up to more than ``max_untaken`` bytes (the connections holding the most go
    first, with every call on them).

    gRPC Python cannot cancel one call of a server, and a stalled call keeps what it has
    received, or is to send, until its connection ends; so the watch ends the connection,
    which ends every call on it.
    """

    def __init__(self, limit: float, max_untaken: int, port: int = 0) -> None:
        self.limit = limit
        self.max_untaken = max_untaken
        self.port = port  # the worker's port, set once bound
        self.untaken = 0  # bytes of answers handed to gRPC and not yet taken
        self.closed = 0  # connections closed so far
        self._since: dict[Context, tuple[float, int]] = {}
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return (
            f"<StallWatch limit={self.limit:g}s waiting={len(self._since)} "
            f"untaken={self.untaken} closed={self.closed}>"
        )

    def begin(self, context: Context, size: int = 0) -> None:
        """The call now waits for its caller: to send the request, or (``size`` > 0) to take
        an answer of ``size`` bytes."""
        self._since[context] = (time.monotonic(), size)
        if size:
            self.untaken += size
            if self.untaken > self.max_untaken:
                self._shed(context)

    def end(self, context: Context) -> None:
        _, size = self._since.pop(context, (0.0, 0))
        self.untaken -= size

    def _shed(self, newest: Context) -> None:
        """Close connections, those holding the most untaken bytes first (``newest`` aside,
        just handed over), until the rest fit: a caller taking nothing, not one whose small
        answer happens to be on its way."""
        calls: dict[str, list[Context]] = {}
        held: dict[str, int] = {}
        for context, (_, size) in self._since.items():
            peer = _peer(context)
            if size and peer is not None:
                calls.setdefault(peer, []).append(context)
                held[peer] = held.get(peer, 0) + (size if context is not newest else 0)
        for peer in sorted(held, key=held.__getitem__, reverse=True):
            if self.untaken <= self.max_untaken or not held[peer]:
                break
            self._close(
                calls[peer],
                f"answers waiting to be taken exceed {self.max_untaken} bytes "
                f"(--max-untaken-mb); it holds {held[peer]} bytes of them, the most",
            )

    def check(self) -> None:
        """Close the connections of calls that have waited past the limit."""
        if not self.limit:
            return
        now = time.monotonic()
        stalled = [c for c, (since, _) in self._since.items() if now - since > self.limit]
        if stalled:
            self._close(
                stalled,
                f"a call of it has waited over {self.limit:g}s for it to send the request "
                "or take the answer (--slow-client-seconds)",
            )

    def _close(self, contexts: list[Context], why: str) -> None:
        peers = set()
        for context in contexts:
            self.end(context)
            with contextlib.suppress(Exception):  # the call may have ended meanwhile
                peers.add(context.peer())
        for peer in peers:
            log.warning("closing the connection of %s: %s", peer, why)
            if close_connection(peer, self.port):
                self.closed += 1

    def start(self) -> None:
        """Check every second, on the running event loop, until the loop stops."""
        self._task = asyncio.get_running_loop().create_task(self.run(), name="tms-stall-watch")

    async def run(self, interval: float = 1.0) -> None:
        """Check every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                self.check()
            except Exception:  # keep watching whatever one round ran into
                log.exception("stall watch failed")


def _peer(context: Context) -> str | None:
    """The caller's address, or None once the call has ended."""
    try:
        return context.peer()
    except Exception:
        return None


def _address(peer: str) -> tuple[str, int] | None:
    """(host, port) of a gRPC peer string: ``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5`` (maybe
    percent-encoded)."""
    scheme, _, rest = urllib.parse.unquote(peer).partition(":")
    if scheme not in ("ipv4", "ipv6"):
        return None
    host, _, port = rest.rpartition(":")
    return host.strip("[]"), int(port)


def close_connection(peer: str, port: int) -> bool:
    """Shut down this process's TCP connection from ``peer`` to local ``port``; whether found.

    The socket is found among the process's file descriptors by its two addresses, and shut
    down through a duplicate descriptor: gRPC sees the connection end and drops its calls.
    """
    wanted = _address(peer)
    if wanted is None:
        return False
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        with sock:
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                local, remote = sock.getsockname(), sock.getpeername()
            except OSError:
                continue
            if local[1] == port and (_unmapped(remote[0]), remote[1]) == wanted:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                return True
    return False


def _unmapped(host: str) -> str:
    return host.removeprefix("::ffff:")  # an IPv4 caller of a dual-stack socket
