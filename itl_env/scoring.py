"""Exact answer scoring.

An answer is right only if it states the gold value and no other candidate value of the same
attribute: ``1/2/1970`` does not match ``11/2/1970``, and hedging across several values scores
0. Case and whitespace are normalised; a value must stand alone (not inside a longer word).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from itl_env.store import Attribute

_DATE = re.compile(r"(?<![\w/])\d{1,2}/\d{1,2}/\d{1,4}(?![\w/])")


def normalise(text: str) -> str:
    return " ".join(text.casefold().split())


_WORD = re.compile(r"\w")
_DATE_PART = re.compile(r"[\w/]")


def _stands_alone(value: str, text: str, inside: re.Pattern[str]) -> bool:
    """Whether ``value`` occurs in ``text`` with no character matching ``inside`` right before or after it.

    A scan with str.find: compiling a regex per gold value would miss the re cache on any real world.
    """
    start = text.find(value)
    while start >= 0:
        end = start + len(value)
        if (start == 0 or not inside.match(text, start - 1)) and (end == len(text) or not inside.match(text, end)):
            return True
        start = text.find(value, start + 1)
    return False


def _trie_pattern(values: Iterable[str]) -> str:
    """A regex matching any of ``values``, longest first, written as a trie of their characters.

    ``a|b|c...`` of hundreds of literals is tried alternative by alternative at every position of
    the text; the trie shares prefixes, so a position is rejected after a character or two.
    """
    trie: dict[str, dict] = {}
    for value in values:
        node = trie
        for char in value:
            node = node.setdefault(char, {})
        node[""] = {}  # a value ends here

    def write(node: dict[str, dict]) -> str:
        branches = [re.escape(char) + write(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body  # greedy: the longer value is tried first

    return write(trie)


class AnswerScorer:
    """Scores final answers against gold values, given each attribute's candidate values."""

    def __init__(self, vocabulary: Mapping[Attribute, Iterable[str]]):
        self._candidates: dict[Attribute, re.Pattern[str]] = {}
        for attribute, values in vocabulary.items():
            values = {normalise(v) for v in values} - {""}
            trie = _trie_pattern(values) if values else "(?!)"
            self._candidates[attribute] = re.compile(rf"(?<!\w)(?:{trie})(?!\w)")  # longest standalone match wins

    def mentions(self, answer: str, attribute: Attribute) -> set[str]:
        """The candidate values of ``attribute`` that ``answer`` states."""
        return self._mentions(normalise(answer), attribute)

    def _mentions(self, text: str, attribute: Attribute) -> set[str]:
        pattern = _DATE if attribute is Attribute.birth_date else self._candidates.get(attribute)
        return set(pattern.findall(text)) if pattern is not None else set()

    def is_correct(self, answer: str, attribute: Attribute, gold: str) -> bool:
        text, gold_n = normalise(answer), normalise(gold)
        inside = _DATE_PART if attribute is Attribute.birth_date else _WORD  # 1/2/1970 is not part of 1/1/2/1970
        if not gold_n or not _stands_alone(gold_n, text, inside):
            return False
        return self._mentions(text, attribute) <= {gold_n}
