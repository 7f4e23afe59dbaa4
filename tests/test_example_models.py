"""The bundled example models (examples/models), called directly on real images."""

from __future__ import annotations

import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from skimage import data

import tms_server
from tests.support import EXAMPLE_NAMES, digit_scans
from tms_server.devices import Placement
from tms_server.registry import import_model_class, instantiate

MODELS = Path(__file__).resolve().parent.parent / "examples" / "models"


def load_model(name: str) -> Any:
    """An instance of examples/models/<name>, imported the way the server imports it."""
    model_class = import_model_class(MODELS / name)
    assert issubclass(model_class, tms_server.Model)
    assert model_class.__doc__
    return model_class()


def readonly(array: np.ndarray) -> np.ndarray:
    """``array`` as the server hands it to a model: a read-only view of message bytes."""
    array = np.ascontiguousarray(array)
    return np.frombuffer(array.tobytes(), dtype=array.dtype).reshape(array.shape)


@pytest.fixture(scope="module")
def face():
    return load_model("face")


@pytest.fixture(scope="module")
def edges():
    return load_model("edges")


@pytest.fixture(scope="module")
def optical_flow():
    return load_model("optical_flow")


@pytest.fixture(scope="module")
def ocr():
    return load_model("ocr")


@pytest.fixture(scope="module")
def text_stats():
    return load_model("text_stats")


@pytest.fixture(scope="module")
def mean():
    return load_model("mean")


@pytest.fixture(scope="module")
def upright():
    return load_model("upright")


@pytest.fixture(scope="module")
def digits():
    return load_model("digits")


def astronaut_bgr() -> np.ndarray:
    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


# --- face


def test_face_finds_the_astronauts_face(face):
    result = face.run(readonly(astronaut_bgr()), {})

    assert list(result) == ["faces"]
    [box] = result["faces"]
    assert all(type(box[key]) is int for key in ("x", "y", "width", "height"))
    # The astronaut's face spans about x 180-270, y 70-160 of the 512x512 photo.
    center_x, center_y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    assert 190 < center_x < 260
    assert 80 < center_y < 150
    assert 60 < box["width"] < 140


def test_face_follows_a_mirrored_photo(face):
    image = astronaut_bgr()
    [box] = face.run(readonly(image), {})["faces"]
    [mirrored] = face.run(readonly(image[:, ::-1]), {})["faces"]

    width = image.shape[1]
    assert abs((width - box["x"] - box["width"]) - mirrored["x"]) <= 8
    assert abs(box["y"] - mirrored["y"]) <= 8


def test_face_args_change_the_result(face):
    image = readonly(astronaut_bgr())
    [box] = face.run(image, {})["faces"]

    assert face.run(image, {"min_size": box["width"] * 2})["faces"] == []
    assert face.run(image, {"scale_factor": 1.05, "min_neighbors": 3, "min_size": 40})["faces"]


def test_face_finds_nothing_in_a_flat_image_or_a_cat(face):
    assert face.run(readonly(np.full((200, 300, 3), 128, np.uint8)), {}) == {"faces": []}
    chelsea = cv2.cvtColor(data.chelsea(), cv2.COLOR_RGB2BGR)
    assert face.run(readonly(chelsea), {}) == {"faces": []}


# --- edges


def test_edges_are_a_binary_image_of_the_input_size(edges):
    camera = data.camera()
    [out] = edges.run_image_to_image([readonly(camera)], {})

    assert out.shape == camera.shape
    assert out.dtype == np.uint8
    assert set(np.unique(out)) == {0, 255}


def test_edges_lie_where_the_photo_changes(edges):
    camera = data.camera()
    [out] = edges.run_image_to_image([readonly(camera)], {})

    gradient = np.hypot(cv2.Sobel(camera, cv2.CV_32F, 1, 0), cv2.Sobel(camera, cv2.CV_32F, 0, 1))
    on_edges = gradient[out == 255].mean()
    elsewhere = gradient[out == 0].mean()
    assert 0.01 < (out == 255).mean() < 0.3
    assert on_edges > 4 * elsewhere


def test_edges_none_on_a_flat_image_and_fewer_at_higher_thresholds(edges):
    flat = np.full((120, 160), 90, np.uint8)
    camera = readonly(data.camera())
    flat_out, default, strict = edges.run_image_to_image(
        [readonly(flat), camera], {}
    ) + edges.run_image_to_image([camera], {"low": 200, "high": 400})

    assert not flat_out.any()
    assert 0 < np.count_nonzero(strict) < np.count_nonzero(default)


