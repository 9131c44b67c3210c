"""``AnyText``: a Gymnasium text space for any Unicode string, usable in vector environments.

Gymnasium's ``Text`` only holds characters of its charset (alphanumerics by default), so a
model's message (spaces, punctuation, any script) is not in it, ``sample()`` draws up to
``max_length`` random characters, and the async vector env's shared memory stores charset indices.
``AnyText`` contains every string up to ``max_length``, samples short printable strings, and its
shared memory stores Unicode code points (-1 pads), registered with Gymnasium's own
``singledispatch`` functions.
"""

from __future__ import annotations

import multiprocessing as mp
import string
from types import ModuleType
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector.utils import shared_memory

from tools.text import valid_text

SAMPLE_CHARSET = string.ascii_letters + string.digits + string.punctuation + " "
SAMPLE_MAX_LENGTH = 64


class AnyText(spaces.Text):
    """A text space holding any Unicode string of ``min_length..max_length`` characters."""

    def __init__(self, max_length: int, *, min_length: int = 0, seed: Any = None):
        super().__init__(max_length, min_length=min_length, charset=SAMPLE_CHARSET, seed=seed)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        """A short random printable string (at most 64 characters): a plausible junk action, not 64k of noise."""
        if mask is not None or probability is not None:
            return super().sample(mask=mask, probability=probability)
        upper = max(self.min_length, min(self.max_length, SAMPLE_MAX_LENGTH))
        length = int(self.np_random.integers(self.min_length, upper + 1))
        picks = self.np_random.integers(len(SAMPLE_CHARSET), size=length)
        return "".join(SAMPLE_CHARSET[i] for i in picks)

    def __repr__(self) -> str:
        return f"AnyText({self.min_length}, {self.max_length})"


@shared_memory.create_shared_memory.register(AnyText)
def _create(space: AnyText, n: int = 1, ctx: ModuleType = mp) -> Any:
    return ctx.Array(np.dtype(np.int32).char, n * space.max_length)


class SharedTexts(tuple):
    """The async vector env's observations: strings decoded from the shared memory each time they are read.

    Gymnasium reads its shared memory once, when the vector env is built, and relies on the result being a
    view (true of arrays); a tuple of ``str`` would keep the first values forever. This tuple decodes the
    memory on every access, and a copy (the vector env returns ``deepcopy(observations)``) is a plain tuple.
    """

    def __new__(cls, memory: Any, n: int, max_length: int) -> SharedTexts:
        texts = super().__new__(cls, [""] * n)
        texts._view = np.frombuffer(memory.get_obj(), dtype=np.int32).reshape((n, max_length))
        return texts

    def _decode(self, row: np.ndarray) -> str:
        return "".join(map(chr, row[row >= 0].tolist()))

    def __getitem__(self, index: Any) -> Any:
        return tuple(self)[index]

    def __iter__(self) -> Any:
        return iter([self._decode(row) for row in self._view])

    def __eq__(self, other: Any) -> bool:
        return tuple(self) == other

    __hash__ = tuple.__hash__

    def __repr__(self) -> str:
        return repr(tuple(self))

    def __deepcopy__(self, memo: dict[int, Any]) -> tuple[str, ...]:
        return tuple(self)

    def __copy__(self) -> tuple[str, ...]:
        return tuple(self)


@shared_memory.read_from_shared_memory.register(AnyText)
def _read(space: AnyText, memory: Any, n: int = 1) -> tuple[str, ...]:
    return SharedTexts(memory, n, space.max_length)


@shared_memory.write_to_shared_memory.register(AnyText)
def _write(space: AnyText, index: int, value: str, memory: Any) -> None:
    size = space.max_length
    codes = np.full(size, -1, dtype=np.int32)
    points = np.frombuffer(valid_text(value)[:size].encode("utf-32-le"), dtype=np.uint32).astype(np.int32)
    codes[: len(points)] = points
    destination = np.frombuffer(memory.get_obj(), dtype=np.int32)
    destination[index * size : (index + 1) * size] = codes
