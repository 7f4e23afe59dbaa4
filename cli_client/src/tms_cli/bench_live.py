"""The live view of ``tms bench``: lines redrawn in place on a terminal, and the current rate."""

from __future__ import annotations

import shutil
from collections import deque
from typing import TextIO

__all__ = ["LiveView", "Rate"]

CLEAR_LINE = "\r\x1b[K"


class Rate:
    """Calls per second over about the last second."""

    def __init__(self, started: float, window: float = 1.0) -> None:
        self._samples: deque[tuple[float, int]] = deque([(started, 0)])
        self._window = window

    def update(self, now: float, done: int) -> float:
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self._window:
            self._samples.popleft()
        then, before = self._samples[0]
        return (done - before) / (now - then) if now > then else 0.0


class LiveView:
    """Lines redrawn in place on a terminal, and removed at the end."""

    def __init__(self, stream: TextIO, *, enabled: bool) -> None:
        self.enabled = enabled
        self._stream = stream
        self._drawn = 0

    def __repr__(self) -> str:
        return f"<LiveView enabled={self.enabled} lines={self._drawn}>"

    def draw(self, lines: list[str]) -> None:
        columns, rows = shutil.get_terminal_size()
        if len(lines) > rows - 2:  # lines that scroll away cannot be redrawn
            hidden = len(lines) - (rows - 3)
            lines = [*lines[: rows - 3], f"  ... and {hidden} more workers"]
        # Lines that wrap cannot be redrawn in place either.
        text = "".join(CLEAR_LINE + line[: columns - 1] + "\n" for line in lines)
        self._stream.write(self._up() + text)
        self._stream.flush()
        self._drawn = len(lines)

    def clear(self) -> None:
        if self.enabled and self._drawn:
            self._stream.write(self._up() + "\x1b[J")
            self._stream.flush()
            self._drawn = 0

    def _up(self) -> str:
        return f"\x1b[{self._drawn}F" if self._drawn else ""
