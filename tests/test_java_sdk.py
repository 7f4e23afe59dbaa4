"""The Java client (clients/java, built with Maven) against real servers: one client reaches
every worker process, loses no call when a worker is killed, keeps its calls away from a worker
another client holds busy (least-loaded, from the load reports) and from a stopped one (from its
latency), follows a model that an admin reload loads on another worker (the same client's calls
reach both), fails its start at once where the connection is refused (and waits its connect
timeout for a target that never answers, and with waitForServer for a server that starts
later), streams frames in order (and fails a stream a server
ends too early), ends its calls and streams in flight when closed, lists the server's models;
and codegen/generate.py's drift check covers its generated stubs. Runs the client's example
command, io.tinymodelserver.tms.client.Example, its conformance runner
(io.tinymodelserver.tms.client.Conformance, in src/test/java: tests/conformance/README.md) and
the main README's Java snippet; `mvn package` runs its unit tests (src/test/java, *Test.java)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.support import (
    EXAMPLE_MODELS,
    LATE_IMAGE_MODEL,
    ROOT,
    ServerProcess,
    answer_once_started,
    early_ending_server,
    refusing_target,
    stopped,
    wait_for,
    write_models,
)
from tests.toolchains import JAVA_PROJECT, build_java_client, run
from tms_client import AdminClient, ModelClient

pytestmark = pytest.mark.slow

PACKAGE = "io.tinymodelserver.tms.client"
JAVA_STUBS = JAVA_PROJECT / "src" / "main" / "java" / "io" / "tinymodelserver" / "tms" / "v1"

MODELS = {
    "whoami": """
        import os, time
        import tms_server

        class Model(tms_server.Model):
            thread_safe = True

            def run(self, image, args):
                time.sleep(args.get("sleep", 0.01))
                return {"pid": os.getpid()}
    """,
    "held": """
        import os, pathlib, time, uuid
        import tms_server

        class Model(tms_server.Model):
            thread_safe = True

            def run(self, image, args):  # holds its thread until the test opens the gate
                gate = pathlib.Path(args["gate"])
                (gate.parent / f"started-{uuid.uuid4().hex}").write_text(str(os.getpid()))
                for _ in range(3000):
                    if gate.exists():
                        break
                    time.sleep(0.02)
                return {"pid": os.getpid()}
    """,
}

Start = Callable[..., ServerProcess]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models(tmp_path_factory.mktemp("models"), MODELS)


@pytest.fixture(scope="module")
def classpath() -> str:
    """``mvn package`` in clients/java; its classes, test classes and the jars they need."""
    return build_java_client()


@pytest.fixture(scope="module")
def example(classpath: str) -> list[str]:
    """The command that runs the client's Example main."""
    return ["java", "-cp", classpath, f"{PACKAGE}.Example"]


