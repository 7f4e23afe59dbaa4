"""The container image and the Kubernetes manifests, checked with the real tools.

No Docker engine is needed: hadolint lints the Dockerfile, and the final stage's entrypoint runs
here with exactly the environment the image gives it (substituting only what cannot exist on
this machine, listed in ``SUBSTITUTED``). ``kubectl kustomize`` renders deploy/,
kubernetes-validate checks every object offline against the Kubernetes API schemas, and the
tests check what the pieces must agree on: probe and serving port, workers and CPU limit, drain
and grace period, the Services' and budget's selectors, the dashboard's metric names.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML, from kubernetes-validate; no stubs

from tests.support import EXAMPLE_MODELS, ROOT, ServerProcess
from tms_client import ModelClient

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana-dashboard.json"
#: The health service the startup and liveness probes ask for: SERVING while a worker answers.
MODEL_SERVICE = "tms.v1.ModelService"

BASE_IMAGE = "python:3.11-slim-bookworm"
#: What BASE_IMAGE's own ENV sets that a process can notice (`docker inspect`); the image
#: inherits it. (Its GPG_KEY and PYTHON_VERSION cannot matter to tms-server.)
BASE_IMAGE_ENV = {
    "PATH": "/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}
#: The scripts of this virtual environment: tms-server, hadolint, kubernetes-validate.
SCRIPTS = Path(sysconfig.get_path("scripts"))
#: What the entrypoint test changes in the image's environment, and why; the rest of it
#: (BASE_IMAGE_ENV, the final stage's ENV), ENTRYPOINT, CMD and WORKDIR are taken as they are.
#: The image's USER is not taken: the test runs as whoever runs it, since this machine's Python
#: need not be readable by that uid (it may live under /root); test_deployment_essentials
#: checks that the Deployment runs as that uid.
SUBSTITUTED = {
    # tms-server is in the image's /usr/local/bin; here it is in this environment's scripts.
    "PATH": f"{SCRIPTS}:{BASE_IMAGE_ENV['PATH']}",
    # /models holds the examples only in an image built with EXAMPLE_MODELS=true.
    "TMS_MODELS": str(EXAMPLE_MODELS),
    # 50051 may be in use on a shared machine; the kernel picks a free port (the server prints
    # it), as in every other test of a real server.
    "TMS_PORT": "0",
}
#: Validated against: the first release with gRPC probes GA, and the newest kubernetes-validate
#: (pinned in pyproject.toml) has schemas for.
KUBERNETES_VERSIONS = ("1.27.0", "1.37.0")
#: The supervisor waits --grace-seconds, then this long more, before it kills a worker still
#: running (tms_server/supervisor.py, Supervisor._shutdown).
SUPERVISOR_KILL_MARGIN = 5
#: The metrics the server exports (tms_server), by type; the dashboard shows each of them.
#: tests/test_metrics.py checks the list against what a real server exports.
METRICS = {
    "tms_calls_total": "counter",
    "tms_call_seconds": "histogram",
    "tms_model_seconds": "histogram",
    "tms_batch_size": "histogram",
    "tms_in_flight": "gauge",
    "tms_queued": "gauge",
    "tms_image_bytes_total": "counter",
    "tms_model_load_seconds": "gauge",
    "tms_model_load_failures_total": "counter",
    "tms_worker_restarts_total": "counter",
    "tms_workers": "gauge",
}


def tool(name: str) -> str:
    """A command of this virtual environment (the dev dependencies install hadolint and
    kubernetes-validate); missing, the test fails saying so."""
    path = SCRIPTS / name
    if not path.is_file():
        raise RuntimeError(f"{name} is not in {SCRIPTS}: install the dev dependencies (uv sync)")
    return str(path)


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        raise RuntimeError(
            "kubectl is needed to render deploy/ (kubectl kustomize): "
            "https://kubernetes.io/docs/tasks/tools/"
        )
    return found


def run(*command: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


# -- the Dockerfile ---------------------------------------------------------------------------


@dataclass
class Stage:
    """One stage of a Dockerfile: its base, its name, and its instructions in order."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def arguments(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]

    def env(self) -> dict[str, str]:
        """The variables ENV sets, in order (``KEY=value`` pairs, or the old ``KEY value``)."""
        env: dict[str, str] = {}
        for args in self.arguments("ENV"):
            words = shlex.split(args)
            if "=" not in words[0]:
                env[words[0]] = args.split(None, 1)[1]
                continue
            for word in words:
                key, value = word.split("=", 1)
                env[key] = value
        return env

    def exec_form(self, instruction: str) -> list[str]:
        """The last ENTRYPOINT or CMD, which must be in exec (JSON) form: a shell in between
        would be PID 1 and keep SIGTERM from tms-server."""
        found = self.arguments(instruction)
        if not found:
            return []
        command = json.loads(found[-1])
        assert isinstance(command, list), f"{instruction} is not in exec form: {found[-1]}"
        return [str(part) for part in command]


