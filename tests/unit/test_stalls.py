"""The stall watch's shedding of untaken answers, with stand-ins for gRPC's call contexts, and
its closing of a caller's connection, on real sockets."""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import pytest

from tms_server.stalls import StallWatch, close_connection

MIB = 1024 * 1024


class Call:
    """What the watch reads of a call: its caller's address."""

    def __init__(self, peer: str) -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer


def test_untaken_answers_shed_the_caller_holding_most_not_the_oldest_answer() -> None:
    # A bystander's small answer is on its way (the oldest one waiting) when a caller that
    # takes nothing runs the total over the limit: the hog's connection goes, with all its
    # calls, and the bystander's stays.
    watch = StallWatch(limit=60, max_untaken=64 * MIB)
    bystander = Call("ipv4:127.0.0.1:40001")
    hog = [Call("ipv4:127.0.0.1:40002") for _ in range(4)]
    watch.begin(bystander, 1024)  # type: ignore[arg-type]
    for call in hog:  # 80 MiB with the fourth
        watch.begin(call, 20 * MIB)  # type: ignore[arg-type]
    waiting: dict[Any, Any] = watch._since  # what the watch still holds
    assert list(waiting) == [bystander]
    assert watch.untaken == 1024


def test_one_large_answer_alone_is_not_shed() -> None:
    # An answer just handed over counts, but its own connection is not closed for it alone.
    watch = StallWatch(limit=60, max_untaken=64 * MIB)
    big = Call("ipv4:127.0.0.1:40003")
    watch.begin(big, 100 * MIB)  # type: ignore[arg-type]
    assert watch.untaken == 100 * MIB
    watch.end(big)  # type: ignore[arg-type]
    assert watch.untaken == 0


def connected_pair(source: int, listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    """A connection from local port ``source`` (0: any) to ``listener``: (caller's end, accepted
    end)."""
    caller = socket.socket()
    caller.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    caller.bind(("127.0.0.1", source))
    caller.connect(listener.getsockname())
    accepted, _ = listener.accept()
    return caller, accepted


@pytest.mark.parametrize("target", [0, 1])
def test_a_connection_is_closed_on_the_port_named_not_another_from_the_same_caller(
    target: int,
) -> None:
    # One caller's port may reach two ports of the worker (Linux reuses a source port for
    # other destinations): only the connection to the port named is shut down.
    with contextlib.ExitStack() as stack:
        listeners = [stack.enter_context(socket.create_server(("127.0.0.1", 0))) for _ in "ab"]
        first = connected_pair(0, listeners[0])
        source = first[0].getsockname()[1]
        pairs = [first, connected_pair(source, listeners[1])]
        for pair in pairs:
            for end in pair:
                stack.enter_context(end)
        port = listeners[target].getsockname()[1]
        assert close_connection(f"ipv4:127.0.0.1:{source}", port)
        for index, (caller, accepted) in enumerate(pairs):
            caller.settimeout(5)
            if index == target:
                assert caller.recv(1) == b""  # shut down: the caller reads its end
            else:
                caller.sendall(b"x")
                accepted.settimeout(5)
                assert accepted.recv(1) == b"x"  # untouched
