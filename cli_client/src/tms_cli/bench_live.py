"""The live view of ``tms bench`` (Rich's Live, redrawn in place on a terminal and removed at
the end), and the current rate."""

from __future__ import annotations

from collections import deque
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.text import Text

__all__ = ["Rate", "live_view", "show"]


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


def live_view(stream: TextIO) -> Live | None:
    """A live view on ``stream`` if it is a terminal."""
    if not stream.isatty():
        return None
    console = Console(file=stream, markup=False, emoji=False, highlight=False)
    return Live(console=console, auto_refresh=False, transient=True)


def show(live: Live, lines: list[str]) -> None:
    """Draw ``lines`` now, in place of what was drawn before: cut at the terminal's width, and
    as many as fit its height (lines scrolled away could not be redrawn)."""
    rows = live.console.size.height - 1
    if len(lines) > rows:
        lines = [*lines[: rows - 1], f"  ... and {len(lines) - rows + 1} more"]
    live.update(Text("\n".join(lines), no_wrap=True, overflow="ellipsis"), refresh=True)
