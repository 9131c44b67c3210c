"""Exact answer scoring.

An answer is right only if it states the gold value and no other candidate value of the same
attribute: ``1/2/1970`` does not match ``11/2/1970``, and hedging across several values scores
0. Case and whitespace are normalised; a value must stand alone (not inside a longer word).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from tools.facts import Attribute

_DATE = re.compile(r"(?<![\w/])\d{1,2}/\d{1,2}/\d{1,4}(?![\w/])")


def normalise(text: str) -> str:
    return " ".join(text.casefold().split())


def _standalone(value: str) -> str:
    return r"(?<!\w)" + re.escape(value) + r"(?!\w)"


class AnswerScorer:
    """Scores final answers against gold values, given each attribute's candidate values."""

    def __init__(self, vocabulary: Mapping[Attribute, Iterable[str]]):
        self._candidates: dict[Attribute, re.Pattern[str]] = {}
        for attribute, values in vocabulary.items():
            ordered = sorted({normalise(v) for v in values}, key=len, reverse=True)  # longest match wins
            self._candidates[attribute] = re.compile("|".join(_standalone(v) for v in ordered) or r"(?!)")

    def mentions(self, answer: str, attribute: Attribute) -> set[str]:
        """The candidate values of ``attribute`` that ``answer`` states."""
        pattern = _DATE if attribute is Attribute.birth_date else self._candidates.get(attribute)
        return set(pattern.findall(normalise(answer))) if pattern is not None else set()

    def is_correct(self, answer: str, attribute: Attribute, gold: str) -> bool:
        text, gold_n = normalise(answer), normalise(gold)
        if not gold_n or re.search(_standalone(gold_n), text) is None:
            return False
        return self.mentions(answer, attribute) <= {gold_n}
