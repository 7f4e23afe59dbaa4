"""Videos for ``tms run``: each video file's frames streamed to one worker (RunImageStream),
one JSON line per frame. Reading videos needs OpenCV (``pip install opencv-python-headless``),
which the command imports only when it is given a video."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tms_cli.connection import Options, check_model, connect, describe_error
from tms_cli.errors import CliError
from tms_cli.outputs import open_output, to_json
from tms_cli.progress import progress_bar
from tms_cli.values import VIDEO_EXTENSIONS

__all__ = ["VIDEO_EXTENSIONS", "is_video", "run_videos"]


def is_video(path: str) -> bool:
    """Whether ``path`` names a video file (by its extension)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS and Path(path).is_file()


def run_videos(options: Options, args: SimpleNamespace, videos: list[str]) -> int:
    """``tms run MODEL video.mp4 ...``: one JSON line per frame, ``{"path", "frame",
    "result"}``, frame being the frame's index in its video; a frame that fails is reported
    on stderr as "path frame N: reason" and the video goes on. At most ``--concurrency``
    frames are in flight."""
    cv2 = _opencv()
    failed = frames_seen = 0
    with ExitStack() as stack:
        out = sys.stdout if args.out is None else stack.enter_context(open_output(args.out))
        client = stack.enter_context(connect(options, args.model))
        check_model(client, "run_image")
        for label in videos:
            capture = cv2.VideoCapture(label)
            if not capture.isOpened():
                raise CliError(f"{label}: OpenCV cannot read this video")
            total = max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
            progress = progress_bar(sys.stderr, total, allowed=not out.isatty())
            progress.start()
            try:
                answers = client.run_image_stream(
                    _frames(capture), args.args, window=args.concurrency, errors="yield"
                )
                for answer in answers:
                    frames_seen += 1
                    if answer.error is not None:
                        failed += 1
                        reason = describe_error(answer.error)
                        progress.console.print(f"{label} frame {answer.frame_id}: {reason}")
                    else:
                        line = {"path": label, "frame": answer.frame_id, "result": answer.result}
                        out.write(to_json(line) + "\n")
                        out.flush()
                    progress.advance(progress.task_ids[0])
            finally:
                progress.stop()
                capture.release()
    if failed:
        sys.stderr.write(f"tms: {failed} of {frames_seen} frames failed\n")
    return 1 if failed else 0


def _opencv() -> Any:
    try:
        import cv2  # noqa: PLC0415 - only videos need it
    except ImportError:
        raise CliError(
            "reading a video needs OpenCV: pip install opencv-python-headless "
            "(or tms-client[opencv])"
        ) from None
    return cv2


def _frames(capture: Any) -> Iterator[Any]:
    """The frames of a video, BGR as OpenCV reads them."""
    while True:
        ok, frame = capture.read()
        if not ok:
            return
        yield frame
