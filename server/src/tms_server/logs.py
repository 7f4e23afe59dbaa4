"""The server's log lines: plain text or one JSON object a line (``--log-format``), and the
optional line per call (``--log-requests``).

Every line names its process (pid, and the worker index in a worker); a line written while a
call runs, on the event loop or on the thread running the model, also names the call (rpc,
model, request id), read from tms_server.callinfo.CURRENT when the line is formatted: the
stdlib's handlers format in the thread that logs, so the line sees that call's context.
No new dependency: the stdlib's logging with a small Formatter.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import grpc

from tms_server.callinfo import CURRENT, CallInfo

__all__ = ["ACCESS", "JsonFormatter", "PlainFormatter", "configure", "log_call"]

#: The logger of the lines ``--log-requests`` adds, one per call.
ACCESS = logging.getLogger("tms_server.access")
_CALL_FIELDS = ("rpc", "model", "request_id", "via")


def _call_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The call a line is about: fields the line carries (``extra``), else the running call."""
    call = CURRENT.get()
    fields: dict[str, Any] = {}
    for name in _CALL_FIELDS:
        value = getattr(record, name, None)
        if value is None and call is not None:
            value = getattr(call, name)
        if value is not None:
            fields[name] = value
    return fields


class PlainFormatter(logging.Formatter):
    """``time LEVEL [pid worker N] logger: message (rpc=... model=... request_id=...)``."""

    def __init__(self, worker: int | None) -> None:
        where = f"worker {worker}" if worker is not None else "supervisor"
        super().__init__(f"%(asctime)s %(levelname)s [%(process)d {where}] %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - stdlib's name
        line = super().formatMessage(record)
        fields = _call_fields(record)
        if not fields:
            return line
        shown = " ".join(f"{name}={_plain(value)}" for name, value in fields.items() if value)
        return f"{line} ({shown})" if shown else line


def _plain(value: object) -> str:
    """A value as it can stand in a plain line: quoted if it holds spaces or control
    characters (a model name a caller made up could hold a line break)."""
    text = str(value)
    return text if text.isprintable() and " " not in text else repr(text)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, pid, worker
    (in workers), the call's rpc, model and request_id (in lines about a call), the access
    line's code and ms, and the traceback (``exc``) if there is one."""

    def __init__(self, worker: int | None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if self.worker is not None:
            line["worker"] = self.worker
        line.update(_call_fields(record))
        for name in ("code", "ms"):
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(level: str, log_format: str, worker: int | None = None) -> None:
    """Send every log line (the server's and the models') to stderr in ``log_format``;
    ``worker`` is the worker index, None in the supervisor. A worker calls this again after
    the fork: its lines then name it. Warnings (``warnings.warn``, as libraries that models
    load warn) become lines of logger ``py.warnings`` at WARNING, in the same format. The
    lines ``--log-requests`` asks for are written whatever ``level`` is."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(worker) if log_format == "json" else PlainFormatter(worker))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    ACCESS.setLevel(logging.INFO)
    logging.captureWarnings(True)


def log_call(call: CallInfo, code: grpc.StatusCode, seconds: float) -> None:
    """The line ``--log-requests`` writes when a call is over."""
    ms = round(seconds * 1000, 3)
    ACCESS.info(
        "%s %s %s in %.3f ms",
        call.rpc,
        _plain(call.model) if call.model else "-",
        code.name,
        ms,
        extra={
            "rpc": call.rpc,
            "model": call.model,
            "request_id": call.request_id,
            "via": call.via,
            "code": code.name,
            "ms": ms,
        },
    )
