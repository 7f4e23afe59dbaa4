"""A worker that stops answering (SIGSTOP here; a frozen or wedged process in real life) is
found by its missing heartbeat, killed and replaced by the supervisor, and the client's calls
get around it: by default nothing a client sends is lost to a stuck worker."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time

import grpc
import pytest

from tests.support import ServerProcess, alive, stopped, wait_for, write_models
from tms_client import (
    AdminClient,
    ModelClient,
    ModelFailedError,
    RetryPolicy,
    TMSError,
    UnavailableError,
)

pytestmark = pytest.mark.slow

MODELS = {
    "whoami": """
        import os
        import tms_server

        class Model(tms_server.Model):
            inputs = "text"
            thread_safe = True

            def run(self, text, args):
                return {"pid": os.getpid()}
    """,
    "slow_to_load": """
        import os, pathlib, time
        import tms_server

        DELAY = pathlib.Path(__file__).with_name("delay")

        class Model(tms_server.Model):
            inputs = "text"

            def __init__(self):
                if DELAY.exists():
                    time.sleep(float(DELAY.read_text()))

            def run(self, text, args):
                return {"pid": os.getpid()}
    """,
    "sleeper": """
        import time
        import tms_server

        class Model(tms_server.Model):
            inputs = "text"
            thread_safe = True

            def run(self, text, args):
                time.sleep(float(args.get("seconds", 0)))
                return text
    """,
    "exits_on_reload": """
        import os, pathlib, sys
        import tms_server

        class Model(tms_server.Model):
            inputs = "text"

            def __init__(self):
                if pathlib.Path(__file__).with_name("exit").exists():
                    sys.exit(2)
                if pathlib.Path(__file__).with_name("crash").exists():
                    os._exit(9)  # a native library that cannot be set up twice, say

            def run(self, text, args):
                return text
    """,
}
ADMIN_TOKEN = "admin-token-0123456789"
#: Short enough for a quick test, long enough that a loaded test machine never misses a beat.
WORKER_TIMEOUT = ("--worker-timeout-seconds", "2")
CALL_TIMEOUT = 10.0  # well past the worker timeout: a call waits out the kill, then retries


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return write_models(tmp_path_factory.mktemp("models"), MODELS)


def assert_replaced(server: ServerProcess, client: ModelClient, victim: int) -> None:
    """``victim`` was killed for its silence, and a new worker took its place."""
    assert wait_for(lambda: not alive(victim), 20), f"stopped worker {victim} still runs"
    logs = server.logs
    assert wait_for(lambda: f"(pid {victim}) died: killed by SIGKILL" in logs(), 10), logs()
    assert re.search(
        rf"worker \d \(pid {victim}\) sent no heartbeat for [\d.]+s "
        r"\(--worker-timeout-seconds 2\); killing it",
        logs(),
    ), logs()
    assert re.search(
        rf"\(pid {victim}\) died: killed by SIGKILL from the supervisor after [\d.]+s without "
        r"a heartbeat \(--worker-timeout-seconds\); restarting in 0\.0s",
        logs(),
    ), logs()

    def two_workers_without_victim() -> bool:
        pids = {w.pid for w in client.workers()}
        return len(pids) == 2 and victim not in pids

    assert wait_for(two_workers_without_victim, 20), client.workers()


def test_calls_get_around_a_stopped_worker_which_is_replaced(server_process, models):
    server = server_process(models, workers=2, args=WORKER_TIMEOUT)
    with ModelClient("whoami", server.target, timeout=CALL_TIMEOUT) as client:  # defaults
        pids = [w.pid for w in client.workers()]
        assert len(set(pids)) == 2
        victim = pids[0]
        answers: list[int] = []
        errors: list[TMSError] = []

        def caller() -> None:
            for _ in range(10):
                try:
                    answers.append(client.run_text("who")["pid"])
                except TMSError as exc:
                    errors.append(exc)

        with stopped(victim):
            threads = [threading.Thread(target=caller, daemon=True) for _ in range(4)]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 3 * CALL_TIMEOUT
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            running = sum(thread.is_alive() for thread in threads)
            assert running == 0, f"{running} callers still waiting; failed so far: {errors}"
            assert errors == []
            assert len(answers) == 40
            assert victim not in answers
            assert_replaced(server, client, victim)
        answers = [client.run_text("who")["pid"] for _ in range(4)]
        assert victim not in answers


class Pinned:
    """A balancer that sends every call to the worker with ``pid`` while it is known."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def pick(self, workers):
        return next((w for w in workers if w.pid == self.pid), workers[0])