def parse_dockerfile(text: str) -> list[Stage]:
    """The stages of a Dockerfile: continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comments, also between continued lines
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    stages: list[Stage] = []
    for line in lines:
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif stages:
            stages[-1].instructions.append((instruction, args.strip()))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def image(stages: list[Stage]) -> Stage:
    """The final stage: what the image is."""
    return stages[-1]


def test_hadolint_passes():
    config = ROOT / ".hadolint.yaml"
    if config.exists():  # an ignored rule needs its reason beside it
        for line in config.read_text().splitlines():
            if line.strip().startswith("- "):
                assert "#" in line, f"{config.name}: no reason given for {line.strip()}"
    assert "hadolint ignore" not in DOCKERFILE.read_text()
    result = run(tool("hadolint"), "--no-color", "--failure-threshold", "info", DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_builds_wheels_and_runs_them_unprivileged(stages, image):
    names = [stage.name for stage in stages]
    assert len(stages) >= 2, "a builder stage and the image"
    for stage in stages:  # every base is the pinned slim Python (or an earlier stage)
        assert stage.base == BASE_IMAGE or stage.base in names, stage.base
    assert image.base == BASE_IMAGE, "the final stage starts from the base, not from the builder"
    builder = "\n".join(args for stage in stages[:-1] for _, args in stage.instructions)
    assert "uv build --all-packages --wheel" in builder
    assert "uv export --locked" in builder
    assert "ARG EXAMPLE_MODELS=false" in DOCKERFILE.read_text()
    # The image installs locked wheels with pip; uv and compilers stay in the builder.
    installs = " ".join(image.arguments("RUN"))
    assert "--require-hashes" in installs
    assert not re.search(r"\b(uv|apt-get|gcc|make)\b", installs), installs
    for args in image.arguments("COPY"):
        assert args.startswith("--from="), f"the image copies only from the builder: {args}"
    user = image.arguments("USER")[-1]
    uid = user.split(":")[0]
    assert uid.isdigit(), "a numeric uid, so Kubernetes' runAsNonRoot can check it"
    assert int(uid) != 0
    exposed = {
        int(port.split("/")[0]) for args in image.arguments("EXPOSE") for port in args.split()
    }
    env = image.env()
    assert exposed == {int(env["TMS_PORT"]), 9090}
    assert env["TMS_HOST"] == "0.0.0.0"
    assert env["TMS_MODELS"] == "/models"
    assert "TMS_METRICS_PORT" not in env, "the deployment decides whether to serve metrics"
    assert not image.arguments("HEALTHCHECK"), "Kubernetes probes gRPC health itself"
    assert image.exec_form("ENTRYPOINT") == ["tms-server"]


@pytest.mark.slow
def test_image_entrypoint_serves_and_stops_cleanly_on_sigterm(image: Stage) -> None:
    """Run ENTRYPOINT + CMD with the image's environment (BASE_IMAGE_ENV, then the final
    stage's ENV) and working directory; only SUBSTITUTED differs."""
    env = {**BASE_IMAGE_ENV, **image.env()}
    for key in SUBSTITUTED.keys() - {"PATH"}:
        assert key in env, f"{key} is no longer set by the image; update SUBSTITUTED"
    assert not any("$" in value for value in env.values()), "ENV values are taken literally"
    env.update(SUBSTITUTED)
    command = image.exec_form("ENTRYPOINT") + image.exec_form("CMD")
    workdir = (image.arguments("WORKDIR") or ["/"])[-1]
    server = ServerProcess(
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=workdir,
        )
    )
    try:
        assert server.wait_started(120), "tms-server did not start:\n" + server.logs()
        port = int(server.target.rsplit(":", 1)[1])
        with ModelClient("mean", f"localhost:{port}", connect_timeout=30) as client:
            assert client.health("") == "SERVING"  # what the readiness probe asks
            assert client.health(MODEL_SERVICE) == "SERVING"  # startup and liveness
            assert client.health() == "SERVING"
            assert client.run_image(np.full((4, 6, 3), 7, np.uint8)) == {"mean": 7.0}
    finally:
        code = server.stop(signal.SIGTERM, timeout=60)
    assert code == 0, server.logs()
    assert "received SIGTERM; stopping" in server.logs()


