"""Prometheus metrics on --metrics-port: a real server of two workers, real calls, one scrape
of the supervisor's /metrics summing both workers, and a worker killed on the way."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import socket
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.support import (
    ServerProcess,
    alive,
    closed_by_peer,
    listening_ports,
    status_of,
    wait_for,
    write_models,
)
from tests.test_deploy import METRICS as DASHBOARD_METRICS
from tests.test_http import http, http_base
from tms_client import InvalidInputError, ModelClient, ModelNotFoundError, RoundRobin
from tms_server.exporter import MARKER, MAX_SCRAPES, SCRAPE_TIMEOUT

pytestmark = pytest.mark.slow

MODELS = {
    "pixels": """
        import os
        import tms_server

        class Model(tms_server.Model):
            thread_safe = True

            def run(self, image, args):
                if args.get("bad"):
                    raise tms_server.InvalidInput("bad args")
                return {"pid": os.getpid(), "sum": int(image.sum())}
    """,
    "words": """
        import tms_server

        class Model(tms_server.Model):
            inputs = "text"

            def run(self, text, args):
                return {"words": len(text.split())}
    """,
    "gathered": """
        import tms_server

        class Model(tms_server.Model):
            max_batch_size = 4  # 4 calls at once fill a batch long before its delay
            max_batch_delay = 1.0

            def run(self, image, args):
                return -1  # not called: RunImage calls to a batched model go to run_batch

            def run_batch(self, images, args):
                return [len(images) for _ in images]
    """,
    "broken": """
        import tms_server

        class Model(tms_server.Model):
            def __init__(self):
                raise RuntimeError("cannot load")

            def run(self, image, args):
                return {}
    """,
}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
StartServer = Callable[..., ServerProcess]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models(tmp_path_factory.mktemp("models"), MODELS)


def families(url: str) -> list[Metric]:
    """The metric families of /metrics."""
    with urllib.request.urlopen(url, timeout=10) as answer:
        return list(text_string_to_metric_families(answer.read().decode()))


def scrape(url: str) -> Samples:
    """Every sample of /metrics, by (sample name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families(url)
        for sample in family.samples
    }


