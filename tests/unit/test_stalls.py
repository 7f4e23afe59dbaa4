"""The stall watch's shedding of untaken answers, with stand-ins for gRPC's call contexts."""

from __future__ import annotations

from typing import Any

from tms_server.stalls import StallWatch

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
