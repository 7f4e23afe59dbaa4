"""Finding, loading and describing models.

Models come from the sub-folders of the models folder (a package whose ``__init__.py``
defines ``class Model``) and from the ``tms.models`` entry-point group (name -> class), so a
pip-installed package can ship models. A model that fails to import or load is kept aside
with its error (the supervisor logs it, once for all workers); the others load regardless.

Every worker imports every model's class, but makes an instance only of the models placed on
it (tms_server.devices); it describes the others from their classes, so ListModels and
GetModelInfo answer alike on every worker, and it sends their calls to the workers that have
them (FAILED_PRECONDITION, naming those workers; with RetryInfo while one of them is starting
or being replaced: a client sends a call there only when it knows no worker that has the
model).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import inspect
import json
import logging
import os
import re
import shlex
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import jsonschema  # type: ignore[import-untyped]
import numpy as np
from google.protobuf import duration_pb2

from tms.v1 import image_pb2, model_service_pb2
from tms_client.protocol.codec import DTypeValue, dtype_of
from tms_client.protocol.colors import ColorValue, color_order
from tms_server.batching import MAX_BATCH_DELAY, Batcher, BatchSettings
from tms_server.devices import Placement
from tms_server.errors import FailedPrecondition, InvalidArgument, NotFound
from tms_server.model import Model

__all__ = [
    "ENTRY_POINT_GROUP",
    "Elsewhere",
    "LoadedModel",
    "ModelRegistry",
    "NoModelsError",
    "content_version",
    "find_models",
    "import_model_class",
    "instantiate",
]

log = logging.getLogger("tms_server")
T = TypeVar("T")

ENTRY_POINT_GROUP = "tms.models"
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")
_PACKAGE = "tms_models"  # parent of the imported model packages in sys.modules
#: Hex digits of a content hash kept as a model's version.
VERSION_DIGITS = 12
#: How long a call for a model placed on other workers is told to wait before it is tried
#: again (RetryInfo): about the time a worker that died takes to be replaced and found.
ELSEWHERE_RETRY_SECONDS = 1.0
#: Told of each load of a model: its name, and the seconds it took or None if it failed.
OnLoad = Callable[[str, float | None], None]


@dataclass(frozen=True)
class LoadedModel:
    """A model instance with what the server needs to call it: its description (``info``,
    as ListModels sends it), the numpy dtype and shape it takes, and the validator of its
    ``args_schema`` (None without one). ``instance`` is None in the description of a model
    placed on other workers (see ``ModelRegistry.elsewhere``). ``batcher`` gathers its
    RunImage calls into batches when it has a ``max_batch_delay`` (tms_server.batching)."""

    instance: Any
    info: model_service_pb2.ModelInfo
    dtype: np.dtype[Any] | None
    input_shape: tuple[int, ...] | None
    lock: contextlib.AbstractContextManager[Any]
    args_validator: Any = None  # a jsonschema Draft202012Validator
    batcher: Batcher | None = None

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

    def overrides(self, hook: str) -> bool:
        """Whether the model's class has a ``hook`` of its own (not Model's default)."""
        return _overrides(type(self.instance), hook)

    @functools.cached_property
    def takes_no_args(self) -> bool:
        """Whether a call without args passes the model's args_schema (known once, so that
        such calls skip the check)."""
        return self.args_validator is None or bool(self.args_validator.is_valid({}))


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


def _version(cls: Any) -> str:
    declared = getattr(cls, "version", None)
    if declared is None:
        return content_version(cls)
    if not isinstance(declared, str) or not declared:
        raise TypeError(f"version = {declared!r}; expected a non-empty str or None")
    return declared


def _max_batch_size(cls: Any, name: str, server: int, batching: BatchSettings) -> int:
    """The most inputs of one batch: the server's setting for the model, else the model's
    own, at most the server's --max-batch-size."""
    declared = batching.sizes.get(name, getattr(cls, "max_batch_size", None))
    if declared is None:
        return server
    if isinstance(declared, bool) or not isinstance(declared, int) or declared < 1:
        raise TypeError(f"max_batch_size = {declared!r}; expected an int >= 1 or None")
    return min(declared, server)


