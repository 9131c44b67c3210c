"""JSON Lines files the project appends to (records, metrics, checkpoint and study rows, STE's memory and episodes).

One way to write and read them, so every file survives the same accidents:

- A row is written whole or not at all from the reader's point of view: ``append`` first cuts off an unfinished
  last line (a process killed mid-write) so the next row never joins it, and says so.
- Any text survives: a lone surrogate a model wrote (``\\ud800``) is stored as its JSON escape, read back as it
  was; the file stays valid UTF-8.
- ``read`` names the file and line of a row that is not JSON (or not the expected row), and skips an unfinished
  last line with a warning.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")


def dumps(row: Any) -> str:
    """One row as one line of JSON (a pydantic model through its JSON mode); no newline."""
    data = row.model_dump(mode="json") if hasattr(row, "model_dump") else row
    return json.dumps(data, ensure_ascii=False, default=str)


def encode(text: str) -> bytes:
    # a lone surrogate cannot be UTF-8: written as its escape \udXXX, which inside a JSON string (the only place
    # json.dumps leaves one) reads back as the same character
    return text.encode("utf-8", "backslashreplace")


def append(path: str | os.PathLike[str], rows: Iterable[Any]) -> None:
    """Append ``rows`` to ``path`` (created with its folder if missing), one JSON line each."""
    path = Path(path)
    data = b"".join(encode(dumps(row)) + b"\n" for row in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(size - 1)
            if f.read(1) != b"\n":
                _cut_unfinished_line(f, size, path)
        f.write(data)


def _cut_unfinished_line(f: Any, size: int, path: Path) -> None:
    f.seek(0)
    keep = f.read().rfind(b"\n") + 1  # 0: the file is one unfinished line
    logger.warning("%s: its last line was unfinished (%d bytes, an interrupted write): removed", path, size - keep)
    f.truncate(keep)
    f.seek(keep)


def read(path: str | os.PathLike[str], parse: Callable[[Any], T] = lambda row: row) -> list[T]:
    """The rows of ``path`` (``parse`` applied to each decoded line); ``[]`` if there is no file.

    A line that is not a valid row is a ``ValueError`` naming the file and line; an unfinished last line (no
    newline after it) is skipped with a warning.
    """
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    finished = raw.endswith(b"\n")
    rows: list[T] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(parse(json.loads(line.decode("utf-8", "surrogateescape"))))
        except (ValueError, TypeError, KeyError) as err:
            if number == len(lines) and not finished:
                logger.warning("%s: skipping its unfinished last line %d (an interrupted write)", path, number)
                continue
            reason = " ".join(str(err).split())[:300]
            raise ValueError(f"{path}, line {number}: not a valid row ({reason}); fix or remove that line") from err
    return rows
