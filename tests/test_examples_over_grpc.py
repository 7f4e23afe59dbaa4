"""The bundled example models served over gRPC, called through ModelClient on real photos."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from skimage import data

from tests.support import EXAMPLE_NAMES, digit_scans
from tms_client import InvalidInputError, ModelClient

# Where the astronaut's face is in skimage's 512x512 photo (x, y, width, height).
FACE_REGION = (150, 40, 140, 170)


@pytest.fixture(scope="module")
def target(example_server):
    return example_server.target


def inside_face_region(box: dict[str, int]) -> bool:
    x, y, w, h = FACE_REGION
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    return x <= cx <= x + w and y <= cy <= y + h


def jpeg_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_list_models(target):
    with ModelClient("face", target) as client:
        names = [m.name for m in client.list_models()]
    assert names == EXAMPLE_NAMES


def test_face_from_every_kind_of_input(target, astronaut_bgr, tmp_path):
    rgb = data.astronaut()
    path = tmp_path / "astronaut.jpg"
    path.write_bytes(jpeg_bytes(rgb))
    inputs = {
        "numpy bgr": (astronaut_bgr, "bgr"),
        "numpy rgb": (rgb, "rgb"),
        "PIL": (Image.fromarray(rgb), "bgr"),
        "PIL gray": (Image.fromarray(rgb).convert("L"), "bgr"),
        "path": (path, "bgr"),
        "jpeg bytes": (path.read_bytes(), "bgr"),
    }
    with ModelClient("face", target) as client:
        for name, (image, color) in inputs.items():
            faces = client.run_image(image, color=color)["faces"]
            assert len(faces) == 1, name
            assert inside_face_region(faces[0]), (name, faces)
        assert client.run_image(np.zeros((64, 64, 3), np.uint8))["faces"] == []
        with pytest.raises(InvalidInputError, match="min_neighbors"):
            client.run_image(astronaut_bgr, {"min_neighbors": -1})


def test_face_batch(target, astronaut_bgr):
    with ModelClient("face", target) as client:
        results = client.run_images([astronaut_bgr, np.zeros((64, 64, 3), np.uint8)])
    assert len(results[0]["faces"]) == 1
    assert results[1]["faces"] == []


def test_edges_image_to_image(target):
    camera = data.camera()  # gray photograph
    with ModelClient("edges", target) as client:
        out = client.run_image_to_image(camera)
        png = client.run_image_to_image(camera, png=True)
    edges = out.image
    assert edges.shape == camera.shape
    assert edges.dtype == np.uint8
    assert set(np.unique(edges)) == {0, 255}
    assert 0.01 < (edges > 0).mean() < 0.3
    assert np.array_equal(png.image, edges)


def test_optical_flow_of_two_frames(target):
    grass = data.grass()
    frame1, frame2 = grass[20:-20, 20:-20], grass[17:-23, 22:-18]  # moved by (dx, dy) = (-2, 3)
    with ModelClient("optical_flow", target) as client:
        out = client.run_image_to_image([frame1, frame2])
        as_rgb = client.run_image_to_image([frame1, frame2], output_color="rgb")
        as_png = client.run_image_to_image([frame1, frame2], png=True)  # PNG cannot hold it
    flow = out.image
    assert flow.shape == (*frame1.shape, 2)
    assert flow.dtype == np.float32
    assert out.colors == as_rgb.colors == [None]  # a flow field has no colour to convert
    assert np.array_equal(as_rgb.image, flow)
    assert np.array_equal(as_png.image, flow)  # raw, not a failure of the model
    assert out.result["mean_dx"] == pytest.approx(-2, abs=0.2)
    assert out.result["mean_dy"] == pytest.approx(3, abs=0.2)
    assert np.median(flow[..., 0]) == pytest.approx(-2, abs=0.2)


def test_ocr_reads_rendered_text(target):
    page = Image.new("RGB", (640, 120), "white")
    ImageDraw.Draw(page).text(
        (20, 30), "TINY MODEL SERVER", fill="black", font=ImageFont.load_default(size=48)
    )
    with ModelClient("ocr", target) as client:
        lines = client.run_image(page)["lines"]
    text = "".join(line["text"] for line in lines).replace(" ", "")
    assert text == "TINYMODELSERVER"
    assert all(0 <= line["score"] <= 1 for line in lines)


def test_text_stats(target):
    with ModelClient("text_stats", target) as client:
        result = client.run_text("The cat saw the dog. The dog ran!")
        batch = client.run_texts(["a b", "c"])
    assert result["words"] == 8
    assert result["sentences"] == 2
    assert result["top_words"][0] == {"word": "the", "count": 3}
    assert [r["words"] for r in batch] == [2, 1]


def test_mean(target):
    image = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    with ModelClient("mean", target) as client:
        assert client.run_image(image)["mean"] == pytest.approx(float(image.mean()))


def test_digits_reads_scans_sent_every_way(target, tmp_path):
    scans, truth = digit_scans()
    gray, digit = scans[7], int(truth[7])
    path = tmp_path / "digit.png"
    Image.fromarray(gray).save(path)
    bgr = np.dstack([gray] * 3)  # the server turns it gray, as the model declares
    with ModelClient("digits", target) as client:
        for image in (gray, gray[:, :, None], bgr, Image.fromarray(gray), path):
            assert client.run_image(image)["digit"] == digit
        results = client.run_images(scans[:16])  # max_batch_size a call
        with pytest.raises(InvalidInputError, match="expected to be empty"):
            client.run_image(gray, args={"top": 3})
    assert [r["digit"] for r in results] == list(truth[:16])
