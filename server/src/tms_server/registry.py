"""Finding, loading and describing models.

Models come from the sub-folders of the models folder (a package whose ``__init__.py``
defines ``class Model``) and from the ``tms.models`` entry-point group (name -> class), so a
pip-installed package can ship models. A model that fails to import or load is logged and
kept aside with its error; the others load regardless.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import inspect
import logging
import re
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tms.v1 import image_pb2, model_service_pb2
from tms_client.protocol.codec import DTypeValue, dtype_of
from tms_client.protocol.colors import ColorValue, color_order
from tms_server.errors import FailedPrecondition, InvalidArgument, NotFound
from tms_server.model import Model

__all__ = ["ENTRY_POINT_GROUP", "LoadedModel", "ModelRegistry", "import_model_class"]

log = logging.getLogger("tms_server")

ENTRY_POINT_GROUP = "tms.models"
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")
_PACKAGE = "tms_models"  # parent of the imported model packages in sys.modules
#: Told of each load of a model: its name, and the seconds it took or None if it failed.
OnLoad = Callable[[str, float | None], None]


@dataclass(frozen=True)
class LoadedModel:
    """A model instance with what the server needs to call it: its description (``info``,
    as ListModels sends it) and the numpy dtype and shape it takes."""

    instance: Any
    info: model_service_pb2.ModelInfo
    dtype: np.dtype[Any] | None
    input_shape: tuple[int, ...] | None
    lock: contextlib.AbstractContextManager[Any]

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def color(self) -> ColorValue:
        """The colour order the model takes its images in."""
        return self.info.color_order

    @property
    def output_color(self) -> ColorValue:
        """The colour order of the images it returns."""
        return self.info.output_color_order

    def supports(self, call: int) -> bool:
        return call in self.info.calls


def _overrides(cls: type, method: str) -> bool:
    own = getattr(cls, method, None)
    return own is not None and own is not getattr(Model, method)


def _color(cls: type, attribute: str) -> ColorValue:
    value = getattr(cls, attribute, None)
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{attribute} = {value!r}; expected gray, rgb, bgr, rgba, bgra or None")
    try:
        return color_order(value)
    except ValueError as exc:
        raise TypeError(f"{attribute}: {exc}") from None


def describe(name: str, instance: Any) -> LoadedModel:
    """Read a model instance's declarations (see tms_server.model) into a LoadedModel."""
    cls = type(instance)
    inputs = getattr(cls, "inputs", "image")
    if inputs not in ("image", "text"):
        raise TypeError(f"inputs = {inputs!r}; expected 'image' or 'text'")
    calls = []
    if _overrides(cls, "run"):
        if inputs == "image":
            calls += [
                model_service_pb2.MODEL_CALL_RUN_IMAGE,
                model_service_pb2.MODEL_CALL_RUN_IMAGE_BATCH,
            ]
        else:
            calls += [
                model_service_pb2.MODEL_CALL_RUN_TEXT,
                model_service_pb2.MODEL_CALL_RUN_TEXT_BATCH,
            ]
    if inputs == "image" and _overrides(cls, "run_image_to_image"):
        calls.append(model_service_pb2.MODEL_CALL_RUN_IMAGE_TO_IMAGE)
    if not calls:
        raise TypeError("the model overrides none of run, run_image_to_image")
    dtype_name = getattr(cls, "dtype", None)
    dtype = np.dtype(dtype_name) if dtype_name is not None else None
    get_shape = getattr(instance, "get_input_shape", None)
    shape = get_shape() if callable(get_shape) else getattr(cls, "input_shape", None)
    input_shape = tuple(int(d) for d in shape) if shape is not None else None
    color, output_color = _color(cls, "color"), _color(cls, "output_color")
    thread_safe = bool(getattr(cls, "thread_safe", False))
    info = model_service_pb2.ModelInfo(
        name=name,
        description=inspect.cleandoc(getattr(cls, "description", "") or cls.__doc__ or ""),
        input_shape=input_shape or (),
        input_dtype=_wire_dtype(dtype),
        color_order=color,
        calls=calls,
        thread_safe=thread_safe,
        output_color_order=output_color,
    )
    lock = contextlib.nullcontext() if thread_safe else threading.Lock()
    return LoadedModel(instance, info, dtype, input_shape, lock)


def _wire_dtype(dtype: np.dtype[Any] | None) -> DTypeValue:
    return image_pb2.D_TYPE_UNSPECIFIED if dtype is None else dtype_of(dtype)


