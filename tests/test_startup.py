"""A new user's first start: no models is an error, broken models make the server unready and
are said once, `tms models` lists them with why, and scripts/serve.sh starts without warnings.
Real servers on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support import ROOT, ServerProcess, wait_for, write_models, write_plugin
from tests.test_devices import health_of, models_of, per_worker
from tests.test_oip import Inference
from tms.v1 import model_service_pb2 as pb
from tms_cli.__main__ import main as tms
from tms_client import AdminClient, AsyncModelClient, ModelClient, ModelNotReadyError, RoundRobin
from tms_server._gen.inference import grpc_predict_v2_pb2 as oip

pytestmark = pytest.mark.slow

GOOD = '''
    import tms_server

    class Model(tms_server.Model):
        """Mean pixel value."""
        thread_safe = True

        def run(self, image, args):
            return {"mean": float(image.mean())}
'''
BROKEN = {
    "needs_weights": """
        import tms_server

        class Model(tms_server.Model):
            def __init__(self):
                raise RuntimeError("weights.bin not found")

            def run(self, image, args):
                return {}
    """,
    "needs_torch": """
        import torch_that_is_not_installed
    """,
    "typo": """
        class Model(
    """,
    "no_class": """
        MODEL = None
    """,
    # Research code that parses its command line at import: tms-server's, which it refuses.
    "argv_parser": """
        import argparse

        parser = argparse.ArgumentParser()
        parser.add_argument("--weights")
        OPTIONS = parser.parse_args()
    """,
    "exits": """
        import sys
        import tms_server

        class Model(tms_server.Model):
            def __init__(self):
                sys.exit("CUDA not available")

            def run(self, image, args):
                return {}
    """,
}
ADMIN_TOKEN = "admin-token-0123456789"
NO_MODEL = "a model is a sub-folder with an __init__.py that defines class Model"


def serve(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``tms-server ARGS`` in ``cwd`` to its end (it should not get to serve)."""
    command = [sys.executable, "-m", "tms_server", "--host", "127.0.0.1", "--port", "0"]
    command += ["--workers", "2", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=60, check=False)


@pytest.mark.parametrize(
    ("make", "args", "problem"),
    [
        (None, ["--models", "absent"], "does not exist (set it with --models or TMS_MODELS)"),
        ("a file", ["--models", "absent"], "is not a folder (set it with --models or TMS_MODELS)"),
        (
            "a folder",
            [],  # the default folder, models, in the working directory
            "holds no model, and no package registers one under the tms.models entry point: "
            + NO_MODEL,
        ),
        (
            "a folder",
            ["--models", "models", "--entry-points", "false"],
            "holds no model: " + NO_MODEL,
        ),
    ],
    ids=["missing", "a-file", "default-and-empty", "no-model-package"],
)
def test_no_models_stops_the_server_at_start_naming_the_folder(tmp_path, make, args, problem):
    given = args[1] if args else "models"
    if make == "a file":
        (tmp_path / given).write_text("not a folder")
    elif make == "a folder":
        (tmp_path / given / "notes").mkdir(parents=True)  # a sub-folder, but no package
    done = serve(args, tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    message = f"tms-server: error: models folder {given!r} ({tmp_path / given}) {problem}"
    assert done.stderr.splitlines() == [message]
    assert done.stdout == ""  # no worker started, nothing served


def test_models_naming_one_model_folder_says_to_give_its_parent(tmp_path):
    """--models models/face (the model, not the folder of models) is a common slip."""
    write_models(tmp_path / "models", {"face": GOOD})
    done = serve(["--models", "models/face", "--entry-points", "false"], tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        f"tms-server: error: models folder 'models/face' ({tmp_path / 'models' / 'face'}) "
        f"holds no model: {NO_MODEL}; 'models/face' is itself a model folder: give the "
        "folder that holds it (--models models)"
    ]
    assert done.stdout == ""


def closed_to_the_server(folder: Path) -> list[str]:
    """Close ``folder`` to a server run under the command prefix returned, as a folder of
    another user (mode 0700) is closed to a server not run as root. A test run as root runs
    the server as root of a user namespace of its own (unshare), which has no power over the
    files of users outside it."""
    if os.geteuid() != 0:
        folder.chmod(0)
        return []
    os.chown(folder, 54321, 54321)
    folder.chmod(0o700)
    prefix = ["unshare", "--user", "--map-root-user"]
    if shutil.which("unshare") is None or subprocess.run([*prefix, "true"], check=False).returncode:
        pytest.skip("needs a user namespace (unshare) to run the server without root's powers")
    return prefix


def test_a_sub_folder_the_server_may_not_read_is_no_model(tmp_path):
    """A volume mounted as the models folder holds lost+found, root's alone (mode 0700): a
    server not run as root serves the models beside it, and says once what it passed over."""
    models = write_models(tmp_path / "models", {"alpha": GOOD})
    (models / "lost+found").mkdir()
    prefix = closed_to_the_server(models / "lost+found")
    command = [*prefix, sys.executable, "-m", "tms_server", "--host", "127.0.0.1", "--port", "0"]
    command += ["--workers", "2", "--models", str(models), "--entry-points", "false"]
    server = ServerProcess(
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    )
    try:
        assert server.wait_started(60), server.logs()
        with per_worker(server.target) as channels:
            assert {health_of(channel, "") for channel in channels.values()} == {"SERVING"}
        with ModelClient("alpha", server.target) as client:
            assert client.run_image(np.full((4, 4, 3), 9, np.uint8)) == {"mean": 9.0}
            assert client.failed_models() == {}
    finally:
        code = server.stop(signal.SIGTERM, timeout=60)
    assert code == 0, server.logs()
    said = [line for line in server.logs().splitlines() if "lost+found" in line]
    assert len(said) == 1, server.logs()
    assert " WARNING " in said[0]
    assert "cannot look into 'lost+found' (Permission denied); it is no model" in said[0]


def test_a_models_folder_the_server_may_not_read_stops_it_naming_the_folder(tmp_path):
    models = write_models(tmp_path / "models", {"alpha": GOOD})
    prefix = closed_to_the_server(models)
    command = [*prefix, sys.executable, "-m", "tms_server", "--host", "127.0.0.1", "--port", "0"]
    command += ["--workers", "2", "--models", str(models), "--entry-points", "false"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(
        f"tms-server: error: models folder {str(models)!r} cannot be read: Permission denied "
        "(tms-server runs as uid "
    ), line
    assert done.stdout == ""


@pytest.mark.parametrize("flag", ["--models", "--tokens-file", "--tls-cert"])
def test_an_empty_path_is_refused_not_taken_for_the_working_directory(tmp_path, flag):
    """``--models "$MODELS"`` with MODELS unset would serve the working directory, and
    ``--tokens-file ""`` was said to be '.', a folder."""
    write_models(tmp_path, {"alpha": GOOD})  # the working directory holds a model
    done = serve([flag, "", "--entry-points", "false"], tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        f"tms-server: error: argument {flag}: an empty path; give one, or leave the flag out "
        "(tms-server --help lists every flag)"
    ]
    assert done.stdout == ""


def test_installed_models_alone_need_no_models_folder(tmp_path):
    # The default folder, models, is missing, and an entry point names a model: the server
    # serves it. A folder given (--models) that is missing still stops the server.
    plugin = write_plugin(tmp_path / "site")
    path = os.pathsep.join([str(plugin), os.environ.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "tms_server", "--host", "127.0.0.1", "--port", "0"]
    command += ["--workers", "1"]
    server = ServerProcess(
        subprocess.Popen(
            command,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": path},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    )
    try:
        assert server.wait_started(60), server.logs()
        with ModelClient("reverse", server.target) as reverse:
            assert reverse.run_text("abc") == "cba"
    finally:
        assert server.stop(signal.SIGTERM, timeout=60) == 0, server.logs()
    assert "serving the models of the tms.models entry points" in server.logs()
    done = subprocess.run(
        [*command, "--models", "absent"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "does not exist (set it with --models or TMS_MODELS)" in done.stderr


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    """Three good models and four that fail to load, each its own way."""
    return write_models(tmp_path / "models", {"alpha": GOOD, "beta": GOOD, "gamma": GOOD, **BROKEN})


def oip_ready(channel: grpc.Channel) -> bool:
    """The Open Inference Protocol's ServerReady of the worker at the end of ``channel``."""
    return bool(Inference(channel)("ServerReady", oip.ServerReadyRequest()).ready)


def test_failed_models_make_the_server_not_ready_and_are_said_once(server_process, broken):
    server = server_process(broken, workers=2, args=("--entry-points", "false"))
    lines = server.logs().splitlines()
    ready = next(line for line in lines if line.startswith("tms-server: serving on "))
    assert ready.endswith(
        " with 2 worker(s); 6 model(s) failed to load: argv_parser, exits, needs_torch, "
        "needs_weights, no_class, typo (see above; --log-level DEBUG shows tracebacks); "
        "health NOT_SERVING until they load (or --allow-failed-models)"
    )
    # Each failure once for the whole server, with its reason, and no traceback.
    for name, reason in [
        ("needs_weights", "RuntimeError: weights.bin not found"),
        ("needs_torch", "ModuleNotFoundError: No module named 'torch_that_is_not_installed'"),
        ("typo", "SyntaxError: "),
        ("no_class", "TypeError: "),
        ("argv_parser", "SystemExit: the model called sys.exit(2) while loading (argparse at "),
        ("exits", "SystemExit: the model called sys.exit('CUDA not available') while loading"),
    ]:
        said = [line for line in lines if f"model {name!r} failed to load" in line]
        assert len(said) == 1, said
        assert f"model {name!r} failed to load: {reason}" in said[0]
    assert "Traceback" not in server.logs()
    # Nothing else names them but the line that says the server serves.
    about = [line for line in lines if any(name in line for name in BROKEN)]
    assert len(about) == len(BROKEN) + 1
    assert all(" failed to load: " in line for line in about), about

    # Readiness ("") is NOT_SERVING on every worker; the model service and good models serve.
    with per_worker(server.target) as channels:
        assert set(channels) == {0, 1}
        for channel in channels.values():
            assert health_of(channel, "") == "NOT_SERVING"
            assert health_of(channel, "tms.v1.ModelService") == "SERVING"
            assert health_of(channel, "alpha") == "SERVING"
            assert health_of(channel, "needs_weights") == "NOT_SERVING"
            assert not oip_ready(channel)  # the Open Inference Protocol's readiness agrees
    with ModelClient("alpha", server.target) as client:
        assert client.run_image(np.full((4, 4, 3), 9, np.uint8)) == {"mean": 9.0}
        assert client.failed_models()["needs_weights"] == "RuntimeError: weights.bin not found"
        assert sorted(client.failed_models()) == sorted(BROKEN)


def test_folders_whose_names_no_call_could_give_fail_to_load_and_are_said_once(
    server_process, tmp_path
):
    # A folder named -dash, face.v2 or longer than 64 characters is a model deployed that no
    # call can name: it fails to load like any other, with what is wrong with its name.
    long = "a" * 70
    reasons = {
        "-dash": "it begins with -",
        long: "it is 70 characters long",
        "face.v2": "it has '.'",
    }
    models = write_models(tmp_path / "models", {"alpha": GOOD, **dict.fromkeys(reasons, GOOD)})
    server = server_process(models, workers=2, args=("--entry-points", "false"))
    lines = server.logs().splitlines()
    ready = next(line for line in lines if line.startswith("tms-server: serving on "))
    assert f" with 2 worker(s); 3 model(s) failed to load: -dash, {long}, face.v2 (" in ready
    rule = "a name is 1 to 64 letters, digits, _ or - (not - first)"
    for name, reason in reasons.items():
        said = [line for line in lines if f"model {name!r}" in line]
        assert len(said) == 1, said
        assert said[0].endswith(f"failed to load: invalid model name: {reason}; {rule}")
    with per_worker(server.target) as channels:
        assert {health_of(channel, "") for channel in channels.values()} == {"NOT_SERVING"}
    with ModelClient("alpha", server.target) as client:
        assert sorted(client.failed_models()) == sorted(reasons)
        assert client.run_image(np.full((4, 4, 3), 9, np.uint8)) == {"mean": 9.0}


PLACED_BROKEN = """
    import tms_server

    class Model(tms_server.Model):
        workers = 1  # a big model: worker 0 alone loads it, the others send its calls there

        def __init__(self):
            raise RuntimeError("CUDA out of memory")

        def run(self, image, args):
            return {}
"""


def test_a_model_failed_on_one_worker_makes_every_worker_unready(server_process, tmp_path):
    """Each readiness probe reaches one worker, whichever the kernel picks: if the workers
    that did not load the model said SERVING, a broken deploy's pod would flap between
    ready and not, and its rollout would go on."""
    server, models = _admin_server(server_process, tmp_path, {"big": PLACED_BROKEN})
    assert "1 model(s) failed to load: big (" in server.logs()
    with per_worker(server.target) as channels:
        assert set(channels) == {0, 1}
        for channel in channels.values():
            assert health_of(channel, "") == "NOT_SERVING"
            assert not oip_ready(channel)
            assert health_of(channel, "tms.v1.ModelService") == "SERVING"
            assert health_of(channel, "alpha") == "SERVING"
        # Watches of "" say so on every worker, and say when it changes.
        request = health_pb2.HealthCheckRequest(service="")
        watches = [
            health_pb2_grpc.HealthStub(channel).Watch(request, timeout=60)
            for channel in channels.values()
        ]
        status = health_pb2.HealthCheckResponse.ServingStatus.Name
        assert [status(next(watch).status) for watch in watches] == ["NOT_SERVING"] * 2
        # A reload that loads it makes every worker ready again, as soon as it is done.
        write_models(models, {"big": PLACED_BROKEN.replace("raise RuntimeError", "print")})
        with AdminClient(server.target, token=ADMIN_TOKEN, timeout=30) as admin:
            assert all(outcome.reloaded for outcome in admin.reload_model("big"))
        assert {health_of(channel, "") for channel in channels.values()} == {"SERVING"}
        assert [status(next(watch).status) for watch in watches] == ["SERVING"] * 2
        for channel in channels.values():
            listed = models_of(channel).ListModels(pb.ListModelsRequest(), timeout=10)
            assert ([m.name for m in listed.models], list(listed.failed)) == (["alpha", "big"], [])
        for watch in watches:
            watch.cancel()


def test_a_watch_of_the_server_hears_of_another_workers_failure_ending(server_process, tmp_path):
    """Worker 1 changes nothing of its own when worker 0, where a model failed, is replaced
    by a worker that loads it: its watch of "" hears of it from the board alone, however
    soon after the start it comes."""
    server, models = _admin_server(server_process, tmp_path, {"big": PLACED_BROKEN})
    with per_worker(server.target) as channels:
        request = health_pb2.HealthCheckRequest(service="")
        watch = health_pb2_grpc.HealthStub(channels[1]).Watch(request, timeout=30)
        status = health_pb2.HealthCheckResponse.ServingStatus.Name
        assert status(next(watch).status) == "NOT_SERVING"
        write_models(models, {"big": PLACED_BROKEN.replace("raise RuntimeError", "print")})
        worker = models_of(channels[0]).GetWorkerInfo(pb.GetWorkerInfoRequest(), timeout=10)
        os.kill(worker.pid, signal.SIGKILL)
        assert status(next(watch).status) == "SERVING"
        watch.cancel()


def test_every_worker_lists_a_model_that_failed_on_another(server_process, tmp_path):
    """`tms models` reaches one worker, whichever the kernel picks: each lists the model that
    failed on worker 0 alone, with why, until a worker that loads it replaces worker 0."""
    server, models = _admin_server(server_process, tmp_path, {"big": PLACED_BROKEN})
    why = "RuntimeError: CUDA out of memory"
    with per_worker(server.target) as channels:
        for channel in channels.values():
            stub = models_of(channel)
            listed = stub.ListModels(pb.ListModelsRequest(), timeout=10)
            assert [(failed.name, failed.reason) for failed in listed.failed] == [("big", why)]
            assert [model.name for model in listed.models] == ["alpha"]
            # Its description and its calls fail alike, on the worker that failed or not.
            for method, request in [
                (stub.GetModelInfo, pb.GetModelInfoRequest(model="big")),
                (stub.RunImage, pb.RunImageRequest(model="big")),
            ]:
                with pytest.raises(grpc.RpcError) as info:
                    method(request, timeout=10)
                assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert info.value.details() == f"model 'big' failed to load: {why}"
        write_models(models, {"big": PLACED_BROKEN.replace("raise RuntimeError", "print")})
        worker = models_of(channels[0]).GetWorkerInfo(pb.GetWorkerInfoRequest(), timeout=10)
        os.kill(worker.pid, signal.SIGKILL)

        def mended() -> bool:
            listed = models_of(channels[1]).ListModels(pb.ListModelsRequest(), timeout=10)
            return not listed.failed and [m.name for m in listed.models] == ["alpha", "big"]

        assert wait_for(mended, 30)
        request = pb.GetModelInfoRequest(model="big")
        assert models_of(channels[1]).GetModelInfo(request, timeout=10).info.name == "big"


def test_debug_logs_show_each_workers_traceback(server_process, broken):
    args = ("--entry-points", "false", "--log-level", "DEBUG")
    server = server_process(broken, workers=2, args=args)
    # The one line per failure is still one; each worker's traceback is there at DEBUG.
    assert server.logs().count("model 'needs_weights' failed to load:") == 1
    assert server.logs().count('raise RuntimeError("weights.bin not found")') == 2


@pytest.mark.parametrize(
    ("args", "env"),
    [(("--allow-failed-models",), {}), ((), {"TMS_ALLOW_FAILED_MODELS": "true"})],
    ids=["flag", "environment"],
)
def test_allow_failed_models_keeps_the_server_ready(server_process, broken, args, env):
    server = server_process(broken, workers=2, args=("--entry-points", "false", *args), env=env)
    assert "health SERVING all the same (--allow-failed-models)" in server.logs()
    with per_worker(server.target) as channels:
        assert {health_of(channel, "") for channel in channels.values()} == {"SERVING"}
        assert {health_of(c, "needs_weights") for c in channels.values()} == {"NOT_SERVING"}
        assert all(oip_ready(channel) for channel in channels.values())


def test_a_reload_that_loads_the_last_failed_model_makes_the_server_ready(server_process, tmp_path):
    models = write_models(tmp_path / "models", {"alpha": GOOD, "late": BROKEN["needs_weights"]})
    tokens = tmp_path / "admin_tokens"
    tokens.write_text(ADMIN_TOKEN + "\n")
    args = ("--entry-points", "false", "--admin-tokens-file", str(tokens))
    server = server_process(models, workers=2, args=args)
    with AdminClient(server.target, token=ADMIN_TOKEN, timeout=30) as admin:
        # A reload that fails again changes nothing: the server stays unready. Each worker
        # logs why in a line (the traceback only at DEBUG, as when the server started).
        assert not any(outcome.reloaded for outcome in admin.reload_model("late"))
        why = "model 'late' failed to reload: RuntimeError: weights.bin not found"
        assert wait_for(lambda: server.logs().count(why) == 2, 10), server.logs()
        assert "Traceback" not in server.logs()
        with per_worker(server.target) as channels:
            assert {health_of(channel, "") for channel in channels.values()} == {"NOT_SERVING"}
        write_models(models, {"late": GOOD})
        assert all(outcome.reloaded for outcome in admin.reload_model("late"))
    with per_worker(server.target) as channels:
        assert {health_of(channel, "") for channel in channels.values()} == {"SERVING"}
        assert {health_of(channel, "late") for channel in channels.values()} == {"SERVING"}


ONCE = """
    import os
    from pathlib import Path

    import tms_server

    class Model(tms_server.Model):
        inputs = "text"

        def __init__(self):  # the first worker to load it has it; the others fail to
            os.close(os.open(Path(__file__).with_name("taken"), os.O_CREAT | os.O_EXCL))

        def run(self, text, args):
            return {"pid": os.getpid()}
"""


def test_calls_go_to_the_workers_that_loaded_their_model(server_process, tmp_path):
    # A worker that failed to load a model others serve (its files broken on disk since the
    # others loaded them, say) does not list it in GetWorkerInfo.models, which every client
    # routes by (the conformance suite's placed model): every call succeeds.
    models = write_models(tmp_path / "models", {"alpha": GOOD, "once": ONCE})
    server = server_process(models, workers=2, args=("--entry-points", "false"))
    with ModelClient("once", server.target, balancer=RoundRobin()) as client:
        assert wait_for(lambda: len(client.workers()) == 2, 10)
        pids = {client.run_text("x")["pid"] for _ in range(10)}
    assert len(pids) == 1
    with per_worker(server.target) as channels:
        assert sorted(health_of(channel, "once") for channel in channels.values()) == [
            "NOT_SERVING",
            "SERVING",
        ]


LATE = """
    import os
    from pathlib import Path

    import tms_server

    class Model(tms_server.Model):
        inputs = "text"
        thread_safe = True

        def __init__(self):  # the first worker to load it has it; the others fail to, unless
            here = Path(__file__).parent  # the model's folder holds "ready"
            if not (here / "ready").exists():
                os.close(os.open(here / "taken", os.O_CREAT | os.O_EXCL))

        def run(self, text, args):
            return {"pid": os.getpid()}
"""


def _admin_server(server_process, tmp_path, sources):
    """Two workers serving ``sources`` (and alpha), admin on; the server and its folder."""
    models = write_models(tmp_path / "models", {"alpha": GOOD, **sources})
    tokens = tmp_path / "admin_tokens"
    tokens.write_text(ADMIN_TOKEN + "\n")
    args = ("--entry-points", "false", "--admin-tokens-file", str(tokens))
    return server_process(models, workers=2, args=args), models


def _late_server(server_process, tmp_path):
    """Two workers; "late" loaded on one, on both after the next reload of it."""
    server, models = _admin_server(server_process, tmp_path, {"late": LATE})

    def reload() -> None:
        (models / "late" / "ready").touch()
        with AdminClient(server.target, token=ADMIN_TOKEN, timeout=30) as admin:
            assert all(outcome.reloaded for outcome in admin.reload_model("late"))

    return server, reload


def test_calls_follow_a_model_a_reload_loads_on_more_workers(server_process, tmp_path):
    # The client sends "late" only to the worker that loaded it. After a reload loads it on
    # the other worker too, the next answers carry the reload's number; the client asks both
    # workers again which models they serve, and its calls go to both, though it had sent
    # none to the other.
    server, reload = _late_server(server_process, tmp_path)
    with ModelClient("late", server.target, balancer=RoundRobin()) as client:
        assert wait_for(lambda: len(client.workers()) == 2, 10)
        assert len({client.run_text("x")["pid"] for _ in range(10)}) == 1
        reload()
        assert wait_for(lambda: len({client.run_text("x")["pid"] for _ in range(10)}) == 2, 10)
        assert all(worker.models == {"alpha", "late"} for worker in client.workers())


def test_asyncio_calls_follow_a_model_a_reload_loads_on_more_workers(server_process, tmp_path):
    server, reload = _late_server(server_process, tmp_path)

    async def main() -> None:
        async with AsyncModelClient("late", server.target, balancer=RoundRobin()) as client:

            async def pids() -> set[int]:
                return {(await client.run_text("x"))["pid"] for _ in range(10)}

            while len(await client.workers()) < 2:
                await asyncio.sleep(0.05)
            assert len(await pids()) == 1
            await asyncio.to_thread(reload)
            async with asyncio.timeout(10):
                while len(await pids()) < 2:
                    await asyncio.sleep(0.05)
            assert all(w.models == {"alpha", "late"} for w in await client.workers())

    asyncio.run(main())


MOVED = """
    import os
    import time
    from pathlib import Path

    import tms_server

    class Model(tms_server.Model):
        inputs = "text"
        thread_safe = True
        # On every worker; on the first alone once the folder holds "one".
        workers = 1 if (Path(__file__).parent / "one").exists() else None

        def __init__(self):  # worker 1 reloads a second after worker 0
            if self.worker_index == 1 and self.workers == 1:
                time.sleep(1.0)

        def run(self, text, args):
            return {"pid": os.getpid()}
"""


def test_calls_leave_a_worker_a_reload_takes_a_model_off_at_once(server_process, tmp_path):
    # A reload places the model on worker 0 alone. Worker 1's calls for it fail from when it
    # has reloaded until the client asks it again which models it serves: that now happens
    # at its first answer saying it has done the reload, not at the next round of the
    # background search (2 s later), which could have asked it before it had done it.
    server, models = _admin_server(server_process, tmp_path, {"moved": MOVED})
    failures: list[float] = []
    stop = threading.Event()
    with ModelClient("moved", server.target, balancer=RoundRobin()) as client:
        assert wait_for(lambda: len(client.workers()) == 2, 10)
        assert len({client.run_text("x")["pid"] for _ in range(10)}) == 2

        def call() -> None:
            while not stop.is_set():
                try:
                    client.run_text("x")
                except ModelNotReadyError:
                    failures.append(time.monotonic())

        callers = [threading.Thread(target=call) for _ in range(8)]
        for caller in callers:
            caller.start()
        (models / "moved" / "one").touch()
        with AdminClient(server.target, token=ADMIN_TOKEN, timeout=30) as admin:
            assert all(outcome.reloaded for outcome in admin.reload_model("moved"))
        reloaded = time.monotonic()
        time.sleep(3)
        stop.set()
        for caller in callers:
            caller.join(10)
        assert len({client.run_text("x")["pid"] for _ in range(10)}) == 1
    late = [when - reloaded for when in failures if when > reloaded + 0.3]
    assert late == [], (
        f"{len(failures)} failed calls, the last {max(failures) - reloaded:.2f} s after"
    )


def test_tms_models_lists_failed_models_with_their_reason(server_process, broken, capsys):
    server = server_process(broken, workers=2, args=("--entry-points", "false"))
    assert tms(["--target", server.target, "models"]) == 0
    out = capsys.readouterr().out
    loaded, failed = out.split("\n\n")
    assert [row.split()[0] for row in loaded.splitlines()[1:]] == ["alpha", "beta", "gamma"]
    header, *rows = (re.split(r"\s{2,}", line) for line in failed.splitlines())
    assert header == ["FAILED TO LOAD", "REASON"]
    assert [name for name, _ in rows] == sorted(BROKEN)
    assert dict(rows)["needs_weights"] == "RuntimeError: weights.bin not found"

    assert tms(["--target", server.target, "--json", "models"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in listed if "failed" not in m] == ["alpha", "beta", "gamma"]
    failures = {m["name"]: m["failed"] for m in listed if "failed" in m}
    assert failures["needs_weights"] == "RuntimeError: weights.bin not found"

    assert tms(["--target", server.target, "models", "--names"]) == 0
    assert capsys.readouterr().out == "alpha\nbeta\ngamma\n"
    assert tms(["--target", server.target, "health"]) == 1  # the server is not ready
    assert capsys.readouterr().out.splitlines()[0] == f"server {server.target}: NOT_SERVING"


SIBLING_USER = """
    import tms_server
    {imports}

    class Model(tms_server.Model):
        inputs = "text"

        def run(self, text, args):
            return {{"answer": helpers.ANSWER, "shout": tools.shout(text)}}
"""


def test_a_model_importing_its_own_files_as_a_script_would_is_told_how(server_process, tmp_path):
    """A model folder is imported as a package, so ``import helpers`` beside helpers.py
    fails; the reason names the file and the relative import that works, which loads."""
    imports = {
        "absolute": "import helpers",
        "absolute_package": "from tools import shout",
        "relative": "from . import helpers, tools",
        "missing": "import helpers_nowhere",
    }
    models = write_models(
        tmp_path / "models",
        {name: SIBLING_USER.format(imports=line) for name, line in imports.items()},
    )
    for name in imports:
        (models / name / "helpers.py").write_text("ANSWER = 42\n")
        (models / name / "tools").mkdir()
        (models / name / "tools" / "__init__.py").write_text(
            "def shout(t):\n    return t.upper()\n"
        )
    server = server_process(models, workers=1, args=("--entry-points", "false"))
    with ModelClient("relative", server.target) as client:
        assert client.run_text("hi") == {"answer": 42, "shout": "HI"}
        failed = client.failed_models()
    helpers = models / "absolute" / "helpers.py"
    assert failed["absolute"] == (
        f"ModuleNotFoundError: No module named 'helpers'; {helpers} is in the model's folder, "
        "which is imported as a package, not put on the import path: import it relatively "
        "(from . import helpers, or from .helpers import ...)"
    )
    tools = models / "absolute_package" / "tools"
    assert failed["absolute_package"] == (
        f"ModuleNotFoundError: No module named 'tools'; {tools} is in the model's folder, "
        "which is imported as a package, not put on the import path: import it relatively "
        "(from . import tools, or from .tools import ...)"
    )
    # A module that is nowhere in the folder is just missing: no hint.
    assert failed["missing"] == "ModuleNotFoundError: No module named 'helpers_nowhere'"
    said = [line for line in server.logs().splitlines() if "'absolute' failed to load" in line]
    assert len(said) == 1
    assert said[0].endswith("(from . import helpers, or from .helpers import ...)")


INIT_WITH = """
    import tms_server

    class Model(tms_server.Model):
        inputs = "text"

        def __init__(self, {params}):
            self.got = {got}

        def run(self, text, args):
            return {{"got": self.got}}
"""


def test_a_model_whose_init_wants_arguments_is_told_what_the_server_passes(
    server_process, tmp_path
):
    """The server makes a model with no arguments but worker_index, device and threads:
    an __init__ that requires another fails to load saying so, not only "missing 1
    required positional argument"; defaults and the server's own keywords load."""
    models = write_models(
        tmp_path / "models",
        {
            "wants_path": INIT_WITH.format(params="weights_path", got="weights_path"),
            "wants_two": INIT_WITH.format(params="a, *, b", got="[a, b]"),
            "defaults": INIT_WITH.format(params="path='w.bin', *, device", got="[path, device]"),
            "any_kwargs": INIT_WITH.format(params="threads, **rest", got="[threads, rest]"),
        },
    )
    server = server_process(models, workers=1, args=("--entry-points", "false"))
    with ModelClient("defaults", server.target) as client:
        assert client.run_text("x") == {"got": ["w.bin", "cpu"]}
        failed = client.failed_models()
    with ModelClient("any_kwargs", server.target) as client:
        assert client.run_text("x")["got"][1] == {}  # **rest gets nothing
    tail = (
        "which the server cannot pass: it makes each instance with no arguments but "
        "worker_index, device and threads (by keyword, when __init__ names them); give {} a "
        "default, or read it in __init__ (a file beside the model, an environment variable)"
    )
    assert failed == {
        "wants_path": "TypeError: Model.__init__() requires weights_path, "
        + tail.format("weights_path"),
        "wants_two": "TypeError: Model.__init__() requires a, b, " + tail.format("a, b"),
    }


def test_a_model_with_no_hook_it_can_answer_through_says_which_it_has(server_process, tmp_path):
    """A misspelt hook, or run_image_to_image on a text model: the reason names what the
    class has rather than only the hooks it lacks."""
    models = write_models(
        tmp_path / "models",
        {
            "misspelt": """
                import tms_server

                class Model(tms_server.Model):
                    def runn(self, image, args):
                        return {}

                    def prepare(self, image):
                        return image
            """,
            "text_i2i": """
                import tms_server

                class Model(tms_server.Model):
                    inputs = "text"

                    def run_image_to_image(self, images, args):
                        return images
            """,
            "empty": """
                import tms_server

                class Model(tms_server.Model):
                    pass
            """,
        },
    )
    server = server_process(models, workers=1, args=("--entry-points", "false"))
    with grpc.insecure_channel(server.target) as channel:
        assert health_of(channel, "") == "NOT_SERVING"
    hooks = "TypeError: the model overrides none of run, run_batch, run_image_to_image"
    with ModelClient("misspelt", server.target) as client:
        assert client.failed_models() == {
            "empty": hooks,
            "misspelt": f"{hooks} (it defines prepare, runn)",
            "text_i2i": "TypeError: a text model (inputs = 'text') answers through run or "
            "run_batch; run_image_to_image is for image models",
        }


def test_serve_sh_starts_without_uv_warnings_in_an_active_environment(tmp_path):
    """Under an activated virtual environment or pyenv's shims, uv warned on every start."""
    env = {**os.environ, "VIRTUAL_ENV": str(tmp_path / "other-venv")}
    command = ["bash", "scripts/serve.sh", "--host", "127.0.0.1", "--port", "0", "--workers", "1"]
    server = ServerProcess(
        subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    )
    try:
        assert server.wait_started(180), server.logs()
    finally:
        code = server.stop(signal.SIGTERM, timeout=60)
    assert code == 0, server.logs()
    # uv's warnings: "warning: `VIRTUAL_ENV=...` does not match the project environment path",
    # and under pyenv "warning: Using incompatible environment (`.venv`) due to `--no-sync`".
    assert [line for line in server.logs().splitlines() if line.startswith("warning:")] == []
