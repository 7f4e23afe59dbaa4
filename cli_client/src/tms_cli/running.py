"""Running a command the command line asked for: errors end it with one line on stderr (a
traceback with --debug) and an exit code (1 failed, 2 usage, 130 Ctrl-C)."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable
from types import SimpleNamespace

from rich.text import Text

from tms_cli.cli import Invocation
from tms_cli.connection import Options, describe_error, refusal
from tms_cli.errors import CliError, UsageError
from tms_cli.outputs import console
from tms_client import PermissionDeniedError, TMSError, UnauthenticatedError, UnavailableError

__all__ = ["run"]


def run(invocation: Invocation) -> int:
    """Run ``invocation``; returns the exit code."""
    try:
        options = Options.from_values(invocation.options)
    except ValueError as exc:  # --tls-cert without --tls-key, a URL as target: one line
        _error(f"error: {exc}")
        return 2
    if options.debug:
        logging.basicConfig(
            level=logging.DEBUG, format="%(asctime)s %(name)s %(levelname)s: %(message)s"
        )
    module, name = invocation.command.split(":")
    command: Callable[[Options, SimpleNamespace], int]
    command = getattr(importlib.import_module(f"tms_cli.{module}"), name)
    try:
        return int(command(options, invocation.args))
    except UsageError as exc:
        if options.debug:
            raise
        sys.stderr.write(f"{invocation.prog}: error: {exc}\n")
        return 2
    except BrokenPipeError:
        # The reader of stdout went away (``tms run ... | head``): stop quietly, and keep
        # Python from complaining again when it flushes stdout at exit.
        _silence_stdout()
        return 1
    except KeyboardInterrupt:
        if options.debug:
            raise
        _error("interrupted")
        return 130
    except (CliError, TMSError, OSError) as exc:
        if options.debug:
            raise
        _error(_message(exc, options))
        return 1


def _error(message: str) -> None:
    """``tms: message`` on stderr, on one line; ``tms:`` in red on a terminal."""
    if sys.stderr.isatty():
        console(sys.stderr).print(Text.assemble(("tms:", "bold red"), f" {message}"))
    else:
        sys.stderr.write(f"tms: {message}\n")


def _message(exc: Exception, options: Options) -> str:
    if isinstance(exc, CliError):
        return str(exc)
    if isinstance(exc, UnavailableError):
        return f"lost the TMS server at {options.target} ({describe_error(exc)})"
    if isinstance(exc, (UnauthenticatedError, PermissionDeniedError)):
        return refusal(exc, options)
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {describe_error(exc)}"
    return describe_error(exc)


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is no file (as under pytest's capture)
        pass
