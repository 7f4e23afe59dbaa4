"""Stop signals: SIGTERM, SIGINT and SIGHUP (a closed terminal; left alone where it is
ignored already, as under nohup) raise a flag the main thread waits on.

A Python signal handler runs in the main thread between two bytecodes: possibly while that
thread holds a lock, and, when signals come fast, inside another run of itself. So raising the
flag takes no lock (``threading.Event.set`` does: a handler that ran while the main thread
was inside ``Event.wait`` would wait for itself forever, and a storm of signals nested
handlers until a RecursionError killed the process), and the first stop signal turns them all
off: a stop signal sent again while the stop is under way changes nothing.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections.abc import Sequence
from types import FrameType

__all__ = ["STOP_SIGNALS", "StopFlag", "stop_on_signals"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class StopFlag:
    """A stop that a signal handler or any thread may ask for, once; the main thread waits
    for it. Raising it sets an attribute and writes a byte to a pipe ``wait`` watches."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._poll = select.poll()  # not select.select: no limit on the descriptor's number
        self._poll.register(self._read, select.POLLIN)
        self._set = False
        self.reason = ""  # what asked for the stop (a signal's name), once set

    def __repr__(self) -> str:
        return f"<StopFlag {'set: ' + self.reason if self._set else 'clear'}>"

    def set(self, reason: str = "") -> None:
        if self._set:
            return
        self.reason = reason
        self._set = True
        with contextlib.suppress(OSError):  # full (it cannot be: one byte) or closed
            os.write(self._write, b"!")

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float, also: Sequence[int] = ()) -> bool:
        """Whether the flag is set, waiting up to ``timeout`` seconds for it, or until one of
        the descriptors ``also`` is readable (a process's sentinel: it has exited)."""
        if not self._set:
            poll = self._poll
            if also:
                poll = select.poll()
                for fd in (self._read, *also):
                    poll.register(fd, select.POLLIN)
            poll.poll(max(0, round(timeout * 1000)))
        return self._set


def stop_on_signals(flag: StopFlag) -> None:
    """Make the first SIGTERM, SIGINT or SIGHUP set ``flag`` (with the signal's name) and
    ignore them all from then on; an ignored SIGHUP (nohup) stays ignored. Call from the main
    thread."""
    ignored = signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    signums = [signum for signum in STOP_SIGNALS if not (signum == signal.SIGHUP and ignored)]

    def on_signal(signum: int, frame: FrameType | None) -> None:
        for each in signums:
            signal.signal(each, signal.SIG_IGN)
        flag.set(signal.Signals(signum).name)

    for signum in signums:
        signal.signal(signum, on_signal)