def by_labels(samples: Samples, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """The samples called ``name``, by the values of ``labels``, summed over the others."""
    found: dict[tuple[str, ...], float] = defaultdict(float)
    for (sample, pairs), value in samples.items():
        if sample == name:
            values = dict(pairs)
            found[tuple(values[label] for label in labels)] += value
    return dict(found)


def metrics_url(server: ServerProcess) -> str:
    match = re.search(r"^tms-server: metrics on (http://\S+)$", server.logs(), re.MULTILINE)
    assert match, server.logs()
    return match.group(1)


def with_metrics(
    server_process: StartServer, models: Path, tmp_path: Path, *, workers: int
) -> tuple[ServerProcess, str]:
    """A server of ``workers`` serving metrics on a free port (its metrics directory in
    ``tmp_path``), and the URL of its /metrics."""
    server = server_process(
        models, workers=workers, args=("--metrics-port", "0"), env={"TMPDIR": str(tmp_path)}
    )
    return server, metrics_url(server)


def model_calls(samples: Samples) -> dict[tuple[str, ...], float]:
    """tms_calls_total by (model, rpc, code), without the clients' own housekeeping calls
    (finding workers, attaching shared memory)."""
    totals = by_labels(samples, "tms_calls_total", "model", "rpc", "code")
    housekeeping = {"GetWorkerInfo", "AttachSharedMemory", "DetachSharedMemory"}
    return {key: value for key, value in totals.items() if key[1] not in housekeeping}


def test_metrics_add_up_over_the_workers_and_outlive_a_dead_one(
    server_process: StartServer, models: Path, tmp_path: Path
) -> None:
    server, url = with_metrics(server_process, models, tmp_path, workers=2)
    metrics_port = int(url.rsplit(":", 1)[1].split("/")[0])
    (directory,) = tmp_path.glob("tms-metrics-*")  # made fresh by the supervisor
    images = [np.full((8, 8, 3), i, np.uint8) for i in range(10)]
    with (
        ModelClient("pixels", server.target, balancer=RoundRobin()) as pixels,
        ModelClient("words", server.target, balancer=RoundRobin()) as words,
        ModelClient("nope", server.target) as nope,
    ):
        pids = {pixels.run_image(image)["pid"] for image in images}
        assert len(pids) == 2  # both workers served calls
        for _ in range(7):
            assert words.run_text("one two three") == {"words": 3}
        for image in images[:3]:
            with pytest.raises(InvalidInputError):
                pixels.run_image(image, {"bad": True})
        for image in images[:2]:
            with pytest.raises(ModelNotFoundError):
                nope.run_image(image)
        victim = pixels.workers()[0].pid
    sent = {
        ("pixels", "RunImage", "OK"): 10.0,
        ("pixels", "RunImage", "INVALID_ARGUMENT"): 3.0,
        ("words", "RunText", "OK"): 7.0,
        ("(unknown)", "RunImage", "NOT_FOUND"): 2.0,  # a name no worker has
    }
    samples = scrape(url)
    assert model_calls(samples) == sent
    timed = by_labels(samples, "tms_call_seconds_count", "model", "rpc")
    for model, rpc, _ in sent:
        assert timed[model, rpc] == sum(v for k, v in sent.items() if k[:2] == (model, rpc))
    assert by_labels(samples, "tms_model_seconds_count", "model") == {
        ("pixels",): 13.0,  # the model ran for the calls it refused too
        ("words",): 7.0,
    }
    assert by_labels(samples, "tms_image_bytes_total", "model") == {
        ("pixels",): sum(image.nbytes for image in images + images[:3]),
        ("(unknown)",): sum(image.nbytes for image in images[:2]),
    }
    assert set(by_labels(samples, "tms_in_flight", "worker")) == {("0",), ("1",)}
    assert set(by_labels(samples, "tms_queued", "worker")) == {("0",), ("1",)}
    loads = by_labels(samples, "tms_model_load_seconds", "model", "worker")
    assert set(loads) == {(m, w) for m in ("gathered", "pixels", "words") for w in ("0", "1")}
    assert all(seconds > 0 for seconds in loads.values())
    assert by_labels(samples, "tms_model_load_failures_total", "model") == {
        ("broken",): 2.0,  # once in each worker
        ("gathered",): 0.0,
        ("pixels",): 0.0,
        ("words",): 0.0,
    }
    assert by_labels(samples, "tms_workers") == {(): 2.0}
    assert by_labels(samples, "tms_worker_restarts_total") == {(): 0.0}
    # Only the supervisor answers on the metrics port; the workers closed their copy of it.
    assert metrics_port in listening_ports(server.process.pid)
    assert not any(metrics_port in listening_ports(pid) for pid in pids)

    os.kill(victim, signal.SIGKILL)  # the supervisor replaces it

    def replaced() -> bool:
        samples = scrape(url)
        return (
            by_labels(samples, "tms_worker_restarts_total") == {(): 1.0}
            and by_labels(samples, "tms_workers") == {(): 2.0}
            and len(by_labels(samples, "tms_model_load_seconds", "model", "worker")) == 6
        )

    assert wait_for(replaced, timeout=30), server.logs()
    samples = scrape(url)
    # The successor loaded its models, and failed to load the broken one, once more.
    assert by_labels(samples, "tms_model_load_failures_total", "model")[("broken",)] == 3.0
    # The dead worker's counters and histograms stay in its files and still count; its live
    # gauges went with it (mark_process_dead), and its successor reports under its index.
    assert model_calls(samples) == sent
    assert (directory / f"counter_{victim}.db").exists()
    assert not (directory / f"gauge_livemax_{victim}.db").exists()
    assert set(by_labels(samples, "tms_in_flight", "worker")) == {("0",), ("1",)}
    with ModelClient("pixels", server.target, balancer=RoundRobin()) as pixels:
        for image in images[:4]:
            pixels.run_image(image)
    after = model_calls(scrape(url))
    assert after == {**sent, ("pixels", "RunImage", "OK"): 14.0}

    assert server.stop() == 0
    assert not directory.exists()  # removed at exit


def test_http_calls_are_counted_refusals_included(
    server_process: StartServer, models: Path, tmp_path: Path
) -> None:
    """An HTTP call refused before its model runs (no such model, a body unread or unusable)
    is counted as its gRPC form is, and gets its request id back."""
    server = server_process(
        models,
        workers=1,
        args=("--metrics-port", "0", "--http-port", "0", "--max-message-mb", "1"),
        env={"TMPDIR": str(tmp_path)},
    )
    url, base = metrics_url(server), http_base(server)
    image = {"name": "IMAGE", "datatype": "UINT8", "shape": [2, 2], "data": [1, 2, 3, 4]}
    for model, status in [("pixels", 200), ("nope", 404), ("nope", 404), ("a.b", 400)]:
        reply = http(f"{base}/v2/models/{model}/infer", {"inputs": [image]})
        assert reply.status == status, reply.body
    too_large = http(f"{base}/v2/models/pixels/infer", b" " * (2 << 20))
    assert too_large.status == 413, too_large.body
    unknown = http(f"{base}/v2/models/nope/run", b"x", headers={"X-Request-Id": "lost-1"})
    assert (unknown.status, unknown.headers["X-Request-Id"]) == (404, "lost-1")
    assert http(f"{base}/v2/models/pixels/run", b"").status == 400  # no image
    assert http(f"{base}/v2/models/words/run", b"\xff").status == 400  # not UTF-8
    assert model_calls(scrape(url)) == {
        ("pixels", "http:ModelInfer", "OK"): 1.0,
        ("(unknown)", "http:ModelInfer", "NOT_FOUND"): 2.0,
        ("(unknown)", "http:ModelInfer", "INVALID_ARGUMENT"): 1.0,
        ("pixels", "http:ModelInfer", "RESOURCE_EXHAUSTED"): 1.0,
        ("(unknown)", "http:Run", "NOT_FOUND"): 1.0,
        ("pixels", "http:RunImage", "INVALID_ARGUMENT"): 1.0,
        ("words", "http:RunText", "INVALID_ARGUMENT"): 1.0,
    }


def test_dynamic_batches_are_counted_and_every_metric_is_on_the_dashboard(
    server_process: StartServer, models: Path, tmp_path: Path
) -> None:
    server, url = with_metrics(server_process, models, tmp_path, workers=1)
    with ModelClient("gathered", server.target) as client:
        client.workers()  # connected before the calls start
        with ThreadPoolExecutor(4) as pool:
            for _ in range(2):  # two batches of four calls
                sizes = list(pool.map(client.run_image, [np.zeros((2, 2), np.uint8)] * 4))
                assert sizes == [4, 4, 4, 4]
    samples = scrape(url)
    assert model_calls(samples)["gathered", "RunImage", "OK"] == 8.0
    assert by_labels(samples, "tms_batch_size_count", "model") == {("gathered",): 2.0}
    assert by_labels(samples, "tms_batch_size_sum", "model") == {("gathered",): 8.0}
    buckets = by_labels(samples, "tms_batch_size_bucket", "model", "le")
    assert buckets["gathered", "2.0"] == 0.0
    assert buckets["gathered", "4.0"] == 2.0
    # Calls that no batcher gathers are not batches.
    assert ("pixels",) not in by_labels(samples, "tms_batch_size_count", "model")
    # Every metric a server exports, once each has been written: those the Grafana dashboard
    # must show (tests/test_deploy.py), and the worker's device, which it need not.
    exported = {
        f.name + ("_total" if f.type == "counter" else ""): f.type
        for f in families(url)
        if f.name.startswith("tms_")
    }
    assert exported == {**DASHBOARD_METRICS, "tms_worker_info": "gauge"}


def test_no_metrics_port_no_metrics(
    server_process: StartServer, models: Path, tmp_path: Path
) -> None:
    server = server_process(models, workers=2, env={"TMPDIR": str(tmp_path)})
    with ModelClient("pixels", server.target) as pixels:
        pixels.run_image(np.zeros((4, 4), np.uint8))
        pids = {w.pid for w in pixels.workers()}
    assert "metrics on" not in server.logs()
    assert listening_ports(server.process.pid) == set()  # the supervisor serves nothing
    assert all(listening_ports(pid) == {int(server.target.rsplit(":", 1)[1])} for pid in pids)
    assert list(tmp_path.glob("tms-metrics-*")) == []  # no metrics directory was made
    assert server.stop() == 0


def test_connections_held_open_cost_the_supervisor_a_few_threads(
    server_process: StartServer, models: Path, tmp_path: Path
) -> None:
    # Each connection to the metrics port had a thread of the supervisor of its own, for as
    # long as it stayed open: thousands held open could exhaust its threads and descriptors.
    server, url = with_metrics(server_process, models, tmp_path, workers=1)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    supervisor = server.process.pid
    before = status_of(supervisor, "Threads")
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(4 * MAX_SCRAPES)]
    try:
        for connection in held:
            connection.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the rest
        time.sleep(0.5)
        assert status_of(supervisor, "Threads") <= before + MAX_SCRAPES
        closed = sum(closed_by_peer(c, timeout=0.2) for c in held)  # closed ones say so at once
        assert closed == 3 * MAX_SCRAPES  # those beyond the bound
    finally:
        for connection in held:
            connection.close()
    assert wait_for(lambda: "tms_workers" in scraped_names(url), timeout=20)


