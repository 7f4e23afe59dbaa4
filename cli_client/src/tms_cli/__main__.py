"""``tms`` and ``python -m tms_cli``: parse the command line, run the command, and turn
errors into one line on stderr and an exit code (0 done, 1 failed, 2 usage, 130 Ctrl-C)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from tms_cli.connection import Options, describe_error, refusal
from tms_cli.errors import CliError, UsageError
from tms_cli.parser import build_parser
from tms_client import PermissionDeniedError, TMSError, UnauthenticatedError, UnavailableError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tms`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser, commands = build_parser()
    parsed = _parse(parser, argv)
    if isinstance(parsed, int):
        return parsed
    args, options = parsed
    if options.debug:
        logging.basicConfig(
            level=logging.DEBUG, format="%(asctime)s %(name)s %(levelname)s: %(message)s"
        )
    try:
        return int(args.command(options, args))
    except UsageError as exc:
        if options.debug:
            raise
        sys.stderr.write(f"{commands[args.command_name].prog}: error: {exc}\n")
        return 2
    except BrokenPipeError:
        # The reader of stdout went away (``tms run ... | head``): stop quietly, and keep
        # Python from complaining again when it flushes stdout at exit.
        _silence_stdout()
        return 1
    except KeyboardInterrupt:
        if options.debug:
            raise
        sys.stderr.write("tms: interrupted\n")
        return 130
    except (CliError, TMSError, OSError) as exc:
        if options.debug:
            raise
        sys.stderr.write(f"tms: {_message(exc, options)}\n")
        return 1


def _parse(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> tuple[argparse.Namespace, Options] | int:
    """The arguments and the global options; or the exit code when there is nothing to run
    (--help, --version, a usage error)."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    try:
        return args, Options.from_args(args)
    except ValueError as exc:  # --tls-cert without --tls-key, a URL as target: one line
        sys.stderr.write(f"tms: error: {exc}\n")
        return 2


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


if __name__ == "__main__":
    sys.exit(main())