def test_a_call_held_by_a_stopped_worker_ends_unavailable_when_it_is_killed(server_process, models):
    """What the client's default retry relies on: the connection of a killed worker fails
    its calls with UNAVAILABLE, which the client tries again on another worker."""
    assert RetryPolicy().retries(grpc.StatusCode.UNAVAILABLE)
    server = server_process(models, workers=2, args=WORKER_TIMEOUT)
    victim = Pinned(0)
    with ModelClient(
        "whoami", server.target, timeout=CALL_TIMEOUT, balancer=victim, retry=RetryPolicy.never()
    ) as client:
        assert wait_for(lambda: len(client.workers()) == 2, 10), client.workers()
        victim.pid = client.workers()[0].pid
        assert client.run_text("who")["pid"] == victim.pid
        with stopped(victim.pid), pytest.raises(UnavailableError):
            client.run_text("who")  # waits for the end of the worker it reached
        assert_replaced(server, client, victim.pid)


def test_a_worker_reloading_a_slow_model_is_not_killed(server_process, tmp_path):
    """A reload longer than the worker timeout must not cost the workers their life; nor is
    the ReloadModel call, which waits for them, a model call bound by --call-time-limit."""
    models = write_models(tmp_path / "models", MODELS)
    tokens = tmp_path / "admin_tokens"
    tokens.write_text(f"{ADMIN_TOKEN}\n")
    args = (*WORKER_TIMEOUT, "--call-time-limit", "2", "--admin-tokens-file", str(tokens))
    server = server_process(models, workers=2, args=args)
    with AdminClient(server.target, token=ADMIN_TOKEN, timeout=30) as admin:
        pids = sorted(w.pid for w in admin.list_workers())
        (models / "slow_to_load" / "delay").write_text("4")  # twice the worker timeout
        outcomes = admin.reload_model("slow_to_load")  # once every worker has reloaded it
        assert [(o.reloaded, o.error) for o in outcomes] == [(True, "")] * 2
        assert sorted(w.pid for w in admin.list_workers()) == pids
    assert "heartbeat" not in server.logs()
    assert "call time limit" not in server.logs()


def test_a_slow_reload_stops_neither_the_heartbeat_nor_the_call_time_limit(
    server_process, tmp_path
):
    """Workers reload beside their monitor: while a reload runs, ListWorkers says they serve
    (their heartbeat goes on), and a call past --call-time-limit still ends INTERNAL, at the
    limit, not when the model returns."""
    models = write_models(tmp_path / "models", MODELS)
    tokens = tmp_path / "admin_tokens"
    tokens.write_text(f"{ADMIN_TOKEN}\n")
    args = ("--call-time-limit", "2", "--admin-tokens-file", str(tokens))
    server = server_process(models, workers=2, args=args)
    with AdminClient(server.target, token=ADMIN_TOKEN, timeout=60) as admin:
        (models / "slow_to_load" / "delay").write_text("8")
        asked = threading.Thread(target=_reload_ignoring_errors, args=(admin,), daemon=True)
        asked.start()
        assert wait_for(lambda: server.logs().count("reloading model 'slow_to_load'") >= 2, 20)
        time.sleep(1.5)  # past the age at which a row without a heartbeat is stale
        assert [w.serving for w in admin.list_workers()] == [True, True]
        with ModelClient("sleeper", server.target, timeout=20, retry=RetryPolicy.never()) as c:
            began = time.monotonic()
            with pytest.raises(ModelFailedError, match="call time limit"):
                c.run_text("zz", {"seconds": 6})
            assert time.monotonic() - began < 5
        asked.join(60)


def test_a_model_that_exits_on_reload_fails_the_reload_not_the_worker(server_process, tmp_path):
    """A model that calls sys.exit while it reloads fails that reload (the old instance
    serves on); the reload is answered, the worker goes on, and the next reload works."""
    models = write_models(tmp_path / "models", MODELS)
    tokens = tmp_path / "admin_tokens"
    tokens.write_text(f"{ADMIN_TOKEN}\n")
    args = ("--admin-tokens-file", str(tokens))
    server = server_process(models, workers=2, args=args)
    with AdminClient(server.target, token=ADMIN_TOKEN, timeout=30) as admin:
        pids = sorted(w.pid for w in admin.list_workers())
        (models / "exits_on_reload" / "exit").write_text("")
        outcomes = admin.reload_model("exits_on_reload")
        assert [o.reloaded for o in outcomes] == [False, False]
        assert all("called sys.exit(2)" in o.error for o in outcomes), outcomes
        with ModelClient("exits_on_reload", server.target) as client:
            assert client.run_text("still") == "still"
        (models / "exits_on_reload" / "exit").unlink()
        outcomes = admin.reload_model("exits_on_reload")
        assert all(o.reloaded for o in outcomes), outcomes
        assert sorted(w.pid for w in admin.list_workers()) == pids  # none was replaced


