"""What completion knows of ``tms``: its commands and options, read from the parser as plain values.

Arguments complete by what they are: a MODEL with the names the server lists, paths with files,
DIR with folders, and options with fixed choices with those. argparse offers no public way to
list a parser's arguments, so this reads ``parser._actions``, as argcomplete and shtab do.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CHOICES",
    "DIRS",
    "FILES",
    "MODELS",
    "NOTHING",
    "Argument",
    "CommandLine",
    "Subcommand",
    "read_parser",
]

# What an argument's value completes to.
MODELS, FILES, DIRS, CHOICES, NOTHING = "models", "files", "dirs", "choices", ""


@dataclass(frozen=True)
class Argument:
    """An option (``flags`` set) or a positional argument, and what its value completes to."""

    flags: tuple[str, ...]  # empty for a positional argument
    metavar: str
    help: str
    takes_value: bool
    kind: str  # MODELS, FILES, DIRS, CHOICES or NOTHING
    choices: tuple[str, ...] = ()
    repeats: bool = False  # a positional argument taking several values

    @property
    def long(self) -> str:
        return next((f for f in self.flags if f.startswith("--")), self.flags[0])


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    options: tuple[Argument, ...]
    positionals: tuple[Argument, ...]


@dataclass(frozen=True)
class CommandLine:
    """The options of ``tms`` itself and its commands."""

    options: tuple[Argument, ...]
    commands: tuple[Subcommand, ...]

    def value_options(self) -> dict[str, Argument]:
        """Every option taking a value, by flag, across all commands (a flag means the same
        everywhere it appears)."""
        found: dict[str, Argument] = {}
        for argument in [*self.options, *(o for c in self.commands for o in c.options)]:
            for flag in argument.flags if argument.takes_value else ():
                seen = found.setdefault(flag, argument)
                assert (seen.kind, seen.choices) == (argument.kind, argument.choices), flag
        return found


def read_parser(parser: argparse.ArgumentParser) -> CommandLine:
    """What completion needs to know of ``parser`` and its subcommands."""
    options, commands = [], []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                sub_options, positionals = _arguments(sub)
                commands.append(Subcommand(name, sub.description or "", sub_options, positionals))
        elif action.option_strings:
            options.append(_argument(action))
    return CommandLine(tuple(options), tuple(commands))


def _arguments(
    parser: argparse.ArgumentParser,
) -> tuple[tuple[Argument, ...], tuple[Argument, ...]]:
    arguments = [_argument(action) for action in parser._actions]
    return (
        tuple(a for a in arguments if a.flags),
        tuple(a for a in arguments if not a.flags),
    )


def _argument(action: argparse.Action) -> Argument:
    metavar = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
    choices = tuple(str(c) for c in action.choices) if action.choices else ()
    if choices:
        kind = CHOICES
    elif metavar == "MODEL":
        kind = MODELS
    elif metavar == "DIR":
        kind = DIRS
    elif action.type is Path or metavar in ("FILE", "PATH"):
        kind = FILES
    else:
        kind = NOTHING
    return Argument(
        flags=tuple(action.option_strings),
        metavar=metavar,
        help=" ".join((action.help or "").split()),
        takes_value=action.nargs != 0,
        kind=kind,
        choices=choices,
        repeats=action.nargs in ("+", "*"),
    )
