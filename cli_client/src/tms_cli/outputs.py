"""Writing what commands print: JSON and tables (output images: ``tms_cli.image_files``).

Tables and JSON go through Rich: on a terminal, headers in bold and JSON highlighted (no
colours when $NO_COLOR is set, as Rich reads it); elsewhere plain text, rows never wrapped,
what scripts parse byte for byte the same."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.highlighter import JSONHighlighter
from rich.table import Table

from tms_cli.connection import describe_error
from tms_cli.errors import CliError

__all__ = ["console", "open_output", "print_json", "print_table", "readable_json", "to_json"]

#: The widest list ``readable_json`` keeps on one line (a list of plain values always is).
_LINE = 72


def to_json(value: Any, *, pretty: bool = False) -> str:
    """``value`` as JSON text: indented when ``pretty``, else on one line (JSON Lines)."""
    return json.dumps(value, ensure_ascii=False, indent=2 if pretty else None)


def readable_json(value: Any, indent: str = "") -> str:
    """``value`` as indented JSON for people: unlike ``to_json(pretty=True)`` a list of
    plain values (a point, a box) stays on one line, and so does a short list of them."""
    line = to_json(value)
    if isinstance(value, dict) and value:
        inner = indent + "  "
        items = [f"{inner}{to_json(k)}: {readable_json(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    if not isinstance(value, list) or not value:
        return line
    flat = not any(isinstance(item, (dict, list)) for item in value)
    if flat or (len(line) <= _LINE and not any(isinstance(item, dict) for item in value)):
        return line
    inner = indent + "  "
    items = [inner + readable_json(item, inner) for item in value]
    return "[\n" + ",\n".join(items) + f"\n{indent}]"


def open_output(path: Path) -> TextIO:
    """``path`` opened for writing text (``--out``); CliError saying why it cannot be."""
    try:
        return path.open("w", encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write {path}: {describe_error(exc)}") from exc


def console(stream: TextIO) -> Console:
    """A Rich console on ``stream``; off a terminal, wide enough that no row wraps."""
    return Console(file=stream, soft_wrap=True, width=None if stream.isatty() else 10_000)


def print_json(text: str, stream: TextIO) -> None:
    """JSON ``text`` and a newline: highlighted on a terminal, else as it is."""
    if stream.isatty():
        console(stream).print(JSONHighlighter()(text))
    else:
        stream.write(text + "\n")


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]], stream: TextIO) -> None:
    """Left-aligned columns two spaces apart, the header in capitals (and bold)."""
    table = Table(*(h.upper() for h in header), box=None, pad_edge=False, header_style="bold")
    for row in rows:
        table.add_row(*row)
    out = console(stream)
    with out.capture() as captured:  # Rich pads every cell: no blanks at the ends of lines
        out.print(table)
    stream.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
