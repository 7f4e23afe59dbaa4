"""Load test of a TMS server with Locust: users that call the example models over gRPC.

    .venv/bin/locust -f deploy/locustfile.py --headless -u 8 -r 8 -t 30s \\
        --host localhost:50051 --only-summary

``--host`` is the server as ``ModelClient`` takes it, without a scheme: ``host:port``, several
joined by commas, or ``dns:///name:port``. Each user calls one model after another with no
pause, picking each call's model by weight. The default mix is ``mean`` on a 224x224 colour
image (4), ``text_stats`` on a sentence (4), ``edges`` on a 224x224 gray image (2) and ``face``
on scikit-image's astronaut photo (1; only where scikit-image is installed).
``TMS_LOCUST_MODELS`` (or ``--tms-models``) picks others: ``"mean,ocr"`` with those weights, or
``"mean:4,optical_flow:1"``. Every call is one Locust request of type ``grpc`` named after its
model; it fails with the client's exception, or when the answer is not what the model gives.
At the end each client logs how its calls spread over the server's worker processes.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import gevent  # type: ignore[import-untyped]  # gevent ships no type hints
import grpc.experimental.gevent
import numpy as np
import numpy.typing as npt
from locust import User, constant, events, task
from locust.env import Environment
from locust.exception import LocustError

from tms_client import ClientOptions, ModelClient

# Locust has patched the standard library for gevent before loading this file. grpcio must
# also wait through gevent, or a call would block every user of the process; it has to be told
# before any channel exists.
grpc.experimental.gevent.init_gevent()

log = logging.getLogger("tms-locust")

Image = npt.NDArray[np.uint8]
SENTENCE = "The quick brown fox jumps over the lazy dog. It barks!"


class WrongAnswerError(Exception):
    """A call that succeeded with an answer its model does not give; Locust counts a failure."""


def _expect(ok: bool, model: str, result: Any) -> None:
    if not ok:
        raise WrongAnswerError(f"{model} answered {str(result)[:200]}")


def _json_size(result: Any) -> int:
    return len(json.dumps(result))


# -- the inputs, made once per process -----------------------------------------------------------


@functools.cache
def colour_image() -> Image:
    """224x224 random BGR pixels: mean reads every pixel whatever they are."""
    return np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)


def _scene(height: int, width: int) -> Image:
    """A bright disc on a noisy dark background: edges to find, texture to follow."""
    rows, cols = np.arange(height)[:, np.newaxis], np.arange(width)[np.newaxis, :]
    disc = (rows - height / 2) ** 2 + (cols - width / 2) ** 2 < (min(height, width) / 4) ** 2
    noise = np.random.default_rng(1).integers(0, 40, (height, width))
    return (noise + 180 * disc).astype(np.uint8)


@functools.cache
def gray_scene() -> Image:
    return _scene(224, 224)


@functools.cache
def two_frames() -> tuple[Image, Image]:
    """A 320x240 gray scene and the same moved 3 px right and 2 px down."""
    first = _scene(240, 320)
    return first, np.roll(first, (2, 3), axis=(0, 1))


@functools.cache
def digit() -> Image:
    """A 32x32 gray "1": a dark stroke on white, filling the image as digits wants."""
    image = np.full((32, 32), 255, np.uint8)
    image[3:29, 14:19] = 0
    return image


@functools.cache
def text_line() -> Image:
    """A 32x200 BGR strip of dark blocks on white, the shape of a line of text."""
    line = np.full((32, 200, 3), 255, np.uint8)
    for left in range(8, 192, 14):
        line[8:24, left : left + 9] = 0
    return line


@functools.cache
def _skimage_data() -> Any:
    """scikit-image's sample images, or None: it is optional (tms-client does not need it)."""
    try:
        from skimage import data  # noqa: PLC0415 - optional, and slow to import
    except ImportError:
        return None
    return data


@functools.cache
def astronaut() -> Image:
    """scikit-image's astronaut: a 512x512 RGB photo with one face."""
    return _skimage_data().astronaut()  # type: ignore[no-any-return]


@functools.cache
def text_photo() -> Image:
    """scikit-image's 448x172 gray photo of text."""
    return _skimage_data().text()  # type: ignore[no-any-return]


# -- one call per model ---------------------------------------------------------------------------


