"""What a command raises to end with a one-line message instead of a traceback."""

from __future__ import annotations

__all__ = ["CliError", "UsageError"]


class CliError(Exception):
    """The command failed; ``tms`` prints ``tms: <message>`` on stderr and exits with 1."""


class UsageError(CliError):
    """The command line is wrong in a way argparse cannot see; exit code 2."""
