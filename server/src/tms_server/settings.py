"""Server settings: one object, fed by command-line flags and ``TMS_*`` environment variables.

A flag wins over its environment variable, which wins over the default. Every setting is
bounded; a value out of bounds stops the server at start with a message naming the setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from tms_server.batching import MAX_BATCH_DELAY, BatchSettings
from tms_server.cpus import available_cpus
from tms_server.devices import CPU, DeviceError, assign, check_devices

__all__ = ["DEFAULT_MODELS", "Settings", "parse_settings"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("plain", "json")
_MAX_WORKERS = 256


def _meta(
    help_text: str,
    low: float | None = None,
    high: float | None = None,
    kind: type | None = None,
    *,
    parse: Callable[[str], Any] | None = None,
    shown: str | None = None,
) -> Any:
    """Field metadata: help text, bounds, the type of a setting whose default is None, how
    to read the setting from text (default: its type), and its default as help shows it."""
    return {
        "help": help_text,
        "low": low,
        "high": high,
        "kind": kind,
        "parse": parse,
        "shown": shown,
    }


def _split_list(text: str) -> tuple[str, ...]:
    """A comma-separated list: "cuda:0, cuda:1" -> ("cuda:0", "cuda:1")."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def host_port(host: str, port: int) -> str:
    """``host:port`` as gRPC and URLs write it: an IPv6 address (``::``) in brackets."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class _BadSettingError(ValueError):
    """A value a setting does not take, said of its field (``workers must be between 1 and
    256, not 0``); parse_settings says it of the flag or variable the value came from."""

    def __init__(self, setting: str, rule: str) -> None:
        super().__init__(f"{setting} {rule}")
        self.setting = setting
        self.rule = rule


#: The models folder when none is given: ``models`` in the working directory.
DEFAULT_MODELS = Path("models")


@dataclass(frozen=True)
class Settings:
    """Everything a server process needs to know; see ``tms-server --help``."""

    host: str = field(default="0.0.0.0", metadata=_meta("address to listen on"))  # noqa: S104
    port: int = field(
        default=50051, metadata=_meta("port to listen on; 0 picks a free one", 0, 65535)
    )
    # Unset, workers is worked out in __post_init__ (see _resolve_workers): after that it is
    # always a number.
    workers: int | None = field(
        default=None,
        metadata=_meta(
            "worker processes sharing the port; unset: devices x workers_per_device, or one "
            "per device, or on cpu one per CPU this process may use (its CPU affinity, at most "
            "its cgroup CPU quota)",
            1,
            _MAX_WORKERS,
            int,
            shown="one per device, or per CPU on cpu",
        ),
    )
    devices: tuple[str, ...] = field(
        default=(CPU,),
        metadata=_meta(
            "devices the workers run on, given to them in turn, e.g. cuda:0,cuda:1 or cpu; "
            "each worker sees only its GPU (CUDA_VISIBLE_DEVICES), a cpu worker none",
            parse=_split_list,
            shown=CPU,
        ),
    )
    workers_per_device: int | None = field(
        default=None,
        metadata=_meta(
            "workers on each device: workers = devices x workers_per_device (give workers or "
            "this, or both if they agree)",
            1,
            _MAX_WORKERS,
            int,
        ),
    )
    threads: int = field(
        default=8, metadata=_meta("threads per worker, i.e. concurrent calls per worker", 1, 1024)
    )
    model_threads: int | None = field(
        default=None,
        metadata=_meta(
            "threads of the numerical libraries (OpenMP, MKL, OpenBLAS, numexpr, OpenCV) in "
            "each worker, set through OMP_NUM_THREADS and the like; unset: OMP_NUM_THREADS if "
            "set, else CPUs // workers (variables already set are kept)",
            1,
            1024,
            int,
        ),
    )
    models: Path = field(
        default=DEFAULT_MODELS, metadata=_meta("the models folder (sub-folders with class Model)")
    )
    entry_points: bool = field(
        default=True, metadata=_meta("also load models registered under the tms.models entry point")
    )
    allow_failed_models: bool = field(
        default=False,
        metadata=_meta(
            "report the server SERVING even when some models failed to load; by default it "
            "still starts and serves the others, but its health as a whole (what a readiness "
            "probe asks) is NOT_SERVING until every model loads"
        ),
    )
    max_message_mb: int = field(
        default=64, metadata=_meta("largest request or response, in MiB", 1, 2047)
    )
    max_pixels: int = field(
        default=50_000_000,
        metadata=_meta("largest image accepted, in pixels (H x W), raw or encoded", 1, 2**31 - 1),
    )
    max_pixels_in_flight: int = field(
        default=50_000_000,
        metadata=_meta(
            "pixels of the images a worker decodes and runs at once (H x W, summed); calls "
            "beyond it wait their turn",
            1,
            2**40,
        ),
    )
    max_batch_size: int = field(
        default=64,
        metadata=_meta("images or texts one call may carry (batch calls, OIP inputs)", 1, 100_000),
    )
    model_max_batch_delay_ms: tuple[str, ...] = field(
        default=(),
        metadata=_meta(
            "dynamic batching, per model: MODEL=MS,... sets how long a RunImage call to MODEL "
            f"may wait in its worker for others to run with it as one batch (0 to "
            f"{MAX_BATCH_DELAY * 1000:g} ms), MODEL=off turns it off; over the model's "
            "max_batch_delay",
            parse=_split_list,
            shown="the models' own",
        ),
    )
    model_max_batch_size: tuple[str, ...] = field(
        default=(),
        metadata=_meta(
            "per model: MODEL=N,... sets the most inputs of one batch of MODEL (batch calls and "
            "dynamic batches), at most --max-batch-size; over the model's max_batch_size",
            parse=_split_list,
            shown="the models' own",
        ),
    )
    grace_seconds: float = field(
        default=10.0,
        metadata=_meta("on a stop signal, how long in-flight calls may take to finish", 0, 3600),
    )
    log_level: str = field(default="INFO", metadata=_meta(f"one of {', '.join(LOG_LEVELS)}"))
    log_format: str = field(default="plain", metadata=_meta("plain or json (one object a line)"))
    log_requests: bool = field(
        default=False,
        metadata=_meta("log one line per call: rpc, model, status code, ms, request id"),
    )
    metrics_port: int | None = field(
        default=None,
        metadata=_meta(
            "serve Prometheus metrics of all workers on http://HOST:PORT/metrics (0 picks a "
            "free port, printed at start; unset: no metrics)",
            0,
            65535,
            int,
        ),
    )
    http_port: int | None = field(
        default=None,
        metadata=_meta(
            "also serve HTTP/JSON on this port: the Open Inference Protocol's REST form "
            "(/v2/...) and a page to try the models at / (0 picks a free port, printed at "
            "start; unset: no HTTP)",
            0,
            65535,
            int,
        ),
    )
    shared_memory: bool = field(
        default=True,
        metadata=_meta(
            "let callers on this host pass images in shared memory (AttachSharedMemory) "
            "instead of bytes; false: they send bytes"
        ),
    )
    max_shared_memory_mb: int = field(
        default=1024,
        metadata=_meta(
            "shared memory one worker keeps attached, in MiB (beyond it the least recently "
            "used region, if idle for 10 s, is dropped); also the largest region",
            1,
            2**20,
        ),
    )
    # -- limits: what one call, one connection or one worker may take ------------------------
    max_queued_calls: int = field(
        default=64,
        metadata=_meta(
            "calls a worker holds waiting for a thread; more get RESOURCE_EXHAUSTED", 0, 100_000
        ),
    )
    call_time_limit: float = field(
        default=300.0,
        metadata=_meta(
            "seconds a model may run one call; past it the worker stops taking calls and is "
            "replaced (0: no limit)",
            0,
            86_400,
        ),
    )
    worker_timeout_seconds: float = field(
        default=30.0,
        metadata=_meta(
            "seconds a serving worker may go without a heartbeat (its monitor thread beats 5 "
            "times a second, during calls too) before the supervisor kills and replaces it",
            1,
            3600,
        ),
    )
    worker_memory_mb: int = field(
        default=0,
        metadata=_meta(
            "address-space limit of each worker process in MiB (RLIMIT_AS); a model going past "
            "it gets MemoryError (0: no limit)",
            0,
            2**30,
        ),
    )
    keepalive_seconds: float = field(
        default=60.0,
        metadata=_meta("ping each connection this often; drop it if unanswered", 1, 86_400),
    )
    keepalive_timeout_seconds: float = field(
        default=20.0, metadata=_meta("how long a keepalive ping may go unanswered", 1, 3600)
    )
    handshake_timeout_seconds: float = field(
        default=20.0,
        metadata=_meta(
            "close connections that do not finish their (TLS) handshake by then", 1, 600
        ),
    )
    max_connection_idle_seconds: float = field(
        default=1800.0,
        metadata=_meta("close connections without calls for this long (0: never)", 0, 86_400),
    )
    max_connections: int = field(
        default=1000,
        metadata=_meta(
            "connections a worker accepts at once, on each port; more are closed", 1, 1_000_000
        ),
    )
    max_streams_per_connection: int = field(
        default=100,
        metadata=_meta("calls one connection may have open at once (HTTP/2 streams)", 1, 100_000),
    )
    slow_client_seconds: float = field(
        default=60.0,
        metadata=_meta(
            "close the connection of a caller that takes longer than this to send a request "
            "or to take an answer (0: never)",
            0,
            86_400,
        ),
    )
    max_untaken_mb: int = field(
        default=256,
        metadata=_meta(
            "answers a worker holds for callers that have not taken them, in MiB; past it the "
            "connections holding the most are closed; HTTP request bodies still arriving have "
            "as much apart",
            1,
            2**20,
        ),
    )
    max_streams: int = field(
        default=256,
        metadata=_meta("video streams (RunImageStream) a worker has open at once", 1, 100_000),
    )
    max_health_watches: int = field(
        default=100,
        metadata=_meta("open health Watch streams a worker allows at once", 1, 100_000),
    )
    max_connection_age_seconds: float = field(
        default=0.0,
        metadata=_meta(
            "close connections this old, after their calls end (0: never)", 0, 30 * 86_400
        ),
    )
    # -- security: TLS, tokens, admin ---------------------------------------------------------
    tls_cert: Path | None = field(
        default=None,
        metadata=_meta(
            "serve TLS with this certificate chain (PEM); reloaded when the file changes", kind=Path
        ),
    )
    tls_key: Path | None = field(
        default=None, metadata=_meta("the private key (PEM) of --tls-cert", kind=Path)
    )
    tls_client_ca: Path | None = field(
        default=None,
        metadata=_meta(
            "mutual TLS: accept only clients with a certificate from this CA bundle (PEM)",
            kind=Path,
        ),
    )
    tokens_file: Path | None = field(
        default=None,
        metadata=_meta(
            "require 'authorization: Bearer <token>' on every call but health; one token a line",
            kind=Path,
        ),
    )
    admin_tokens_file: Path | None = field(
        default=None,
        metadata=_meta(
            "enable the AdminService for these tokens (one a line; not valid for other calls)",
            kind=Path,
        ),
    )

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "devices", check_devices(self.devices))
        except DeviceError as exc:
            raise ValueError(str(exc)) from None
        for spec in dataclasses.fields(self):
            value, low, high = getattr(self, spec.name), spec.metadata["low"], spec.metadata["high"]
            if low is not None and value is not None and not low <= value <= high:
                raise _BadSettingError(spec.name, f"must be between {low} and {high}, not {value}")
        if self.log_level.upper() not in LOG_LEVELS:
            levels = ", ".join(LOG_LEVELS)
            raise _BadSettingError("log_level", f"must be one of {levels}, not {self.log_level}")
        object.__setattr__(self, "log_level", self.log_level.upper())
        if self.log_format not in LOG_FORMATS:
            raise _BadSettingError("log_format", f"must be plain or json, not {self.log_format}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key (mutual TLS is TLS)")
        self._check_ports_apart()
        object.__setattr__(self, "workers", self._resolve_workers())
        self.batching  # noqa: B018 - checks the per-model batch settings

    @property
    def batching(self) -> BatchSettings:
        """The per-model batch settings (seconds, sizes) and the worker's threads;
        ValueError, naming the setting, for an entry that is not MODEL=VALUE in bounds."""
        delays = _per_model(
            "model_max_batch_delay_ms",
            self.model_max_batch_delay_ms,
            _delay,
            f"MODEL=MS, MS from 0 to {MAX_BATCH_DELAY * 1000:g}, or MODEL=off",
        )
        most = self.max_batch_size  # a model's batches are no larger than the server's
        sizes = _per_model(
            "model_max_batch_size",
            self.model_max_batch_size,
            lambda text: _batch_size(text, most),
            f"MODEL=N, N from 1 to {most} (--max-batch-size)",
        )
        return BatchSettings(delays, sizes, self.threads)

    def _check_ports_apart(self) -> None:
        """ValueError when two of the gRPC, HTTP and metrics ports are the same number (0
        aside: each picks a free port of its own). Left to the start, the second to bind
        would fail as if another program held the port."""
        seen: dict[int, str] = {}
        for name in ("port", "http_port", "metrics_port"):
            number = getattr(self, name)
            if not number:
                continue
            if number in seen:
                first, second = (_flag_name(n) for n in (seen[number], name))
                raise ValueError(
                    f"{first} and {second} are both {number}: give each its own port "
                    "(0 picks a free one)"
                )
            seen[number] = name

    def _resolve_workers(self) -> int:
        """The number of workers: ``workers`` when given; else ``devices`` x
        ``workers_per_device``; else one per device, or with devices cpu alone, one per CPU
        the process may use. ValueError for numbers that contradict each other."""
        devices, given, each = self.devices, self.workers, self.workers_per_device
        listed = ",".join(devices)
        if each is not None:
            wanted = len(devices) * each
            if given is not None and given != wanted:
                raise ValueError(
                    f"workers={given} contradicts devices={listed} with workers_per_device={each} "
                    f"({len(devices)} x {each} = {wanted} workers); set one of workers and "
                    "workers_per_device"
                )
            if wanted > _MAX_WORKERS:
                raise ValueError(
                    f"devices={listed} with workers_per_device={each} makes {wanted} workers; "
                    f"at most {_MAX_WORKERS}"
                )
            return wanted
        if given is not None:
            if given < len(devices):
                raise ValueError(
                    f"workers={given} leaves devices without a worker: devices={listed} "
                    f"needs at least {len(devices)}"
                )
            return given
        return min(available_cpus(), _MAX_WORKERS) if devices == (CPU,) else len(devices)

    @property
    def worker_devices(self) -> tuple[str, ...]:
        """The device of each worker, by index: the devices in turn."""
        return assign(self.devices, self.workers or 1)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def max_concurrent_calls(self) -> int:
        """Calls one worker accepts at once: running (one per thread) and queued."""
        return self.threads + self.max_queued_calls

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024


def _delay(text: str) -> float | None:
    """A batch delay in ms, as seconds; None for off."""
    if text.lower() == "off":
        return None
    ms = float(text)
    if not 0 <= ms <= MAX_BATCH_DELAY * 1000:
        raise ValueError(text)
    return ms / 1000


def _batch_size(text: str, most: int) -> int:
    size = int(text)
    if not 1 <= size <= most:
        raise ValueError(text)
    return size


def _per_model(
    setting: str, entries: Sequence[str], parse: Callable[[str], Any], rule: str
) -> dict[str, Any]:
    """MODEL=VALUE entries as {model: parsed value}; ValueError naming the setting and
    ``rule`` for an entry that breaks it."""
    values = {}
    for entry in entries:
        name, equals, text = (part.strip() for part in entry.partition("="))
        try:
            if not name or not equals:
                raise ValueError(entry)
            values[name] = parse(text)
        except ValueError:
            named = f"{_flag_name(setting)} ({_env_name(setting)})"
            raise ValueError(f"{named}: {entry!r} is not valid; expected {rule}") from None
    return values


def _env_name(name: str) -> str:
    return "TMS_" + name.upper()


def _flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    # argparse says this message as it is (a ValueError's, it would name this function).
    raise argparse.ArgumentTypeError(
        f"expected true or false (yes, no, on, off, 1, 0), not {text!r}"
    )


def _path(text: str) -> Path:
    """A path setting's text as a Path; an empty one is refused, not taken for the working
    directory (which ``Path("")`` is). An empty variable never comes here: it is unset."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path; give one, or leave the flag out")
    return Path(text)