def call_mean(client: ModelClient) -> int:
    result = client.run_image(colour_image())
    _expect(isinstance(result, dict) and "mean" in result, "mean", result)
    return _json_size(result)


def call_text_stats(client: ModelClient) -> int:
    result = client.run_text(SENTENCE)
    _expect(isinstance(result, dict) and result.get("sentences") == 2, "text_stats", result)
    return _json_size(result)


def call_edges(client: ModelClient) -> int:
    output = client.run_image_to_image(gray_scene())
    _expect(output.image.shape == gray_scene().shape, "edges", output.image.shape)
    return output.image.nbytes + _json_size(output.result)


def call_face(client: ModelClient) -> int:
    result = client.run_image(astronaut(), color="rgb")
    _expect(isinstance(result, dict) and isinstance(result.get("faces"), list), "face", result)
    return _json_size(result)


def call_ocr(client: ModelClient) -> int:
    result = client.run_image(text_photo())
    _expect(isinstance(result, dict) and isinstance(result.get("lines"), list), "ocr", result)
    return _json_size(result)


def call_optical_flow(client: ModelClient) -> int:
    output = client.run_image_to_image(list(two_frames()))
    _expect(output.image.shape == (240, 320, 2), "optical_flow", output.image.shape)
    return output.image.nbytes + _json_size(output.result)


def call_digits(client: ModelClient) -> int:
    result = client.run_image(digit())
    _expect(isinstance(result, dict) and result.get("digit") in range(10), "digits", result)
    return _json_size(result)


def call_upright(client: ModelClient) -> int:
    result = client.run_image(text_line())
    _expect(isinstance(result, dict) and result.get("angle") in (0, 180), "upright", result)
    return _json_size(result)


@dataclass(frozen=True)
class Scenario:
    """How the users call one model: ``call`` makes one call, checks the answer and returns
    its size in bytes; ``inputs`` makes (once) what it sends; ``weight`` is its share of the
    calls unless TMS_LOCUST_MODELS says otherwise."""

    call: Callable[[ModelClient], int]
    inputs: Callable[[], object]
    weight: int
    default: bool = True  # in the mix when TMS_LOCUST_MODELS is empty
    needs_skimage: bool = False  # its input is a scikit-image sample


SCENARIOS = {
    "mean": Scenario(call_mean, colour_image, 4),
    "text_stats": Scenario(call_text_stats, lambda: SENTENCE, 4),
    "edges": Scenario(call_edges, gray_scene, 2),
    "face": Scenario(call_face, astronaut, 1, needs_skimage=True),
    "ocr": Scenario(call_ocr, text_photo, 1, default=False, needs_skimage=True),
    "optical_flow": Scenario(call_optical_flow, two_frames, 1, default=False),
    "digits": Scenario(call_digits, digit, 1, default=False),
    "upright": Scenario(call_upright, text_line, 1, default=False),
}


def parse_mix(text: str) -> dict[str, int]:
    """The models to call and their weights: the default mix for "", else "mean,edges" (their
    default weights) or "mean:4,edges:1". Raises ValueError."""
    if not text.strip():
        return {
            name: scenario.weight
            for name, scenario in SCENARIOS.items()
            if scenario.default and (not scenario.needs_skimage or _skimage_data() is not None)
        }
    mix: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, weight = item.partition(":")
        scenario = SCENARIOS.get(name.strip())
        if scenario is None:
            raise ValueError(f"unknown model {name!r}; the models are {', '.join(SCENARIOS)}")
        if scenario.needs_skimage and _skimage_data() is None:
            raise ValueError(f"{name} needs scikit-image for its input (pip install scikit-image)")
        weight = weight.strip()
        if weight and (not weight.isdigit() or int(weight) < 1):
            raise ValueError(f"the weight of {name} must be a whole number >= 1, not {weight!r}")
        mix[name.strip()] = int(weight) if weight else scenario.weight
    return mix


def parse_host(host: str | None) -> ClientOptions:
    """Client options for Locust's --host: "host:port", several joined by commas, or
    "dns:///name:port". Raises LocustError."""
    targets = [part.strip() for part in (host or "").split(",") if part.strip()]
    if not targets:
        raise LocustError("give the TMS server as --host host:port")
    for target in targets:
        if "://" in target and not target.startswith("dns:///"):
            raise LocustError(f"--host takes host:port without a scheme, not {target!r}")
    try:
        return ClientOptions(target=targets)
    except ValueError as exc:
        raise LocustError(f"--host: {exc}") from exc


