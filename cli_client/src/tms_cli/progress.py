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
    def render(self, task: rich.Task) -> Text:
        return Text(f"{task.speed or 0:.1f}/s", style="progress.data.speed")


class Progress(rich.Progress):
    """Rich's progress bar of one task, ``total`` images, on ``stream`` (never stdout: results
    go there, written by other threads); ``note`` writes a line above it. When disabled, only
    the notes are written."""

    def __init__(
        self,
        total: int,
        stream: TextIO,
        *,
        enabled: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            *(rich.BarColumn(), rich.MofNCompleteColumn(), rich.TextColumn("images")),
            *(
                rich.TaskProgressColumn(),
                _Rate(),
                rich.TextColumn("ETA"),
                rich.TimeRemainingColumn(),
            ),
            console=Console(file=stream, markup=False, emoji=False, highlight=False),
            get_time=clock,
            redirect_stdout=False,
            redirect_stderr=False,
            disable=not enabled,
        )
        self.task = self.add_task("images", total=total)

    @classmethod
    def on(cls, stream: TextIO, total: int, *, allowed: bool = True) -> Progress:
        """A progress bar shown only when ``stream`` is a terminal and there is enough to do."""
        return cls(total, stream, enabled=allowed and total >= MIN_IMAGES and stream.isatty())

    def __repr__(self) -> str:
        task = self.tasks[0]
        return f"<Progress {task.completed:g}/{task.total:g} enabled={not self.disable}>"

    def note(self, message: str) -> None:
        """Write ``message`` on a line of its own, above the bar."""
        self.console.print(message, soft_wrap=True)
