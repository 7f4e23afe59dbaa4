"""The Go SDK (clients/go/tmsclient): its unit tests (``go test``), and against real
multi-worker servers: one client reaches every worker process, loses no call when a worker is
killed, sends few calls to a stopped one, balances both ways, sends tokens, carries every RPC
and dtype, ends its calls in flight when closed, follows a model a reload moves, fails its start
at once where the connection is refused and, told to wait, finds a server that starts later. Runs
clients/go's cmd/tms-go-load and examples/hello (the main README's Go snippet), built with the
Go toolchain."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.certificates import CertificateAuthority
from tests.support import (
    EXAMPLE_MODELS,
    LATE_IMAGE_MODEL,
    ServerProcess,
    answer_once_started,
    refusing_target,
    stopped,
    wait_for,
    write_models,
)
from tests.toolchains import GO_MODULE, find_go, run
from tms_client import AdminClient

pytestmark = pytest.mark.slow

TOKEN = "go-sdk-token-0123456789"

MODELS = {
    "whoami": """
        import os, time
        import numpy as np
        import tms_server

        class Model(tms_server.Model):
            thread_safe = True

            def run(self, image, args):
                time.sleep(args.get("sleep", 0.01))
                pixels = np.asarray(image)
                return {
                    "pid": os.getpid(),
                    "dtype": str(pixels.dtype),
                    "shape": list(pixels.shape),
                    "sum": float(pixels.astype(np.float64).sum()),
                }
    """,
    "echo": """
        import os
        import tms_server

        class Model(tms_server.Model):
            inputs = "text"
            thread_safe = True

            def run(self, text, args):
                return {"text": text, "pid": os.getpid()}
    """,
    "mean": (EXAMPLE_MODELS / "mean" / "__init__.py").read_text(),
}

Start = Callable[..., ServerProcess]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models(tmp_path_factory.mktemp("models"), MODELS)


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """cmd/tms-go-load, cmd/tms-go and examples/hello, built once."""
    out = tmp_path_factory.mktemp("go-sdk")
    built = {}
    for name, package in (
        ("load", "./cmd/tms-go-load"),
        ("tms-go", "./cmd/tms-go"),
        ("hello", "./examples/hello"),
    ):
        built[name] = out / name
        run([find_go(), "build", "-o", str(built[name]), package], cwd=GO_MODULE, timeout=300)
    return built


def go_load(
    programs: dict[str, Path], target: str, *args: str, timeout: float = 120
) -> dict[str, Any]:
    result = subprocess.run(
        [str(programs["load"]), "-addr", target, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (the supervisor's workers)."""
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_unit_tests_pass():
    output = run([find_go(), "test", "-count=1", "./..."], cwd=GO_MODULE, timeout=600)
    assert re.search(r"^ok\s+\S+/tmsclient\s", output, re.MULTILINE), output


