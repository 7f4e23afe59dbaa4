"""The pure parts of the client's pool: retry policy, attempts, LeastLoaded, WorkerSet,
targets and load reports."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from tests.support import refusing_target
from tms.v1 import model_service_pb2
from tms_client import LeastLoaded, RetryPolicy
from tms_client.balancers import faded
from tms_client.exceptions import CallError, DeadlineExceededError, UnavailableError
from tms_client.protocol.load import LoadReport, decode_orca, encode_orca, read_trailers
from tms_client.retry import Attempts
from tms_client.targets import parse_targets, proxied, refused, resolve
from tms_client.workers import Worker, WorkerSet

UNAVAILABLE = UnavailableError(grpc.StatusCode.UNAVAILABLE, "gone")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_retry_policy_is_immutable_and_with_methods_copy() -> None:
    policy = RetryPolicy()
    changed = policy.with_attempts(9).with_deadline(3).with_codes([grpc.StatusCode.INTERNAL])
    assert (policy.attempts, policy.deadline) == (5, None)
    assert (changed.attempts, changed.deadline) == (9, 3)
    assert changed.retries(grpc.StatusCode.INTERNAL)
    assert not changed.retries(grpc.StatusCode.UNAVAILABLE)
    assert policy.retries(grpc.StatusCode.UNAVAILABLE)
    assert policy.retries(grpc.StatusCode.CANCELLED)
    assert not policy.retries(grpc.StatusCode.INVALID_ARGUMENT)
    assert RetryPolicy.never().attempts == 1
    with pytest.raises(AttributeError):
        policy.attempts = 3  # type: ignore[misc]
    for bad in ({"attempts": 0}, {"jitter": 2}, {"multiplier": 0.5}, {"deadline": 0}):
        with pytest.raises(ValueError, match="must"):
            RetryPolicy(**bad)


def test_backoff_grows_exponentially_within_its_jitter() -> None:
    policy = RetryPolicy().with_backoff(0.1, 1.0, 2.0).with_jitter(0.5)
    assert [policy.backoff(n, lambda: 0.5) for n in (1, 2, 3, 4, 5)] == [0.1, 0.2, 0.4, 0.8, 1.0]
    assert policy.backoff(1, lambda: 0.0) == pytest.approx(0.05)
    assert policy.backoff(1, lambda: 1.0) == pytest.approx(0.15)


def test_attempts_stop_at_the_policy_and_the_deadline() -> None:
    clock = Clock()
    attempts = Attempts(RetryPolicy().with_attempts(3).with_jitter(0), timeout=1.0, clock=clock)
    attempts.begin()
    assert attempts.timeout() == pytest.approx(1.0)
    assert attempts.delay_after(UNAVAILABLE) == pytest.approx(0.05)
    attempts.begin()
    clock.now += 0.5
    assert attempts.timeout() == pytest.approx(0.5)
    assert attempts.delay_after(UNAVAILABLE) == pytest.approx(0.1)
    attempts.begin()
    with pytest.raises(UnavailableError):  # three attempts used
        attempts.delay_after(UNAVAILABLE)
    other = CallError(grpc.StatusCode.INVALID_ARGUMENT, "bad image")
    with pytest.raises(CallError, match="bad image"):
        Attempts(RetryPolicy(), None, clock).delay_after(other)
    late = Attempts(RetryPolicy(), timeout=0.01, clock=clock)
    clock.now += 1
    with pytest.raises(DeadlineExceededError):
        late.begin()


def test_the_policy_deadline_bounds_the_call_even_without_a_timeout() -> None:
    clock = Clock()
    attempts = Attempts(RetryPolicy().with_deadline(2).with_jitter(0), timeout=None, clock=clock)
    attempts.begin()
    clock.now += 1.96
    with pytest.raises(UnavailableError):  # the 0.05 s backoff would pass the deadline
        attempts.delay_after(UNAVAILABLE)


def test_the_sooner_of_the_timeout_and_the_policy_deadline_bounds_the_call() -> None:
    clock = Clock()
    for deadline, timeout in ((2.0, 5.0), (5.0, 2.0)):
        policy = RetryPolicy().with_deadline(deadline).with_jitter(0)
        attempts = Attempts(policy, timeout=timeout, clock=clock)
        attempts.begin()
        assert attempts.timeout() == pytest.approx(2.0)
        clock.now += 1.96
        with pytest.raises(UnavailableError):  # the 0.05 s backoff would pass the sooner one
            attempts.delay_after(UNAVAILABLE)


@dataclass
class FakeWorker:
    name: str
    in_flight: int = 0
    load: LoadReport | None = None
    latency: float = 0.001
    latency_at: float = field(default_factory=time.monotonic)  # recorded just now


def test_least_loaded_prefers_fewer_calls_and_lower_latency() -> None:
    balancer = LeastLoaded(seed=1)
    busy, idle = FakeWorker("busy", in_flight=3), FakeWorker("idle")
    assert {balancer.pick([busy, idle]).name for _ in range(50)} == {"idle"}
    slow, fast = FakeWorker("slow", latency=0.3), FakeWorker("fast", in_flight=5)
    assert balancer.pick([slow, fast]).name == "fast"  # 6 x 1 ms beats 1 x 300 ms


def test_least_loaded_reads_fresh_reports_only() -> None:
    balancer = LeastLoaded(seed=1, max_report_age=1.0)
    reported = FakeWorker("reported", load=LoadReport(in_flight=4, queued=4, received=10.0))
    quiet = FakeWorker("quiet", in_flight=2)
    assert balancer.score(reported, now=10.5) == pytest.approx(9 * 0.001)
    assert balancer.score(reported, now=12.0) == pytest.approx(1 * 0.001)  # report too old
    assert balancer.score(quiet, now=10.5) == pytest.approx(3 * 0.001)


def test_least_loaded_does_not_favour_a_worker_that_has_not_answered_yet() -> None:
    # A worker stuck before its first answer has no latency; it must not score 0 however
    # many calls wait on it.
    balancer = LeastLoaded(seed=1)
    stuck = FakeWorker("stuck", in_flight=5, latency=0.0)
    answering = FakeWorker("answering", in_flight=1, latency=0.01)
    assert {balancer.pick([stuck, answering]).name for _ in range(50)} == {"answering"}
    fresh, other = FakeWorker("fresh", latency=0.0), FakeWorker("other", in_flight=2, latency=0.0)
    assert {balancer.pick([fresh, other]).name for _ in range(50)} == {"fresh"}


def test_least_loaded_samples_two_of_many() -> None:
    balancer = LeastLoaded(seed=3)
    workers = [FakeWorker(str(i), in_flight=i) for i in range(10)]
    picks = {balancer.pick(workers).name for _ in range(200)}
    assert "9" not in picks  # the busiest never wins a pair
    assert len(picks) > 3  # not always the least loaded either


def test_peak_ewma_latency_jumps_up_and_decays() -> None:
    worker = make_worker("a", 1)
    worker.record_latency(0.3, now=0.0)
    assert worker.latency == 0.3
    worker.record_latency(0.001, now=0.1)
    assert 0.25 < worker.latency < 0.3
    worker.record_latency(0.001, now=5.0)
    assert worker.latency < 0.01


def test_a_latency_fades_without_calls_so_a_worker_is_tried_again() -> None:
    # A worker whose call timed out (500 ms) and that gets no call since, because the other
    # answers in 10 ms, would keep its 500 ms for good, and never be picked again; it fades
    # instead (10 s a factor e), and after 40 s wins the pair again (0.5 * e**-4 = 9.2 ms).
    assert faded(0.5, 30.0) < 0.03
    assert faded(0.5, 0.0) == 0.5
    balancer = LeastLoaded(seed=1)
    now = time.monotonic()
    resumed = FakeWorker("resumed", latency=0.5, latency_at=now - 40)
    live = FakeWorker("live", latency=0.01, latency_at=now)
    assert {balancer.pick([resumed, live]).name for _ in range(20)} == {"resumed"}
    resumed.latency_at = now - 5  # 303 ms still
    assert {balancer.pick([resumed, live]).name for _ in range(20)} == {"live"}
    # A call after the gap starts from what the latency faded to, not from 500 ms.
    worker = make_worker("a", 1)
    worker.record_latency(0.5, now=0.0)
    worker.record_latency(0.02, now=30.0)
    assert worker.latency < 0.03


def make_worker(instance: str, pid: int, address: str = "h:1", count: int = 2) -> Worker:
    info = model_service_pb2.GetWorkerInfoResponse(
        instance_id=instance, pid=pid, worker_index=pid % count, worker_count=count
    )
    return Worker.from_info(address, info, channel=None)


def test_worker_set_counts_workers_per_server() -> None:
    workers = WorkerSet()
    assert workers.missing(["h:1"]) == ["h:1"]
    first = make_worker("a", 1)
    assert workers.add(first) == []
    assert workers.expected("h:1") == 2
    assert workers.missing(["h:1"]) == ["h:1"]
    duplicate = make_worker("a", 1)
    assert workers.add(duplicate) == [duplicate]  # the caller closes it
    assert workers.add(make_worker("a", 2)) == []
    assert workers.missing(["h:1"]) == []
    assert repr(workers) == (  # in worker index order: pid 2 is worker 0
        "<WorkerSet [h:1 pid 2: 0 in flight, 0 calls, h:1 pid 1: 0 in flight, 0 calls]>"
    )
    assert workers.remove(first)
    assert not workers.remove(first)
    assert workers.missing(["h:1"]) == ["h:1"]


def test_a_restarted_server_replaces_its_old_workers() -> None:
    workers = WorkerSet()
    old = [make_worker("old", 1), make_worker("old", 2)]
    for worker in old:
        workers.add(worker)
    workers.add(make_worker("other", 1, address="h:2", count=1))
    stale = workers.add(make_worker("new", 7))
    assert stale == old
    assert sorted((w.instance_id, w.pid) for w in workers.workers()) == [("new", 7), ("other", 1)]


def test_candidates_skip_tried_workers_unless_none_is_left() -> None:
    workers = WorkerSet()
    a, b = make_worker("x", 1), make_worker("x", 2)
    workers.add(a)
    workers.add(b)
    assert workers.candidates({a.key}) == [b]
    assert sorted(w.pid for w in workers.candidates({a.key, b.key})) == [1, 2]


def test_an_address_reached_through_a_proxy_is_never_called_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # gRPC's own variables decide (grpc_proxy, https_proxy, http_proxy; no_grpc_proxy,
    # no_proxy): through a proxy, a refused direct connection says nothing.
    assert not proxied("a.example.com:1", {})
    env = {"https_proxy": "http://proxy:3128"}
    assert proxied("a.example.com:1", env)
    for listed in ("a.example.com", "example.com", ".example.com", "x, A.example.com "):
        assert not proxied("a.example.com:1", {**env, "no_proxy": listed}), listed
    assert proxied("a.example.com:1", {**env, "no_proxy": "b.example.com,example.org"})
    assert not proxied("10.1.2.3:1", {**env, "no_proxy": "10.0.0.0/8"})
    assert proxied("11.1.2.3:1", {**env, "no_proxy": "10.0.0.0/8"})
    assert not proxied("[::1]:1", {**env, "no_proxy": "::1"})
    # no_grpc_proxy, when set, is read instead of no_proxy.
    assert proxied("a.example.com:1", {**env, "no_grpc_proxy": "b", "no_proxy": "example.com"})

    monkeypatch.delenv("no_grpc_proxy", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    for name in ("grpc_proxy", "https_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    with refusing_target() as address:
        assert refused(address, 1.0)
        monkeypatch.setenv("grpc_proxy", "http://127.0.0.1:9")
        assert not refused(address, 1.0)
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        assert refused(address, 1.0)


def test_targets_are_checked_and_dns_names_expand() -> None:
    assert parse_targets("h:1") == ("h:1",)
    assert parse_targets(["a:1", "[::1]:2", "dns:///b:3"]) == ("a:1", "[::1]:2", "dns:///b:3")
    bad: str | list[str]
    assert parse_targets("nohost") == ("nohost:50051",)  # a host alone: the default port
    assert parse_targets("dns:///b") == ("dns:///b:50051",)
    for bad in ("h:", ":5", "h:0", "h:99999", "http://h:5", []):
        with pytest.raises(ValueError, match="target"):
            parse_targets(bad)
    assert resolve(["a:1"]) == ["a:1"]
    assert "127.0.0.1:5" in resolve(["dns:///localhost:5"])
    assert resolve(["dns:///no-such-host.invalid:5"]) == []


def orca_report_class() -> Any:
    """xds.data.orca.v3.OrcaLoadReport's fields that TMS uses, built from a descriptor."""
    file = descriptor_pb2.FileDescriptorProto(name="orca_test.proto", package="xds.data.orca.v3")
    report = file.message_type.add(name="OrcaLoadReport")
    entry = report.nested_type.add(name="NamedMetricsEntry")
    entry.options.map_entry = True
    label = descriptor_pb2.FieldDescriptorProto
    entry.field.add(name="key", number=1, type=label.TYPE_STRING, label=label.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=label.TYPE_DOUBLE, label=label.LABEL_OPTIONAL)
    report.field.add(
        name="cpu_utilization", number=1, type=label.TYPE_DOUBLE, label=label.LABEL_OPTIONAL
    )
    report.field.add(
        name="named_metrics",
        number=8,
        type=label.TYPE_MESSAGE,
        label=label.LABEL_REPEATED,
        type_name=".xds.data.orca.v3.OrcaLoadReport.NamedMetricsEntry",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("xds.data.orca.v3.OrcaLoadReport")
    )


def test_load_reports_are_orca_messages() -> None:
    report_class = orca_report_class()
    encoded = encode_orca({"in_flight": 3.0, "queued": 1.0})
    parsed = report_class.FromString(encoded)
    assert dict(parsed.named_metrics) == {"in_flight": 3.0, "queued": 1.0}
    written = report_class(cpu_utilization=0.5, named_metrics={"in_flight": 2.0, "x": 1.5})
    assert decode_orca(written.SerializeToString()) == {"in_flight": 2.0, "x": 1.5}


def test_trailers_give_identity_and_load() -> None:
    identity, report = read_trailers(
        [("tms-worker", "abc/12"), ("tms-load-bin", encode_orca({"queued": 2}))]
    )
    assert identity == "abc/12"
    assert report == LoadReport(in_flight=0, queued=2)
    assert read_trailers(None) == (None, None)
    assert read_trailers([("tms-load-bin", b"\x0b")]) == (None, None)
    # After a reload the report also names it (GetWorkerInfoResponse.reload).
    _, report = read_trailers([("tms-load-bin", encode_orca({"queued": 1, "reload": 3}))])
    assert report == LoadReport(in_flight=0, queued=1, reload=3)
