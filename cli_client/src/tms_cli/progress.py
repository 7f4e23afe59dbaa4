"""A one-line progress bar on a terminal: images done, rate and time left."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["CLEAR_LINE", "MIN_IMAGES", "Progress"]

#: Fewer images than this finish too soon for a progress line to help.
MIN_IMAGES = 6
CLEAR_LINE = "\r\x1b[K"
_BAR_WIDTH = (10, 40)  # narrowest and widest bar, in characters


class Progress:
    """Redraws one line on ``stream`` as images finish, at most every ``interval`` seconds.

    Messages (``note``) go above the line. When disabled, only the messages are written.
    """

    def __init__(
        self,
        total: int,
        stream: TextIO,
        *,
        enabled: bool,
        clock: Callable[[], float] = time.monotonic,
        interval: float = 0.1,
        width: Callable[[], int] = lambda: shutil.get_terminal_size().columns,
    ) -> None:
        self.total = total
        self.done = 0
        self._stream = stream
        self._enabled = enabled
        self._clock = clock
        self._interval = interval
        self._width = width
        self._started = clock()
        self._drawn_at: float | None = None

    @classmethod
    def on(cls, stream: TextIO, total: int, *, allowed: bool = True) -> Progress:
        """A progress line shown only when ``stream`` is a terminal and there is enough to do."""
        return cls(total, stream, enabled=allowed and total >= MIN_IMAGES and stream.isatty())

    def __repr__(self) -> str:
        return f"<Progress {self.done}/{self.total} enabled={self._enabled}>"

    def advance(self) -> None:
        """One more image is done."""
        self.done += 1
        now = self._clock()
        if self._drawn_at is None or now - self._drawn_at >= self._interval:
            self._draw(now)

    def note(self, message: str) -> None:
        """Write ``message`` on a line of its own, keeping the progress line below it."""
        if self._enabled and self._drawn_at is not None:
            self._stream.write(CLEAR_LINE)
        self._stream.write(message + "\n")
        if self._enabled and self._drawn_at is not None:
            self._draw(self._clock())
        self._stream.flush()

    def finish(self) -> None:
        """Leave a final line with the totals."""
        if not self._enabled:
            return
        elapsed = self._clock() - self._started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        self._stream.write(
            f"{CLEAR_LINE}{self.done}/{self.total} images in {_duration(elapsed)} ({rate:.1f}/s)\n"
        )
        self._stream.flush()

    def line(self, now: float) -> str:
        """The progress line at time ``now``: a bar as wide as the terminal allows."""
        elapsed = now - self._started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = _duration((self.total - self.done) / rate) if rate > 0 else "?"
        fraction = self.done / self.total if self.total else 1.0
        text = f"{self.done}/{self.total} images {100 * fraction:3.0f}%  {rate:.1f}/s  ETA {eta}"
        low, high = _BAR_WIDTH
        room = self._width() - len(text) - 4  # "[", "] " and a column to spare
        if room < low:  # a line that wraps cannot be redrawn in place
            return text
        width = min(high, room)
        filled = int(width * fraction)
        return f"[{'#' * filled}{'.' * (width - filled)}] {text}"

    def _draw(self, now: float) -> None:
        self._drawn_at = now
        if self._enabled:
            self._stream.write(CLEAR_LINE + self.line(now))
            self._stream.flush()


def _duration(seconds: float) -> str:
    """``seconds`` as 0:07, 12:34 or 1:02:03."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
