"""``tms completion bash|zsh|fish``: shell completion scripts generated from the parser.

The parser is read once into plain values (``CommandLine``, in ``completion_line``), so the
three scripts always list the same commands and options as ``tms --help``. Arguments complete
by what they are: a MODEL with the names the server lists (``tms models --names``, asking the
``--target`` on the line, else $TMS_TARGET, for at most a second), paths with files, DIR with
folders, and options with fixed choices with those. Each shell's script is written by its own
module: ``completion_bash``, ``completion_zsh`` and ``completion_fish``.
"""

from __future__ import annotations

import argparse

from tms_cli import completion_bash, completion_fish, completion_zsh
from tms_cli.completion_line import Argument, CommandLine, Subcommand, read_parser

__all__ = ["SHELLS", "Argument", "CommandLine", "Subcommand", "read_parser", "script"]

SHELLS = ("bash", "zsh", "fish")


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    """The completion script of ``tms`` for ``shell`` (one of SHELLS)."""
    line = read_parser(parser)
    writers = {
        "bash": completion_bash.script,
        "zsh": completion_zsh.script,
        "fish": completion_fish.script,
    }
    return writers[shell](line)