def test_a_request_sent_a_byte_at_a_time_is_cut_off_at_the_deadline(
    server_process: StartServer, models: Path, tmp_path: Path
) -> None:
    # SCRAPE_TIMEOUT was a time between reads: a byte every few seconds on each of
    # MAX_SCRAPES connections held every slot for good, and no scrape got through.
    server, url = with_metrics(server_process, models, tmp_path, workers=1)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    request = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 100
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_SCRAPES)]
    try:
        started = time.monotonic()
        sent = 0
        while time.monotonic() - started < SCRAPE_TIMEOUT + 2:
            for connection in held:
                with contextlib.suppress(OSError):  # closed by the server
                    connection.send(request[sent : sent + 1])
            sent += 1
            time.sleep(1)
        assert "tms_workers" in scraped_names(url)  # the trickles still going on
        assert all(closed_by_peer(c, timeout=1) for c in held)
    finally:
        for connection in held:
            connection.close()
    assert "Traceback" not in server.logs()


def scraped_names(url: str) -> set[str]:
    """The names of the samples a scrape finds; none while every slot is still taken."""
    try:
        return {name for name, _ in scrape(url)}
    except OSError:
        return set()


def test_gauges_of_a_killed_worker_leave_metrics_and_its_counters_stay(
    server_process: StartServer, tmp_path: Path
) -> None:
    """While a killed worker has no successor (the models folder is gone), no gauge of its
    index is left in /metrics, and the calls it served still count."""
    models = write_models(tmp_path / "models", {"words": MODELS["words"]})
    server, url = with_metrics(server_process, models, tmp_path, workers=2)
    with ModelClient("words", server.target, balancer=RoundRobin()) as words:
        for _ in range(6):
            words.run_text("one two")
        served = {w.index: w for w in words.workers()}
    assert {index: w.calls for index, w in served.items()} == {0: 3, 1: 3}
    gauges = {
        "tms_in_flight": ("worker",),
        "tms_queued": ("worker",),
        "tms_worker_info": ("worker",),
        "tms_model_load_seconds": ("worker",),
    }

    def workers_in(samples: Samples) -> dict[str, set[str]]:
        return {
            name: {key[0] for key in by_labels(samples, name, *labels)}
            for name, labels in gauges.items()
        }

    assert workers_in(scrape(url)) == {name: {"0", "1"} for name in gauges}
    (tmp_path / "models").rename(tmp_path / "away")  # its successors exit at once
    os.kill(served[0].pid, signal.SIGKILL)

    def gone() -> bool:
        samples = scrape(url)
        return (
            by_labels(samples, "tms_workers") == {(): 1.0}
            and workers_in(samples) == {name: {"1"} for name in gauges}
            and model_calls(samples) == {("words", "RunText", "OK"): 6.0}
        )

    assert wait_for(gone, timeout=30), (scrape(url), server.logs())


