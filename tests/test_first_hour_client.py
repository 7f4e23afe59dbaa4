"""A new user's first hour with the client and the ``tms`` command: what they run into first.

Tokens refused (and health checks that need none), a server that is not there, a URL given
as the target, images larger than a message, the asyncio client's ``workers``, the image
input's type, and the run-i2i and JSON output of the command; against in-process servers on
loopback.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from skimage import data

from tests.scripted import FakeServer, ScriptedTransport
from tests.support import (
    EXAMPLE_MODELS,
    ROOT,
    InProcessServer,
    refusing_target,
    start_in_process,
    write_models,
)
from tests.unit.test_pool_core import Asyncio, Threads
from tms_cli.__main__ import main
from tms_cli.cli import tms as tms_command
from tms_cli.connection import Options
from tms_client import (
    AsyncModelClient,
    ClientOptions,
    ConnectError,
    DeadlineExceededError,
    ModelClient,
    ResourceExhaustedError,
    check_health,
)
from tms_server import __version__
from tms_server.servicer import WorkerIdentity
from tms_server.settings import Settings
from tms_server.worker import build_server

TOKEN = "first-hour-token-0123"
MODELS = {
    "pixels": '''
        import numpy as np
        import tms_server

        class Model(tms_server.Model):
            """What arrived: shape, dtype, the first pixel and the sum of all."""
            color = "rgb"
            thread_safe = True

            def run(self, image, args):
                return {
                    "shape": list(image.shape),
                    "dtype": str(image.dtype),
                    "first": np.asarray(image[0, 0]).tolist(),
                    "sum": int(image.astype(np.int64).sum()),
                }
    ''',
    "invert": '''
        import tms_server

        class Model(tms_server.Model):
            """Photographic negative, and how many images came."""
            color = "rgb"
            output_color = "rgb"
            dtype = "uint8"
            thread_safe = True

            def run_image_to_image(self, images, args):
                return [255 - image for image in images], {"count": len(images)}
    ''',
    "flow": '''
        import tms_server

        class Model(tms_server.Model):
            """Takes two frames at once, as optical flow does."""
            dtype = "uint8"
            thread_safe = True

            def run_image_to_image(self, images, args):
                if len(images) != 2:
                    raise tms_server.InvalidInput(f"flow needs 2 frames, got {len(images)}")
                return [images[1] - images[0]]
    ''',
    "boxes": '''
        import tms_server

        class Model(tms_server.Model):
            """A result shaped like OCR's: lines of text with their boxes."""
            thread_safe = True

            def run(self, image, args):
                return {"lines": [{"text": "hi", "box": [[1, 2], [30, 2], [30, 9], [1, 9]]}]}
    ''',
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models(tmp_path_factory.mktemp("models"), MODELS)


@pytest.fixture(scope="module")
def server(models: Path) -> Iterator[InProcessServer]:
    started = start_in_process(models)
    yield started
    started.running.stop(None)


@pytest.fixture(scope="module")
def guarded(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    """A server that wants a token."""
    tokens = tmp_path_factory.mktemp("tokens") / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    started = start_in_process(models, tokens_file=tokens)
    yield started
    started.running.stop(None)


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TMS_TOKEN", "TMS_TARGET", "TMS_MAX_MESSAGE_MB", "TMS_SHARED_MEMORY"):
        monkeypatch.delenv(name, raising=False)


def tms(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def smooth(shape: tuple[int, ...], dtype: Any = np.uint8) -> np.ndarray[Any, Any]:
    """Pixels that compress well, as photographs do: gradients, a different one per channel."""
    height, width = shape[:2]
    ramp = np.add.outer(np.arange(height), np.arange(width))
    count = shape[2] if len(shape) == 3 else 1
    channels = [(ramp * (c + 1)) % np.iinfo(dtype).max for c in range(count)]
    return np.stack(channels, -1).reshape(shape).astype(dtype)


# -- 3. tokens ----------------------------------------------------------------------------------


def test_a_refused_token_is_named_as_such(guarded: InProcessServer, capsys) -> None:
    target = guarded.target
    code, out, err = tms(capsys, "--target", target, "models")
    assert (code, out) == (1, "")
    assert err == (
        f"tms: the TMS server at {target} refused a call without a token (UNAUTHENTICATED): "
        "pass --token TOKEN or set TMS_TOKEN\n"
    )
    code, _, err = tms(capsys, "--target", target, "--token", "not-the-token-42", "info", "pixels")
    assert code == 1
    assert err.startswith(f"tms: the TMS server at {target} refused the token (UNAUTHENTICATED")
    assert err.endswith("check --token or TMS_TOKEN\n")
    assert "not-the-token-42" not in err


def test_health_needs_no_token(guarded: InProcessServer, capsys) -> None:
    target = guarded.target
    code, out, err = tms(capsys, "--target", target, "health")
    assert code == 0
    assert out == f"server {target}: SERVING\n"
    assert "listing the models needs a token (--token or TMS_TOKEN)" in err
    code, out, _ = tms(capsys, "--target", target, "--json", "health", "pixels", "nope")
    assert code == 1  # nope is not SERVING
    assert json.loads(out) == {
        "target": target,
        "server": "SERVING",
        "models": {"pixels": "SERVING", "nope": "SERVICE_UNKNOWN"},
    }
    code, out, err = tms(capsys, "--target", target, "--token", TOKEN, "health")
    assert (code, err) == (0, "")
    assert "invert  SERVING" in out
    assert check_health(target) == {"": "SERVING"}
    assert check_health(target, ["boxes"]) == {"boxes": "SERVING"}


# -- 4. a server that is not there, targets -----------------------------------------------------


def test_a_refused_connection_fails_at_once() -> None:
    with refusing_target() as target:
        message = f"connection refused at {target}: is tms-server running?"
        started = time.monotonic()
        with pytest.raises(ConnectError, match=message) as refused:
            ModelClient("pixels", target, connect_timeout=30)
        assert refused.value.refused == (target,)

        async def start() -> None:
            async with AsyncModelClient("pixels", target, connect_timeout=30):
                pass

        with pytest.raises(ConnectError, match=message):
            asyncio.run(start())
        with pytest.raises(ConnectError, match=message):
            check_health(target, connect_timeout=30)
        assert time.monotonic() - started < 20  # not the 30 s of the connect timeout


def test_the_command_says_the_connection_was_refused(capsys) -> None:
    with refusing_target() as target:
        for command in ("models", "health"):
            code, out, err = tms(capsys, "--connect-timeout", "30", "--target", target, command)
            assert (code, out) == (1, "")
            assert err == f"tms: connection refused at {target}: is tms-server running?\n"


@pytest.mark.parametrize("kind", [Threads, Asyncio], ids=["threads", "asyncio"])
def test_both_pools_give_up_on_refusing_addresses_only(kind: Any) -> None:
    down, up = FakeServer("down:1"), FakeServer("up:1")
    down.stop()
    with pytest.raises(ConnectError, match="connection refused at down:1") as refused:
        kind(ScriptedTransport(down), ClientOptions(target="down:1", connect_timeout=30))
    assert refused.value.refused == ("down:1",)
    both = kind(ScriptedTransport(down, up), ClientOptions(target=["down:1", "up:1"]))
    try:
        assert {w.address for w in both.workers()} == {"up:1"}
    finally:
        both.close()


def test_wait_for_server_waits_for_one_that_starts_later(models: Path) -> None:
    port = free_port()
    with ThreadPoolExecutor(1) as executor:
        connecting = executor.submit(
            ModelClient, "pixels", f"127.0.0.1:{port}", connect_timeout=30, wait_for_server=True
        )
        time.sleep(1)
        assert not connecting.done()  # still waiting, where it would have failed at once
        settings = Settings(models=models, entry_points=False, workers=1)
        identity = WorkerIdentity(uuid.uuid4().hex, 0, 1, __version__)
        running = build_server(settings, identity, address=f"127.0.0.1:{port}")
        try:
            with connecting.result(timeout=60) as client:
                assert client.run_image(np.zeros((2, 2, 3), np.uint8))["sum"] == 0
        finally:
            running.stop(None)


def test_targets_default_the_port_and_refuse_urls(capsys) -> None:
    assert ClientOptions(target="localhost").targets == ("localhost:50051",)
    assert ClientOptions(target=["dns:///svc", "[::1]"]).targets == (
        "dns:///svc:50051",
        "[::1]:50051",
    )
    for url in ("http://localhost:50051", "https://gpu-box:50051/"):
        with pytest.raises(ValueError, match=r"is a URL; give 'host:port'.*'dns:///host:port'"):
            ClientOptions(target=url)
    parsed = tms_command.main(["--target", "localhost", "models"], standalone_mode=False)
    assert Options.from_values(parsed.options).target == "localhost:50051"  # parsed, not run
    code, out, err = tms(
        capsys, "--connect-timeout", "2", "--target", "http://localhost:50051", "models"
    )
    assert (code, out) == (2, "")
    assert err == (  # one line, no usage block
        "tms: error: target 'http://localhost:50051' is a URL; give 'host:port' "
        "(e.g. 'localhost:50051') or 'dns:///host:port', with no scheme\n"
    )


def test_several_addresses_in_one_target_string_are_refused_at_once(capsys) -> None:
    """ "h1:p1,h2:p2" passed for a host "h1:p1,h2" that never resolves: the client, and tms,
    waited the whole connect timeout, then said it could not reach that "server"."""
    several = "localhost:50051,localhost:50052"
    said = (
        f"target {several!r} is several addresses in one string; give one 'host:port', a "
        "list of them (['10.0.0.1:50051', '10.0.0.2:50051']), or 'dns:///name:port' for "
        "every address a name resolves to"
    )
    for target in (several, [several], f"dns:///{several}"):
        with pytest.raises(ValueError, match="several addresses in one string") as refused:
            ClientOptions(target=target)
        item = target if isinstance(target, str) else target[0]  # the item at fault
        assert str(refused.value) == said.replace(repr(several), repr(item))
    started = time.monotonic()
    code, out, err = tms(capsys, "--target", several, "models")
    assert (code, out, err) == (2, "", f"tms: error: {said}\n")
    assert time.monotonic() - started < 5  # not the 10 s connect timeout


# -- 5. images larger than a message ------------------------------------------------------------


@pytest.mark.parametrize("shared_memory", [False, True], ids=["bytes", "same-host default"])
def test_large_raw_images_go_as_png(server: InProcessServer, shared_memory: bool) -> None:
    bgr = smooth((600, 600, 3))  # 1.08 MB raw, over the 1 MiB limit
    rgba = smooth((600, 600, 4))
    deep = smooth((450, 450, 3), np.uint16)
    gray = smooth((800, 800), np.uint16)
    client = ModelClient("pixels", server.target, max_message_mb=1, shared_memory=shared_memory)
    with client:
        assert client.run_image(bgr) == {
            "shape": [600, 600, 3],
            "dtype": "uint8",
            "first": bgr[0, 0, ::-1].tolist(),  # as the model asked: RGB
            "sum": int(bgr.astype(np.int64).sum()),
        }
        assert client.run_image(rgba, color="rgba")["sum"] == int(rgba[..., :3].sum())
        assert client.run_image(deep, color="rgb") == {
            "shape": [450, 450, 3],
            "dtype": "uint16",
            "first": deep[0, 0].tolist(),
            "sum": int(deep.astype(np.int64).sum()),
        }
        assert client.run_image(gray)["sum"] == 3 * int(gray.astype(np.int64).sum())
        halves = [bgr[:300], bgr[300:]]  # each fits, both together do not
        sums = [r["sum"] for r in client.run_images(halves)]
        assert sums == [int(h.astype(np.int64).sum()) for h in halves]


def test_encoding_a_large_image_as_png_counts_in_the_calls_timeout(server: InProcessServer) -> None:
    # 27 MB of pixels over a 1 MiB limit: the client encodes them as PNG first, which takes
    # longer than this call's 10 ms. That time was not the call's: it ran past its timeout.
    image = smooth((3000, 3000, 3))
    client = ModelClient("pixels", server.target, max_message_mb=1, timeout=0.01)
    with client:
        began = time.monotonic()
        with pytest.raises(DeadlineExceededError, match="encoding the images as PNG"):
            client.run_image(image)
        assert time.monotonic() - began > 0.01


def test_an_image_too_large_even_as_png_says_what_to_do(server: InProcessServer) -> None:
    noise = np.random.default_rng(7).integers(0, 256, (600, 600, 3), np.uint8)
    client = ModelClient("pixels", server.target, max_message_mb=1, shared_memory=False)
    with client, pytest.raises(ResourceExhaustedError) as refused:
        client.run_image(noise)
    message = str(refused.value)
    assert "the request needs 1.0 MiB, more than the 1 MiB a message may carry" in message
    assert "max_message_mb (tms --max-message-mb)" in message
    assert "the server's --max-message-mb" in message


def test_the_command_takes_max_message_mb(
    server: InProcessServer, capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    picture = smooth((600, 600, 3))
    Image.fromarray(picture).save(tmp_path / "big.bmp")  # no PNG or JPEG: sent as raw pixels
    base = ["--target", server.target, "--no-shared-memory"]
    code, out, err = tms(
        capsys, *base, "--max-message-mb", "1", "run", "pixels", str(tmp_path / "big.bmp")
    )
    assert (code, err) == (0, "")
    assert json.loads(out)["sum"] == int(picture.astype(np.int64).sum())
    noise = np.random.default_rng(7).integers(0, 256, (600, 600, 3), np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.bmp")
    monkeypatch.setenv("TMS_MAX_MESSAGE_MB", "1")
    code, _, err = tms(capsys, *base, "run", "pixels", str(tmp_path / "noise.bmp"))
    assert code == 1
    assert "(tms --max-message-mb)" in err
    assert "RESOURCE_EXHAUSTED" in err


# -- 7. what the docs and types promise ---------------------------------------------------------


def test_every_method_of_the_asyncio_client_is_awaited(server: InProcessServer) -> None:
    async def workers() -> tuple[int, int]:
        async with AsyncModelClient("pixels", server.target) as started:
            first = len(await started.workers())
        fresh = AsyncModelClient("pixels", server.target)  # not started: its call starts it
        try:
            return first, len(await fresh.workers())
        finally:
            await fresh.close()

    assert asyncio.run(workers()) == (1, 1)


def test_the_image_input_type_rejects_what_the_client_rejects(tmp_path: Path) -> None:
    user_code = tmp_path / "user_code.py"
    user_code.write_text(
        textwrap.dedent(
            """\
            from pathlib import Path

            import numpy as np
            from PIL import Image

            from tms_client import AsyncModelClient, ModelClient, WorkerInfo


            def accepted(client: ModelClient, picture: Image.Image) -> None:
                client.run_image(np.zeros((2, 2, 3), np.uint8))
                client.run_image(picture)
                client.run_image("photo.jpg")
                client.run_image(Path("photo.jpg"))
                client.run_image(b"jpeg bytes")
                client.run_images([picture, "photo.png"])


            async def listed(client: AsyncModelClient) -> list[WorkerInfo]:
                return await client.workers()


            def rejected(client: ModelClient) -> None:
                client.run_image(12345)
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", tmp_path / "cache", user_code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1, result.stdout
    assert errors[0].startswith("user_code.py:23: error: Argument 1 has incompatible type")


# -- 8. the command's output --------------------------------------------------------------------


def test_run_i2i_shows_the_result_and_writes_next_to_the_input(
    server: InProcessServer, capsys, tmp_path: Path
) -> None:
    first, second = tmp_path / "frame1.png", tmp_path / "frame2.png"
    Image.fromarray(smooth((16, 16, 3))).save(first)
    Image.fromarray(smooth((16, 16, 3))[::-1]).save(second)
    out_dir = tmp_path / "out"
    base = ["--target", server.target, "run-i2i", "invert", str(first), str(second)]
    code, out, _ = tms(capsys, *base, "--together", "--out-dir", str(out_dir))
    outputs = [out_dir / "frame1-0.png", out_dir / "frame1-1.png"]
    assert code == 0
    assert out == f'{first} + {second} -> {outputs[0]}, {outputs[1]}  {{"count": 2}}\n'
    code, out, _ = tms(capsys, "--json", *base, "--together", "--out-dir", str(out_dir))
    assert json.loads(out) == {
        "path": str(first),
        "outputs": [str(path) for path in outputs],
        "result": {"count": 2},
    }
    original = first.read_bytes()
    code, out, _ = tms(capsys, "--target", server.target, "run-i2i", "invert", str(first))
    assert code == 0
    assert out == f'{first} -> {tmp_path / "frame1.invert.png"}  {{"count": 1}}\n'
    assert first.read_bytes() == original
    with Image.open(tmp_path / "frame1.invert.png") as png:
        np.testing.assert_array_equal(np.asarray(png), 255 - smooth((16, 16, 3)))
    # An output that would land on another input is refused; the others are written.
    clash = tmp_path / "frame1.invert.png"
    before = clash.read_bytes()
    code, out, err = tms(
        capsys, "--target", server.target, "run-i2i", "invert", str(first), str(clash)
    )
    assert code == 1
    assert f"{first}: its output would overwrite the input {clash}; give --out-dir a" in err
    assert out == f'{clash} -> {tmp_path / "frame1.invert.invert.png"}  {{"count": 1}}\n'
    assert clash.read_bytes() == before


def test_run_i2i_on_a_folder_again_leaves_its_outputs_out(
    server: InProcessServer, capsys, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(smooth((16, 16, 3))).save(folder / "a.png")
    Image.fromarray(smooth((8, 8, 3))).save(folder / "b.edges.png")  # another model's output
    command = ["--target", server.target, "run-i2i", "invert", str(folder)]
    for _ in range(2):  # the second run finds a.invert.png and leaves it out
        code, out, _ = tms(capsys, *command)
        assert code == 0
        assert sorted(out.splitlines()) == [
            f'{folder / "a.png"} -> {folder / "a.invert.png"}  {{"count": 1}}',
            f'{folder / "b.edges.png"} -> {folder / "b.edges.invert.png"}  {{"count": 1}}',
        ]
    assert sorted(p.name for p in folder.iterdir()) == [
        "a.invert.png",
        "a.png",
        "b.edges.invert.png",
        "b.edges.png",
    ]
    # Named on the command line, an output is an input like any other file.
    code, out, _ = tms(capsys, *command[:-1], str(folder / "a.invert.png"))
    assert code == 0
    assert out == f'{folder / "a.invert.png"} -> {folder / "a.invert.invert.png"}  {{"count": 1}}\n'


def test_run_i2i_says_what_together_does(server: InProcessServer, capsys, tmp_path: Path) -> None:
    """Frames for a model that takes two at once, given without --together, each failed alone
    ("flow needs 2 frames, got 1"), with nothing pointing at --together, whose help said only
    "Send all images in one call"; with --together, a failure named the first image alone."""
    frames = [tmp_path / f"frame{n}.png" for n in (1, 2, 3)]
    for n, frame in enumerate(frames):
        Image.fromarray(smooth((16, 16, 3)) + n).save(frame)
    base = ["--target", server.target, "run-i2i", "flow", "--out-dir", str(tmp_path / "out")]
    code, out, err = tms(capsys, *base, *map(str, frames[:2]))
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"{frames[0]}: flow needs 2 frames, got 1 (INVALID_ARGUMENT)",
        f"{frames[1]}: flow needs 2 frames, got 1 (INVALID_ARGUMENT)",
        "tms: 2 of 2 images failed, each sent in a call of its own; --together sends them "
        "all in one call",
    ]
    code, out, err = tms(capsys, *base, *map(str, frames), "--together")
    assert (code, out) == (1, "")
    sent = " + ".join(map(str, frames))
    assert err == f"{sent}: flow needs 2 frames, got 3 (INVALID_ARGUMENT)\n"
    code, out, err = tms(capsys, *base, *map(str, frames[:2]), "--together")
    assert (code, err) == (0, "")
    code, out, _ = tms(capsys, "run-i2i", "--help")
    assert code == 0
    assert (
        "--together Send all the images in one call, for a model that takes several at once "
        "(optical flow's two frames); its outputs are named after the first image. Without it "
        "each image is a call of its own."
    ) in " ".join(out.split())


def test_pretty_json_keeps_points_on_one_line(server: InProcessServer, capsys, tmp_path) -> None:
    Image.fromarray(smooth((16, 16, 3))).save(tmp_path / "page.png")
    base = ["--target", server.target]
    code, out, _ = tms(capsys, *base, "run", "boxes", str(tmp_path / "page.png"))
    assert code == 0
    assert out == textwrap.dedent(
        """\
        {
          "lines": [
            {
              "text": "hi",
              "box": [[1, 2], [30, 2], [30, 9], [1, 9]]
            }
          ]
        }
        """
    )
    code, out, _ = tms(capsys, *base, "--json", "run", "boxes", str(tmp_path / "page.png"))
    line = {"path": str(tmp_path / "page.png"), "result": json.loads(out)["result"]}
    assert out == json.dumps(line, ensure_ascii=False) + "\n"  # JSON Lines, as before


def test_errors_the_parser_cannot_see_are_one_line(capsys) -> None:
    code, out, err = tms(capsys, "--tls-cert", "client.pem", "models")
    assert (code, out) == (2, "")
    assert err.startswith("tms: error: ")
    assert err.count("\n") == 1
    code, _, err = tms(capsys, "run", "pixels", "-", "-")
    assert (code, err) == (2, "tms run: error: '-' (stdin) may be given only once\n")


def test_the_readme_model_runs_as_written(tmp_path: Path) -> None:
    # "Writing a model": its face model, copied from README.md as it stands, answers as the
    # bundled face model does (the same keys, the same face).
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```python\n# models/face/__init__.py\n", 1)[1].split("```", 1)[0]
    folder = tmp_path / "models" / "face"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(block)
    photo = np.ascontiguousarray(data.astronaut()[:, :, ::-1])  # BGR, as OpenCV reads

    def faces_of(models: Path) -> list[dict[str, int]]:
        started = start_in_process(models)
        try:
            with ModelClient("face", started.target) as face:
                return list(face.run_image(photo)["faces"])
        finally:
            started.running.stop(None)

    faces = faces_of(tmp_path / "models")
    shutil.copytree(EXAMPLE_MODELS / "face", tmp_path / "bundled" / "face")
    expected = faces_of(tmp_path / "bundled")
    assert len(faces) == 1
    assert faces[0].keys() == expected[0].keys() == {"x", "y", "width", "height"}
