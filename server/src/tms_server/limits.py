"""Bounds on what one request may ask of a worker, checked before the work is done.

Message size is bounded by gRPC itself (``--max-message-mb``: RESOURCE_EXHAUSTED before our
code sees the bytes) and image size by ``--max-pixels`` (checked against the declared size
before decoding). Model args, JSON text, are bounded here: in length and in nesting depth,
checked by a scan before the JSON parser runs, so no input can make the parser recurse deeply
or build a huge structure. Then, when the model declares an ``args_schema``, they are checked
against it (``check_args``).
"""

from __future__ import annotations

import json
import re
from typing import Any, NoReturn

import numpy as np

from tms_server.errors import InvalidArgument, Reason

__all__ = [
    "MAX_ARGS_BYTES",
    "MAX_ARGS_DEPTH",
    "MAX_VIOLATIONS",
    "check_args",
    "not_json",
    "parse_args",
]

#: Longest ``args_json`` accepted, in UTF-8 bytes.
MAX_ARGS_BYTES = 1024 * 1024
#: Deepest nesting of arrays and objects accepted in ``args_json``.
MAX_ARGS_DEPTH = 32
#: Most field violations reported for args that do not match the model's args_schema (the
#: status goes in the trailers, whose size clients bound).
MAX_VIOLATIONS = 10

# A string, or the rest of the text after an unterminated quote: the closing quote is optional
# so that a match never fails, which keeps the scan linear in the length of the text.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_OPENING = np.zeros(256, np.int64)  # 1 for the bytes that open an array or object
_OPENING[[ord("["), ord("{")]] = 1
_OPENING.flags.writeable = False


def json_depth(text: str) -> int:
    """How deeply arrays and objects nest in JSON ``text`` (brackets in strings ignored)."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text)).encode("ascii")
    if not brackets:
        return 0
    opening = _OPENING[np.frombuffer(brackets, np.uint8)]
    return int(np.cumsum(2 * opening - 1).max())


def parse_args(text: str, field: str = "args_json") -> dict[str, Any]:
    """The model args of a request (its ``field``): a JSON object, ``{}`` for empty text.

    INVALID_ARGUMENT (INVALID_ARGS) for text longer than MAX_ARGS_BYTES, nested deeper than
    MAX_ARGS_DEPTH, not JSON, or not an object.
    """
    if not text:
        return {}
    size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_ARGS_BYTES:
        raise _bad_args(
            f"args_json is {size} bytes; the limit is {MAX_ARGS_BYTES} (send data as an "
            "image or text, not as args)",
            field,
        )
    depth = json_depth(text)
    if depth > MAX_ARGS_DEPTH:
        message = f"args_json nests {depth} levels deep; the limit is {MAX_ARGS_DEPTH}"
        raise _bad_args(message, field)
    try:
        args = json.loads(text, parse_constant=not_json)
    except (ValueError, RecursionError) as exc:
        raise _bad_args(f"args_json is not valid JSON: {exc}", field) from None
    if not isinstance(args, dict):
        raise _bad_args(f"args_json must be a JSON object, not {type(args).__name__}", field)
    return args


def _bad_args(message: str, field: str) -> InvalidArgument:
    return InvalidArgument(message, reason=Reason.INVALID_ARGS, field=field)


def check_args(validator: Any, args: dict[str, Any], field: str = "args_json") -> None:
    """Check parsed args against a model's args_schema (its jsonschema ``validator``; nothing
    to check when None): INVALID_ARGUMENT (INVALID_ARGS) with one BadRequest field violation
    per problem, its field the path to the value at fault (``args_json.min_neighbors``)."""
    if validator is None:
        return
    errors = sorted(validator.iter_errors(args), key=lambda e: [str(p) for p in e.absolute_path])
    if not errors:
        return
    violations = [(_error_field(error, field), error.message) for error in errors]
    shown = violations[:MAX_VIOLATIONS]
    problems = "; ".join(f"{where}: {what}" for where, what in shown)
    more = len(violations) - len(shown)
    message = f"{field} does not match the model's args_schema: {problems}" + (
        f" (and {more} more)" if more else ""
    )
    raise InvalidArgument(message, reason=Reason.INVALID_ARGS, violations=shown)


def _error_field(error: Any, field: str) -> str:
    """The path of the value a jsonschema error is about, below ``field``; for a missing
    required property, the property's own path."""
    path = list(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [p for p in error.validator_value if p not in error.instance]
        named = [p for p in missing if error.message.startswith(repr(p))]
        path += named[:1]
    text = field
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def not_json(name: str) -> NoReturn:
    """json.loads' parse_constant: NaN, Infinity and -Infinity, which Python's parser takes
    and JSON does not (nor do answers: results are written with allow_nan=False)."""
    raise ValueError(f"{name} is not a JSON value")