# What the text of a setting of each type must be, as a bad TMS_* variable is told (a bad
# flag is told by argparse).
_EXPECTED = {
    int: "a whole number",
    float: "a number",
    bool: "true or false (yes, no, on, off, 1, 0)",
}


def parse_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Settings from flags (``argv``) over ``TMS_*`` variables (``environ``) over defaults."""
    environ = os.environ if environ is None else environ
    parser = _Parser(
        prog="tms-server",
        description="Serve every model of a models folder over gRPC from several processes.",
        epilog="Each flag can also be set by the environment variable shown beside it.",
    )
    parser.add_argument("--version", action="version", version=_version())
    converters: dict[str, Any] = {}
    expected: dict[str, str] = {}  # what a variable's text must be, said when it is not
    for spec in dataclasses.fields(Settings):
        flag = _flag_name(spec.name)
        kind = spec.metadata["kind"] or (
            type(spec.default) if spec.default is not dataclasses.MISSING else int
        )
        if issubclass(kind, Path):  # a PosixPath default, or kind=Path
            kind = Path
        converters_by_type: dict[type, Callable[[str], Any]] = {bool: _parse_bool, Path: _path}
        convert = spec.metadata["parse"] or converters_by_type.get(kind, kind)
        converters[spec.name] = convert
        expected[spec.name] = _EXPECTED.get(kind, "")
        default = spec.metadata["shown"] or spec.default
        help_text = f"{spec.metadata['help']} [{_env_name(spec.name)}; default: {default}]"
        # A boolean flag takes true or false (yes, no, 1, 0, ...), and alone means true.
        extra: dict[str, Any] = {"nargs": "?", "const": True, "metavar": "{true,false}"}
        parser.add_argument(flag, type=convert, help=help_text, **(extra if kind is bool else {}))
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    given_as: dict[str, str] = {}  # the flag or variable each value came from, to name it
    for name, convert in converters.items():
        flag_value = getattr(args, name)
        env_value = environ.get(_env_name(name))
        if flag_value is not None:
            values[name] = flag_value
            given_as[name] = _flag_name(name)
        elif env_value:
            given_as[name] = _env_name(name)
            try:
                values[name] = convert(env_value)
            except (ValueError, argparse.ArgumentTypeError):
                wanted = f"; expected {expected[name]}" if expected[name] else ""
                if name == "port" and env_value.startswith("tcp://"):
                    # Kubernetes sets TMS_PORT=tcp://IP:PORT for a Service named tms.
                    wanted += (
                        " (a Kubernetes service link for a Service named tms? set "
                        "enableServiceLinks: false in the pod spec, as deploy/ does)"
                    )
                _stop(f"{_env_name(name)}={env_value!r} is not a valid {name}{wanted}")
    try:
        return Settings(**values)
    except _BadSettingError as exc:
        _stop(f"{given_as.get(exc.setting, exc.setting)} {exc.rule}")
    except ValueError as exc:
        _stop(str(exc))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        _stop(f"{message} (tms-server --help lists every flag)")


def _stop(message: str) -> NoReturn:
    """Exit 2 with one line on stderr, without the usage text: it would hide the error."""
    sys.stderr.write(f"tms-server: error: {message}\n")
    raise SystemExit(2)


def _version() -> str:
    from tms_server import __version__  # noqa: PLC0415

    return f"tms-server {__version__}"
