"""A progress bar on a terminal (Rich's): images done, share, rate and time left."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from rich import progress as rich
from rich.console import Console
from rich.text import Text

__all__ = ["MIN_IMAGES", "Progress"]

#: Fewer images than this finish too soon for a progress bar to help.
MIN_IMAGES = 6


class _Rate(rich.ProgressColumn):
    """Images per second."""

    def render(self, task: rich.Task) -> Text:
        return Text(f"{task.speed or 0:.1f}/s", style="progress.data.speed")


class Progress:
    """A bar on ``stream`` as images finish; messages (``note``) go above it. When disabled,
    only the messages are written."""

    def __init__(
        self,
        total: int,
        stream: TextIO,
        *,
        enabled: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._enabled = enabled
        # Rich must not take over stdout: results go there, and other threads write them.
        self._bar = rich.Progress(
            rich.BarColumn(),
            rich.MofNCompleteColumn(),
            rich.TextColumn("images"),
            rich.TaskProgressColumn(),
            _Rate(),
            rich.TextColumn("ETA"),
            rich.TimeRemainingColumn(),
            console=Console(file=stream, markup=False, emoji=False, highlight=False),
            get_time=clock,
            redirect_stdout=False,
            redirect_stderr=False,
            disable=not enabled,
        )
        self._task = self._bar.add_task("images", total=total)
        if enabled:
            self._bar.start()

    @classmethod
    def on(cls, stream: TextIO, total: int, *, allowed: bool = True) -> Progress:
        """A progress bar shown only when ``stream`` is a terminal and there is enough to do."""
        return cls(total, stream, enabled=allowed and total >= MIN_IMAGES and stream.isatty())

    def __repr__(self) -> str:
        task = self._bar.tasks[0]
        return f"<Progress {task.completed:g}/{task.total:g} enabled={self._enabled}>"

    def advance(self) -> None:
        """One more image is done."""
        self._bar.advance(self._task)

    def note(self, message: str) -> None:
        """Write ``message`` on a line of its own, above the bar."""
        if self._enabled:
            self._bar.console.print(message, soft_wrap=True)
        else:
            self._stream.write(message + "\n")
            self._stream.flush()

    def finish(self) -> None:
        """Stop redrawing; the bar stays, with the totals."""
        if self._enabled:
            self._bar.refresh()
            self._bar.stop()