def test_tms_go_help_says_what_it_does_and_its_commands(programs):
    """`tms-go -h` listed the flags alone, under "Usage of /path/to/tms-go:"; a missing or
    wrong command dialled the server first, then said "error: Unknown: usage: ..." (exit 1)."""
    tms_go = str(programs["tms-go"])
    helped = subprocess.run([tms_go, "-h"], capture_output=True, text=True, timeout=30, check=False)
    assert helped.returncode == 0, helped.stderr  # as the flag package exits for -h
    usage = helped.stderr
    assert usage.startswith("usage: tms-go [flags] models\n"), usage
    for said in (
        "tms-go [flags] run MODEL IMAGE_FILE\n",
        "tms-go [flags] i2i MODEL IMAGE_FILE OUT_FILE\n",
        "Calls a TMS server with the Go client",
        "  models  list the models the server serves",
        "  -addr string",
    ):
        assert said in usage, usage
    with refusing_target() as target:  # a command line that is wrong never reaches it
        for argv, error in (
            ([], "tms-go: no command given"),
            (["bogus"], 'tms-go: unknown command "bogus"'),
            (["run", "face"], "tms-go: run takes 2 arguments, not 1"),
        ):
            wrong = subprocess.run(
                [tms_go, "-addr", target, *argv],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert (wrong.returncode, wrong.stdout, wrong.stderr) == (2, "", f"{error}\n{usage}")


def test_one_client_reaches_every_worker(server_process: Start, models, programs):
    server = server_process(models, workers=3)
    assert wait_for(lambda: len(children(server.process.pid)) == 3, 30)
    workers = set(children(server.process.pid))
    for balancer in ("rr", "least"):
        answer = go_load(
            programs, server.target, "-balancer", balancer, "-goroutines", "6", "-calls", "300",
            "load", "whoami",
        )  # fmt: skip
        assert answer["failures"] == []
        assert answer["calls"] == 300
        assert answer["workers"] == 3
        assert {int(pid) for pid in answer["pids"]} == workers, balancer


def test_a_killed_worker_costs_no_call(server_process: Start, models, programs):
    server = server_process(models, workers=3)
    supervisor = server.process.pid
    assert wait_for(lambda: len(children(supervisor)) == 3, 30)
    before = set(children(supervisor))
    load = subprocess.Popen(
        [
            str(programs["load"]), "-addr", server.target, "-goroutines", "8",
            "-duration", "8s", "-refresh", "300ms", "load", "whoami",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        time.sleep(2)
        victim = sorted(before)[0]
        os.kill(victim, signal.SIGKILL)
        stdout, stderr = load.communicate(timeout=120)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    assert load.returncode == 0, stderr
    answer = json.loads(stdout)
    assert answer["failures"] == []
    assert answer["calls"] > 0  # calls were made; how many in 8 s is the machine's business
    pids = {int(pid) for pid in answer["pids"]}
    assert victim in pids
    after = set(children(supervisor))
    assert victim not in after
    assert pids & (after - before), "the restarted worker was found again and called"


def test_a_stopped_worker_draws_few_calls(server_process: Start, models, programs):
    """A stopped worker (SIGSTOP: its kernel still takes connections, nothing answers) times
    out the calls sent to it. LeastLoaded weighs a worker's calls by its latency, which a
    timed-out call raises at once, so the next calls go to the other worker: about one call in
    100 fails. Weighed by calls alone, the stopped worker looked idle (its calls ended, its
    load reports stopped) and three calls in four failed."""
    server = server_process(models, workers=2, args=("--worker-timeout-seconds", "600"))
    supervisor = server.process.pid
    assert wait_for(lambda: len(children(supervisor)) == 2, 30)
    # One call at a time, each within 500 ms: the live worker's calls stay well under half of
    # it (its score counts its own reported call too) even on a busy machine.
    load = subprocess.Popen(
        [
            str(programs["load"]), "-addr", server.target, "-goroutines", "1", "-calls", "100",
            "-timeout", "500ms", "-pause", "load", "whoami",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert load.stdout is not None
        assert load.stderr is not None
        line = load.stdout.readline()  # the workers it holds, before any call
        assert line, load.stderr.read()
        held = json.loads(line)["workers"]
        assert sorted(held) == sorted(children(supervisor))
        victim = held[0]
        with stopped(victim):
            stdout, stderr = load.communicate("\n", timeout=120)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    assert load.returncode == 0, stderr
    answer = json.loads(stdout)
    assert answer["calls"] == 100
    assert len(answer["failures"]) <= 10, answer["failures"]
    assert str(victim) not in answer["pids"]


def test_a_bad_token_fails_at_once(server_process: Start, models, programs, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    server = server_process(models, workers=2, args=("--tokens-file", str(tokens)))

    started = time.monotonic()
    refused = subprocess.run(
        [str(programs["load"]), "-addr", server.target, "-token", "wrong", "load", "whoami"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: Unauthenticated: "), refused.stderr
    assert time.monotonic() - started < 8  # not after the 10 s connect timeout

    answer = go_load(programs, server.target, "-token", TOKEN, "-calls", "20", "load", "whoami")
    assert answer["failures"] == []
    assert answer["calls"] == 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_refused_connection_fails_the_start_at_once(programs):
    """Nothing listens at the target: the start fails at once, Unavailable, naming the target
    and saying the connection was refused, not after its 30 s connect timeout."""
    with refusing_target() as target:
        started = time.monotonic()
        command = [str(programs["load"]), "-addr", target, "-connect-timeout", "30s"]
        refused = subprocess.run(
            [*command, "-calls", "1", "load", "whoami"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert refused.returncode == 1
        assert refused.stderr == (
            f"error: Unavailable: tms: Dial: Unavailable: connection refused at {target}: "
            "is tms-server running?\n"
        )
        assert time.monotonic() - started < 10


def test_a_silent_listener_fails_the_start_unavailable(programs):
    """Something accepts connections at the target and never answers: the start fails at its
    connect timeout, Unavailable (no worker could be reached), naming the target."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # the kernel completes the handshakes; nothing is ever read
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        failed = subprocess.run(
            [str(programs["load"]), "-addr", target, "-connect-timeout", "1s", "load", "whoami"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert failed.returncode == 1
    assert failed.stderr.startswith(
        f"error: Unavailable: tms: Dial: Unavailable: no TMS worker answered at {target} "
        "(is it running, and does it serve TLS (then pass WithTLS)?): "
    ), failed.stderr


def test_wait_for_server_finds_one_that_starts_later(server_process: Start, models, programs):
    """With -wait-for-server (WithWaitForServer) the start waits at a target that refuses
    connections: a server started there 2 s later is found, and the calls succeed."""
    port = free_port()
    command = [str(programs["load"]), "-addr", f"127.0.0.1:{port}", "-connect-timeout", "60s"]
    answer = answer_once_started(
        [*command, "-wait-for-server", "-calls", "4", "load", "whoami"],
        lambda: server_process(models, workers=1, args=("--port", str(port))),
    )
    assert (answer["calls"], answer["failures"]) == (4, [])


def test_tls_and_a_token_on_every_call(server_process: Start, models, programs, tmp_path):
    ca = CertificateAuthority(tmp_path / "ca")
    pair = ca.issue("server")
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    server = server_process(
        models,
        workers=2,
        args=(
            "--tls-cert",
            str(pair.cert),
            "--tls-key",
            str(pair.key),
            "--tokens-file",
            str(tokens),
        ),
    )
    tls = ("-ca", str(ca.cert), "-token", TOKEN)
    answer = go_load(programs, server.target, *tls, "-calls", "100", "load", "whoami")
    assert answer["failures"] == []
    assert {int(pid) for pid in answer["pids"]} == set(children(server.process.pid))

    # Without TLS the start waits for a handshake that may yet come: 2 s, not the default 10.
    plain = ("-token", TOKEN, "-connect-timeout", "2s")
    plaintext = subprocess.run(
        [str(programs["load"]), "-addr", server.target, *plain, "load", "whoami"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert plaintext.returncode == 1
    assert "does it serve TLS" in plaintext.stderr, plaintext.stderr


def test_a_dns_target_is_resolved(server_process: Start, models, programs):
    server = server_process(models, workers=2)
    port = server.target.rsplit(":", 1)[1]
    answer = go_load(programs, f"dns:///localhost:{port}", "-calls", "40", "load", "whoami")
    assert answer["failures"] == []
    assert answer["workers"] == 2
    assert {int(pid) for pid in answer["pids"]} == set(children(server.process.pid))


def test_close_ends_the_calls_in_flight(server_process: Start, models, programs):
    """Calls and a stream in flight when the client closes end at once (the model would
    answer in 3 s, the timeout is 30 s), and a call on the closed client fails at once: all
    FailedPrecondition, saying the client is closed."""
    server = server_process(models, workers=2)
    answer = go_load(programs, server.target, "-goroutines", "6", "close", "whoami")
    assert len(answer["in_flight"]) == 6
    for ended in [*answer["in_flight"], answer["stream"], answer["after"]]:
        assert ended["code"] == "FailedPrecondition", ended
        assert "this client is closed; make a new one to call again" in ended["message"], ended
        assert ended["seconds"] < 1.5, ended


def test_every_rpc_and_dtype(server_process: Start, models, programs):
    server = server_process(models, workers=2)
    answer = go_load(programs, server.target, "tour", "whoami", "echo")
    expected_sums = {
        "uint8": 10, "int8": 8, "uint16": 406, "int16": 8, "int32": 8, "int64": 8,
        "float32": 9.5, "float64": 9.5, "bool": 3, "float16": 4.5,
    }  # fmt: skip
    for dtype, total in expected_sums.items():
        result = answer["dtypes"][dtype]
        assert result["dtype"] == dtype
        assert result["shape"] == [2, 2]
        assert result["sum"] == total, dtype
    assert [r["sum"] for r in answer["image_batch"]] == [10, 10]
    assert answer["text"]["text"] == "hello world"
    assert [r["text"] for r in answer["text_batch"]] == ["a", "b c"]
    assert answer["info"] == "whoami"
    assert answer["models"] == ["echo", "mean", "whoami"]
    assert answer["health"] == "SERVING"
    assert answer["unknown_model"] == {"code": "NotFound", "method": "RunImage"}


def test_readme_example(server_process: Start, models, programs):
    """examples/hello is the main README's "Use it from Go" snippet."""
    server = server_process(models, workers=2)
    result = subprocess.run(
        [str(programs["hello"])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "TMS_ADDR": server.target, "TMS_TOKEN": ""},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "workers: 2"
    assert [json.loads(line) for line in lines[1:]] == [{"mean": 0.4375}] * 4


ADMIN_TOKEN = "go-sdk-admin-token-0123456789"


MOVED = """
    import os
    from pathlib import Path

    import tms_server

    class Model(tms_server.Model):
        thread_safe = True
        # On every worker; on the first alone once the folder holds "one".
        workers = 1 if (Path(__file__).parent / "one").exists() else None

        def run(self, image, args):
            return {"pid": os.getpid()}
"""


def admin_server(
    start: Start, tmp_path: Path, sources: dict[str, str]
) -> tuple[ServerProcess, Path]:
    """A server of two workers (both up) serving ``sources`` (and mean), admin on; and its
    models' folder."""
    models = write_models(tmp_path / "models", {"mean": MODELS["mean"], **sources})
    tokens = tmp_path / "admin_tokens"
    tokens.write_text(ADMIN_TOKEN + "\n")
    args = ("--entry-points", "false", "--admin-tokens-file", str(tokens))
    server = start(models, workers=2, args=args)
    assert wait_for(lambda: len(children(server.process.pid)) == 2, 30)
    return server, models


def reload(server: ServerProcess, model: str) -> dict[int, int]:
    """Reload ``model`` on every worker; the workers' pids by index."""
    with AdminClient(server.target, token=ADMIN_TOKEN, timeout=30) as admin:
        assert all(outcome.reloaded for outcome in admin.reload_model(model))
        return {worker.index: worker.pid for worker in admin.list_workers()}


@contextlib.contextmanager
def rounds(
    programs: dict[str, Path], target: str, model: str, *args: str
) -> Iterator[Callable[[], dict[str, Any]]]:
    """One tms-go-load client calling ``model`` ten times, round-robin and one call at a time,
    each time the function yielded is called; it returns what the round printed, once the
    client holds both workers."""
    command = [
        str(programs["load"]), "-addr", target, "-balancer", "rr", "-goroutines", "1",
        "-calls", "10", "-timeout", "5s", *args, "rounds", model,
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdin is not None
    assert process.stdout is not None

    def one() -> dict[str, Any]:
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write("\n")
        process.stdin.flush()
        line = process.stdout.readline()
        assert line, process.communicate(timeout=30)[1]
        answer: dict[str, Any] = json.loads(line)
        return answer

    try:
        assert wait_for(lambda: one()["workers"] == 2, 10)
        yield one
    finally:
        stderr = process.communicate(timeout=30)[1]  # closes stdin: the program ends
    assert process.returncode == 0, stderr


def pids_within(one: Callable[[], dict[str, Any]], want: set[int], seconds: float) -> bool:
    """Whether a round reaches exactly the workers ``want``, and none fails, within
    ``seconds``."""

    def clean() -> bool:
        answer = one()
        return answer["failures"] == [] and {int(pid) for pid in answer["pids"]} == want

    return wait_for(clean, seconds)


def test_calls_follow_a_model_a_reload_loads_on_more_workers(
    server_process: Start, programs, tmp_path
):
    """A model loads on one worker of two, and a reload loads it on both. The answers after
    it carry the reload's number, the client asks both workers again which models they serve,
    and its calls reach both, though it had sent none to the other."""
    server, models = admin_server(server_process, tmp_path, {"late": LATE_IMAGE_MODEL})
    workers = set(children(server.process.pid))
    with rounds(programs, server.target, "late") as one:
        answer = one()
        assert answer["failures"] == []
        assert len(answer["pids"]) == 1
        (models / "late" / "ready").touch()
        reload(server, "late")
        assert pids_within(one, workers, 5)


def test_calls_leave_a_worker_a_reload_takes_a_model_off(server_process: Start, programs, tmp_path):
    """A reload places "moved" on worker 0 alone. Each call is sent once (-attempts 1), so one
    sent to worker 1 fails (FAILED_PRECONDITION): within moments none is."""
    server, models = admin_server(server_process, tmp_path, {"moved": MOVED})
    workers = set(children(server.process.pid))
    with rounds(programs, server.target, "moved", "-attempts", "1") as one:
        assert pids_within(one, workers, 5)
        (models / "moved" / "one").touch()
        pids = reload(server, "moved")
        assert pids_within(one, {pids[0]}, 5)
        assert one()["failures"] == []