def test_edges_from_several_threads_match_one_thread(edges):
    images = [readonly(data.camera()), readonly(cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2GRAY))]
    expected = [edges.run_image_to_image([image], {})[0] for image in images]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: edges.run_image_to_image([images[i % 2]], {}), range(16)))

    for i, [out] in enumerate(results):
        np.testing.assert_array_equal(out, expected[i % 2])


# --- optical flow


def shifted_frames(image: np.ndarray, dx: int, dy: int) -> tuple[np.ndarray, np.ndarray]:
    """Two crops of ``image``; the second shows its content moved by (dx, dy) pixels."""
    margin = 16
    height, width = image.shape[0] - 2 * margin, image.shape[1] - 2 * margin
    first = image[margin : margin + height, margin : margin + width]
    second = image[margin - dy : margin - dy + height, margin - dx : margin - dx + width]
    return first, second


@pytest.mark.parametrize(("dx", "dy"), [(3, -2), (-1, 4), (0, 0)])
def test_optical_flow_measures_a_known_shift(optical_flow, dx, dy):
    # Grass is textured all over, so every pixel's motion can be seen.
    first, second = shifted_frames(data.grass(), dx, dy)
    flow, summary = optical_flow.run_image_to_image([readonly(first), readonly(second)], {})

    assert flow.shape == (*first.shape, 2)
    assert flow.dtype == np.float32
    assert set(summary) == {"mean_dx", "mean_dy", "mean_magnitude"}
    assert all(type(value) is float for value in summary.values())
    assert summary["mean_dx"] == pytest.approx(dx, abs=0.05)
    assert summary["mean_dy"] == pytest.approx(dy, abs=0.05)
    assert summary["mean_magnitude"] == pytest.approx(np.hypot(dx, dy), abs=0.05)


def test_optical_flow_of_a_photo_with_flat_areas(optical_flow):
    # The camera man's sky has no texture: flow is found on the textured parts only.
    first, second = shifted_frames(data.camera(), 3, -2)
    flow, summary = optical_flow.run_image_to_image([readonly(first), readonly(second)], {})

    assert np.median(flow.reshape(-1, 2), axis=0) == pytest.approx([3, -2], abs=0.1)
    assert 0 < summary["mean_dx"] <= 3.1
    assert -2.1 <= summary["mean_dy"] < 0


def test_optical_flow_needs_two_frames_of_one_shape(optical_flow):
    camera = readonly(data.camera())
    with pytest.raises(tms_server.InvalidInput, match="exactly 2 frames, got 1"):
        optical_flow.run_image_to_image([camera], {})
    with pytest.raises(tms_server.InvalidInput, match="exactly 2 frames, got 3"):
        optical_flow.run_image_to_image([camera, camera, camera], {})
    with pytest.raises(tms_server.InvalidInput, match="differ in shape"):
        optical_flow.run_image_to_image([camera, camera[:100]], {})


# --- ocr


def render_text(text: str) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """A BGR image of black ``text`` on white, and the text's bounding box (x0, y0, x1, y1)."""
    font = ImageFont.load_default(size=48)
    image = Image.new("RGB", (720, 110), "white")
    draw = ImageDraw.Draw(image)
    draw.text((24, 24), text, fill="black", font=font)
    box = draw.textbbox((24, 24), text, font=font)
    return cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR), box


def test_ocr_reads_a_rendered_line(ocr):
    text = "Tiny Model Server 2024"
    image, (x0, y0, x1, y1) = render_text(text)
    result = ocr.run(readonly(image), {})

    assert list(result) == ["lines"]
    [line] = result["lines"]
    assert line["text"].replace(" ", "") == text.replace(" ", "")
    assert type(line["score"]) is float
    assert 0.5 <= line["score"] <= 1
    corners = np.array(line["box"])
    assert corners.shape == (4, 2)
    assert all(type(v) is int for corner in line["box"] for v in corner)
    # The box surrounds the ink, give or take a few pixels of padding.
    assert corners[:, 0].min() == pytest.approx(x0, abs=12)
    assert corners[:, 0].max() == pytest.approx(x1, abs=12)
    assert corners[:, 1].min() == pytest.approx(y0, abs=12)
    assert corners[:, 1].max() == pytest.approx(y1, abs=12)


