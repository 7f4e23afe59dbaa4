"""The supervisor with real worker processes: restart backoff for workers that die quickly, a
worker that crashes while the server starts, SIGINT (Ctrl-C) and SIGHUP stopping as
gracefully as SIGTERM (SIGHUP left ignored under nohup), a stop signal sent again and again
(as fast as a shell can) still ending in exit code 0, a stop signal before the supervisor runs
and while the models load, and --log-level deciding which lines the supervisor, workers and
models write."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support import ServerProcess, start_process, wait_for, write_models
from tms_client import ModelClient, RetryPolicy, RoundRobin

pytestmark = pytest.mark.slow

# Crashes in __init__ (as a native library might) while the file named by TMS_TEST_CRASH
# exists; otherwise serves, holding a call until the file named by its text exists.
CRASHY = """
    import os
    import pathlib
    import time
    import tms_server

    class Model(tms_server.Model):
        inputs = "text"
        thread_safe = True

        def __init__(self):
            if pathlib.Path(os.environ["TMS_TEST_CRASH"]).exists():
                os._exit(7)

        def run(self, text, args):
            if args.get("hold"):
                pathlib.Path(args["started"]).touch()
                for _ in range(3000):  # until the test opens the gate (60 s at most)
                    if pathlib.Path(text).exists():
                        break
                    time.sleep(0.02)
            return {"pid": os.getpid()}
"""


@pytest.fixture
def models(tmp_path: Path) -> Path:
    return write_models(tmp_path / "models", {"crashy": CRASHY})


def test_a_worker_that_keeps_dying_is_restarted_after_a_doubling_delay(models, tmp_path):
    crash = tmp_path / "crash"
    server = start_process(models, workers=1, env={"TMS_TEST_CRASH": str(crash)})
    try:
        with ModelClient("crashy", server.target, retry=RetryPolicy.never()) as client:
            first = client.run_text("x")["pid"]
        crash.touch()  # from now on every new worker crashes while loading its model
        time.sleep(1.5)  # the first worker has served a while (the supervisor's 1 s)
        os.kill(first, signal.SIGKILL)
        delays = re.compile(r"worker 0 \(pid \d+\) died: [^;]*; restarting in ([\d.]+)s")
        assert wait_for(lambda: len(delays.findall(server.logs())) >= 5, 60), server.logs()
        crash.unlink()  # the next one loads and serves
        seen = [float(d) for d in delays.findall(server.logs())]
        # The worker that had served a while: at once. Each quick death after: twice as long.
        assert seen[:5] == [0.0, 0.1, 0.2, 0.4, 0.8], server.logs()
        assert "died: exit code 7" in server.logs()
        assert wait_for(lambda: server.logs().count("worker 0 serving") == 2, 60)
        with ModelClient("crashy", server.target) as client:
            assert client.run_text("x")["pid"] != first
    finally:
        assert server.stop() == 0


def test_a_worker_that_cannot_be_started_is_tried_again(models, tmp_path):
    # A fork can fail for want of descriptors or processes (connections held open, a
    # neighbour's leak): the supervisor says so and tries again, and never stops replacing.
    server = start_process(models, workers=1, env={"TMS_TEST_CRASH": str(tmp_path / "crash")})
    supervisor = server.process.pid
    try:
        with ModelClient("crashy", server.target, retry=RetryPolicy.never()) as client:
            first = client.run_text("x")["pid"]
        limits = resource.prlimit(supervisor, resource.RLIMIT_NOFILE)
        in_use = len(os.listdir(f"/proc/{supervisor}/fd"))
        resource.prlimit(supervisor, resource.RLIMIT_NOFILE, (in_use, limits[1]))
        try:
            os.kill(first, signal.SIGKILL)
            assert wait_for(lambda: "cannot start worker 0" in server.logs(), 20), server.logs()
        finally:
            resource.prlimit(supervisor, resource.RLIMIT_NOFILE, limits)
        assert wait_for(lambda: server.logs().count("worker 0 serving") == 2, 60), server.logs()
        with ModelClient("crashy", server.target) as client:
            assert client.run_text("x")["pid"] != first
    finally:
        assert server.stop() == 0


def test_a_worker_crashing_while_the_server_starts_stops_the_server(models, tmp_path):
    crash = tmp_path / "crash"
    crash.touch()
    command = [sys.executable, "-m", "tms_server", "--host", "127.0.0.1", "--port", "0"]
    command += ["--models", str(models), "--workers", "2"]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, "TMS_TEST_CRASH": str(crash)},
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert re.search(r"worker \d exited while starting: exit code 7", done.stderr), done.stderr
    assert "serving on" not in done.stdout


PID = """
    import os
    import tms_server

    class Model(tms_server.Model):
        inputs = "text"
        thread_safe = True

        def run(self, text, args):
            return {"pid": os.getpid()}
