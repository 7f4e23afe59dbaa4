"""Counts of characters, words, lines and sentences in a text, and its most common words."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, ClassVar

import tms_server

_WORD = re.compile(r"\w+(?:['\u2019]\w+)*")
# A sentence is a run of text holding a word, ended by . ! ? or the end of the text.
_SENTENCE_END = re.compile(r"[.!?]+")
_HAS_WORD = re.compile(r"\w")


class Model(tms_server.Model):
    """Statistics of a text: characters, words, lines, sentences, and the most common words.

    Words are case-folded. Args: top, how many common words to list (>= 0, default 5).
    Returns {"characters", "words", "lines", "sentences", "top_words": [{"word", "count"}]},
    most common first, ties in alphabetical order.
    """

    inputs = "text"
    thread_safe = True
    args_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "top": {
                "description": "how many of the most common words to list",
                "type": "integer",
                "minimum": 0,
                "default": 5,
            }
        },
        "additionalProperties": False,
    }

    def run(self, text: str, args: dict[str, Any]) -> dict[str, Any]:
        top = _parse_args(args)
        words = _WORD.findall(text.casefold())
        counts = sorted(Counter(words).items(), key=lambda item: (-item[1], item[0]))
        return {
            "characters": len(text),
            "words": len(words),
            "lines": len(text.splitlines()),
            "sentences": sum(1 for part in _SENTENCE_END.split(text) if _HAS_WORD.search(part)),
            "top_words": [{"word": word, "count": count} for word, count in counts[:top]],
        }


def _parse_args(args: dict[str, Any]) -> int:
    unknown = sorted(set(args) - {"top"})
    if unknown:
        raise tms_server.InvalidInput(f"unknown args {unknown}; text_stats takes top")
    top = args.get("top", 5)
    if isinstance(top, bool) or not isinstance(top, int) or top < 0:
        raise tms_server.InvalidInput(f"top must be an integer >= 0, not {top!r}")
    return top
