"""An input that crashes its worker (a native library's segfault) costs two workers at most,
however the client retries: from then on every worker refuses it at once with INTERNAL,
until its model is reloaded; other inputs, one a few pixels apart included, are answered."""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image

from tests.support import ServerProcess, wait_for, write_models
from tms_client import AdminClient, ModelClient, ModelFailedError, UnavailableError

pytestmark = pytest.mark.slow

MODELS = {
    "crasher": """
        import ctypes, pathlib
        import tms_server

        FIXED = pathlib.Path(__file__).with_name("fixed")

        class Model(tms_server.Model):
            thread_safe = True

            def __init__(self):
                self.fixed = FIXED.exists()

            def run(self, image, args):
                total = int(image.sum())
                if image[5, 7, 1] == 200 and total == 200 and not self.fixed:
                    ctypes.string_at(0)  # a native library's bug: a segfault
                return {"sum": total}
    """,
}
ADMIN_TOKEN = "admin-token-0123456789"
CRASHED = (
    r"this input crashed 2 workers \(worker \d: killed by SIGSEGV; worker \d: killed by SIGSEGV\)"
)


def images() -> tuple[np.ndarray, np.ndarray]:
    """The input that crashes the model, and one of its size a few pixels apart."""
    bad = np.zeros((64, 64, 3), np.uint8)
    bad[5, 7, 1] = 200
    near = bad.copy()
    near[40, 40, 2] = near[60, 3, 0] = 1
    return bad, near


def crashes(server: ServerProcess) -> int:
    return server.logs().count("died: killed by SIGSEGV")


def serving_three(client: ModelClient) -> None:
    """Wait until the client knows the three workers: a retry then goes to another one."""
    assert wait_for(lambda: len({w.pid for w in client.workers()}) == 3, 20), client.workers()


def test_an_input_that_crashes_workers_costs_two_and_is_then_refused(server_process, tmp_path):
    server = server_process(write_models(tmp_path, MODELS), workers=3)
    bad, near = images()
    with ModelClient("crasher", server.target, timeout=30) as client:  # default retries
        serving_three(client)
        with pytest.raises(ModelFailedError, match=CRASHED):
            client.run_image(bad)
        assert wait_for(lambda: crashes(server) >= 2, 5), server.logs()
        again = "it is not run again until the model is reloaded or the server restarts"
        with pytest.raises(ModelFailedError, match=again):
            client.run_image(bad)
        assert client.run_image(near) == {"sum": 202}
        assert client.run_image(bad * 0) == {"sum": 0}
        time.sleep(0.5)  # a worker dying now would be said by then
        assert crashes(server) == 2, server.logs()
        assert "refusing an input of model 'crasher' that crashed 2 workers" in server.logs()


def test_a_reload_forgets_the_inputs_that_crashed_its_model(server_process, tmp_path):
    models = write_models(tmp_path / "models", MODELS)
    tokens = tmp_path / "admin_tokens"
    tokens.write_text(f"{ADMIN_TOKEN}\n")
    server = server_process(models, workers=3, args=("--admin-tokens-file", str(tokens)))
    bad, _ = images()
    with ModelClient("crasher", server.target, timeout=30) as client:
        serving_three(client)
        with pytest.raises(ModelFailedError, match=CRASHED):
            client.run_image(bad)
        (models / "crasher" / "fixed").write_text("")  # a new version that does not crash
        with AdminClient(server.target, token=ADMIN_TOKEN, timeout=30) as admin:
            admin.reload_model("crasher")
        assert client.run_image(bad) == {"sum": 200}
        assert crashes(server) == 2, server.logs()


SLEEPER = {
    "sleeper": """
        import ctypes, time
        import tms_server

        class Model(tms_server.Model):
            thread_safe = True

            def run(self, image, args):
                time.sleep(args.get("sleep", 0))
                if args.get("crash"):
                    ctypes.string_at(0)
                return {"sum": int(image.sum())}
    """,
}


def test_an_input_beside_which_http_calls_crash_two_workers_is_not_refused(
    server_process, tmp_path
):
    server = server_process(write_models(tmp_path, SLEEPER), workers=1, args=("--http-port", "0"))
    base = next(line.split()[3] for line in server.output if "tms-server: HTTP on " in line)
    innocent, slowly = np.full((16, 16, 3), 7, np.uint8), {"sleep": 2}
    png = io.BytesIO()
    Image.fromarray(innocent).save(png, "PNG")
    query = urllib.parse.urlencode({"args": json.dumps({"crash": True})})
    crash = urllib.request.Request(f"{base}v2/models/sleeper/run?{query}", data=png.getvalue())
    with ModelClient("sleeper", server.target, timeout=30) as client:
        for crashed in (1, 2):  # the one worker crashes on HTTP calls, the innocent input beside
            assert client.run_image(innocent) == {"sum": 5376}  # serving
            beside = threading.Thread(target=run_beside, args=(client, innocent, slowly))
            beside.start()
            time.sleep(0.5)
            with pytest.raises((urllib.error.URLError, ConnectionError)):
                urllib.request.urlopen(crash, timeout=30)
            assert wait_for(lambda n=crashed: crashes(server) == n, 10), server.logs()
            beside.join()
        assert client.run_image(innocent, args=slowly) == {"sum": 5376}
    assert "crashed 2 workers" not in server.logs()


def run_beside(client: ModelClient, image: np.ndarray, args: dict[str, float]) -> None:
    """Run ``image``, which a crash of its worker may fail."""
    with contextlib.suppress(UnavailableError, ModelFailedError):
        client.run_image(image, args=args)