"""


def test_a_worker_that_finds_the_models_folder_gone_exits_and_is_tried_again(tmp_path):
    # The folder goes while the server runs (a remount, a swap during a deploy), then a worker
    # dies. Its replacement does not serve nothing while saying it serves (every call it got
    # NOT_FOUND, which clients do not retry): it says why, naming the folder, and exits, to
    # be started again after a growing delay. The other worker takes every call meanwhile.
    models = write_models(tmp_path / "models", {"pid": PID})
    server = start_process(models, workers=2)
    try:
        with ModelClient("pid", server.target, balancer=RoundRobin()) as client:
            assert wait_for(lambda: len(client.workers()) == 2, 10)
            gone = client.workers()[0].pid
            models.rename(tmp_path / "away")
            os.kill(gone, signal.SIGKILL)
            deadline = time.monotonic() + 6  # the client looks for new workers every 2 s
            while time.monotonic() < deadline:
                assert client.run_text("x")["pid"] != gone
            why = f"has no model to serve: models folder {str(models)!r} does not exist"
            assert why in server.logs()
            assert server.logs().count("died: exit code 4: it found no model to load") >= 2
            (tmp_path / "away").rename(models)
            assert wait_for(lambda: len(client.workers()) == 2, 30), server.logs()
            assert wait_for(lambda: len({client.run_text("x")["pid"] for _ in range(4)}) == 2, 10)
    finally:
        assert server.stop() == 0


SEGFAULTS = """
    import ctypes

    ctypes.string_at(0)  # a native extension's bug, at import
"""


@pytest.mark.parametrize("log_format", ["plain", "json"])
def test_a_worker_crashed_by_a_model_says_where(tmp_path, log_format):
    """Killed by SIGSEGV while it loads one model of many: the worker's stack at the crash
    (faulthandler) names the model's file and line, so the operator knows which it was."""
    models = write_models(tmp_path / "models", {"good": PID, "native": SEGFAULTS})
    command = [sys.executable, "-m", "tms_server", "--host", "127.0.0.1", "--port", "0"]
    command += ["--models", str(models), "--workers", "1", "--log-format", log_format]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    assert "worker 0 exited while starting: killed by SIGSEGV" in done.stderr
    assert "Fatal Python error: Segmentation fault" in done.stderr
    where = f'File "{models / "native" / "__init__.py"}", line 4 in <module>'
    assert where in done.stderr, done.stderr


def test_a_memory_limit_too_low_for_a_worker_to_start_says_so(tmp_path):
    models = write_models(tmp_path / "models", {"pid": PID})
    command = [sys.executable, "-m", "tms_server", "--host", "127.0.0.1", "--port", "0"]
    command += ["--models", str(models), "--workers", "1", "--worker-memory-mb", "100"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    said = "worker 0 cannot start: --worker-memory-mb 100 is too low for the worker itself ("
    assert said in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert "serving on" not in done.stdout


# Under --worker-memory-mb: crashes while loading as a native library that found no memory
# may (SIGSEGV), or holds nearly all of its address space and never finishes loading, as
# OpenBLAS does retrying a buffer it cannot get.
SHORT_OF_MEMORY = """
    import mmap, os, signal, time
    import tms_server

    class Model(tms_server.Model):
        inputs = "text"

        def __init__(self):
            if os.environ["TMS_TEST_SHORT"] == "crash":
                os.kill(os.getpid(), signal.SIGSEGV)
            held = []
            while True:
                try:
                    held.append(mmap.mmap(-1, 4 << 20))
                except OSError:
                    break
            while True:
                time.sleep(0.1)

        def run(self, text, args):
            return text
"""


@pytest.mark.parametrize("how", ["crash", "stuck"])
def test_a_worker_short_of_memory_while_starting_is_said(tmp_path, how):
    models = write_models(tmp_path / "models", {"short": SHORT_OF_MEMORY})
    command = [sys.executable, "-m", "tms_server", "--host", "127.0.0.1", "--port", "0"]
    command += ["--models", str(models), "--workers", "1", "--worker-memory-mb", "1500"]
    env = {**os.environ, "TMS_TEST_SHORT": how}
    with subprocess.Popen(
        command, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as server:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(server.stderr or ()), daemon=True)
        reader.start()
        try:
            if how == "crash":
                assert server.wait(60) == 1
                reader.join(10)
                said = (
                    "worker 0 exited while starting: killed by SIGSEGV; with --worker-memory-mb "
                    "1500, a library that found no memory left may have crashed it"
                )
            else:
                said = "worker 0 has held all of --worker-memory-mb 1500 for 10s while starting"
                assert wait_for(lambda: any(said in line for line in lines), 60), "".join(lines)
                server.send_signal(signal.SIGTERM)
                assert server.wait(60) == 0
                reader.join(10)
            logs = "".join(lines)
            assert logs.count(said) == 1, logs
        finally:  # the worker too: stuck loading, it outlives a killed supervisor
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)


