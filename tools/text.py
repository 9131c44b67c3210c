"""Text hygiene shared by every layer that writes model-facing text."""

from __future__ import annotations

import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """``text`` with each lone surrogate (``"\\ud800"``, from a model or a JSON escape) replaced by U+FFFD.

    A lone surrogate is a valid Python ``str`` but no UTF-8 writer (a JSONL file, stdout, a socket) accepts it.
    """
    try:
        text.encode("utf-8")  # the common case: one C call, no copy
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


def valid_value(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists, strings...) with ``valid_text`` applied to every string in it."""
    if isinstance(value, str):
        return valid_text(value)
    if isinstance(value, dict):
        return {valid_value(k): valid_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [valid_value(v) for v in value]
    return value
