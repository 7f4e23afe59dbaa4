"""The ``tms`` command, end to end against a real ``tms-server`` process with two workers."""

from __future__ import annotations

import io
import json
import queue
import re
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

from tms_cli.__main__ import main
from tms_cli.errors import CliError
from tms_cli.progress import Progress

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "INPUT", "SHAPE", "DTYPE", "COLOUR", "CALLS"]
    assert [row.split()[0] for row in rows] == ["depth", "invert", "mean", "upper"]
    mean = next(row for row in rows if row.startswith("mean"))
    assert mean.split() == ["mean", "*x*x3", "uint8", "rgb", "run_image,", "run_images"]


def test_models_json_with_options_after_the_command(tms, target):
    code, out, _ = tms("models", "--json", "--target", target, server=None)
    assert code == 0
    models = {model["name"]: model for model in json.loads(out)}
    assert models["mean"] == {
        "name": "mean",
        "description": "Mean pixel value of an RGB image.\n\nRejects images smaller than 8x8.",
        "input_shape": [None, None, 3],
        "dtype": "uint8",
        "color": "rgb",
        "calls": ["run_image", "run_images"],
        "thread_safe": True,
    }
    assert models["invert"]["calls"] == ["run_image_to_image"]
    assert models["upper"]["calls"] == ["run_text", "run_texts"]


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
    assert err == f"tms: no model named 'nope' at {target}; models: depth, invert, mean, upper\n"


def test_model_that_failed_to_load(tms):
    code, _, err = tms("info", "broken")
    assert code == 1
    assert err.startswith("tms: model 'broken' failed to load: ")
    assert "weights.bin not found" in err


def test_health(tms, target):
    code, out, _ = tms("health")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"server {target}: SERVING"
    assert lines[1].split() == ["MODEL", "STATUS"]
    assert {tuple(line.split()) for line in lines[2:]} == {
        (name, "SERVING") for name in ("depth", "invert", "mean", "upper")
    }


def test_health_of_named_models_fails_unless_all_serve(tms, target):
    code, out, _ = tms("--json", "health", "mean", "broken", "nope")
    assert code == 1
    assert json.loads(out) == {
        "target": target,
        "server": "SERVING",
        "models": {"mean": "SERVING", "broken": "NOT_SERVING", "nope": "SERVICE_UNKNOWN"},
    }


def test_workers(tms):
    code, out, _ = tms("workers")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["INDEX", "PID", "INSTANCE", "ID"]
    assert [row.split()[0] for row in rows] == ["0", "1"]
    code, out, _ = tms("workers", "--json")
    workers = json.loads(out)
    assert [w["index"] for w in workers] == [0, 1]
    assert len({w["pid"] for w in workers}) == 2
    assert len({w["instance_id"] for w in workers}) == 1


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
    assert "argument --args: must be a JSON object" in err
    code, _, err = tms("run", "mean", str(photos), "--args", "{nope")
    assert code == 2
    assert "argument --args: not valid JSON" in err
    code, _, err = tms("run", "mean", "-", "-")
    assert code == 2
    assert err.endswith("tms run: error: '-' (stdin) may be given only once\n")
    code, _, err = tms("run", "mean", str(photos), "--concurrency", "0")
    assert code == 2
    assert "--concurrency: must be at least 1" in err
    assert tms("run", "mean")[0] == 2
    assert tms(server=None)[0] == 2
    assert tms("--timeout", "-1", "models")[0] == 2


def test_run_with_no_images(tms, tmp_path):
    code, _, err = tms("run", "mean", str(tmp_path))
    assert code == 1
    assert err.splitlines()[-1] == "tms: no images to run on"


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
        f"{inputs[0]} -> {tmp_path / 'o' / 'astronaut.png'}",
        f"{inputs[1]} -> {tmp_path / 'o' / 'astronaut-2.png'}",
    ]
    code, out, _ = tms("run-i2i", "invert", *inputs, "--out-dir", str(tmp_path / "t"), "--together")
    assert code == 0
    outputs = [tmp_path / "t" / "astronaut-0.png", tmp_path / "t" / "astronaut-1.png"]
    assert out == f"{inputs[0]} -> {outputs[0]}, {outputs[1]}\n"


def test_run_i2i_writes_other_dtypes_as_npy(tms, photos, tmp_path):
    code, out, _ = tms(
        "run-i2i", "depth", str(photos / "astronaut.png"), "--out-dir", str(tmp_path)
    )
    assert code == 0
    assert out.endswith("astronaut.npy\n")
    depth = np.load(tmp_path / "astronaut.npy")
    assert (depth.dtype, depth.shape) == (np.float32, (512, 512))
    assert depth.mean() == pytest.approx(data.astronaut().mean() / 255, rel=1e-4)


def test_run_i2i_usage_and_output_errors(tms, photos, tmp_path):
    code, _, err = tms("run-i2i", "invert", str(photos))
    assert code == 2
    assert "--out-dir" in err
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
    monkeypatch.setattr("sys.stdin", io.StringIO("from stdin"))
    code, out, _ = tms("text", "upper", "-")
    assert code == 0
    assert json.loads(out)["upper"] == "FROM STDIN"


def test_text_on_an_image_model(tms):
    code, _, err = tms("text", "mean", "hello")
    assert code == 1
    assert "does not support run_text (tms text)" in err
    assert "use tms run" in err


# -- no server ----------------------------------------------------------------------------------


def test_unreachable_server(tms):
    target = f"127.0.0.1:{free_port()}"
    code, out, err = tms("--connect-timeout", "0.3", "models", server=target)
    assert (code, out) == (1, "")
    assert err == f"tms: cannot reach a TMS server at {target} (no answer within 0.3s)\n"


def test_debug_shows_the_traceback(tms):
    target = f"127.0.0.1:{free_port()}"
    with pytest.raises(CliError, match="cannot reach a TMS server"):
        tms("--debug", "--connect-timeout", "0.3", "workers", server=target)


# -- progress -----------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_on_a_terminal():
    now = [100.0]
    stream = Terminal()
    progress = Progress(120, stream, enabled=True, clock=lambda: now[0], interval=0.5)
    for _ in range(30):
        now[0] += 0.1
        progress.advance()
    assert progress.line(now[0]) == "30/120 images (25%)  10.0/s  ETA 0:09"
    progress.note("a.png: broken")
    progress.finish()
    text = stream.getvalue()
    assert "\r\x1b[Ka.png: broken\n" in text
    assert text.endswith("\r\x1b[K30/120 images in 0:03 (10.0/s)\n")


def test_progress_only_on_a_terminal_and_for_many_images():
    assert "enabled=True" in repr(Progress.on(Terminal(), 6))
    assert "enabled=False" in repr(Progress.on(Terminal(), 5))
    assert "enabled=False" in repr(Progress.on(io.StringIO(), 100))
    assert "enabled=False" in repr(Progress.on(Terminal(), 100, allowed=False))