def test_ocr_min_score_drops_less_confident_lines(ocr):
    image = readonly(render_text("Hello world")[0])
    [line] = ocr.run(image, {})["lines"]

    assert ocr.run(image, {"min_score": line["score"]})["lines"] == [line]
    assert ocr.run(image, {"min_score": (line["score"] + 1) / 2})["lines"] == []


def test_ocr_finds_no_text_on_a_blank_page(ocr):
    assert ocr.run(readonly(np.full((100, 300, 3), 255, np.uint8)), {}) == {"lines": []}


# --- upright


def text_line(text: str) -> np.ndarray:
    """A BGR line of ``text``, cropped to the ink with a small margin."""
    image, (x0, y0, x1, y1) = render_text(text)
    return image[int(y0) - 8 : int(y1) + 8, int(x0) - 8 : int(x1) + 8]


@pytest.mark.parametrize("text", ["Tiny Model Server 2024", "Hello world"])
def test_upright_tells_upright_from_upside_down(upright, text):
    line = text_line(text)
    assert upright.run(readonly(line), {}) == {
        "angle": 0,
        "score": pytest.approx(1, abs=0.05),
        "provider": "CPUExecutionProvider",  # this machine has no GPU
    }
    assert upright.run(readonly(line[::-1, ::-1]), {})["angle"] == 180
    batch = upright.run_batch([readonly(line), readonly(line[::-1, ::-1])], {})
    assert [result["angle"] for result in batch] == [0, 180]


def test_upright_asks_for_cuda_on_a_gpu_worker_and_says_what_it_got(monkeypatch, caplog):
    """On a GPU worker with the CUDA provider listed, the model asks for it; this machine's
    ONNX Runtime cannot give it, falls back to the CPU, and the model says so."""
    model_class = import_model_class(MODELS / "upright")
    module = sys.modules[model_class.__module__]
    assert module.providers_for("cpu") == ["CPUExecutionProvider"]
    available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(module.ort, "get_available_providers", lambda: available)
    assert module.providers_for("cuda:0") == [
        ("CUDAExecutionProvider", {"device_id": 0}),
        "CPUExecutionProvider",
    ]
    assert module.providers_for("cpu") == ["CPUExecutionProvider"]
    with (
        caplog.at_level(logging.INFO),
        pytest.warns(UserWarning, match="CUDAExecutionProvider"),  # ONNX Runtime's own
    ):
        gpu = instantiate(model_class, Placement(1, ("cuda:0", "cuda:1"), threads=1))
    assert gpu.device == "cuda:0"  # the worker's one GPU, as it sees it
    assert gpu.provider == "CPUExecutionProvider"
    assert gpu.run(readonly(text_line("Hello")), {})["provider"] == "CPUExecutionProvider"
    assert "asked ONNX Runtime for CUDAExecutionProvider on cuda:0 and got" in caplog.text
    assert "upright: worker 1 runs on CPUExecutionProvider (device cuda:0" in caplog.text


# --- digits


def test_digits_reads_the_scans_it_was_trained_on_and_batches_alike(digits):
    images, truth = digit_scans()
    one_at_a_time = [digits.run(readonly(image), {}) for image in images[:64]]
    assert digits.run_batch([readonly(image) for image in images[:64]], {}) == one_at_a_time
    batched = [
        result
        for start in range(0, len(images), 16)
        for result in digits.run_batch(
            [readonly(image) for image in images[start : start + 16]], {}
        )
    ]
    read = np.array([result["digit"] for result in batched])
    assert (read == truth).mean() > 0.99  # its training scans, read back through 32x32 images
    assert {type(result["digit"]) for result in batched} == {int}
    assert all(0 < result["score"] <= 1 for result in batched)


def test_digits_reads_a_scan_at_any_size(digits):
    images, truth = digit_scans()
    image, digit = images[5], truth[5]
    for side in (8, 24, 64, 200):
        scaled = cv2.resize(image, (side, side), interpolation=cv2.INTER_NEAREST)
        assert digits.run(readonly(scaled), {})["digit"] == digit


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((32, 32, 3), np.uint8), "expected a grayscale image"),
        (np.zeros((0, 32), np.uint8), "empty image"),
    ],
)
def test_digits_refuses_what_it_cannot_read(digits, image, message):
    with pytest.raises(tms_server.InvalidInput, match=message):
        digits.run_batch([readonly(np.zeros((32, 32), np.uint8)), readonly(image)], {})