def _max_batch_delay(cls: Any, name: str, batching: BatchSettings) -> float | None:
    """The model's batch delay in seconds (None: no batching): the server's, else its own."""
    if name in batching.delays:
        return batching.delays[name]
    declared = getattr(cls, "max_batch_delay", None)
    if declared is None:
        return None
    if (
        isinstance(declared, bool)
        or not isinstance(declared, (int, float))
        or not 0 <= declared <= MAX_BATCH_DELAY
    ):
        raise TypeError(
            f"max_batch_delay = {declared!r}; expected seconds, 0 to {MAX_BATCH_DELAY:g}, or None"
        )
    return float(declared)


def _duration(seconds: float | None) -> duration_pb2.Duration | None:
    if seconds is None:
        return None
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def _schema(cls: Any, attribute: str) -> tuple[str, Any]:
    """The model's JSON Schema ``attribute`` as JSON text and its validator ("" and None
    without one); TypeError for a schema that is not a valid Draft 2020-12 schema."""
    schema = getattr(cls, attribute, None)
    if schema is None:
        return "", None
    if not isinstance(schema, dict):
        raise TypeError(f"{attribute} must be a dict (a JSON Schema), not {type(schema).__name__}")
    try:
        text = json.dumps(schema)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{attribute} is not JSON: {exc}") from None
    validator_class = jsonschema.Draft202012Validator
    try:
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(part) for part in exc.absolute_path) or "(root)"
        message = (
            f"{attribute} is not a valid JSON Schema (Draft 2020-12) at {where}: {exc.message}"
        )
        raise TypeError(message) from None
    return text, validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)


