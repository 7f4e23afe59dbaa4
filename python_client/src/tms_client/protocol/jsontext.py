"""Model results as JSON text, and back: numpy scalars and arrays become numbers and lists."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["from_json", "to_json"]


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_ENCODER = json.JSONEncoder(default=_jsonable, allow_nan=False, separators=(",", ":"))


def to_json(value: Any) -> str:
    """JSON text of a model result; numpy scalars and arrays become numbers and lists.

    Raises TypeError for values JSON cannot hold, ValueError for NaN and infinity.
    """
    return _ENCODER.encode(value)


_DECODER = json.JSONDecoder()


def from_json(text: str) -> Any:
    """The value of JSON text; empty text is None.

    Text that is one JSON value and nothing else (what servers write) is read by the
    decoder directly, which spares ``json.loads`` its checks for a BOM and for whitespace
    around the value; anything else goes to ``json.loads``, which reads it or raises."""
    if not text:
        return None
    if type(text) is str:
        try:
            value, end = _DECODER.raw_decode(text)
        except ValueError:
            pass  # json.loads says what is wrong, or reads a value with whitespace around it
        else:
            if end == len(text):
                return value
    return json.loads(text)