def test_sigint_stops_like_sigterm_and_finishes_the_call_in_flight(models, tmp_path):
    server = start_process(
        models,
        workers=1,
        args=("--grace-seconds", "60"),
        env={"TMS_TEST_CRASH": str(tmp_path / "never")},
    )
    gate, started = tmp_path / "gate", tmp_path / "started"
    answer: list[dict[str, int]] = []
    try:
        with ModelClient("crashy", server.target, timeout=60, retry=RetryPolicy.never()) as c:
            held = threading.Thread(
                target=lambda: answer.append(
                    c.run_text(str(gate), {"hold": True, "started": str(started)})
                )
            )
            held.start()
            try:
                assert wait_for(started.exists, 30)
                server.process.send_signal(signal.SIGINT)  # Ctrl-C in a terminal
                assert wait_for(lambda: "received SIGINT; stopping" in server.logs(), 30)
                assert held.is_alive()
            finally:
                gate.touch()
                held.join(30)
        assert answer == [{"pid": answer[0]["pid"]}]  # answered by the stopping worker
        assert server.stop() == 0
    finally:
        server.stop(signal.SIGKILL)
    logs = server.logs()
    assert "worker 0 stopping; in-flight calls have 60s" in logs


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_stop_signal_sent_again_and_again_still_ends_in_a_clean_exit(models, tmp_path, sig):
    # As a process manager, or an impatient user, may: the stop under way finishes, and the
    # exit code says it did. A shell loop sends the signal as fast as it can, for as long as
    # the server lives: a handler that took a lock deadlocked when it ran while the main
    # thread held it, and nested handlers died of a RecursionError (exit -15 in about two
    # runs in three, with the workers left to notice that their supervisor was gone).
    for _ in range(3):
        server = start_process(models, workers=1, env={"TMS_TEST_CRASH": str(tmp_path / "never")})
        pid = server.process.pid
        storm = f"while kill -{sig.value} {pid} 2>/dev/null; do :; done"
        sender = subprocess.Popen(["bash", "-c", storm])
        try:
            assert server.process.wait(60) == 0, server.logs()
        finally:
            sender.kill()
            sender.wait()
            server.stop(signal.SIGKILL)
        logs = server.logs()
        assert logs.count(f"received {sig.name}; stopping") == 1, logs
        assert "is gone; stopping" not in logs, logs  # the supervisor stopped its worker


