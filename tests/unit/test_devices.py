"""Devices and placement without processes: how --workers, --devices and --workers-per-device
combine, what each worker sees, which workers load a model, and what a model is told."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.support import write_models
from tms.v1 import model_service_pb2
from tms_server.cpus import available_cpus
from tms_server.devices import (
    DeviceError,
    Placement,
    assign,
    check_visible,
    cuda_visible_devices,
    local_name,
)
from tms_server.errors import FailedPrecondition, NotFound
from tms_server.registry import ModelRegistry, instantiate
from tms_server.servicer import ModelServicer, WorkerIdentity
from tms_server.settings import Settings, parse_settings

ARGPARSE_ERROR = 2


def parse(*argv: str, **environ: str) -> Settings:
    return parse_settings(list(argv), environ)


def refused(capsys: pytest.CaptureFixture[str], *argv: str, **environ: str) -> str:
    with pytest.raises(SystemExit) as exited:
        parse_settings(list(argv), environ)
    assert exited.value.code == ARGPARSE_ERROR
    return capsys.readouterr().err.strip().splitlines()[-1]


# -- how the numbers combine --------------------------------------------------------------------


def test_default_is_one_worker_per_cpu_on_the_cpu():
    settings = parse()
    assert settings.devices == ("cpu",)
    assert settings.workers == available_cpus()
    assert settings.worker_devices == ("cpu",) * available_cpus()


def test_devices_alone_give_one_worker_per_device():
    settings = parse("--devices", "cuda:0,cuda:1")
    assert settings.workers == 2
    assert settings.worker_devices == ("cuda:0", "cuda:1")
    assert parse(TMS_DEVICES="cuda:0, cuda:1").worker_devices == ("cuda:0", "cuda:1")


def test_workers_per_device_sizes_the_pool_round_robin():
    settings = parse("--devices", "cuda:0,cuda:1", "--workers-per-device", "2")
    assert settings.workers == 4
    assert settings.worker_devices == ("cuda:0", "cuda:1", "cuda:0", "cuda:1")
    assert parse("--workers-per-device", "3").worker_devices == ("cpu",) * 3
    assert parse(TMS_DEVICES="cuda:3", TMS_WORKERS_PER_DEVICE="2").workers == 2


def test_workers_given_go_to_the_devices_in_turn():
    settings = parse("--devices", "cuda:0,cuda:1", "--workers", "3")
    assert settings.worker_devices == ("cuda:0", "cuda:1", "cuda:0")
    assert parse("--workers", "3").worker_devices == ("cpu",) * 3
    mixed = parse("--devices", "cuda:0,cpu", "--workers-per-device", "2")
    assert mixed.worker_devices == ("cuda:0", "cpu", "cuda:0", "cpu")


def test_workers_and_workers_per_device_may_agree():
    settings = parse("--devices", "cuda:0,cuda:1", "--workers", "4", "--workers-per-device", "2")
    assert settings.workers == 4


def test_contradictions_stop_the_start(capsys):
    assert refused(
        capsys, "--devices", "cuda:0,cuda:1", "--workers", "3", "--workers-per-device", "2"
    ) == (
        "tms-server: error: workers=3 contradicts devices=cuda:0,cuda:1 with "
        "workers_per_device=2 (2 x 2 = 4 workers); set one of workers and workers_per_device"
    )
    assert refused(capsys, "--devices", "cuda:0,cuda:1", "--workers", "1") == (
        "tms-server: error: workers=1 leaves devices without a worker: devices=cuda:0,cuda:1 "
        "needs at least 2"
    )
    assert refused(capsys, TMS_WORKERS="2", TMS_WORKERS_PER_DEVICE="3").startswith(
        "tms-server: error: workers=2 contradicts devices=cpu with workers_per_device=3"
    )
    many = refused(capsys, "--devices", "cuda:0,cuda:1", "--workers-per-device", "200")
    assert many == (
        "tms-server: error: devices=cuda:0,cuda:1 with workers_per_device=200 makes 400 "
        "workers; at most 256"
    )


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        ("gpu", "devices: 'gpu' is not a device; expected cpu or cuda:N"),
        ("cuda", "devices: 'cuda' is not a device; expected cpu or cuda:N"),
        ("cuda:0,cuda:x", "devices: 'cuda:x' is not a device; expected cpu or cuda:N"),
        ("CPU", "devices: 'CPU' is not a device; expected cpu or cuda:N"),
        (
            "cuda:0,cuda:0",
            "devices lists cuda:0 twice; for more workers on one device set workers_per_device",
        ),
        (",", "devices must name at least one device, e.g. cpu or cuda:0,cuda:1"),
    ],
)
def test_bad_device_lists_stop_the_start(capsys, devices, message):
    assert refused(capsys, "--devices", devices) == f"tms-server: error: {message}"
    assert refused(capsys, TMS_DEVICES=devices) == f"tms-server: error: {message}"


def test_settings_built_directly_resolve_alike():
    assert Settings(devices=("cuda:0", "cuda:1")).workers == 2
    assert Settings(workers=3).worker_devices == ("cpu",) * 3
    with pytest.raises(ValueError, match="contradicts"):
        Settings(workers=3, workers_per_device=2)
    assert Settings(model_threads=4).model_threads == 4
    with pytest.raises(ValueError, match="model_threads must be between 1 and 1024, not 0"):
        Settings(model_threads=0)


# -- what a worker sees -------------------------------------------------------------------------


def test_each_worker_sees_its_gpu_alone_and_a_cpu_worker_none():
    assert cuda_visible_devices("cuda:0", None) == "0"
    assert cuda_visible_devices("cuda:3", None) == "3"
    assert cuda_visible_devices("cpu", None) == ""
    assert cuda_visible_devices("cpu", "0,1") == ""
    # The server's own CUDA_VISIBLE_DEVICES renumbers its GPUs: its cuda:1 is GPU 3 here.
    assert cuda_visible_devices("cuda:1", "2,3") == "3"
    assert cuda_visible_devices("cuda:0", "GPU-8f2a, GPU-11cd") == "GPU-8f2a"
    assert local_name("cuda:1") == "cuda:0"
    assert local_name("cpu") == "cpu"
    assert assign(("cuda:0", "cuda:1"), 5) == ("cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0")


def test_a_gpu_the_server_cannot_see_stops_the_start():
    check_visible(["cuda:0", "cuda:1"], {"CUDA_VISIBLE_DEVICES": "4,5"})
    check_visible(["cpu"], {"CUDA_VISIBLE_DEVICES": ""})
    with pytest.raises(DeviceError, match=r"device cuda:2 is not visible: the server's "):
        check_visible(["cuda:2"], {"CUDA_VISIBLE_DEVICES": "4,5"})
    with pytest.raises(DeviceError, match="shows 0 GPU"):
        check_visible(["cuda:0"], {"CUDA_VISIBLE_DEVICES": ""})


# -- placement ----------------------------------------------------------------------------------


def model(**declared: object) -> type:
    return type("Model", (), declared)


FOUR = ("cuda:0", "cuda:1", "cuda:0", "cuda:1")


@pytest.mark.parametrize(
    ("declared", "devices", "workers"),
    [
        ({}, FOUR, (0, 1, 2, 3)),
        ({"workers": 1}, FOUR, (0,)),
        ({"workers": 2}, FOUR, (0, 1)),  # the round-robin spreads them over the GPUs
        ({"workers": 10}, FOUR, (0, 1, 2, 3)),
        ({"devices": ("cuda:1",)}, FOUR, (1, 3)),
        ({"devices": "cuda:1", "workers": 1}, FOUR, (1,)),
        ({"devices": ("cuda",)}, ("cpu", "cuda:0", "cpu", "cuda:1"), (1, 3)),
        ({"devices": ["cpu"]}, ("cpu", "cuda:0", "cpu", "cuda:1"), (0, 2)),
        ({"devices": None, "workers": None}, ("cpu",), (0,)),
    ],
)
def test_placement(declared, devices, workers):
    assert Placement(0, devices).workers_for(model(**declared)) == workers


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ({"workers": 0}, r"workers = 0; expected a number of workers >= 1"),
        ({"workers": True}, r"workers = True"),
        ({"workers": 1.5}, r"workers = 1.5"),
        ({"devices": ("gpu:0",)}, r"devices = \('gpu:0',\); expected names of devices"),
        ({"devices": (0,)}, r"devices = \(0,\)"),
        ({"devices": ()}, r"devices = \(\); name at least one device"),
        ({"devices": ("cuda:0",)}, r"no worker runs on cuda:0, .* the server's are cpu"),
    ],
)
def test_bad_or_impossible_placements(declared, message):
    with pytest.raises(DeviceError, match=message):
        Placement(0, ("cpu", "cpu")).workers_for(model(**declared))


def test_a_model_is_told_where_it_runs_before_and_in_init():
    seen = {}

    class Told:
        device: str
        threads: int
        worker_index: int

        def __init__(self, device: str = "?", *, worker_index: int = -1) -> None:
            seen.update(init=(device, worker_index), attributes=(self.device, self.threads))

    class Quiet:
        device: str
        threads: int
        worker_index: int

        def __init__(self) -> None:
            seen["quiet"] = (self.worker_index, self.device, self.threads)

    class Plain:  # no __init__ of its own: object's takes no keywords
        pass

    class Passing:  # **kwargs is not naming a parameter: it gets none
        def __init__(self, **kwargs: object) -> None:
            seen["kwargs"] = kwargs

    placement = Placement(1, ("cuda:0", "cuda:1"), threads=3)
    told = instantiate(Told, placement)
    assert seen["init"] == ("cuda:0", 1)  # the GPU as the worker sees it
    assert seen["attributes"] == ("cuda:0", 3)
    assert told.worker_index == 1
    instantiate(Quiet, placement)
    assert seen["quiet"] == (1, "cuda:0", 3)
    assert instantiate(Plain, placement).device == "cuda:0"
    instantiate(Passing, placement)
    assert seen["kwargs"] == {}
    assert instantiate(Told, Placement(0, ("cpu",))).device == "cpu"


MODELS = {
    "everywhere": """
        import tms_server

        class Model(tms_server.Model):
            input_shape = (-1, -1, 3)

            def get_input_shape(self):
                return (8, 8, 3)

            def run(self, image, args):
                return {}
    """,
    "solo": """
        import tms_server

        class Model(tms_server.Model):
            workers = 1
            input_shape = (-1, -1)

            def __init__(self):
                self.made = True

            def get_input_shape(self):  # not asked: the model is not on every worker
                return (1, 1)

            def run(self, image, args):
                return {}
    """,
    "gpu_only": """
        import tms_server

        class Model(tms_server.Model):
            devices = ("cuda",)

            def run(self, image, args):
                return {}
    """,
}


def test_every_worker_describes_every_model_and_loads_only_its_own(tmp_path, caplog):
    folder = write_models(tmp_path, MODELS)
    devices = ("cuda:0", "cpu")
    with caplog.at_level(logging.INFO):
        first = ModelRegistry.load(folder, entry_points=False, placement=Placement(0, devices))
        second = ModelRegistry.load(folder, entry_points=False, placement=Placement(1, devices))
    assert list(first.models) == ["everywhere", "gpu_only", "solo"]
    assert first.here() == ["everywhere", "gpu_only", "solo"]
    assert list(second.models) == ["everywhere"]
    assert list(second.elsewhere) == ["gpu_only", "solo"]
    assert second.here() == ["everywhere"]
    assert "model 'solo' is placed on worker 0 (cuda:0)" in caplog.text
    # ListModels and GetModelInfo answer alike on both workers.
    assert first.infos() == second.infos()
    assert [info.name for info in second.infos()] == ["everywhere", "gpu_only", "solo"]
    assert list(second.find("solo").info.input_shape) == [-1, -1]  # from the class
    assert list(first.find("solo").info.input_shape) == [-1, -1]  # alike
    assert list(first.find("everywhere").info.input_shape) == [8, 8, 3]  # asked: everywhere
    assert second.find("solo").instance is None
    assert first.get("solo").instance.made
    # While worker 0 is not known to have served a while (no board says so): try again.
    with pytest.raises(FailedPrecondition) as refused_call:
        second.get("solo")
    assert str(refused_call.value) == (
        "model 'solo' is not loaded in worker 1 (cpu): it is placed on worker 0 (cuda:0), "
        "which is starting or being replaced; try again in a moment (tms_client does)"
    )
    assert refused_call.value.retry_after == 1.0
    second.settled = lambda workers: workers == (0,)  # worker 0 has served a while
    with pytest.raises(FailedPrecondition) as refused_call:
        second.get("solo")
    assert str(refused_call.value) == (
        "model 'solo' is not loaded in worker 1 (cpu): it is placed on worker 0 (cuda:0); "
        "send its calls there (tms_client does)"
    )
    assert refused_call.value.retry_after is None
    with pytest.raises(NotFound, match="models: everywhere, gpu_only, solo"):
        second.get("nope")


def test_a_model_placed_on_no_worker_fails_to_load_everywhere(tmp_path):
    folder = write_models(tmp_path, MODELS)
    registry = ModelRegistry.load(folder, entry_points=False, placement=Placement(0, ("cpu",)))
    assert registry.failed["gpu_only"] == (
        "DeviceError: no worker runs on cuda, the devices the model asks for; the server's "
        "are cpu (--devices)"
    )
    assert registry.here() == ["everywhere", "solo"]  # what it serves (GetWorkerInfo.models)
    with pytest.raises(FailedPrecondition, match="model 'gpu_only' failed to load"):
        registry.get("gpu_only")


def test_a_reload_follows_a_changed_placement(tmp_path):
    folder = write_models(tmp_path, MODELS)
    devices = ("cpu", "cpu")
    second = ModelRegistry.load(folder, entry_points=False, placement=Placement(1, devices))
    assert "solo" in second.elsewhere
    source = (folder / "solo" / "__init__.py").read_text()
    (folder / "solo" / "__init__.py").write_text(source.replace("workers = 1", "workers = 2"))
    second.reload("solo")
    assert second.get("solo").instance.made
    assert "solo" not in second.elsewhere
    (folder / "solo" / "__init__.py").write_text(source)
    second.reload("solo")
    assert second.elsewhere["solo"].workers == (0,)
    assert "solo" not in second.models


def test_worker_info_says_the_device_and_the_models_the_worker_has(tmp_path):
    folder = write_models(tmp_path, {"gpu_only": MODELS["gpu_only"]})
    devices = ("cuda:0", "cpu")

    def worker_info(index: int) -> model_service_pb2.GetWorkerInfoResponse:
        placement = Placement(index, devices)
        registry = ModelRegistry.load(folder, entry_points=False, placement=placement)
        identity = WorkerIdentity("i", index, 2, "1", device=placement.device)
        servicer = ModelServicer(registry, identity, max_pixels=100)
        context: Any = None  # GetWorkerInfo does not use it
        return servicer.GetWorkerInfo(model_service_pb2.GetWorkerInfoRequest(), context)

    first, second = worker_info(0), worker_info(1)
    assert (first.device, list(first.models)) == ("cuda:0", ["gpu_only"])
    # No model at all: an empty list would say "every model" to clients, so [""] (no name).
    assert (second.device, list(second.models)) == ("cpu", [""])