@pytest.fixture(scope="module")
def conformance(classpath: str) -> list[str]:
    """The command that runs the conformance runner (built from src/test/java)."""
    return ["java", "-cp", classpath, f"{PACKAGE}.Conformance"]


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (the supervisor's workers)."""
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def three_workers(server_process: Start, models: Path) -> ServerProcess:
    server = server_process(models, workers=3)
    assert wait_for(lambda: len(children(server.process.pid)) == 3, 30)
    return server


def example_json(example: list[str], target: str, *args: str) -> dict[str, Any]:
    """Run the example command against ``target``; the JSON line it prints."""
    result = subprocess.run(
        [*example, target, *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def load(example: list[str], target: str, *args: str, model: str = "whoami") -> dict[str, Any]:
    return example_json(example, target, "load", model, *args)


def test_calls_land_on_every_worker(server_process: Start, models, example):
    server = three_workers(server_process, models)
    answer = load(example, server.target, "--threads", "6", "--calls", "300")
    assert answer["failures"] == []
    assert answer["calls"] == 300
    assert answer["workers"] == 3
    assert set(answer["pids"]) == set(children(server.process.pid))


def _load_while(command: list[str], during: Callable[[], None]) -> dict[str, Any]:
    """Run the example's ``load`` ``command``, and ``during()`` once its calls flow; its
    JSON answer."""
    calls = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert calls.stderr is not None
        assert calls.stderr.readline() == "calls flowing\n"
        during()
        stdout, stderr = calls.communicate(timeout=120)
    finally:
        if calls.poll() is None:
            calls.kill()
            calls.wait()
    assert calls.returncode == 0, stderr
    return dict(json.loads(stdout))


def test_a_killed_worker_costs_no_call(server_process: Start, models, example):
    server = three_workers(server_process, models)
    supervisor = server.process.pid
    before = set(children(supervisor))
    command = [*example, server.target, "load", "whoami", "--threads", "6", "--seconds", "8"]
    victim = sorted(before)[0]

    def kill() -> None:
        time.sleep(1)  # calls on every worker
        os.kill(victim, signal.SIGKILL)

    answer = _load_while(command, kill)
    assert answer["failures"] == []
    assert answer["calls"] > 0  # calls were made; how many in 8 s is the machine's business
    assert victim in answer["pids"]
    after = set(children(supervisor))
    assert victim not in after
    assert set(answer["pids"]) & (after - before), "the restarted worker was found and called"


def test_calls_keep_their_deadline_while_the_server_is_down(server_process: Start, models, example):
    """The whole server is killed under calls of a 500 ms deadline: the background search then
    waits up to the connect timeout (10 s) on the refused port, and a call that finds no worker
    waits for that search no longer than its own deadline, then fails."""
    server = server_process(models, workers=2)
    supervisor = server.process.pid
    assert wait_for(lambda: len(children(supervisor)) == 2, 30)
    command = [*example, "--timeout", "0.5", server.target, "load", "whoami", "--seconds", "6"]

    def kill() -> None:
        time.sleep(0.5)
        for pid in [supervisor, *children(supervisor)]:
            os.kill(pid, signal.SIGKILL)

    answer = _load_while(command, kill)
    assert answer["calls"] > 0
    assert answer["failures"], "calls after the kill found no server"
    assert all(f.startswith(("DEADLINE_EXCEEDED", "UNAVAILABLE")) for f in answer["failures"])
    assert answer["longest"] < 3.0, answer  # not the search's 10 s


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_refused_connection_fails_at_once(example):
    """Nothing listens at the target: the start fails at once, UNAVAILABLE, naming the target and
    saying the connection was refused, not after its 30 s connect timeout (the bound leaves room
    for the JVM loading gRPC's classes on a busy machine)."""
    with refusing_target() as target:
        answer = example_json(example, "--connect-timeout", "30", target, "connect")
        refused = f"UNAVAILABLE: connection refused at {target}: is tms-server running?"
        assert answer["failure"] == refused, answer
        assert answer["seconds"] < 10, answer


def test_several_addresses_in_one_target_are_a_usage_error(example):
    """One string of several addresses was grpc-java's "Invalid DNS name" and a stack trace:
    the example now says in one line what to give instead, and exits 2."""
    several = "127.0.0.1:50051,127.0.0.1:50052"
    result = subprocess.run(
        [*example, several, "connect"], capture_output=True, text=True, timeout=120, check=False
    )
    said = (
        f'error: target "{several}" is several addresses in one string; give one'
        " 'host:port', or 'dns:///name:port' for every address a name resolves to\n"
    )
    assert (result.returncode, result.stdout, result.stderr) == (2, "", said)


UNANSWERED = (
    "no TMS server answered at {} within {}s; is it running, is that its gRPC port (not its"
    " --http-port), and does it serve TLS (then pass .credentials(...))?"
)


def test_a_silent_target_is_waited_for_until_the_connect_timeout(example):
    """A target that accepts connections and never answers (a listening socket nobody accepts
    on) may be a slow server: the start waits for it until its connect timeout, then fails
    UNAVAILABLE, saying in one line that no server answered there."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        answer = example_json(example, "--connect-timeout", "2", target, "connect")
    assert answer["failure"] == "UNAVAILABLE: " + UNANSWERED.format(target, 2), answer
    assert answer["seconds"] >= 1.9, answer


def test_wait_for_server_that_never_starts_says_so_in_one_line(example):
    """With waitForServer a target that refuses connections until the connect timeout fails
    with the same one line, not gRPC's connect error and its stack trace."""
    with refusing_target() as target:
        command = ["--connect-timeout", "1.5", "--wait-for-server", target, "connect"]
        answer = example_json(example, *command)
        assert answer["failure"] == "UNAVAILABLE: " + UNANSWERED.format(target, 1.5), answer


def test_wait_for_server_finds_one_that_starts_later(server_process: Start, models, example):
    """With waitForServer (--wait-for-server) the start waits at a target that refuses
    connections: a server started there 2 s later is found, and the calls succeed."""
    port = free_port()
    command = [*example, "--connect-timeout", "30", "--wait-for-server", f"127.0.0.1:{port}"]
    answer = answer_once_started(
        [*command, "load", "whoami", "--threads", "1", "--calls", "4"],
        lambda: server_process(models, workers=1, args=("--port", str(port))),
    )
    assert (answer["calls"], answer["failures"]) == (4, [])


def test_a_closed_client_says_so(server_process: Start, models, example):
    """A call, or a stream, after close() fails at once FAILED_PRECONDITION, saying why."""
    server = server_process(models, workers=2)
    answer = example_json(example, server.target, "closed", "whoami")
    closed = "FAILED_PRECONDITION: this client is closed; make a new one to call again"
    assert answer["call"] == answer["stream"] == closed
    assert answer["seconds"] < 1


def test_close_ends_the_calls_and_streams_in_flight(server_process: Start, models, example):
    """Calls and a stream in flight when the client closes end at once (the model would answer
    in 3 s, the timeout is 30 s), and a call or a stream on the closed client fails at once:
    all FAILED_PRECONDITION, saying the client is closed."""
    server = server_process(models, workers=2)
    answer = example_json(
        example, server.target, "--timeout", "30", "close", "whoami", "--threads", "4"
    )
    assert len(answer["in_flight"]) == 4
    closed = "FAILED_PRECONDITION: this client is closed; make a new one to call again"
    for ended in [*answer["in_flight"], answer["stream"], answer["call"], answer["stream_after"]]:
        assert ended["failure"] == closed, ended
        assert ended["seconds"] < 1.5, ended


class Lowest:
    """A balancer that sends every call to the worker with the lowest pid."""

    def pick(self, workers):
        return min(workers, key=lambda w: w.pid)


def test_least_loaded_reads_the_load_other_clients_put_on_a_worker(
    server_process: Start, models, example, tmp_path
):
    """Another client holds three calls on one worker: the Java client's least-loaded balancer
    learns it from the load report in that worker's answers and sends its calls to the other
    worker; round-robin sends it every second call."""
    server = server_process(models, workers=2)
    gate = tmp_path / "gate"
    tiny = np.zeros((2, 2, 3), np.uint8)
    with ModelClient("held", server.target, timeout=60, balancer=Lowest()) as holder:
        assert wait_for(lambda: len(holder.workers()) == 2, 30)
        held = min(w.pid for w in holder.workers())
        callers = [
            threading.Thread(target=holder.run_image, args=(tiny, {"gate": str(gate)}))
            for _ in range(3)
        ]
        try:
            for caller in callers:
                caller.start()
            assert wait_for(lambda: len(list(tmp_path.glob("started-*"))) == 3, 30)
            assert {int(p.read_text()) for p in tmp_path.glob("started-*")} == {held}
            by_balancer = {
                name: load(
                    example, server.target, "--calls", "40", "--threads", "1", "--balancer", name
                )
                for name in ("least-loaded", "round-robin")
            }
        finally:
            gate.touch()
            for caller in callers:
                caller.join(30)
    for answer in by_balancer.values():
        assert answer["failures"] == []
        assert answer["calls"] == 40
    least, robin = (
        {int(pid): n for pid, n in by_balancer[name]["calls_by_pid"].items()}
        for name in ("least-loaded", "round-robin")
    )
    assert robin[held] == 20
    # A report is trusted for a second; between reports a call may go there to learn anew.
    assert least.get(held, 0) <= 8, least


def test_least_loaded_keeps_calls_away_from_a_stopped_worker(
    server_process: Start, models, example
):
    """Once the client holds both workers, one is stopped (SIGSTOP: its connection stays up, it
    answers nothing), under 100 calls one after another, each with a 300 ms deadline. A call
    there times out, its in-flight count is 0 again and it sends no load report: by load alone
    the stopped worker looks idler than the live one (whose reports count the call they answer)
    and draws most calls, some 80 of 100. Least-loaded weighs the load by each worker's recent
    latency, which the timed-out call raised to 300 ms, so the calls go to the live worker."""
    args = ("--worker-timeout-seconds", "300")  # the supervisor leaves the stopped one alone
    server = server_process(models, workers=2, args=args)
    assert wait_for(lambda: len(children(server.process.pid)) == 2, 30)
    victim = sorted(children(server.process.pid))[0]
    command = [*example, "--timeout", "0.3", server.target, "load", "whoami"]
    command += ["--threads", "1", "--calls", "100"]
    with contextlib.ExitStack() as stack:
        answer = _load_while(command, lambda: stack.enter_context(stopped(victim)))
    assert answer["workers"] == 2
    assert all(f.startswith("DEADLINE_EXCEEDED") for f in answer["failures"]), answer
    assert answer["calls"] >= 90, answer


ADMIN_TOKEN = "admin-token-0123456789"


def test_calls_follow_a_model_a_reload_loads_on_more_workers(
    server_process: Start, example, tmp_path
):
    """The model "late" loads on one of two workers, and the Java client sends its calls there
    alone. An admin reload loads it on the other too: the answers that follow carry the reload's
    number, the client asks both workers again which models they serve, and the same client's
    calls reach both, though it had sent none to the other."""
    models = write_models(
        tmp_path / "models", {"whoami": MODELS["whoami"], "late": LATE_IMAGE_MODEL}
    )
    tokens = tmp_path / "admin_tokens"
    tokens.write_text(ADMIN_TOKEN + "\n")
    args = ("--entry-points", "false", "--admin-tokens-file", str(tokens))
    server = server_process(models, workers=2, args=args)
    assert wait_for(lambda: len(children(server.process.pid)) == 2, 30)
    command = [*example, "--balancer", "round-robin", server.target, "follow", "late"]
    calls = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert calls.stdout is not None
        line = calls.stdout.readline()
        assert line, calls.communicate(timeout=60)[1]
        before = json.loads(line)
        (models / "late" / "ready").touch()
        with AdminClient(server.target, token=ADMIN_TOKEN, timeout=30) as admin:
            assert all(outcome.reloaded for outcome in admin.reload_model("late"))
        stdout, stderr = calls.communicate("reloaded\n", timeout=120)
    finally:
        if calls.poll() is None:
            calls.kill()
            calls.wait()
    assert calls.returncode == 0, stderr
    after = json.loads(stdout)
    assert len(before["pids"]) == 1
    assert set(after["pids"]) == set(children(server.process.pid)), after
    assert all(names == ["late", "whoami"] for names in after["models"].values()), after


def stream(example: list[str], target: str, model: str, frames: int) -> dict[str, Any]:
    return example_json(example, target, "stream", model, "--frames", str(frames))


def test_a_stream_answers_every_frame_in_order(server_process: Start, models, example):
    server = server_process(models, workers=2)
    assert stream(example, server.target, "whoami", 30) == {
        "answered": 30,
        "failed": [],
        "failure": None,
    }
    missing = stream(example, server.target, "nope", 3)
    assert missing["answered"] == 0
    assert missing["failure"].startswith("NOT_FOUND: ")


def test_a_stream_ended_with_a_frame_unanswered_fails_internal(example):
    with early_ending_server() as target:
        answer = stream(example, target, "any", 2)
    assert answer == {
        "answered": 1,
        "failed": [],
        "failure": "INTERNAL: the stream ended before frame 1 was answered",
    }


def test_list_models_matches_the_server(server_process: Start, models, example):
    server = three_workers(server_process, models)
    listed = run([*example, server.target, "models"], cwd=ROOT, timeout=120).split()
    with ModelClient("whoami", server.target) as client:
        assert listed == [info.name for info in client.list_models()]
    assert listed == ["held", "whoami"]


def test_drift_check_covers_the_java_stubs(tmp_path):
    """generate.py --check names a Java stub that differs from what the proto generates."""
    stub = JAVA_STUBS / "ImageProto.java"
    assert stub.is_file()
    saved = tmp_path / stub.name
    shutil.copy2(stub, saved)
    command = [sys.executable, str(ROOT / "codegen" / "generate.py"), "--check"]
    try:
        stub.write_text(stub.read_text() + "// drift\n")
        drifted = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
        )
    finally:
        shutil.copy2(saved, stub)
    assert drifted.returncode == 1, drifted.stdout + drifted.stderr
    assert "differs: clients/java/src/main/java/io/tinymodelserver/tms/v1/ImageProto.java" in (
        drifted.stdout
    )
    clean = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert clean.returncode == 0, clean.stdout + clean.stderr


def outcomes(command: list[str], target: str, vectors: Path) -> list[dict[str, Any]]:
    """The conformance runner's lines for a vectors file, parsed."""
    out = run([*command, "--target", target, "--vectors", str(vectors)], cwd=ROOT, timeout=300)
    return [json.loads(line) for line in out.splitlines()]


def test_an_unknown_model_is_model_not_found(server_process: Start, models, conformance, tmp_path):
    """TmsException.reason() is the server's ErrorInfo reason."""
    server = server_process(models, workers=1)
    image = {"generate": {"dtype": "uint8", "shape": [2, 2]}, "color_order": "GRAY"}
    vectors = tmp_path / "vectors.json"
    calls = [
        {"name": "run", "call": "RunImage", "model": "nope", "images": [image]},
        {"name": "info", "call": "GetModelInfo", "model": "nope"},
        {"name": "texts", "call": "RunTextBatch", "model": "nope", "texts": ["a"]},
    ]
    vectors.write_text(json.dumps({"vectors": calls}))
    error = {"code": "NOT_FOUND", "reason": "MODEL_NOT_FOUND", "field_violations": []}
    assert [line["outcome"] for line in outcomes(conformance, server.target, vectors)] == [
        {"error": error}
    ] * 3


JAVA_README_BLOCK = re.compile(
    r"^### Use it from Java\n.*?^```java\n(.*?)^```", re.MULTILINE | re.DOTALL
)

SNIPPET_CLASS = """\
import com.google.protobuf.ByteString;
import io.grpc.Status;
import io.tinymodelserver.tms.client.*;
import io.tinymodelserver.tms.v1.*;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;

public final class Snippet {
  public static void main(String[] args) throws Exception {
%s
  }
}
"""


def test_readme_java_snippet_runs(server_process: Start, classpath, astronaut_bgr, tmp_path):
    """The main README's Java snippet, in a class's main, against a two-worker server with the
    example models it calls and the token it sends, reading photo.jpg."""
    found = JAVA_README_BLOCK.search((ROOT / "README.md").read_text())
    assert found, "README.md has no ```java block under 'Use it from Java'"
    models = tmp_path / "models"
    models.mkdir()
    for name in ("face", "text_stats"):
        (models / name).symlink_to(EXAMPLE_MODELS / name)
    tokens = tmp_path / "tokens"
    tokens.write_text("my-token\n")
    server = server_process(models, workers=2, args=("--tokens-file", str(tokens)))
    work = tmp_path / "snippet"
    work.mkdir()
    rgb = np.ascontiguousarray(astronaut_bgr[:, :, ::-1])
    Image.fromarray(rgb).save(work / "photo.jpg")
    code = found.group(1).replace("localhost:50051", server.target)
    (work / "Snippet.java").write_text(SNIPPET_CLASS % code)
    run(["javac", "-cp", classpath, "-d", "out", "Snippet.java"], cwd=work, timeout=300)
    out = run(
        ["java", "-cp", os.pathsep.join(["out", classpath]), "Snippet"], cwd=work, timeout=120
    )
    lines = out.splitlines()
    assert isinstance(json.loads(lines[0])["faces"], list)
    assert json.loads(lines[1])["words"] == 2
    assert lines[2:4] == ["face", "text_stats"]
    assert {int(pid) for pid in lines[4:]} == set(children(server.process.pid))


SLOW = """
    import time
    import tms_server

    class Model(tms_server.Model):
        thread_safe = True

        def run(self, image, args):
            time.sleep(0.2)
            return {}
"""


def test_queue_full_is_retried_after_its_delay(server_process: Start, example, tmp_path):
    """Two workers of one thread and no queue: of three calls at once, one finds its worker busy
    (QUEUE_FULL, RetryInfo 0.1 s). With one attempt that is its error; with the default five it
    is retried, after the delay, on the other worker, and every call succeeds."""
    models = write_models(tmp_path / "models", {"slow": SLOW})
    args = ("--threads", "1", "--max-queued-calls", "0")
    server = server_process(models, workers=2, args=args)
    assert wait_for(lambda: len(children(server.process.pid)) == 2, 30)
    calls = ("--threads", "3", "--calls", "3")
    once = load(example, server.target, *calls, "--attempts", "1", model="slow")
    assert once["failures"], "three calls at once on two one-thread workers: one finds no room"
    assert all(f.startswith("RESOURCE_EXHAUSTED QUEUE_FULL:") for f in once["failures"])
    retried = load(example, server.target, *calls, model="slow")
    assert retried["failures"] == []
    assert retried["calls"] == 3