def _models_option(text: str) -> str:
    try:
        parse_mix(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def _mix(environment: Environment) -> dict[str, int]:
    return parse_mix(getattr(environment.parsed_options, "tms_models", "") or "")


@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]  # EventHook is untyped
def _add_options(parser: Any, **_kwargs: Any) -> None:
    parser.add_argument(
        "--tms-models",
        type=_models_option,
        env_var="TMS_LOCUST_MODELS",
        default="",
        help="models to call: 'mean,edges', or with weights 'mean:4,edges:1' "
        f"(of {', '.join(SCENARIOS)}; default: mean, text_stats, edges and face)",
    )


# -- the clients and the users ---------------------------------------------------------------


class SharedClients:
    """The ModelClients of this Locust process, one per model, shared by all its users.

    A ModelClient is a pool made to be shared by the threads of a process, as a service that
    calls TMS holds one: a connection to every worker process, a background search for
    workers, a balancer that sees every call in flight. One per user would instead open
    users x models x workers connections (more to find the workers), run as many background
    searches, and give each balancer a sliver of the load. Clients open on first use and
    close when the test stops. More client processes: one ``--master`` and ``--worker``s.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # gevent's, once Locust has patched threading
        self._clients: dict[str, ModelClient] = {}

    def get(self, model: str, options: ClientOptions) -> ModelClient:
        with self._lock:  # one connects; the others wait for its client
            client = self._clients.get(model)
            if client is None:
                client = self._clients[model] = ModelClient(model, options=options)
            return client

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, {}
        for model, client in clients.items():
            spread = ", ".join(f"pid {w.pid}: {w.calls}" for w in client.workers())
            log.info("%s: calls per worker process: %s", model, spread or "no workers")
            client.close()


class ModelUser(User):
    """Calls the models of a TMS server, one call after another, each picked by weight."""

    wait_time = constant(0)  # a closed loop: the next call as soon as one returns
    clients: ClassVar[SharedClients] = SharedClients()

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.options = parse_host(self.host)
        mix = _mix(environment)
        self.models, self.weights = list(mix), list(mix.values())

    @task
    def call_a_model(self) -> None:
        (model,) = random.choices(self.models, self.weights)  # noqa: S311 - not a secret
        self.call(model)

    def call(self, model: str) -> None:
        """Call ``model`` once and report it to Locust as a request."""
        started = time.perf_counter()
        length = 0
        error: Exception | None = None
        try:
            client = self.clients.get(model, self.options)
            started = time.perf_counter()  # connecting (once per process) is not the call
            length = SCENARIOS[model].call(client)
        except Exception as exc:  # a failed call; a user stopped mid-call raises GreenletExit
            error = exc
        self.environment.events.request.fire(
            request_type="grpc",
            name=model,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=error,
            context={},
        )


@events.test_stop.add_listener  # type: ignore[untyped-decorator]  # EventHook is untyped
def _close_clients(environment: Environment, **_kwargs: Any) -> None:
    ModelUser.clients.close()


@events.init.add_listener  # type: ignore[untyped-decorator]  # EventHook is untyped
def _prepare(environment: Environment, **_kwargs: Any) -> None:
    """Refuse what cannot work, and make the inputs now rather than in the first calls, which
    would block every user.

    Then restart gevent's clock: it last ticked before this file was imported (seconds, on a
    busy machine), and Locust's --run-time timer, started next, would count from then.
    """
    options = environment.parsed_options
    if getattr(options, "processes", None):
        # Its processes fork with gRPC loaded, and gRPC under gevent can hang in a forked
        # process (grpc/grpc#38020): they stop reporting and the run ends with no calls.
        sys.exit("locust: error: --processes hangs gRPC; start --master and --worker processes")
    if environment.host or getattr(options, "headless", False):  # the web UI may ask for it
        try:
            parse_host(environment.host)
        except LocustError as exc:
            sys.exit(f"locust: error: {exc}")
    for model in _mix(environment):
        SCENARIOS[model].inputs()
    gevent.get_hub().loop.update_now()