def test_a_stop_signal_while_models_load_stops_the_server(tmp_path):
    # A pod deleted, or Ctrl-C pressed, while the workers still load their models: the stop
    # is logged, the worker stops once its load ends, and the server exits 0, as a stop after
    # the start does.
    gate = tmp_path / "loaded"
    models = write_models(
        tmp_path / "models",
        {
            "slow": f"""
                import pathlib, time
                import tms_server

                class Model(tms_server.Model):
                    inputs = "text"

                    def __init__(self):
                        pathlib.Path({str(tmp_path / "loading")!r}).touch()
                        while not pathlib.Path({str(gate)!r}).exists():
                            time.sleep(0.02)

                    def run(self, text, args):
                        return {{}}
            """
        },
    )
    command = [sys.executable, "-m", "tms_server", "--host", "127.0.0.1", "--port", "0"]
    process = subprocess.Popen(
        [*command, "--models", str(models), "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server = ServerProcess(process)
    try:
        assert wait_for((tmp_path / "loading").exists, 60), server.logs()
        process.send_signal(signal.SIGTERM)
        assert wait_for(lambda: "received SIGTERM while starting; stopping" in server.logs(), 30)
        gate.touch()
        assert process.wait(30) == 0, server.logs()  # a stop asked for, not a failed start
        assert "is gone; stopping" not in server.logs()  # the supervisor stopped its worker
    finally:
        server.stop(signal.SIGKILL)


def test_sighup_stops_like_sigterm_and_cleans_up(models, tmp_path):
    # A closed terminal (or `kill -HUP`) killed the supervisor outright: exit 129, no log line,
    # its workers left to notice it was gone, its metrics directory left in TMPDIR.
    server = start_process(
        models,
        workers=1,
        args=("--metrics-port", "0"),
        env={"TMS_TEST_CRASH": str(tmp_path / "never"), "TMPDIR": str(tmp_path)},
    )
    try:
        assert list(tmp_path.glob("tms-metrics-*"))
        assert server.stop(signal.SIGHUP) == 0, server.logs()
    finally:
        server.stop(signal.SIGKILL)
    logs = server.logs()
    assert "received SIGHUP; stopping" in logs, logs
    assert "worker 0 stopping; in-flight calls have" in logs
    assert "is gone; stopping" not in logs, logs
    assert list(tmp_path.glob("tms-metrics-*")) == []


def test_sighup_is_left_ignored_under_nohup(models, tmp_path):
    command = ["nohup", sys.executable, "-m", "tms_server", "--host", "127.0.0.1", "--port", "0"]
    process = subprocess.Popen(
        [*command, "--models", str(models), "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TMS_TEST_CRASH": str(tmp_path / "never")},
    )
    server = ServerProcess(process)
    try:
        assert server.wait_started(60), server.logs()
        process.send_signal(signal.SIGHUP)
        (worker,) = ModelClient("crashy", server.target).workers()
        os.kill(worker.pid, signal.SIGHUP)  # a hangup reaches the whole process group
        time.sleep(1)
        with ModelClient("crashy", server.target, retry=RetryPolicy.never()) as crashy:
            assert crashy.run_text("x") == {"pid": worker.pid}
        assert server.stop() == 0
    finally:
        server.stop(signal.SIGKILL)
    assert "SIGHUP" not in server.logs()


def test_a_stop_signal_before_the_supervisor_runs_stops_the_server(models, tmp_path):
    # A stop signal in the first second or so, while Python imports the server and it reads
    # its files, killed it (exit -15, nothing logged). Here it comes while the server reads
    # its tokens file, a pipe that gives the tokens only after the signal.
    tokens = tmp_path / "tokens"
    os.mkfifo(tokens)
    command = [sys.executable, "-m", "tms_server", "--host", "127.0.0.1", "--port", "0"]
    process = subprocess.Popen(
        [*command, "--models", str(models), "--workers", "1", "--tokens-file", str(tokens)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TMS_TEST_CRASH": str(tmp_path / "never")},
    )
    server = ServerProcess(process)
    writer = -1
    try:

        def reading() -> bool:  # the server has the pipe open: it waits for the tokens
            nonlocal writer
            try:
                writer = os.open(tokens, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: no reader yet
                return False
            return True

        assert wait_for(reading, 60), server.logs()
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with contextlib.suppress(OSError):  # EPIPE: the server is gone
            os.write(writer, b"a-token-0123456789\n")
        os.close(writer)
        assert process.wait(30) == 0, server.logs()
    finally:
        server.stop(signal.SIGKILL)
    logs = server.logs()
    assert "received SIGTERM while starting; stopping" in logs, logs
    assert "serving on" not in logs
    assert "worker 0" not in logs  # none was started


CHATTY = """
    import logging
    import tms_server

    log = logging.getLogger("chatty")

    class Model(tms_server.Model):
        inputs = "text"

        def __init__(self):
            log.debug("chatty debug line")
            log.info("chatty info line")
            log.warning("chatty warning line")

        def run(self, text, args):
            return text
"""


@pytest.mark.parametrize(
    ("level", "shown", "hidden"),
    [
        ("WARNING", ["chatty warning line"], ["chatty info line", "INFO", "chatty debug line"]),
        ("INFO", ["chatty warning line", "chatty info line", "worker 0 serving"], ["DEBUG"]),
        ("DEBUG", ["chatty warning line", "chatty info line", "chatty debug line"], []),
    ],
)
def test_log_level_decides_which_lines_are_written(tmp_path, level, shown, hidden):
    models = write_models(tmp_path / "models", {"chatty": CHATTY})
    server = start_process(models, workers=1, args=("--log-level", level))
    with ModelClient("chatty", server.target) as client:
        assert client.run_text("hi") == "hi"
    assert server.stop() == 0
    logs = server.logs()
    assert "tms-server: serving on" in logs  # the line scripts wait for, at any level
    for text in shown:
        assert text in logs, (level, text, logs)
    for text in hidden:
        assert text not in logs, (level, text, logs)