def test_the_directory_of_a_killed_server_goes_at_the_next_start(
    server_process: StartServer, models: Path, tmp_path: Path
) -> None:
    # A supervisor killed with SIGKILL cannot remove its directory: one was left in the
    # temporary directory for every such kill, for good.
    killed, _ = with_metrics(server_process, models, tmp_path, workers=1)
    (left,) = tmp_path.glob("tms-metrics-*")
    with ModelClient("words", killed.target) as words:
        (worker,) = words.workers()
    assert killed.stop(signal.SIGKILL) == -signal.SIGKILL
    assert wait_for(lambda: not alive(worker.pid), timeout=30)  # it follows its supervisor
    assert left.exists()

    running, url = with_metrics(server_process, models, tmp_path, workers=1)
    assert not left.exists()
    assert f"removed {left}, the metrics directory of a server no longer running" in (
        running.logs()
    )
    (kept,) = tmp_path.glob("tms-metrics-*")
    with ModelClient("words", running.target) as words:
        words.run_text("one two")
    # A second server starting beside it leaves the first one's directory alone.
    with_metrics(server_process, models, tmp_path, workers=1)
    assert kept.exists()
    assert len(list(tmp_path.glob("tms-metrics-*"))) == 2
    assert model_calls(scrape(url)) == {("words", "RunText", "OK"): 1.0}


def test_only_directories_whose_marker_nobody_holds_are_removed(
    server_process: StartServer, models: Path, tmp_path: Path
) -> None:
    def directory(name: str, *, marker: bool = True, within: Path = tmp_path) -> Path:
        made = within / f"tms-metrics-{name}"
        made.mkdir(parents=True)
        (made / "counter_1.db").write_bytes(b"\0" * 16)
        if marker:
            (made / MARKER).write_text("1\n")
        return made

    gone = directory("gone")  # its server exited: no one holds its marker
    unmarked = directory("unmarked", marker=False)  # not known to be a server's
    held = directory("held")
    others = directory("others")
    if os.geteuid() == 0:
        os.chown(others, 65534, 65534)  # nobody's
    linked = tmp_path / "tms-metrics-link"  # a link is not followed
    linked.symlink_to(directory("elsewhere", within=tmp_path / "elsewhere"))
    with open(held / MARKER, "rb") as marker:
        fcntl.flock(marker, fcntl.LOCK_EX)  # as a running server holds it
        server, _ = with_metrics(server_process, models, tmp_path, workers=1)
    kept = {unmarked, held, others, linked}
    assert not gone.exists()
    assert all(path.exists() for path in kept)
    assert (linked / MARKER).exists()
    (own,) = set(tmp_path.glob("tms-metrics-*")) - kept
    assert (own / MARKER).read_text() == f"{server.process.pid}\n"
    assert server.logs().count("the metrics directory of a server no longer running") == 1