# -- .dockerignore ----------------------------------------------------------------------------


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes, pattern) per line, translated as Docker does (moby/patternmatcher): ``**``
    any number of folders, ``*`` and ``?`` within one, ``!`` lets paths back in."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        excludes = not line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**", i):
                i += 2
                if pattern.startswith("/", i):
                    i += 1
                regex += ".*" if i == len(pattern) else "(.*/)?"
                continue
            if pattern[i] == "[":  # a character class, as it is
                end = pattern.index("]", i + 1) + 1
                regex += pattern[i:end]
                i = end
                continue
            regex += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
        rules.append((excludes, re.compile(f"^{regex}$")))
    return rules


def excluded(rules: list[tuple[bool, re.Pattern[str]]], path: str) -> bool:
    """Whether Docker leaves ``path`` out of the build context: the last rule that matches it
    or one of its parent folders decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for excludes, pattern in rules:
        if any(pattern.match(prefix) for prefix in prefixes):
            verdict = excludes
    return verdict


def test_dockerignore_keeps_the_context_to_what_the_build_copies(stages):
    rules = dockerignore_rules(DOCKERIGNORE.read_text())
    for path in (
        ".venv",
        ".venv/bin/python",
        ".git",
        ".git/HEAD",
        "tests/test_deploy.py",
        "node_modules/x/index.js",
        "clients/ts/node_modules/x/index.js",
        "server/src/tms_server/__pycache__/worker.cpython-311.pyc",
        "server/.venv/bin/python",
        ".mypy_cache/3.11/tms_server/worker.data.json",
        ".pytest_cache/v/cache/lastfailed",
        ".ruff_cache/0.17.5/x",
        ".hypothesis/examples/x",
        "deploy/deployment.yaml",
        "benchmarks/bench_mean.py",
    ):
        assert excluded(rules, path), f"{path} reaches the build context"
    # Everything the builder copies from the context gets there.
    sources = [
        source
        for stage in stages
        for args in stage.arguments("COPY")
        if not args.startswith("--from=")
        for source in args.split()[:-1]
        if not source.startswith("--")
    ]
    assert sources
    caches = {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis"}
    for source in sources:
        top = ROOT / source
        assert top.exists(), source
        files = [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file()]
        for path in files:
            relative = path.relative_to(ROOT).as_posix()
            if caches.isdisjoint(path.parts):
                assert not excluded(rules, relative), f"{relative} is left out of the context"


# -- deploy/ ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, list[dict[str, Any]]]:
    """``kubectl kustomize deploy/``: the file and its objects."""
    result = run(kubectl(), "kustomize", DEPLOY)
    assert result.returncode == 0, result.stderr
    path = tmp_path_factory.mktemp("deploy") / "rendered.yaml"
    path.write_text(result.stdout)
    return path, [item for item in yaml.safe_load_all(result.stdout) if item]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        item
        for item in objects
        if item["kind"] == kind and (name is None or item["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{len(found)} {kind} objects named {name}"
    return found[0]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


def test_manifests_validate_offline(rendered):
    path, objects = rendered
    kinds = sorted(item["kind"] for item in objects)
    assert kinds == [
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Service",
        "Service",
    ]
    versions = [arg for version in KUBERNETES_VERSIONS for arg in ("-k", version)]
    result = run(tool("kubernetes-validate"), "--strict", *versions, path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # An object whose schema is missing only warns; each must have passed, for each version.
    assert "WARN" not in output, output
    assert "ERROR" not in output, output
    assert output.count(" passed for resource ") == len(objects) * len(KUBERNETES_VERSIONS)


def test_deployment_essentials(rendered, image):
    _, objects = rendered
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]
    spec = pod["spec"]
    (container,) = spec["containers"]
    env = {item["name"]: item for item in container["env"]}
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    serving = int(env["TMS_PORT"]["value"])
    assert serving == int(image.env()["TMS_PORT"]) == ports["grpc"]
    assert container["image"] == "tms-server:latest"  # kustomization.yaml's images entry

    # Probes ask grpc.health.v1 on the serving port: readiness for the whole server (no service
    # name: NOT_SERVING while a model failed to load), startup and liveness for the model
    # service (SERVING while a worker answers), so a pod with a broken model stays up, unready.
    probes = {
        "startupProbe": {"port": serving, "service": MODEL_SERVICE},
        "readinessProbe": {"port": serving},
        "livenessProbe": {"port": serving, "service": MODEL_SERVICE},
    }
    for probe, asks in probes.items():
        handler = container[probe]
        assert handler["grpc"] == asks, probe
        assert not {"httpGet", "tcpSocket", "exec"} & handler.keys(), probe

    # One worker per CPU of the limit, which must be set.
    assert env["TMS_WORKERS"]["valueFrom"]["resourceFieldRef"] == {
        "resource": "limits.cpu",
        "divisor": "1",
    }
    assert "cpu" in container["resources"]["limits"]
    assert "cpu" in container["resources"]["requests"]

    # SIGTERM comes after preStop; the server drains, its supervisor waits a little more.
    grace = float(env["TMS_GRACE_SECONDS"]["value"])
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    sleep = float(pre_stop[1]) if pre_stop and pre_stop[0] == "sleep" else 0.0
    assert spec["terminationGracePeriodSeconds"] > sleep + grace + SUPERVISOR_KILL_MARGIN

    # Metrics: the port the server serves them on is the one Prometheus scrapes.
    annotations = pod["metadata"]["annotations"]
    metrics = int(env["TMS_METRICS_PORT"]["value"])
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == metrics == ports["metrics"]
    assert annotations["prometheus.io/path"] == "/metrics"

    # Kubernetes' service links would set TMS_PORT=tcp://... for a Service named "tms".
    assert spec["enableServiceLinks"] is False
    # The HorizontalPodAutoscaler owns the replica count.
    assert "replicas" not in deployment["spec"]

    # Unprivileged, read-only, with /tmp (the image's HOME) writable.
    uid = int(image.arguments("USER")[-1].split(":")[0])
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == uid
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    assert image.env()["HOME"] == "/tmp"
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert not any("configMap" in volume for volume in volumes.values()), "models are no config"


def test_services_budget_and_autoscaler_target_the_deployment(rendered):
    _, objects = rendered
    deployment = one(objects, "Deployment")
    name = deployment["metadata"]["name"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    match = deployment["spec"]["selector"]["matchLabels"]
    assert selects(match, labels)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    grpc_port = next(port for port in container["ports"] if port["name"] == "grpc")

    headless = one(objects, "Service", "tms-headless")["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["publishNotReadyAddresses"] is False
    regular = one(objects, "Service", "tms")["spec"]
    assert regular.get("type", "ClusterIP") == "ClusterIP"
    assert "clusterIP" not in regular
    for service in (headless, regular):
        assert selects(service["selector"], labels)
        (port,) = service["ports"]
        assert port["port"] == grpc_port["containerPort"]
        assert port["targetPort"] in (grpc_port["name"], grpc_port["containerPort"])

    hpa = one(objects, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    assert [metric["resource"]["name"] for metric in hpa["metrics"]] == ["cpu"]
    assert hpa["minReplicas"] >= 2, "so the budget lets a node drain without an outage"

    pdb = one(objects, "PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"] == match


# -- the Grafana dashboard ---------------------------------------------------------------------


def test_grafana_dashboard_shows_every_server_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert 36 <= dashboard["schemaVersion"] <= 41
    (source,) = dashboard["__inputs"]
    assert (source["name"], source["type"], source["pluginId"]) == (
        "DS_PROMETHEUS",
        "datasource",
        "prometheus",
    )
    prometheus = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"] == prometheus
    exprs = []
    for panel in panels:
        assert panel["datasource"] == prometheus, panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == prometheus, panel["title"]
            exprs.append(target["expr"])

    used: set[str] = set()
    for expr in exprs:
        for opening, closing in ("()", "{}", "[]"):
            assert expr.count(opening) == expr.count(closing), expr
        for name in re.findall(r"\btms_\w+", expr):
            metric = re.sub(r"_bucket$", "", name)
            assert metric in METRICS, f"{name} is no metric of the server: {expr}"
            used.add(metric)
            if METRICS[metric] == "histogram":
                assert name.endswith("_bucket"), expr
                assert "histogram_quantile(" in expr, expr
            if METRICS[metric] == "gauge":
                assert not re.search(rf"(rate|increase)\({name}\b", expr), expr
    assert used == set(METRICS), f"not shown: {set(METRICS) - used}"
    for histogram in ("tms_call_seconds", "tms_model_seconds"):  # server vs model time
        for quantile in ("0.5", "0.99"):
            assert any(
                f"histogram_quantile({quantile}," in expr and f"{histogram}_bucket" in expr
                for expr in exprs
            ), (histogram, quantile)
