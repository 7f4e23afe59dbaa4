"""The ``tms`` command, end to end against a real ``tms-server`` process with two workers."""

from __future__ import annotations

import io
import json
import os
import pty
import queue
import re
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from PIL import Image
from skimage import data

from tests.support import refusing_target, start_process, stopped, wait_for, write_models
from tms_cli.__main__ import main
from tms_cli.errors import CliError
from tms_cli.progress import progress_bar
from tms_cli.query import worker_json
from tms_client import ModelClient, WorkerInfo

pytestmark = pytest.mark.slow

MODELS = {
    "mean": '''
        import tms_server

        class Model(tms_server.Model):
            """Mean pixel value of an RGB image.

            Rejects images smaller than 8x8."""
            color = "rgb"
            dtype = "uint8"
            input_shape = (-1, -1, 3)
            thread_safe = True

            def run(self, image, args):
                if min(image.shape[:2]) < 8:
                    raise tms_server.InvalidInput(f"image of {image.shape[:2]} is below 8x8")
                return {"mean": float(image.mean()), "shape": list(image.shape), "args": args}
    ''',
    "invert": '''
        import tms_server

        class Model(tms_server.Model):
            """Photographic negative, computed in BGR as OpenCV models do."""
            color = "bgr"
            output_color = "bgr"
            dtype = "uint8"
            thread_safe = True

            def run_image_to_image(self, images, args):
                return [255 - image for image in images], {"count": len(images)}
    ''',
    "depth": '''
        import numpy as np
        import tms_server

        class Model(tms_server.Model):
            """Brightness in [0, 1] as float32: an output that is no picture."""
            color = "rgb"
            thread_safe = True

            def run_image_to_image(self, images, args):
                return (images[0].mean(axis=2) / 255).astype(np.float32)
    ''',
    "upper": '''
        import tms_server

        class Model(tms_server.Model):
            """Upper-cases a text."""
            inputs = "text"
            thread_safe = True

            def run(self, text, args):
                return {"upper": text.upper(), "length": len(text), "args": args}
    ''',
    "flaky": '''
        import itertools

        import tms_server

        class Model(tms_server.Model):
            """Every third call on a worker fails (INVALID_ARGUMENT)."""
            thread_safe = True

            def __init__(self):
                self.calls = itertools.count(1)

            def run(self, image, args):
                if next(self.calls) % 3 == 0:
                    raise tms_server.InvalidInput("every third call fails")
                return {"ok": True}
    ''',
    "broken": """
        import tms_server

        class Model(tms_server.Model):
            def __init__(self):
                raise RuntimeError("weights.bin not found")

            def run(self, image, args):
                return {}
    """,
}
SERVING = re.compile(r"tms-server: serving on (\S+):(\d+) with (\d+) worker\(s\)")


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """``host:port`` of a real server with the models above and two worker processes."""
    folder = tmp_path_factory.mktemp("models")
    for name, source in MODELS.items():
        (folder / name).mkdir()
        (folder / name / "__init__.py").write_text(textwrap.dedent(source))
    log = (folder / "server.log").open("w")
    command = [sys.executable, "-m", "tms_server", "--models", str(folder), "--workers", "2"]
    command += ["--port", "0", "--host", "127.0.0.1", "--entry-points", "false"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def read_stdout() -> None:  # drains stdout for as long as the server runs
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None, f"server exited: {(folder / 'server.log').read_text()}"
            if match := SERVING.search(line):
                break
        assert match.group(3) == "2"
        yield f"{match.group(1)}:{match.group(2)}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=5)
        assert process.stdout is not None
        process.stdout.close()
        log.close()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photographs as PNG files, RGB and gray, one in a sub-folder, plus a text file
    and a hidden file that are no inputs."""
    folder = tmp_path_factory.mktemp("photos")
    (folder / "nested").mkdir()
    Image.fromarray(data.astronaut()).save(folder / "astronaut.png")
    Image.fromarray(data.camera()).save(folder / "camera.png")
    Image.fromarray(data.coffee()).save(folder / "nested" / "coffee.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"AppleDouble junk")
    return folder


@pytest.fixture
def tms(capsys, target):
    """Runs ``tms --target <server> ARGS...``; returns (exit code, stdout, stderr)."""

    def run(*args: str, server: str | None = target) -> tuple[int, str, str]:
        argv = ["--target", server, *args] if server is not None else list(args)
        code = main(argv)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def jsonl(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


# -- about the server ---------------------------------------------------------------------------


def test_version(tms):
    code, out, _ = tms("--version", server=None)
    assert code == 0
    assert re.fullmatch(r"tms \S+ \(tms-client \S+\)\n", out)


def test_models_table(tms):
    code, out, err = tms("models")
    assert (code, err) == (0, "")
    loaded, failed = out.split("\n\n")
    header, *rows = loaded.splitlines()
    assert header.split() == ["NAME", "INPUT", "SHAPE", "DTYPE", "COLOUR", "CALLS"]
    assert [row.split()[0] for row in rows] == ["depth", "flaky", "invert", "mean", "upper"]
    mean = next(row for row in rows if row.startswith("mean"))
    assert mean.split() == ["mean", "*x*x3", "uint8", "rgb", "run_image,", "run_images"]
    # The model that failed to load comes after, with why.
    assert failed.splitlines() == [
        "FAILED TO LOAD  REASON",
        "broken          RuntimeError: weights.bin not found",
    ]


def test_models_json_with_options_after_the_command(tms, target):
    code, out, _ = tms("models", "--json", "--target", target, server=None)
    assert code == 0
    models = {model["name"]: model for model in json.loads(out)}
    assert re.fullmatch(r"[0-9a-f]{12}", models["mean"].pop("version"))  # a hash of its files
    assert models["mean"] == {
        "name": "mean",
        "description": "Mean pixel value of an RGB image.\n\nRejects images smaller than 8x8.",
        "input_shape": [None, None, 3],
        "dtype": "uint8",
        "color": "rgb",
        "calls": ["run_image", "run_images"],
        "thread_safe": True,
        "output_color": None,
        "max_batch_size": 64,
        "max_batch_delay": None,
        "args_schema": None,
        "result_schema": None,
    }
    assert models["invert"]["calls"] == ["run_image_to_image"]
    assert models["invert"]["output_color"] == "bgr"
    assert models["upper"]["calls"] == ["run_text", "run_texts"]


def test_model_names_for_scripts(tms):
    code, out, err = tms("models", "--names")
    assert (code, out, err) == (0, "depth\nflaky\ninvert\nmean\nupper\n", "")


def test_target_from_the_environment(tms, target, monkeypatch):
    monkeypatch.setenv("TMS_TARGET", target)
    code, out, _ = tms("models", server=None)
    assert code == 0
    assert "invert" in out


def test_info(tms):
    code, out, _ = tms("info", "mean")
    assert code == 0
    assert "input shape:  *x*x3\n" in out
    assert "colour order: rgb\n" in out
    assert "thread safe:  yes\n" in out
    assert "output order: -\n" in out
    description = "  Mean pixel value of an RGB image.\n\n  Rejects images smaller than 8x8.\n"
    assert out.endswith("description:\n" + description)


def test_info_json(tms):
    code, out, _ = tms("--json", "info", "invert")
    assert code == 0
    info = json.loads(out)
    assert (info["color"], info["input_shape"]) == ("bgr", None)


def test_unknown_model_lists_the_models(tms, target):
    code, out, err = tms("info", "nope")
    assert (code, out) == (1, "")
    models = "depth, flaky, invert, mean, upper"
    assert err == f"tms: no model named 'nope' at {target}; models: {models}\n"


def test_model_that_failed_to_load(tms):
    code, _, err = tms("info", "broken")
    assert code == 1
    assert err.startswith("tms: model 'broken' failed to load: ")
    assert "weights.bin not found" in err


def test_health(tms, target):
    code, out, _ = tms("health")
    assert code == 1  # the server is not ready: a model failed to load
    lines = out.splitlines()
    assert lines[0] == f"server {target}: NOT_SERVING"
    assert lines[1].split() == ["MODEL", "STATUS"]
    assert [tuple(line.split()) for line in lines[2:]] == [  # the one that failed to load too
        ("broken", "NOT_SERVING"),
        *((name, "SERVING") for name in ("depth", "flaky", "invert", "mean", "upper")),
    ]


def test_health_of_named_models_fails_unless_all_serve(tms, target):
    code, out, _ = tms("--json", "health", "mean", "broken", "nope")
    assert code == 1
    assert json.loads(out) == {
        "target": target,
        "server": "NOT_SERVING",
        "models": {"mean": "SERVING", "broken": "NOT_SERVING", "nope": "SERVICE_UNKNOWN"},
    }


def test_health_given_an_address_says_where_the_target_goes(tms):
    # A model name has no ":" (letters, digits, _ and -): this is the server's address, which
    # health would have answered SERVICE_UNKNOWN like any unknown model.
    code, out, err = tms("health", "localhost:50051")
    assert code == 2
    assert out == ""
    assert "'localhost:50051' is an address, not a model" in err
    assert "tms --target localhost:50051 health" in err


def test_workers(tms, target):
    code, out, _ = tms("workers")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == [
        "ADDRESS",
        "WORKER",
        "DEVICE",
        "PID",
        "RUNNING",
        "QUEUED",
        "IN",
        "FLIGHT",
        "CALLS",
    ]
    assert [row.split()[:3] for row in rows] == [[target, "0/2", "cpu"], [target, "1/2", "cpu"]]
    code, out, _ = tms("workers", "--json")
    workers = json.loads(out)
    assert [(w["address"], w["index"], w["count"], w["device"]) for w in workers] == [
        (target, 0, 2, "cpu"),
        (target, 1, 2, "cpu"),
    ]
    assert len({w["pid"] for w in workers}) == 2
    assert len({w["instance_id"] for w in workers}) == 1
    for worker in workers:
        assert worker["calls"] >= 1  # each was asked for its load
        assert worker["in_flight"] == 0
        # A TMS worker reports its load; nothing else runs on this server now, and the
        # probe that asked is left out of what it reports.
        assert worker["running"] == 0
        assert worker["queued"] == 0


def test_workers_names_a_worker_that_does_not_answer(capsys, tmp_path):
    # A stopped worker (a wedged one in real life, until the supervisor replaces it): the
    # command answers within seconds with the worker that does answer, and says which not.
    models = write_models(tmp_path / "models", {"mean": MODELS["mean"]})
    server = start_process(models, workers=2, args=("--worker-timeout-seconds", "600"))
    try:
        with ModelClient("mean", server.target) as client:
            assert wait_for(lambda: len(client.workers()) == 2, 30)
            victim = client.workers()[0]
        # A start fails only when every connection it opens lands on the stopped worker: one in
        # 64 with the default 10 s, one in 65,536 with 30 s (a second for each, while half the
        # timeout would be left, then the rest).
        command = ["--target", server.target, "--connect-timeout", "30", "workers", "--json"]
        with stopped(victim.pid):
            started = time.monotonic()
            code = main(command)
            took = time.monotonic() - started
        out, err = capsys.readouterr()
        assert code == 0
        assert [w["pid"] for w in json.loads(out)] != [victim.pid]
        assert len(json.loads(out)) == 1
        assert f"worker {victim.index} of 2 did not answer" in err
        assert took < 20, took  # not its connect timeout (30 s)
    finally:
        server.stop()


def test_worker_load_leaves_out_the_probe():
    info = WorkerInfo(
        "h:1", "i", 7, 0, 2, 3, 1, reported_in_flight=5, reported_queued=2, device="cuda:1"
    )
    assert worker_json(info) == {
        "address": "h:1",
        "index": 0,
        "count": 2,
        "device": "cuda:1",
        "pid": 7,
        "instance_id": "i",
        "running": 4,
        "queued": 2,
        "in_flight": 1,
        "calls": 3,
    }


# -- run ----------------------------------------------------------------------------------------


def test_run_one_image_prints_its_result(tms, photos):
    code, out, err = tms("run", "mean", str(photos / "astronaut.png"), "--args", '{"k": 1}')
    assert (code, err) == (0, "")
    assert out.startswith("{\n  ")  # pretty
    result = json.loads(out)
    assert result["mean"] == pytest.approx(data.astronaut().mean())
    assert result["args"] == {"k": 1}


def test_run_folder_writes_json_lines(tms, photos, tmp_path):
    out_file = tmp_path / "results.jsonl"
    code, out, err = tms("run", "mean", str(photos), "--out", str(out_file), "--concurrency", "2")
    assert (code, out, err) == (0, "", "")
    lines = jsonl(out_file.read_text())
    assert [line["path"] for line in lines] == [
        str(photos / "astronaut.png"),
        str(photos / "camera.png"),
        str(photos / "nested" / "coffee.png"),
    ]
    means = [line["result"]["mean"] for line in lines]
    expected = [data.astronaut().mean(), data.camera().mean(), data.coffee().mean()]
    assert means == pytest.approx(expected)
    assert lines[1]["result"]["shape"] == [512, 512, 3]  # gray, converted to the model's RGB


def test_run_reports_failing_images_and_goes_on(tms, photos, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "tiny.png")
    paths = [tmp_path / "broken.jpg", photos / "camera.png", tmp_path / "tiny.png"]
    paths += [photos / "notes.txt", tmp_path / "missing.png"]
    code, out, err = tms("run", "mean", *map(str, paths), "--concurrency", "2")
    assert code == 1
    assert [line["path"] for line in jsonl(out)] == [str(photos / "camera.png")]
    errors = err.splitlines()
    assert errors[0] == f"{tmp_path / 'missing.png'}: no such file or folder"
    # rejected by the server
    assert errors[1].startswith(f"{tmp_path / 'broken.jpg'}: cannot decode JPEG image")
    assert errors[1].endswith("(INVALID_ARGUMENT)")
    # rejected by the model
    assert errors[2] == f"{tmp_path / 'tiny.png'}: image of (4, 4) is below 8x8 (INVALID_ARGUMENT)"
    # not readable as an image by the client
    assert errors[3].startswith(f"{photos / 'notes.txt'}: ")
    assert errors[4] == "tms: 4 of 5 images failed"


def test_run_image_from_stdin_as_a_process(target, photos):
    bmp = io.BytesIO()
    Image.fromarray(data.coffee()).save(bmp, format="BMP")  # not PNG/JPEG: decoded by Pillow
    for image in [(photos / "astronaut.png").read_bytes(), bmp.getvalue()]:
        done = subprocess.run(
            [sys.executable, "-m", "tms_cli", "--target", target, "run", "mean", "-"],
            input=image,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert (done.returncode, done.stderr) == (0, b"")
        assert json.loads(done.stdout)["mean"] > 0


def test_run_with_a_model_of_another_kind(tms, photos):
    code, _, err = tms("run", "invert", str(photos))
    assert code == 1
    assert err == (
        "tms: model 'invert' does not support run_image (tms run); "
        "it supports run_image_to_image; use tms run-i2i\n"
    )


def test_run_usage_errors(tms, photos):
    code, _, err = tms("run", "mean", str(photos), "--args", "[1, 2]")
    assert code == 2
    assert "Invalid value for '--args': must be a JSON object" in err
    code, _, err = tms("run", "mean", str(photos), "--args", "{nope")
    assert code == 2
    assert "Invalid value for '--args': not valid JSON" in err
    code, _, err = tms("run", "mean", "-", "-")
    assert code == 2
    assert err.endswith("tms run: error: '-' (stdin) may be given only once\n")
    code, _, err = tms("run", "mean", str(photos), "--concurrency", "0")
    assert code == 2
    assert "Invalid value for '--concurrency': 0 is not in the range x>=1" in err
    assert tms("run", "mean")[0] == 2
    assert tms(server=None)[0] == 2
    assert tms("--timeout", "-1", "models")[0] == 2


def test_a_number_option_given_no_number_says_what_it_takes(tms, photos, monkeypatch):
    """Click names the option's type in its error: "a valid whole number", not the metavar
    ("a valid n", "a valid mb"); the help still shows the metavars."""
    cases = [
        (("run", "mean", str(photos), "--concurrency", "abc"), "'--concurrency'", "'abc'", "whole"),
        (("--max-message-mb", "1.5", "models"), "'--max-message-mb'", "'1.5'", "whole"),
        (("--timeout", "soon", "models"), "'--timeout'", "'soon'", "seconds"),
        (("bench", "mean", "--duration", "x"), "'--duration'", "'x'", "seconds"),
    ]
    for args, option, value, kind in cases:
        code, _, err = tms(*args)
        wanted = "whole number" if kind == "whole" else "number of seconds"
        assert code == 2, err
        assert f"Invalid value for {option}" in err, err
        assert err.rstrip().endswith(f"{value} is not a valid {wanted}."), err
    monkeypatch.setenv("TMS_MAX_MESSAGE_MB", "lots")
    code, _, err = tms("models")
    assert code == 2
    assert err.rstrip().endswith("'lots' is not a valid whole number."), err
    monkeypatch.delenv("TMS_MAX_MESSAGE_MB")
    _, out, _ = tms("run", "--help")
    assert "--concurrency N " in out
    _, out, _ = tms("--help")
    assert "--max-message-mb MB " in out
    assert "--timeout SECONDS " in out


def test_run_with_no_images(tms, tmp_path):
    code, _, err = tms("run", "mean", str(tmp_path))
    assert code == 1
    assert (
        err
        == f"tms: {tmp_path}: no images (.jpg .jpeg .png .bmp .tif .tiff .webp) in this folder\n"
    )
    code, _, err = tms("run", "mean", str(tmp_path), str(tmp_path / "missing.png"))
    assert code == 1
    assert err.splitlines()[-1] == "tms: no images to run on"


def test_run_one_missing_or_bad_file_is_one_line(tms, tmp_path):
    code, out, err = tms("run", "mean", str(tmp_path / "missing.png"))
    assert (code, out) == (1, "")
    assert err == f"tms: {tmp_path / 'missing.png'}: no such file or folder\n"
    (tmp_path / "bad.png").write_bytes(b"not a png")
    code, out, err = tms("run", "mean", str(tmp_path / "bad.png"))
    assert (code, out) == (1, "")
    assert err.startswith(f"{tmp_path / 'bad.png'}: cannot read as an image")
    assert err.count("\n") == 1


def test_run_json_gives_json_lines_even_for_one_image(tms, photos):
    code, out, _ = tms("--json", "run", "mean", str(photos / "camera.png"))
    assert code == 0
    (line,) = jsonl(out)
    assert line["path"] == str(photos / "camera.png")
    assert line["result"]["mean"] == pytest.approx(data.camera().mean())


# -- run-i2i ------------------------------------------------------------------------------------


def test_run_i2i_writes_pngs_that_decode(tms, photos, tmp_path):
    out_dir = tmp_path / "out"
    code, out, err = tms("run-i2i", "invert", str(photos), "--out-dir", str(out_dir), "--json")
    assert (code, err) == (0, "")
    lines = jsonl(out)
    assert lines[0] == {
        "path": str(photos / "astronaut.png"),
        "outputs": [str(out_dir / "astronaut.png")],
        "result": {"count": 1},
    }
    with Image.open(out_dir / "astronaut.png") as png:
        assert png.mode == "RGB"  # the model's BGR, turned back into RGB
        np.testing.assert_array_equal(np.asarray(png), 255 - data.astronaut())
    with Image.open(out_dir / "camera.png") as png:
        assert png.mode == "L"  # gray in, gray out, though the model saw BGR
        np.testing.assert_array_equal(np.asarray(png), 255 - data.camera())
    with Image.open(out_dir / "nested" / "coffee.png") as png:
        np.testing.assert_array_equal(np.asarray(png), 255 - data.coffee())


def test_run_i2i_together_and_name_clashes(tms, photos, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "astronaut.png").write_bytes((photos / "camera.png").read_bytes())
    inputs = [str(photos / "astronaut.png"), str(tmp_path / "a" / "astronaut.png")]
    code, out, _ = tms("run-i2i", "invert", *inputs, "--out-dir", str(tmp_path / "o"))
    assert code == 0
    assert out.splitlines() == [
        f'{inputs[0]} -> {tmp_path / "o" / "astronaut.png"}  {{"count": 1}}',
        f'{inputs[1]} -> {tmp_path / "o" / "astronaut-2.png"}  {{"count": 1}}',
    ]
    code, out, _ = tms("run-i2i", "invert", *inputs, "--out-dir", str(tmp_path / "t"), "--together")
    assert code == 0
    outputs = [tmp_path / "t" / "astronaut-0.png", tmp_path / "t" / "astronaut-1.png"]
    assert out == f'{inputs[0]} + {inputs[1]} -> {outputs[0]}, {outputs[1]}  {{"count": 2}}\n'


def test_run_i2i_writes_other_dtypes_as_npy(tms, photos, tmp_path):
    code, out, _ = tms(
        "run-i2i", "depth", str(photos / "astronaut.png"), "--out-dir", str(tmp_path)
    )
    assert code == 0
    assert out.endswith("astronaut.npy\n")
    depth = np.load(tmp_path / "astronaut.npy")
    assert (depth.dtype, depth.shape) == (np.float32, (512, 512))
    assert depth.mean() == pytest.approx(data.astronaut().mean() / 255, rel=1e-4)


def test_run_i2i_preview_of_a_float_map(tms, photos, tmp_path):
    code, out, _ = tms(
        "run-i2i", "depth", str(photos / "camera.png"), "--out-dir", str(tmp_path), "--preview"
    )
    assert code == 0
    assert out == (
        f"{photos / 'camera.png'} -> {tmp_path / 'camera.npy'}, {tmp_path / 'camera.preview.png'}\n"
    )
    with Image.open(tmp_path / "camera.preview.png") as png:
        assert (png.mode, png.size) == ("RGB", (512, 512))
        preview = np.asarray(png)
    # Brightness in [0, 1] keeps its scale: dark pixels dark blue, bright ones yellow.
    gray = data.camera()
    darkest, brightest = preview[gray == gray.min()][0], preview[gray == gray.max()][0]
    assert darkest.tolist() == pytest.approx([68, 1, 84], abs=3)
    assert brightest.tolist() == pytest.approx([253, 231, 37], abs=3)


def test_run_i2i_preview_skips_outputs_that_are_pictures(tms, photos, tmp_path):
    code, out, _ = tms(
        "run-i2i", "invert", str(photos / "camera.png"), "--out-dir", str(tmp_path), "--preview"
    )
    assert code == 0
    assert out == f'{photos / "camera.png"} -> {tmp_path / "camera.png"}  {{"count": 1}}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["camera.png"]


def test_run_i2i_usage_and_output_errors(tms, photos, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    code, _, err = tms("run-i2i", "invert", str(photos), "--out-dir", str(a_file))
    assert code == 1
    assert err == f"tms: cannot create {a_file}: File exists\n"
    frames = [str(photos / "camera.png"), str(tmp_path / "missing.png")]
    code, _, err = tms("run-i2i", "invert", *frames, "--out-dir", str(tmp_path), "--together")
    assert code == 1
    assert err.splitlines()[-1] == "tms: --together needs every image; nothing was run"


# -- text ---------------------------------------------------------------------------------------


def test_text(tms):
    code, out, _ = tms("text", "upper", "héllo wörld", "--args", '{"x": [1]}')
    assert code == 0
    assert json.loads(out) == {"upper": "HÉLLO WÖRLD", "length": 11, "args": {"x": [1]}}


def test_text_from_stdin(tms, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO("from stdin é".encode())))
    code, out, _ = tms("text", "upper", "-")
    assert code == 0
    assert json.loads(out)["upper"] == "FROM STDIN É"


def test_text_that_is_not_utf8_is_refused_in_one_line(tms, monkeypatch):
    # Latin-1 "café" from stdin, and as the shell passes it in argv (PEP 383 surrogates).
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"caf\xe9\n")))
    code, out, err = tms("text", "upper", "-")
    assert (code, out) == (2, "")
    assert "stdin is not UTF-8 (byte 3: b'\\xe9')" in err, err
    code, out, err = tms("text", "upper", "caf\udce9")
    assert (code, out) == (2, "")
    assert "the text is not UTF-8" in err
    assert "Traceback" not in err


def test_text_json_is_one_line(tms):
    code, out, _ = tms("--json", "text", "upper", "abc")
    assert code == 0
    assert out == '{"upper": "ABC", "length": 3, "args": {}}\n'


def test_text_on_an_image_model(tms):
    code, _, err = tms("text", "mean", "hello")
    assert code == 1
    assert "does not support run_text (tms text)" in err
    assert "use tms run" in err


# -- bench --------------------------------------------------------------------------------------


def test_bench_summary_with_a_live_view(tms, target, monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    args = ["--size", "64x64x3", "--concurrency", "4", "--duration", "1"]
    code, out, _ = tms("bench", "mean", *args, "--balancer", "least-loaded")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"model     mean at {target}, run_image"
    assert lines[1] == "sent      64x64x3 uint8 random pixels, 12.3 kB per call"
    assert re.fullmatch(r"load      4 calls at a time for 1\.\d s, balancer least-loaded", lines[2])
    match = re.fullmatch(r"requests  (\d+) \((\d+) ok, 0 failed\), ([\d.]+)/s", lines[3])
    assert match is not None
    requests = int(match.group(1))
    assert requests == int(match.group(2)) > 0  # a count, not a speed: any machine
    assert re.fullmatch(r"data      [\d.]+ MB/s sent", lines[4])
    latency = [float(x) for x in re.findall(r"([\d.]+) ms", lines[5])]
    assert lines[5].startswith("latency   p50 ")
    assert 0 < latency[0] <= latency[1] <= latency[2] <= latency[3]
    assert lines[6] == "errors    none"
    assert lines[8].split() == ["WORKER", "PID", "ADDRESS", "CALLS", "SHARE"]
    workers = [line.split() for line in lines[9:]]
    assert [w[0] for w in workers] == ["0/2", "1/2"]
    assert sum(int(w[3]) for w in workers) == requests
    # The live view was drawn on the terminal, redrawn in place and cleared at the end.
    view = terminal.getvalue()
    assert "calls" in view
    redraw = "\r\x1b[2K" + "\x1b[1A\x1b[2K" * 2  # back up over the totals and two workers
    assert view.count(redraw) >= 2
    assert view.endswith("\r" + "\x1b[1A\x1b[2K" * 3)


def test_bench_json_counts_errors_by_status_code(tms, target):
    args = ["--size", "16x16", "--concurrency", "3", "--duration", "1", "--json"]
    code, out, _ = tms("bench", "flaky", *args)
    assert code == 1  # some calls failed
    summary = json.loads(out)
    assert summary["requests"] == summary["ok"] + summary["failed"]
    assert summary["failed"] > 0
    assert summary["errors"] == {
        "INVALID_ARGUMENT": {"count": summary["failed"], "first": "every third call fails"}
    }
    # Every third call of each worker fails: a third of all calls, give or take one a worker.
    assert abs(3 * summary["failed"] - summary["requests"]) <= 6
    assert summary["requests_per_s"] == pytest.approx(
        summary["requests"] / summary["elapsed_s"], rel=0.01
    )
    assert summary["sent_mb_per_s"] == pytest.approx(
        summary["requests_per_s"] * 256 / 1e6, abs=0.01
    )
    latency = summary["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    workers = summary["workers"]
    assert [w["index"] for w in workers] == [0, 1]
    assert all(w["calls"] > 0 for w in workers)
    assert sum(w["calls"] for w in workers) == summary["requests"]
    assert (summary["call"], summary["balancer"], summary["concurrency"]) == (
        "run_image",
        "least-loaded",  # the default, as in the client
        3,
    )


def test_bench_a_text_model(tms):
    code, out, _ = tms("--json", "bench", "upper", "--duration", "0.3", "--text", "hi")
    assert code == 0
    summary = json.loads(out)
    assert (summary["call"], summary["bytes_per_call"]) == ("run_text", 2)
    assert summary["ok"] > 0


def test_bench_errors(tms, tmp_path):
    code, out, err = tms("bench", "mean", "--size", "4x4x3", "--duration", "1")
    assert (code, out) == (1, "")
    assert err == (
        "tms: the first call failed, nothing was measured: "
        "image of (4, 4) is below 8x8 (INVALID_ARGUMENT)\n"
    )
    code, _, err = tms("bench", "mean", "--image", str(tmp_path / "nope.png"))
    assert code == 1
    assert err == f"tms: {tmp_path / 'nope.png'}: No such file or directory\n"
    code, _, err = tms("bench", "mean", "--size", "10x10x2")
    assert code == 2
    assert "Invalid value for '--size': channels must be 1, 3 or 4, not 2" in err
    code, _, err = tms("bench", "mean", "--size", "big")
    assert code == 2
    assert "Invalid value for '--size': expected HxW or HxWxC such as 1080x1920x3, not 'big'" in err
    code, _, err = tms("bench", "invert", "--text", "hi")
    assert code == 1
    assert "model 'invert' does not support run_text" in err
    assert err.rstrip().endswith("; leave out --text to send it images")  # not "use tms run"


# -- everywhere ---------------------------------------------------------------------------------


COMMANDS = ["models", "info", "health", "workers", "run", "run-i2i", "text", "bench", "completion"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command(tms, command):
    code, out, err = tms(command, "--help", server=None)
    assert (code, err) == (0, "")
    assert out.startswith(f"Usage: tms {command} ")
    # Every option that takes a value names what it takes (FILE, JSON, N), not click's TEXT
    # (bench's --text takes a text).
    assert not re.search(r"--(?!text )[\w-]+ TEXT\b", out), out


def test_every_global_option_names_its_value(tms):
    code, out, _ = tms("--help", server=None)
    assert code == 0
    assert not re.search(r"--[\w-]+ TEXT\b", out), out
    assert "--tls-server-name NAME" in out
    assert "--token TOKEN" in out


def test_help_lists_every_command(tms):
    code, out, _ = tms("--help", server=None)
    assert code == 0
    listed = re.findall(r"^  (\S+)  ", out.split("Commands:\n")[1], flags=re.MULTILINE)
    assert listed == COMMANDS


# -- no server ----------------------------------------------------------------------------------


def test_unreachable_server(tms):
    with socket.socket() as silent:  # takes connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        code, out, err = tms("--connect-timeout", "0.3", "models", server=target)
    assert (code, out) == (1, "")
    assert err == (
        f"tms: cannot reach a TMS server at {target}: no answer within 0.3s; is it running, "
        "is that its gRPC port (not its --http-port), and does it serve TLS (then give --tls, "
        "or --tls-ca)?\n"
    )


def test_debug_shows_the_traceback(tms):
    with refusing_target() as target:
        with pytest.raises(CliError, match="connection refused"):
            tms("--debug", "--connect-timeout", "0.3", "workers", server=target)
        # What a user sees: the real command prints the traceback with --debug, one line without.
        command = [sys.executable, "-m", "tms_cli", "--target", target, "--connect-timeout", "0.3"]
        plain = subprocess.run([*command, "workers"], capture_output=True, text=True, check=False)
        assert plain.returncode == 1
        assert plain.stderr.startswith("tms: ")
        assert "connection refused" in plain.stderr
        assert "Traceback" not in plain.stderr
        debug = subprocess.run(
            [*command, "--debug", "workers"], capture_output=True, text=True, check=False
        )
        assert debug.returncode == 1
        assert "Traceback (most recent call last):" in debug.stderr
        assert "tms_cli.errors.CliError:" in debug.stderr
        assert "connection refused" in debug.stderr


# -- on a real terminal -------------------------------------------------------------------------

COLOUR = re.compile(rb"\x1b\[(?:[0-9;]*;)?(?:3[0-7]|9[0-7]|38)[;m]")  # a foreground colour
ESCAPE = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def on_a_terminal(args: list[str], **env: str) -> tuple[subprocess.Popen[bytes], int]:
    """The real ``tms`` with ``args``, its stdout and stderr a pseudo-terminal (whose other end
    is returned), and without any colour settings of this environment but ``env``'s.

    Ctrl-C (SIGINT) raises KeyboardInterrupt in it, as in a terminal's foreground job, even
    when these tests run where SIGINT is ignored (a shell's background job): a process
    inherits that, and Python then leaves SIGINT ignored."""
    master, slave = pty.openpty()
    settings = ("NO_COLOR", "FORCE_COLOR", "TERM", "COLORTERM")
    environ = {k: v for k, v in os.environ.items() if k not in settings} | env
    command = [sys.executable, "-c", _AS_FOREGROUND, *args]
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=environ
    )
    os.close(slave)
    return process, master


_AS_FOREGROUND = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('tms_cli', run_name='__main__', alter_sys=True)"
)


def read_terminal(master: int, until: bytes | None = None, timeout: float = 60.0) -> bytes:
    """What the terminal shows, up to ``until`` or, when None, until the program ends."""
    seen, deadline = b"", time.monotonic() + timeout
    while until is None or until not in ESCAPE.sub(b"", seen):
        ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"nothing more within {timeout}s; so far: {seen[-500:]!r}"
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the program ended and the terminal closed
            chunk = b""
        if not chunk:
            assert until is None, f"ended before {until!r}: {seen[-500:]!r}"
            break
        seen += chunk
    return seen


def test_colours_on_a_terminal_unless_no_color(target):
    shown = {}
    for no_color in ("", "1"):
        env = {"TERM": "xterm-256color"} | ({"NO_COLOR": no_color} if no_color else {})
        process, terminal = on_a_terminal(["--target", target, "--json", "info", "mean"], **env)
        try:
            shown[no_color] = read_terminal(terminal)
            assert process.wait(30) == 0
        finally:
            os.close(terminal)
    assert COLOUR.search(shown[""])  # highlighted JSON
    assert not COLOUR.search(shown["1"])
    # The same text either way.
    plain = {k: ESCAPE.sub(b"", v).replace(b"\r\n", b"\n") for k, v in shown.items()}
    assert plain[""] == plain["1"]
    assert json.loads(plain[""])["name"] == "mean"


def test_ctrl_c_ends_bench_with_its_summary_and_exit_code_130(target):
    args = ["--target", target, "bench", "upper", "--text", "hi", "--duration", "600"]
    # faulthandler: a run that hangs after Ctrl-C is made to show where each thread waits.
    process, terminal = on_a_terminal([*args, "--args", '{"sleep": 0.05}'], PYTHONFAULTHANDLER="1")
    try:
        read_terminal(terminal, until=b" calls ")  # the live view: calls are being made
        process.send_signal(signal.SIGINT)
        try:
            shown = ESCAPE.sub(b"", read_terminal(terminal)).decode()
        except AssertionError as hung:
            process.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
            try:
                dump = read_terminal(terminal, timeout=10).decode(errors="replace")
            except AssertionError:
                dump = "(no stacks within 10 s)"
            raise AssertionError(f"{hung}\n{dump[-6000:]}") from hung
        assert process.wait(30) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(terminal)
    assert re.search(r"requests  \d+ \(\d+ ok, 0 failed\)", shown)  # the summary, then 130
    assert "Traceback" not in shown


# -- progress -----------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal():
    now = [100.0]
    stream = Terminal()
    progress = progress_bar(stream, 120, clock=lambda: now[0])
    progress.start()
    for _ in range(30):
        now[0] += 0.1
        progress.advance(progress.task_ids[0])
    progress.console.print("a.png: broken")
    progress.stop()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", stream.getvalue())  # without colours
    assert "a.png: broken\n" in text
    assert re.search(r"30/120 images +25% +10\.0/s +ETA 0:00:09\s*$", text)


def test_progress_off_a_terminal_writes_only_the_notes():
    stream = io.StringIO()
    progress = progress_bar(stream, 100)
    progress.start()
    progress.advance(progress.task_ids[0])
    long = "a.png: " + "broken " * 30  # a line of its own, however long
    progress.console.print(long)
    progress.stop()
    assert stream.getvalue() == long + "\n"


def test_progress_only_on_a_terminal_and_for_many_images():
    assert not progress_bar(Terminal(), 6).disable
    assert progress_bar(Terminal(), 5).disable
    assert progress_bar(io.StringIO(), 100).disable
    assert progress_bar(Terminal(), 100, allowed=False).disable
