"""``tms run MODEL video``: a real small video, written here with OpenCV, streamed to a real
in-process server, one JSON line per frame."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.support import InProcessServer, write_models
from tms_cli.__main__ import main

MODELS = {
    "brightness": """
        import tms_server

        class Model(tms_server.Model):
            color = "bgr"

            def open_stream(self, args):
                return Frames()

            def run(self, image, args):
                return {"mean": round(float(image.mean()))}

        class Frames:
            def __init__(self):
                self.seen = 0

            def run(self, image, args):
                self.seen += 1
                if self.seen == 3:
                    raise tms_server.InvalidInput("the third frame is refused")
                return {"mean": round(float(image.mean())), "seen": self.seen, "shape": image.shape}
    """,
}
FRAMES = 6


@pytest.fixture
def server(tmp_path: Path, in_process_server: Callable[..., InProcessServer]) -> InProcessServer:
    return in_process_server(write_models(tmp_path / "models", MODELS))


@pytest.fixture
def video(tmp_path: Path) -> Path:
    """Six 64x48 frames of grey 40, 70, ..., 190, as MJPG in an AVI file."""
    path = tmp_path / "clip.avi"
    fourcc = cv2.VideoWriter_fourcc(*"MJPG")  # type: ignore[attr-defined]
    writer = cv2.VideoWriter(str(path), fourcc, 10.0, (64, 48))
    assert writer.isOpened()
    for i in range(FRAMES):
        writer.write(np.full((48, 64, 3), 40 + 30 * i, np.uint8))
    writer.release()
    return path


def tms(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_video_is_streamed_one_json_line_per_frame(
    server: InProcessServer, video: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = tms(capsys, "--target", server.target, "run", "brightness", str(video))
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 1  # one frame failed
    assert [line["frame"] for line in lines] == [0, 1, 3, 4, 5]
    assert all(line["path"] == str(video) for line in lines)
    assert [line["result"]["seen"] for line in lines] == [1, 2, 4, 5, 6]  # one stream
    assert lines[0]["result"]["shape"] == [48, 64, 3]
    means = [line["result"]["mean"] for line in lines]
    assert means == [pytest.approx(40 + 30 * i, abs=3) for i in (0, 1, 3, 4, 5)]  # JPEG
    assert f"{video} frame 2: the third frame is refused (INVALID_ARGUMENT)" in err
    assert "1 of 6 frames failed" in err


def test_video_output_goes_to_a_file(
    server: InProcessServer, video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_file = tmp_path / "frames.jsonl"
    args = ("run", "brightness", str(video), "--out", str(out_file), "--concurrency", "1")
    code, out, _ = tms(capsys, "--target", server.target, *args)
    assert code == 1
    assert out == ""
    assert len(out_file.read_text().splitlines()) == FRAMES - 1


def test_videos_and_images_are_not_mixed(
    server: InProcessServer, video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "still.png"
    cv2.imwrite(str(image), np.zeros((4, 4, 3), np.uint8))
    code, _, err = tms(
        capsys, "--target", server.target, "run", "brightness", str(video), str(image)
    )
    assert code == 2
    assert "either videos or images" in err


def test_a_file_that_is_no_video_says_so(
    server: InProcessServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"not a video")
    code, _, err = tms(capsys, "--target", server.target, "run", "brightness", str(fake))
    assert code == 1
    assert "OpenCV cannot read this video" in err