def content_version(cls: Any) -> str:
    """A version for a model that declares none: the first VERSION_DIGITS hex digits of a
    SHA-256 over its files (sorted relative paths and bytes): its whole folder for a model of
    the models folder, its module file for an entry point; "" when it has no file."""
    module_name = getattr(cls, "__module__", None) or ""
    parts = module_name.split(".")
    if parts[0] == _PACKAGE and len(parts) > 1:
        module_name = f"{_PACKAGE}.{parts[1]}"
    file = getattr(sys.modules.get(module_name), "__file__", None)
    if file is None:
        return ""
    path = Path(file)
    if module_name.startswith(_PACKAGE + "."):
        root = path.parent
        files = sorted(
            p
            for p in root.rglob("*")
            if p.is_file()
            and "__pycache__" not in p.parts
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
    else:
        root, files = path.parent, [path]
    digest = hashlib.sha256()
    for item in files:
        data = item.read_bytes()
        digest.update(f"{item.relative_to(root).as_posix()}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:VERSION_DIGITS]


#: The calls ``run`` and ``run_batch`` answer, by the model's ``inputs``.
_RUN_CALLS = {
    "image": [model_service_pb2.MODEL_CALL_RUN_IMAGE, model_service_pb2.MODEL_CALL_RUN_IMAGE_BATCH],
    "text": [model_service_pb2.MODEL_CALL_RUN_TEXT, model_service_pb2.MODEL_CALL_RUN_TEXT_BATCH],
}


def describe(
    name: str,
    cls: Any,
    instance: Any = None,
    *,
    ask_shape: bool = True,
    max_batch_size: int = 64,
    batching: BatchSettings | None = None,
) -> LoadedModel:
    """Read a model class's declarations (see tms_server.model) into a LoadedModel of
    ``instance``; its ``get_input_shape()`` is asked if there is an instance and ``ask_shape``,
    else the class's ``input_shape`` is the shape. ``max_batch_size`` is the server's, and
    ``batching`` its per-model batch settings, which win over the model's; the version is
    the declared one, else ``content_version``. TypeError for a declaration that cannot be
    used (an args or result schema that is not a valid JSON Schema among them)."""
    batching = batching if batching is not None else BatchSettings()
    inputs = getattr(cls, "inputs", "image")
    if inputs not in ("image", "text"):
        raise TypeError(f"inputs = {inputs!r}; expected 'image' or 'text'")
    calls = []
    # Model.run runs a batch of one for a model that overrides only run_batch.
    if _overrides(cls, "run") or (_overrides(cls, "run_batch") and issubclass(cls, Model)):
        calls += _RUN_CALLS[inputs]
    if inputs == "image" and _overrides(cls, "run_image_to_image"):
        calls.append(model_service_pb2.MODEL_CALL_RUN_IMAGE_TO_IMAGE)
    if not calls:
        if _overrides(cls, "run_image_to_image"):  # so inputs == "text"
            raise TypeError(
                "a text model (inputs = 'text') answers through run or run_batch; "
                "run_image_to_image is for image models"
            )
        # A misspelt hook (runn, run_images) is the likely cause: name what the class has.
        own = sorted(n for n, v in vars(cls).items() if callable(v) and not n.startswith("_"))
        defined = f" (it defines {', '.join(own)})" if own else ""
        raise TypeError(f"the model overrides none of run, run_batch, run_image_to_image{defined}")
    dtype_name = getattr(cls, "dtype", None)
    dtype = np.dtype(dtype_name) if dtype_name is not None else None
    get_shape = getattr(instance, "get_input_shape", None) if ask_shape else None
    shape = get_shape() if callable(get_shape) else getattr(cls, "input_shape", None)
    input_shape = tuple(int(d) for d in shape) if shape is not None else None
    color, output_color = _color(cls, "color"), _color(cls, "output_color")
    thread_safe = bool(getattr(cls, "thread_safe", False))
    args_schema, args_validator = _schema(cls, "args_schema")
    result_schema, _ = _schema(cls, "result_schema")
    batch_size = _max_batch_size(cls, name, max_batch_size, batching)
    batch_delay = _max_batch_delay(cls, name, batching) if inputs == "image" else None
    info = model_service_pb2.ModelInfo(
        name=name,
        description=inspect.cleandoc(getattr(cls, "description", "") or cls.__doc__ or ""),
        input_shape=input_shape or (),
        input_dtype=_wire_dtype(dtype),
        color_order=color,
        calls=calls,
        thread_safe=thread_safe,
        output_color_order=output_color,
        version=_version(cls),
        max_batch_size=batch_size,
        args_schema_json=args_schema,
        result_schema_json=result_schema,
        max_batch_delay=_duration(batch_delay),
    )
    lock = contextlib.nullcontext() if thread_safe else threading.Lock()
    batcher = None
    if instance is not None and batch_delay is not None:
        size = min(batch_size, batching.threads or batch_size)
        observe = functools.partial(batching.observe, name) if batching.observe else None
        batcher = Batcher(max_size=size, delay=batch_delay, observe=observe)
    return LoadedModel(instance, info, dtype, input_shape, lock, args_validator, batcher)


def instantiate(cls: Any, placement: Placement) -> Any:
    """An instance of model class ``cls`` for the worker at ``placement``: ``worker_index``,
    ``device`` (as the worker sees it) and ``threads`` are set on it before its ``__init__``
    runs, and passed to ``__init__`` as keyword arguments if it names such parameters."""
    told = {
        "worker_index": placement.index,
        "device": placement.local_device,
        "threads": placement.threads,
    }
    if not isinstance(cls, type):  # an entry point may name a factory rather than a class
        return cls()
    model_class: Any = cls  # a class of any metaclass
    instance = model_class.__new__(model_class)
    for attribute, value in told.items():
        with contextlib.suppress(AttributeError):  # __slots__, or a property of its own
            setattr(instance, attribute, value)
    names = _keyword_parameters(cls)
    _check_nothing_else_required(cls, set(told))
    instance.__init__(**{key: value for key, value in told.items() if key in names})
    return instance


def _check_nothing_else_required(cls: type, given: set[str]) -> None:
    """TypeError, saying what the server passes, when ``cls.__init__`` (a Python function)
    has a parameter without a default that the server cannot give."""
    init = cls.__init__  # type: ignore[misc]
    if not inspect.isfunction(init):
        return
    try:
        parameters = list(inspect.signature(init).parameters.values())[1:]  # after self
    except (TypeError, ValueError):
        return
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    required = [
        p.name
        for p in parameters
        if p.default is inspect.Parameter.empty and p.kind not in variadic and p.name not in given
    ]
    if required:
        names = ", ".join(required)
        raise TypeError(
            f"{cls.__name__}.__init__() requires {names}, which the server cannot pass: it "
            "makes each instance with no arguments but worker_index, device and threads (by "
            f"keyword, when __init__ names them); give {names} a default, or read it in "
            "__init__ (a file beside the model, an environment variable)"
        )


def _keyword_parameters(cls: type) -> set[str]:
    """The parameters of ``cls.__init__`` that a keyword can fill (not ``**kwargs``)."""
    init = cls.__init__  # type: ignore[misc]
    if init is object.__init__:
        return set()
    try:
        parameters = inspect.signature(init).parameters.values()
    except (TypeError, ValueError):
        return set()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in parameters if p.kind in kinds}


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
    except ModuleNotFoundError as exc:
        del sys.modules[module_name]
        sibling = _sibling(folder, exc.name)
        if sibling is None:
            raise
        # "import utils" beside utils.py: the folder is a package, not on the import path.
        raise ModuleNotFoundError(
            f"{exc}; {sibling} is in the model's folder, which is imported as a package, "
            f"not put on the import path: import it relatively (from . import {sibling.stem}, "
            f"or from .{sibling.stem} import ...)",
            name=exc.name,
        ) from exc
    except BaseException:
        del sys.modules[module_name]
        raise
    model_class = getattr(module, "Model", None)
    if not isinstance(model_class, type):
        raise TypeError(f"{folder / '__init__.py'} defines no class Model")
    return model_class


def _sibling(folder: Path, missing: str | None) -> Path | None:
    """The file or package in a model's folder that a failed absolute import named (the
    top of ``missing``), as folder/NAME.py or folder/NAME; None if there is none."""
    top = (missing or "").partition(".")[0]
    if not top.isidentifier():
        return None
    for path in (folder / f"{top}.py", folder / top):
        if path.is_file() or (path / "__init__.py").is_file():
            return path
    return None


#: What a model may raise, importing, loading or running, without stopping its worker: one
#: that calls sys.exit (argparse at import, reading tms-server's own command line, say) fails
#: to load, or fails its call, as one that raises does.
MODEL_ERRORS = (Exception, SystemExit)


def load_error(exc: BaseException) -> str:
    """Why a model failed to load (or reload), in one line."""
    if isinstance(exc, SystemExit):
        return (
            f"SystemExit: the model called sys.exit({exc.code!r}) while loading (argparse at "
            "import reads tms-server's own command line, say); a model must not exit"
        )
    return f"{type(exc).__name__}: {exc}"


def _sources(folder: Path | None, entry_points: bool) -> Iterator[tuple[str, Any]]:
    """(name, zero-argument loader returning the model class) for every model found."""
    seen = set()
    if folder is not None and folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.name.startswith(("_", ".")) or _closed(path) or not _holds_model(path):
                continue
            seen.add(path.name)
            yield path.name, lambda path=path: import_model_class(path)
    if entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in seen:
                log.warning("entry point model %r is shadowed by the models folder", ep.name)
                continue
            seen.add(ep.name)
            yield ep.name, ep.load


def _without(entries: dict[str, T], name: str) -> dict[str, T]:
    return {key: value for key, value in entries.items() if key != name}


class NoModelsError(ValueError):
    """The server has no model to load: its models folder is missing, is no folder, or holds
    no model (and no entry point names one)."""


def find_models(folder: Path, entry_points: bool, *, folder_given: bool = True) -> list[str]:
    """The names of the models the server would load, found without importing any;
    NoModelsError, naming the folder, if there are none. The supervisor asks before it starts
    a worker: a server serving no model at all is a mistake, not a start. A folder that is
    missing stops it too, unless it was not given (the default) and entry points name models:
    a server of installed models alone needs no folder."""
    try:
        if not folder.exists() and not folder_given and entry_points:
            names = [name for name, _ in _sources(None, entry_points)]
            if names:
                log.info("no %s: serving the models of the tms.models entry points", _shown(folder))
                return names
        names = [name for name, _ in _sources(folder, entry_points)] if folder.is_dir() else []
        closed = {path.name: _closed(path) for path in folder.iterdir()} if folder.is_dir() else {}
    except OSError as exc:
        raise NoModelsError(_unreadable(folder, exc)) from None
    for name, reason in sorted(closed.items()):
        if reason and not name.startswith(("_", ".")):
            log.warning(
                "%s: cannot look into %r (%s); it is no model", _shown(folder), name, reason
            )
    if not names:
        raise NoModelsError(_no_models(folder, entry_points))
    return names


def _holds_model(path: Path) -> bool:
    """Whether ``path``, in the models folder, is a model's folder: it holds an __init__.py."""
    return (path / "__init__.py").is_file()


def _closed(path: Path) -> str:
    """Why the server may not look into ``path`` (a volume's lost+found, root's alone), or ""
    if it may or it is no folder."""
    try:
        _holds_model(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    return ""


def _unreadable(folder: Path, exc: OSError) -> str:
    """Why the models folder cannot be read, and who tried."""
    return (
        f"{_shown(folder)} cannot be read: {exc.strerror or exc} (tms-server runs as uid "
        f"{os.getuid()}, gid {os.getgid()})"
    )


def _shown(folder: Path) -> str:
    shown = f"models folder {str(folder)!r}"
    return shown if folder.is_absolute() else f"{shown} ({folder.absolute()})"


def _no_models(folder: Path, entry_points: bool) -> str:
    """Why ``folder`` (and the entry points) give no model."""
    if not folder.is_dir():
        problem = "does not exist" if not folder.exists() else "is not a folder"
        return f"{_shown(folder)} {problem} (set it with --models or TMS_MODELS)"
    where = ", and no package registers one under the tms.models entry point"
    said = (
        f"{_shown(folder)} holds no model{where if entry_points else ''}: a model is a "
        "sub-folder with an __init__.py that defines class Model"
    )
    if (folder / "__init__.py").is_file():  # --models models/face: one model, not the folder
        parent = folder.parent if folder.name not in ("", "..") else folder.absolute().parent
        said += (
            f"; {str(folder)!r} is itself a model folder: give the folder that holds it "
            f"(--models {shlex.quote(str(parent))})"
        )
    return said


def _name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a model's (None if it can): each thing wrong with it, then the
    rule."""
    if NAME_PATTERN.fullmatch(name):
        return None
    odd = sorted({c for c in name if not (c.isascii() and (c.isalnum() or c in "_-"))})
    problems = [
        *(["it is empty"] if not name else []),
        *([f"it is {len(name)} characters long"] if len(name) > 64 else []),
        *(["it begins with -"] if name.startswith("-") else []),
        *([f"it has {', '.join(map(repr, odd))}"] if odd else []),
    ]
    return f"{', '.join(problems)}; a name is 1 to 64 letters, digits, _ or - (not - first)"


def _check_name(name: str) -> None:
    """INVALID_ARGUMENT for a name that cannot be a model's."""
    problem = _name_problem(name)
    if problem is not None:
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise InvalidArgument(f"invalid model name {shown!r}: {problem}", field="model")


@dataclass(frozen=True)
class Elsewhere:
    """A model placed on other workers than this one: its description, from its class, and
    the workers that have it."""

    model: LoadedModel
    workers: tuple[int, ...]


class ModelRegistry:
    """The models of one worker process, by name: those it loaded (``models``), those placed
    on other workers (``elsewhere``) and those that failed to load (``failed``, with why);
    ``on_load`` (the worker's metrics) is told of every load, at start and on reloads;
    ``batching`` holds the server's per-model batch settings."""

    def __init__(
        self,
        models: dict[str, LoadedModel],
        failed: dict[str, str],
        *,
        elsewhere: dict[str, Elsewhere] | None = None,
        placement: Placement | None = None,
        folder: Path | None = None,
        entry_points: bool = False,
        on_load: OnLoad | None = None,
        max_batch_size: int = 64,
        batching: BatchSettings | None = None,
    ) -> None:
        self.models = dict(sorted(models.items()))
        self.failed = dict(sorted(failed.items()))
        self.elsewhere = dict(sorted((elsewhere or {}).items()))
        self.placement = placement if placement is not None else Placement()
        self._folder = folder
        self._entry_points = entry_points
        self._on_load = on_load
        self.max_batch_size = max_batch_size
        self.batching = batching if batching is not None else BatchSettings()
        #: Whether the workers of these indices have all served a while (the worker board's
        #: rows); unset, none is known to have.
        self.settled: Callable[[tuple[int, ...]], bool] = lambda workers: False
        #: The models that failed to load in other workers, and why (the worker board's
        #: rows); unset, none.
        self.failed_elsewhere: Callable[[], dict[str, str]] = dict

    def __repr__(self) -> str:
        return (
            f"<ModelRegistry models={list(self.models)} elsewhere={list(self.elsewhere)} "
            f"failed={list(self.failed)}>"
        )

    @classmethod
    def load(
        cls,
        folder: Path | None,
        *,
        entry_points: bool = True,
        on_load: OnLoad | None = None,
        placement: Placement | None = None,
        max_batch_size: int = 64,
        batching: BatchSettings | None = None,
    ) -> ModelRegistry:
        """Import every model's class, and load those placed on the worker at ``placement``
        (default: a worker alone, on the CPU); NoModelsError, naming the folder, if there
        is none to load (the supervisor found some; a worker started later may find the
        folder gone). ``max_batch_size`` is the server's
        (--max-batch-size), which a model may lower for itself; ``batching``, the server's
        per-model batch settings (tms_server.batching)."""
        placement = placement if placement is not None else Placement()
        registry = cls(
            {},
            {},
            placement=placement,
            folder=folder,
            entry_points=entry_points,
            on_load=on_load,
            max_batch_size=max_batch_size,
            batching=batching,
        )
        try:
            sources = list(_sources(folder, entry_points))
        except OSError as exc:  # the folder closed to the server since it started
            raise NoModelsError(_unreadable(folder or Path(), exc)) from None
        if not sources and folder is not None:  # gone since the server started, say
            raise NoModelsError(_no_models(folder, entry_points))
        for name, load_class in sources:
            # One line per model for the whole server comes from the supervisor, which
            # gathers every worker's failures (tms_server.supervisor); the traceback, only
            # at --log-level DEBUG, from each worker. A name no call could give is not even
            # imported: it fails like a model that raises.
            problem = _name_problem(name)
            failure = None if problem is None else f"invalid model name: {problem}"
            if failure is None:
                try:
                    registry._add(name, load_class)
                except MODEL_ERRORS as exc:
                    log.debug("model %r failed to load", name, exc_info=True)
                    failure = load_error(exc)
            if failure is not None:
                registry.failed[name] = failure
                if on_load is not None:
                    on_load(name, None)
        registry.models = dict(sorted(registry.models.items()))
        registry.failed = dict(sorted(registry.failed.items()))
        registry.elsewhere = dict(sorted(registry.elsewhere.items()))
        batching, known = registry.batching, {*registry.models, *registry.elsewhere}
        for name in sorted({*batching.delays, *batching.sizes} - known - set(registry.failed)):
            log.warning("the batch settings name model %r, which is not among the models", name)
        return registry

    def _add(self, name: str, load_class: Callable[[], Any], verb: str = "loaded") -> None:
        """Import model ``name``'s class, then load it if it is placed on this worker, or
        else note where it is; raises whatever importing or loading raised."""
        started = time.perf_counter()
        model_class = load_class()
        placement = self.placement
        workers = placement.workers_for(model_class)
        # On every worker alike: from the class alone, unless every worker has an instance.
        everywhere = len(workers) == len(placement.devices)
        described = functools.partial(
            describe, name, model_class, max_batch_size=self.max_batch_size, batching=self.batching
        )
        # Swap whole dicts: readers (other threads) see the old or the new, never a mix.
        if placement.index not in workers:
            self.elsewhere = {**self.elsewhere, name: Elsewhere(described(), workers)}
            self.models, self.failed = _without(self.models, name), _without(self.failed, name)
            log.info("model %r is placed on %s", name, placement.where(workers))
            return
        model = described(instantiate(model_class, placement), ask_shape=everywhere)
        self.models = dict(sorted({**self.models, name: model}.items()))
        self.elsewhere, self.failed = _without(self.elsewhere, name), _without(self.failed, name)
        seconds = time.perf_counter() - started
        log.info("%s model %r in %.2fs", verb, name, seconds)
        if self._on_load is not None:
            self._on_load(name, seconds)

    def source(self, name: str) -> Any:
        """The loader of model ``name``'s class: INVALID_ARGUMENT for a name that cannot be
        a model's, NOT_FOUND when neither the models folder nor an entry point has it."""
        _check_name(name)
        load_class = dict(_sources(self._folder, self._entry_points)).get(name)
        if load_class is None:
            raise NotFound(f"no model named {name!r} in the models folder or entry points")
        return load_class

    def reload(self, name: str) -> None:
        """Load model ``name`` again from its folder (its modules imported afresh) or entry
        point, and serve the new instance from now on (or, if its placement now leaves this
        worker out, send its calls to the workers that have it); calls in flight keep the old
        instance.

        Raises NotFound when no source has that name, and whatever loading raised when it
        fails; then the model being served, if any, stays.
        """
        load_class = self.source(name)
        prefix = f"{_PACKAGE}.{name}"
        for module in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
            del sys.modules[module]
        importlib.invalidate_caches()
        try:
            self._add(name, load_class, "reloaded")
        except MODEL_ERRORS:
            if self._on_load is not None:
                self._on_load(name, None)
            raise

    def get(self, name: str) -> LoadedModel:
        """The model called ``name``, loaded in this worker, or the error a caller asking for
        it should get."""
        model = self.models.get(name)
        if model is not None:
            return model
        away = self._away(name)
        if away is not None:
            placement = self.placement
            where = f"it is placed on {placement.where(away.workers)}"
            here = f"model {name!r} is not loaded in worker {placement.index} ({placement.device})"
            if self.settled(away.workers):
                # A client that knows them sends it there: this caller does not, or the model
                # failed to load there.
                raise FailedPrecondition(f"{here}: {where}; send its calls there (tms_client does)")
            raise FailedPrecondition(
                f"{here}: {where}, which is starting or being replaced; try again in a moment "
                "(tms_client does)",
                retry_after=ELSEWHERE_RETRY_SECONDS,
            )
        return self._missing(name)

    def find(self, name: str) -> LoadedModel:
        """The description of model ``name``, in this worker or placed on others (its
        ``instance`` then None); the same errors as ``get`` for a model that failed or is
        unknown."""
        model = self.models.get(name)
        if model is not None:
            return model
        away = self._away(name)
        return away.model if away is not None else self._missing(name)

    def _away(self, name: str) -> Elsewhere | None:
        """Model ``name`` as placed on other workers, unless it failed to load there."""
        away = self.elsewhere.get(name)
        return None if away is None or name in self.failed_elsewhere() else away

    def _missing(self, name: str) -> LoadedModel:
        _check_name(name)  # first: a folder of such a name fails to load, but no call names it
        failed = self.failed_anywhere()
        if name in failed:
            raise FailedPrecondition(f"model {name!r} failed to load: {failed[name]}")
        known = ", ".join(sorted([*self.models, *self.elsewhere])) or "none"
        raise NotFound(f"no model named {name!r}; models: {known}")

    def failed_anywhere(self) -> dict[str, str]:
        """The models that failed to load, here or in other workers, and why (this worker's
        reason first), by name."""
        return dict(sorted({**self.failed_elsewhere(), **self.failed}.items()))

    def infos(self) -> list[model_service_pb2.ModelInfo]:
        """What ListModels sends: every model loaded, here or on other workers, by name; not
        one that failed to load in any worker (``failures`` lists it)."""
        models, elsewhere = self.models, self.elsewhere  # one look at each: reloads swap them
        found = {name: model.info for name, model in models.items()}
        found.update({name: away.model.info for name, away in elsewhere.items()})
        failed = self.failed_elsewhere()
        return [found[name] for name in sorted(found) if name not in failed]

    def failures(self) -> list[model_service_pb2.FailedModel]:
        """What ListModels sends about the models that failed to load, in any worker: each,
        and why. Every worker sends the same, whichever one failed."""
        failed = self.failed_anywhere()
        return [model_service_pb2.FailedModel(name=n, reason=why) for n, why in failed.items()]

    def here(self) -> list[str]:
        """The models this worker serves (GetWorkerInfo.models): not those it failed to load,
        which clients then send to workers that have them, if any."""
        return sorted(self.models)