# --- text stats


def test_text_stats_counts(text_stats):
    text = "The cat sat. The CAT ran!\nA dog? It's the dog's bone"
    result = text_stats.run(text, {})

    assert result == {
        "characters": len(text),
        "words": 12,
        "lines": 2,
        "sentences": 4,
        "top_words": [
            {"word": "the", "count": 3},
            {"word": "cat", "count": 2},
            {"word": "a", "count": 1},
            {"word": "bone", "count": 1},
            {"word": "dog", "count": 1},
        ],
    }


def test_text_stats_top_and_empty_text(text_stats):
    assert text_stats.run("b a b", {"top": 1})["top_words"] == [{"word": "b", "count": 2}]
    assert text_stats.run("b a b", {"top": 0})["top_words"] == []
    assert text_stats.run("Don\u2019t stop, don't", {})["top_words"] == [
        {"word": "don't", "count": 1},
        {"word": "don\u2019t", "count": 1},
        {"word": "stop", "count": 1},
    ]
    assert text_stats.run("", {}) == {
        "characters": 0,
        "words": 0,
        "lines": 0,
        "sentences": 0,
        "top_words": [],
    }


# --- mean


@pytest.mark.parametrize(
    "image",
    [
        data.coffee(),  # uint8, 3 channels: summed by OpenCV
        data.camera(),  # uint8, gray
        np.dstack([data.coffee()[:, :512], data.camera()[:400]]),  # uint8, 4 channels
        np.full((2160, 3840, 3), 255, np.uint8),  # a 4K frame of the largest values
        np.dstack([data.coffee()] * 2),  # 6 channels: more than OpenCV sums, so NumPy
        data.coffee()[::2, ::3],  # not contiguous
        data.camera().astype(np.float32) / 255,  # float: NumPy
    ],
)
def test_mean_is_the_numpy_mean(mean, image):
    result = mean.run(readonly(image), {})

    assert result == {"mean": float(np.mean(image))}
    assert type(result["mean"]) is float


def test_declarations():
    declared = {name: load_model(name) for name in EXAMPLE_NAMES}
    # The cascade and RapidOCR keep per-call state in the instance; the others do not.
    assert {name for name, model in declared.items() if not model.thread_safe} == {"face", "ocr"}
    assert declared["text_stats"].inputs == "text"
    assert declared["edges"].output_color == "gray"
    assert declared["optical_flow"].output_color is None


# --- bad args


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("face", {"scale_factor": 1.0}, "scale_factor must be > 1"),
        ("face", {"scale_factor": "big"}, "scale_factor must be a number"),
        ("face", {"min_neighbors": -1}, "min_neighbors must be an integer >= 0"),
        ("face", {"min_size": 2.5}, "min_size must be an integer >= 1"),
        ("face", {"min_size": True}, "min_size must be an integer"),
        ("face", {"minSize": 30}, r"unknown args \['minSize'\]"),
        ("edges", {"low": 300, "high": 200}, "0 <= low <= high"),
        ("edges", {"low": -1}, "0 <= low <= high"),
        ("edges", {"high": None}, "high must be a number"),
        ("edges", {"threshold": 5}, "unknown args"),
        ("optical_flow", {"levels": 3}, "takes no args"),
        ("ocr", {"min_score": 1.5}, "min_score must be between 0 and 1"),
        ("ocr", {"min_score": "high"}, "min_score must be a number"),
        ("text_stats", {"top": -1}, "top must be an integer >= 0"),
        ("text_stats", {"top": "5"}, "top must be an integer"),
        ("text_stats", {"n": 5}, "unknown args"),
        ("upright", {"min_score": 0.5}, "upright takes none"),
        ("digits", {"top": 3}, "digits takes none"),
    ],
)
def test_bad_args_raise_invalid_input(request, name, args, message):
    model = request.getfixturevalue(name)
    with pytest.raises(tms_server.InvalidInput, match=message):
        call(name, model, args)


def call(name: str, model: Any, args: dict[str, Any]) -> Any:
    """Call ``model`` on input it accepts, with ``args``."""
    if name == "text_stats":
        return model.run("some text", args)
    if name == "digits":
        return model.run(readonly(data.camera()), args)
    if name in ("edges", "optical_flow"):
        camera = readonly(data.camera())
        return model.run_image_to_image([camera, camera], args)
    return model.run(readonly(astronaut_bgr()), args)
