"""The ``tms`` command on the bundled example models (served in this process): real photos
through face detection, edges and optical flow, as people use it on folders of images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from skimage import data

from tms_cli.__main__ import main


@pytest.fixture
def tms(capsys, example_server):
    def run(*args: str) -> tuple[int, str, str]:
        code = main(["--target", example_server.target, *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """skimage's photographs as a folder tree of JPEG and PNG files."""
    folder = tmp_path_factory.mktemp("photos")
    (folder / "cats").mkdir()
    Image.fromarray(data.astronaut()).save(folder / "astronaut.jpg", quality=95)
    Image.fromarray(data.camera()).save(folder / "camera.png")
    Image.fromarray(data.coffee()).save(folder / "coffee.png")
    Image.fromarray(data.chelsea()).save(folder / "cats" / "chelsea.jpg")
    Image.fromarray(data.rocket()).save(folder / "rocket.png")
    return folder


def test_faces_of_a_folder_into_json_lines(tms, photos, tmp_path):
    out_file = tmp_path / "faces.jsonl"
    code, out, err = tms("run", "face", str(photos), "--out", str(out_file), "--concurrency", "3")
    assert (code, out, err) == (0, "", "")
    lines = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [line["path"] for line in lines] == [
        str(photos / name)
        for name in ("astronaut.jpg", "camera.png", "cats/chelsea.jpg", "coffee.png", "rocket.png")
    ]
    faces = {line["path"].rsplit("/", 1)[1]: line["result"]["faces"] for line in lines}
    (face,) = faces["astronaut.jpg"]  # Eileen Collins, at about (177, 66), 95 px wide
    assert abs(face["x"] - 177) < 10
    assert abs(face["y"] - 66) < 10
    assert 80 < face["width"] < 110
    assert faces["coffee.png"] == faces["rocket.png"] == []


def test_edges_written_as_pngs_that_decode(tms, photos, tmp_path):
    code, out, _ = tms("run-i2i", "edges", str(photos), "--out-dir", str(tmp_path))
    assert code == 0
    assert len(out.splitlines()) == 5
    with Image.open(tmp_path / "cats" / "chelsea.png") as png:
        assert (png.mode, png.size) == ("L", (451, 300))
        edges = np.asarray(png)
    assert set(np.unique(edges)) == {0, 255}
    assert 0.01 < (edges == 255).mean() < 0.3


def test_optical_flow_with_a_colour_wheel_preview(tms, tmp_path):
    camera = data.camera()
    moved = np.roll(camera, (2, 3), axis=(0, 1))  # 3 px right, 2 px down
    Image.fromarray(camera).save(tmp_path / "frame1.png")
    Image.fromarray(moved).save(tmp_path / "frame2.png")
    frames = [str(tmp_path / "frame1.png"), str(tmp_path / "frame2.png")]
    out_dir = tmp_path / "flow"
    options = ["--together", "--preview", "--out-dir", str(out_dir)]
    code, out, _ = tms("--json", "run-i2i", "optical_flow", *frames, *options)
    assert code == 0
    (line,) = [json.loads(text) for text in out.splitlines()]
    assert line["outputs"] == [str(out_dir / "frame1.npy"), str(out_dir / "frame1.preview.png")]
    assert line["result"]["mean_dx"] > 1
    flow = np.load(out_dir / "frame1.npy")
    assert (flow.shape, flow.dtype) == ((512, 512, 2), np.float32)
    moving = np.hypot(flow[..., 0], flow[..., 1]) > 2
    assert np.median(flow[moving], axis=0) == pytest.approx([3, 2], abs=0.3)
    with Image.open(out_dir / "frame1.preview.png") as png:
        assert (png.mode, png.size) == ("RGB", (512, 512))
        preview = np.asarray(png).astype(int)
    # Down and to the right, at 34 degrees: orange on the colour wheel (red high, blue none).
    red, green, blue = np.median(preview[moving], axis=0)
    assert red > 200
    assert 80 < green < 200
    assert blue < 30
    assert preview[~moving].mean() < preview[moving].mean() / 2  # still parts are darker


def test_text_stats(tms):
    code, out, _ = tms("text", "text_stats", "The cat sat. The cat ran!")
    assert code == 0
    result = json.loads(out)
    assert result["words"] == 6
    assert result["sentences"] == 2