def test_admin_calls_get_past_a_worker_shutting_down(server_process, tmp_path):
    """The worker an AdminClient is connected to drains (a call holds it): it refuses the
    admin's call UNAVAILABLE, and the client sends it again on a new connection until a
    worker answers, within its timeout, instead of failing at once."""
    models = write_models(tmp_path / "models", MODELS)
    tokens = tmp_path / "admin_tokens"
    tokens.write_text(f"{ADMIN_TOKEN}\n")
    server = server_process(models, workers=1, args=("--admin-tokens-file", str(tokens)))
    with (
        AdminClient(server.target, token=ADMIN_TOKEN, timeout=30) as admin,
        ModelClient("sleeper", server.target, timeout=30) as sleeper,
    ):
        [old] = [w.pid for w in admin.list_workers()]
        held = threading.Thread(target=sleeper.run_text, args=("zz", {"seconds": 3}))
        held.start()
        assert wait_for(lambda: admin.list_workers()[0].in_flight == 1, 10)
        os.kill(old, signal.SIGTERM)  # it drains: its call goes on, new calls are refused
        assert wait_for(lambda: "worker 0 stopping; in-flight calls have" in server.logs(), 10)
        assert alive(old)  # draining
        [new] = [w.pid for w in admin.list_workers()]  # waits for the worker that replaces it
        assert new != old
        held.join(30)


def test_a_reload_that_kills_its_workers_is_not_sent_again(server_process, tmp_path):
    """A reload cut off by its worker's death may have begun: AdminClient raises it at once
    instead of sending it again (each resend would reload, and kill, every worker anew)."""
    models = write_models(tmp_path / "models", MODELS)
    tokens = tmp_path / "admin_tokens"
    tokens.write_text(f"{ADMIN_TOKEN}\n")
    server = server_process(models, workers=2, args=("--admin-tokens-file", str(tokens)))
    with AdminClient(server.target, token=ADMIN_TOKEN, timeout=30) as admin:
        (models / "exits_on_reload" / "crash").write_text("")
        began = time.monotonic()
        with pytest.raises(UnavailableError):
            admin.reload_model("exits_on_reload")
        assert time.monotonic() - began < 10
    (models / "exits_on_reload" / "crash").unlink()
    time.sleep(1)
    assert server.logs().count("in every worker (reload") == 1, server.logs()


def test_list_workers_gets_past_the_death_of_its_worker(server_process, tmp_path):
    """ListWorkers only reads: cut off because the worker holding its connection died, it is
    sent again and answered by the workers that replace it."""
    models = write_models(tmp_path / "models", MODELS)
    tokens = tmp_path / "admin_tokens"
    tokens.write_text(f"{ADMIN_TOKEN}\n")
    server = server_process(models, workers=2, args=("--admin-tokens-file", str(tokens)))
    with AdminClient(server.target, token=ADMIN_TOKEN, timeout=30) as admin:
        for _ in range(3):
            pids = {w.pid for w in admin.list_workers()}
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            # Answered, by a replacement (the other row may still name a dead worker).
            assert {w.pid for w in admin.list_workers()} - pids


def test_a_worker_killed_during_a_reload_leaves_no_reload_lock_behind(server_process, tmp_path):
    """The worker asked for a reload holds the server's reload lock until every worker has
    reloaded; killed meanwhile, it must not take the lock to its grave."""
    models = write_models(tmp_path / "models", MODELS)
    tokens = tmp_path / "admin_tokens"
    tokens.write_text(f"{ADMIN_TOKEN}\n")
    server = server_process(models, workers=2, args=("--admin-tokens-file", str(tokens)))
    delay = models / "slow_to_load" / "delay"
    with AdminClient(server.target, token=ADMIN_TOKEN, timeout=60) as admin:
        pids = [w.pid for w in admin.list_workers()]
        delay.write_text("60")
        asked = threading.Thread(target=_reload_ignoring_errors, args=(admin,), daemon=True)
        asked.start()
        assert wait_for(lambda: "reloading model 'slow_to_load'" in server.logs(), 20)
        delay.write_text("0")  # for the workers to come
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        asked.join(60)

        def replaced() -> bool:
            return len({w.pid for w in admin.list_workers()} - set(pids)) == 2

        assert wait_for(replaced, 30), server.logs()
        outcomes = admin.reload_model("slow_to_load")
        assert [o.reloaded for o in outcomes] == [True, True], server.logs()


def _reload_ignoring_errors(admin: AdminClient) -> None:
    with contextlib.suppress(TMSError):
        admin.reload_model("slow_to_load")
