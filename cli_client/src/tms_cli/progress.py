"""A progress bar on a terminal (Rich's): images done, share, rate and time left."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from rich import progress as rich
from rich.console import Console
from rich.text import Text

__all__ = ["MIN_IMAGES", "progress_bar"]

#: Fewer images than this finish too soon for a progress bar to help.
MIN_IMAGES = 6


class _Rate(rich.ProgressColumn):
    def render(self, task: rich.Task) -> Text:
        return Text(f"{task.speed or 0:.1f}/s", style="progress.data.speed")


def progress_bar(
    stream: TextIO, total: int, *, allowed: bool = True, clock: Callable[[], float] = time.monotonic
) -> rich.Progress:
    """Rich's progress of one task, ``total`` images, shown on ``stream`` only when it is
    a terminal and there is enough to do (and ``allowed``). What its console prints goes on
    a line of its own above the bar, or alone when the bar is not shown."""
    bar = rich.Progress(
        *(rich.BarColumn(), rich.MofNCompleteColumn(), rich.TextColumn("images")),
        *(rich.TaskProgressColumn(), _Rate(), rich.TextColumn("ETA"), rich.TimeRemainingColumn()),
        # Rich must not take over stdout: results go there, written by other threads.
        console=Console(file=stream, markup=False, emoji=False, highlight=False, soft_wrap=True),
        get_time=clock,
        redirect_stdout=False,
        redirect_stderr=False,
        disable=not (allowed and total >= MIN_IMAGES and stream.isatty()),
    )
    bar.add_task("images", total=total)
    return bar
