"""The supervisor's loop, without processes: a fake worker process that has exited."""

from __future__ import annotations

import signal
from types import SimpleNamespace
from typing import Any

from tms_server.settings import Settings
from tms_server.signals import StopFlag
from tms_server.supervisor import Supervisor


def test_a_worker_waiting_to_be_restarted_leaves_the_supervisor_at_its_idle_pace() -> None:
    supervisor = Supervisor(Settings(workers=1), StopFlag())
    slot = supervisor._slots[0]
    # It crashed while starting, seen exiting before its exit code was known.
    process: Any = SimpleNamespace(pid=2**22 + 1, exitcode=-signal.SIGSEGV, sentinel=-1)
    slot.process = process
    slot.dying = True
    supervisor._reap()
    assert slot.restart_at > 0  # restarted after a delay: no process runs meanwhile
    assert supervisor._tick() == 0.1  # not a round every 5 ms for the whole delay
