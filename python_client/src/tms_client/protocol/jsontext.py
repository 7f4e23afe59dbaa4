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


def from_json(text: str) -> Any:
    """The value of JSON text; empty text is None."""
    return json.loads(text) if text else None
