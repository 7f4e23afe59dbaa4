"""Connecting to a server, checking a model before using it, and wording client errors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tms_cli.errors import CliError
from tms_client import (
    TLS,
    Balancer,
    CallError,
    ClientOptions,
    ConnectError,
    InvalidInputError,
    ModelClient,
    ModelInfo,
    ModelNotFoundError,
    ModelNotReadyError,
    PermissionDeniedError,
    TMSError,
    UnauthenticatedError,
    check_health,
)

__all__ = [
    "COMMAND_OF_CALL",
    "Options",
    "check_model",
    "connect",
    "describe_error",
    "refusal",
    "server_health",
]

#: The ``tms`` command that makes each client call, for hints in error messages.
COMMAND_OF_CALL = {
    "run_image": "tms run",
    "run_images": "tms run",
    "run_image_to_image": "tms run-i2i",
    "run_text": "tms text",
    "run_texts": "tms text",
}


@dataclass(frozen=True)
class Options:
    """The global options of ``tms``: how to reach the server (the client's options) and how
    to print."""

    client: ClientOptions
    json: bool
    debug: bool

    @property
    def target(self) -> str:
        return ", ".join(self.client.targets)

    @classmethod
    def from_values(cls, args: Mapping[str, Any]) -> Options:
        """The global options, by name (see ``tms_cli.cli.global_params``); ValueError for
        options that do not go together or cannot be used (a malformed target or token)."""
        files = (args["tls_ca"], args["tls_cert"], args["tls_key"], args["tls_server_name"])
        tls = None
        if args["tls"] or any(value is not None for value in files):
            tls = TLS(ca=files[0], cert=files[1], key=files[2], server_name=files[3])
        client = ClientOptions(
            target=args["target"],
            timeout=args["timeout"] or None,  # 0: no deadline
            connect_timeout=args["connect_timeout"],
            tls=tls,
            token=args["token"],
            shared_memory=args["shared_memory"],
            call_streams=args["call_streams"],
            max_message_mb=args["max_message_mb"],
        )
        return cls(client=client, json=args["json"], debug=args["debug"])


def connect(options: Options, model: str = "", *, balancer: Balancer | None = None) -> ModelClient:
    """A client for ``model`` (``""`` for calls about the whole server), connected.

    Every command gets its client here, so every global option reaches every command.
    """
    try:
        return ModelClient(model, options=options.client, balancer=balancer)
    except (ConnectError, ValueError, TMSError) as exc:
        raise _unreached(options, exc) from exc


def server_health(options: Options, services: list[str]) -> dict[str, str]:
    """The health of each of ``services`` ("" for the server) at the target, asked on one
    connection without worker discovery: health checks need no token."""
    try:
        return check_health(services=services, options=options.client)
    except (ConnectError, ValueError, TMSError) as exc:
        raise _unreached(options, exc) from exc


def _unreached(options: Options, exc: Exception) -> CliError:
    """What to say when connecting failed with ``exc``."""
    if isinstance(exc, (UnauthenticatedError, PermissionDeniedError)):
        return CliError(refusal(exc, options))
    if isinstance(exc, ConnectError) and exc.refused:
        return CliError(str(exc))
    if isinstance(exc, ConnectError):
        hint = (
            "is it running, is that its gRPC port (not its --http-port), and does it serve "
            "TLS (then give --tls, or --tls-ca)?"
            if options.client.tls is None
            else "do --tls-ca, --tls-server-name and the client certificate fit it?"
        )
        return CliError(
            f"cannot reach a TMS server at {options.target}: no answer within "
            f"{options.client.connect_timeout:g}s; {hint}"
        )
    if isinstance(exc, TMSError):  # something answered, but not as a TMS server does
        return CliError(f"cannot reach a TMS server at {options.target} ({describe_error(exc)})")
    return CliError(str(exc))  # a ValueError: a TLS file that cannot be read


def refusal(exc: CallError, options: Options) -> str:
    """What to say when the server refused the call's credentials (UNAUTHENTICATED or
    PERMISSION_DENIED): which option gives a token."""
    code = exc.code.name
    if options.client.token is None:
        return (
            f"the TMS server at {options.target} refused a call without a token ({code}): "
            "pass --token TOKEN or set TMS_TOKEN"
        )
    return (
        f"the TMS server at {options.target} refused the token ({code}: {exc.details}): "
        "check --token or TMS_TOKEN"
    )


def check_model(client: ModelClient, call: str | None = None, hint: str = "") -> ModelInfo:
    """What the server says about ``client.model``, which must exist and support ``call``
    (else an error ending with ``hint``, or the ``tms`` commands that make its calls)."""
    name = client.model
    try:
        info = client.info()
    except ModelNotFoundError as exc:
        names = [model.name for model in client.list_models()]
        known = f"models: {', '.join(names)}" if names else "the server has no models"
        raise CliError(f"no model named {name!r} at {client.target}; {known}") from exc
    except (ModelNotReadyError, InvalidInputError) as exc:
        raise CliError(exc.details) from exc
    if call is not None and call not in info.calls:
        commands = sorted({COMMAND_OF_CALL[c] for c in info.calls if c in COMMAND_OF_CALL})
        if not hint and commands:
            hint = f"use {' or '.join(commands)}"
        raise CliError(
            f"model {name!r} does not support {call} ({COMMAND_OF_CALL.get(call, call)}); "
            f"it supports {', '.join(sorted(info.calls)) or 'no calls'}"
            + (f"; {hint}" if hint else "")
        )
    return info


def describe_error(exc: BaseException) -> str:
    """One line saying what went wrong, without repeating the exception's class."""
    if isinstance(exc, CallError):
        return f"{exc.details} ({exc.code.name})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
