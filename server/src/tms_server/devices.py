"""Devices: which device each worker runs on, what the worker process sees of it, and which
workers load each model.

``--devices cuda:0,cuda:1`` gives the workers their devices in turn (worker 0 cuda:0, worker 1
cuda:1, worker 2 cuda:0, ...). Each worker sets ``CUDA_VISIBLE_DEVICES`` before it imports any
model, so it sees its GPU alone, as ``cuda:0``, and a worker on ``cpu`` sees no GPU at all
(a library cannot take GPU memory behind the server's back). The server names devices as
``--devices`` does ("cuda:1"); a model is told the name it sees ("cuda:0").

A model class may declare where it goes: ``devices`` (the server's names; ``"cuda"`` is any
GPU) and ``workers`` (how many of those workers load it, the lowest indices first, which the
round-robin spreads over the devices). Every worker imports the model's module to read them;
only the workers a model is placed on make an instance. ``Placement`` decides this the same way
in every worker, from the class and the server's list of devices.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CPU",
    "VISIBLE",
    "DeviceError",
    "Placement",
    "assign",
    "check_devices",
    "check_visible",
    "cuda_visible_devices",
    "local_name",
]

CPU = "cpu"
_CUDA = re.compile(r"cuda:(\d{1,4})")
#: The variable that tells CUDA which GPUs a process sees.
VISIBLE = "CUDA_VISIBLE_DEVICES"


class DeviceError(ValueError):
    """A device list, or a model's placement, that cannot be used; the message says why."""


def check_devices(devices: Iterable[str]) -> tuple[str, ...]:
    """``devices`` as a tuple, each "cpu" or "cuda:N", none twice; DeviceError otherwise."""
    devices = tuple(devices)
    if not devices:
        raise DeviceError("devices must name at least one device, e.g. cpu or cuda:0,cuda:1")
    for device in devices:
        if device != CPU and not _CUDA.fullmatch(device):
            raise DeviceError(f"devices: {device!r} is not a device; expected cpu or cuda:N")
        if devices.count(device) > 1:
            raise DeviceError(
                f"devices lists {device} twice; for more workers on one device set "
                "workers_per_device"
            )
    return devices


def assign(devices: tuple[str, ...], workers: int) -> tuple[str, ...]:
    """The device of each of ``workers`` workers: the devices in turn (round-robin)."""
    return tuple(devices[index % len(devices)] for index in range(workers))


def local_name(device: str) -> str:
    """What a worker on ``device`` calls it: "cuda:0" (its only GPU) or "cpu"."""
    return CPU if device == CPU else "cuda:0"


def cuda_visible_devices(device: str, inherited: str | None) -> str:
    """The ``CUDA_VISIBLE_DEVICES`` of a worker on ``device``: "" for cpu (no GPU), else the
    GPU's number, or its entry in the server's own ``CUDA_VISIBLE_DEVICES`` (``inherited``)
    when that is set: with CUDA_VISIBLE_DEVICES=2,3 the server's cuda:1 is GPU 3."""
    if device == CPU:
        return ""
    number = int(device.partition(":")[2])
    if inherited is None:
        return str(number)
    visible = [entry.strip() for entry in inherited.split(",") if entry.strip()]
    if number >= len(visible):
        raise DeviceError(
            f"device {device} is not visible: the server's {VISIBLE}={inherited!r} shows "
            f"{len(visible)} GPU(s)"
        )
    return visible[number]


def check_visible(devices: Iterable[str], environ: Mapping[str, str]) -> None:
    """DeviceError, before any worker starts, for a device the server cannot see."""
    for device in devices:
        cuda_visible_devices(device, environ.get(VISIBLE))


def _declared(cls: Any) -> tuple[int | None, tuple[str, ...] | None]:
    """A model class's ``workers`` and ``devices``, checked; DeviceError when malformed."""
    workers = getattr(cls, "workers", None)
    if workers is not None and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
    ):
        raise DeviceError(f"workers = {workers!r}; expected a number of workers >= 1, or None")
    wanted = getattr(cls, "devices", None)
    if wanted is None:
        return workers, None
    names = (wanted,) if isinstance(wanted, str) else tuple(wanted)
    for name in names:
        if not isinstance(name, str) or (name not in (CPU, "cuda") and not _CUDA.fullmatch(name)):
            raise DeviceError(
                f"devices = {wanted!r}; expected names of devices: cpu, cuda (any GPU) or cuda:N"
            )
    if not names:
        raise DeviceError("devices = (); name at least one device, or leave it None")
    return workers, names


def _matches(device: str, wanted: tuple[str, ...]) -> bool:
    return device in wanted or ("cuda" in wanted and device != CPU)


@dataclass(frozen=True)
class Placement:
    """One worker's place among the server's workers: its index, every worker's device (the
    server's names, by index), and the threads its numerical libraries get; and from these,
    which workers each model goes to (the same answer in every worker)."""

    index: int = 0
    devices: tuple[str, ...] = (CPU,)
    threads: int = 1

    @property
    def device(self) -> str:
        """This worker's device, as the server names it ("cuda:1")."""
        return self.devices[self.index]

    @property
    def local_device(self) -> str:
        """This worker's device as its models see it ("cuda:0" or "cpu")."""
        return local_name(self.device)

    def workers_for(self, cls: Any) -> tuple[int, ...]:
        """The workers that load model class ``cls``: those on the devices it declares (any,
        if none), at most ``workers`` of them, the lowest indices first. DeviceError for a
        malformed declaration or one that no worker meets."""
        count, wanted = _declared(cls)
        eligible = [
            index
            for index, device in enumerate(self.devices)
            if wanted is None or _matches(device, wanted)
        ]
        if not eligible:
            raise DeviceError(
                f"no worker runs on {', '.join(wanted or ())}, the devices the model asks for; "
                f"the server's are {', '.join(dict.fromkeys(self.devices))} (--devices)"
            )
        return tuple(eligible if count is None else eligible[:count])

    def where(self, workers: Iterable[int]) -> str:
        """Workers by index and device, for messages: "worker 0 (cuda:0), worker 2 (cuda:0)"."""
        return ", ".join(f"worker {index} ({self.devices[index]})" for index in workers)