def import_model_class(folder: Path) -> type:
    """The ``Model`` class of a model folder, imported as package ``tms_models.<folder name>``."""
    if _PACKAGE not in sys.modules:
        package = types.ModuleType(_PACKAGE)
        package.__path__ = []
        sys.modules[_PACKAGE] = package
    module_name = f"{_PACKAGE}.{folder.name}"
    spec = importlib.util.spec_from_file_location(
        module_name, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {folder}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    model_class = getattr(module, "Model", None)
    if not isinstance(model_class, type):
        raise TypeError(f"{folder / '__init__.py'} defines no class Model")
    return model_class


def _sources(folder: Path | None, entry_points: bool) -> Iterator[tuple[str, Any]]:
    """(name, zero-argument loader returning the model class) for every model found."""
    seen = set()
    if folder is not None and folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.name.startswith(("_", ".")) or not (path / "__init__.py").is_file():
                continue
            seen.add(path.name)
            yield path.name, lambda path=path: import_model_class(path)
    elif folder is not None:
        log.warning("models folder %s does not exist", folder)
    if entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in seen:
                log.warning("entry point model %r is shadowed by the models folder", ep.name)
                continue
            seen.add(ep.name)
            yield ep.name, ep.load


def _check_name(name: str) -> None:
    """INVALID_ARGUMENT for a name that cannot be a model's."""
    if not NAME_PATTERN.fullmatch(name):
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise InvalidArgument(f"invalid model name {shown!r}: 1 to 64 letters, digits, _ or -")


class ModelRegistry:
    """The models of one worker process, by name, and the ones that failed to load;
    ``on_load`` (the worker's metrics) is told of every load, at start and on reloads."""

    def __init__(
        self,
        models: dict[str, LoadedModel],
        failed: dict[str, str],
        *,
        folder: Path | None = None,
        entry_points: bool = False,
        on_load: OnLoad | None = None,
    ) -> None:
        self.models = dict(sorted(models.items()))
        self.failed = dict(sorted(failed.items()))
        self._folder = folder
        self._entry_points = entry_points
        self._on_load = on_load

    def __repr__(self) -> str:
        return f"<ModelRegistry models={list(self.models)} failed={list(self.failed)}>"

    @classmethod
    def load(
        cls, folder: Path | None, *, entry_points: bool = True, on_load: OnLoad | None = None
    ) -> ModelRegistry:
        models: dict[str, LoadedModel] = {}
        failed: dict[str, str] = {}
        for name, load_class in _sources(folder, entry_points):
            if not NAME_PATTERN.fullmatch(name):
                log.error("skipping model %r: a name is letters, digits, _ and - only", name)
                continue
            started = time.perf_counter()
            try:
                models[name] = describe(name, load_class()())
            except Exception as exc:
                log.exception("model %r failed to load", name)
                failed[name] = f"{type(exc).__name__}: {exc}"
                if on_load is not None:
                    on_load(name, None)
                continue
            seconds = time.perf_counter() - started
            log.info("loaded model %r in %.2fs", name, seconds)
            if on_load is not None:
                on_load(name, seconds)
        return cls(models, failed, folder=folder, entry_points=entry_points, on_load=on_load)

    def source(self, name: str) -> Any:
        """The loader of model ``name``'s class: INVALID_ARGUMENT for a name that cannot be
        a model's, NOT_FOUND when neither the models folder nor an entry point has it."""
        _check_name(name)
        load_class = dict(_sources(self._folder, self._entry_points)).get(name)
        if load_class is None:
            raise NotFound(f"no model named {name!r} in the models folder or entry points")
        return load_class

    def reload(self, name: str) -> LoadedModel:
        """Load model ``name`` again from its folder (its modules imported afresh) or entry
        point, and serve the new instance from now on; calls in flight keep the old one.

        Raises NotFound when no source has that name, and whatever loading raised when it
        fails; then the model being served, if any, stays.
        """
        load_class = self.source(name)
        prefix = f"{_PACKAGE}.{name}"
        for module in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
            del sys.modules[module]
        importlib.invalidate_caches()
        started = time.perf_counter()
        try:
            model = describe(name, load_class()())
        except Exception:
            if self._on_load is not None:
                self._on_load(name, None)
            raise
        # Swap whole dicts: readers (other threads) see the old or the new, never a mix.
        self.models = dict(sorted({**self.models, name: model}.items()))
        self.failed = {k: v for k, v in self.failed.items() if k != name}
        seconds = time.perf_counter() - started
        log.info("reloaded model %r in %.2fs", name, seconds)
        if self._on_load is not None:
            self._on_load(name, seconds)
        return model

    def get(self, name: str) -> LoadedModel:
        """The model called ``name``, or the error a caller asking for it should get."""
        model = self.models.get(name)
        if model is not None:
            return model
        if name in self.failed:
            raise FailedPrecondition(f"model {name!r} failed to load: {self.failed[name]}")
        _check_name(name)
        known = ", ".join(self.models) or "none"
        raise NotFound(f"no model named {name!r}; models: {known}")
