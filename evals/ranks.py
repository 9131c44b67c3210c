"""One job, N processes: which process this is, what rank 0 makes first, and how the ranks pool results.

Under ``torchrun`` / ``accelerate launch`` every rank runs the same script. Whatever the run creates (the
world file, the oracle dataset, the run directory) is made once by rank 0 while the others wait, and then
opened by them (``Ranks.first``); a choice (the run directory's name) is made by rank 0 and sent to the
others (``Ranks.broadcast``); evaluation is sharded and its records pooled (``Ranks.gather``). In one process
every method is a plain call. (``configs.cli`` keeps the other ranks quiet but for errors.)

An error on rank 0 inside ``first`` reaches every rank (as ``FailedOnRankZero`` on the others), so no rank
is left waiting in a collective for the timeout.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from configs.cli import ReportedElsewhere

T = TypeVar("T")


class FailedOnRankZero(ReportedElsewhere):
    """Rank 0 failed at a step the others were waiting for; rank 0 reports the error itself."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: ``rank`` of ``size`` (0 of 1 outside a process group)."""

    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls) -> Ranks:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @classmethod
    def join(cls) -> Ranks:
        """Join the process group of a torchrun / accelerate launch job (gloo on CPU, NCCL on GPUs), as TRL's own
        set-up does, for work before a trainer exists; in one process, nothing.
        """
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            import torch
            from accelerate import PartialState

            PartialState(cpu=not torch.cuda.is_available())
        return cls.current()

    @property
    def main(self) -> bool:
        return self.rank == 0

    def first(self, make: Callable[[], T], then: Callable[[], T] | None = None) -> T:
        """Rank 0 runs ``make()`` while the others wait; then the others run ``then()`` (default: ``make()``).

        ``make`` builds (a world, a dataset), ``then`` opens what it built.
        """
        if self.size == 1:
            return make()
        if self.main:
            try:
                value = make()
            except BaseException as err:
                self.broadcast(f"{type(err).__name__}: {err}")
                raise
            self.broadcast(None)
            return value
        failure = self.broadcast(None)
        if failure is not None:
            raise FailedOnRankZero(failure)
        return (then or make)()

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value``, on every rank."""
        if self.size == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, items: list[T]) -> list[list[T]]:
        """Every rank's ``items``, in rank order, on every rank (each rank decides the same from them)."""
        if self.size == 1:
            return [items]
        import torch.distributed as dist

        pooled: list[Any] = [None] * self.size
        dist.all_gather_object(pooled, items)
        return pooled

    def share(self, items: list[T]) -> list[T]:
        """This rank's share of ``items``: every ``size``-th one from position ``rank``."""
        return items[self.rank :: self.size]

    def interleave(self, shares: list[list[T]]) -> list[T]:
        """Undo ``share``: the gathered shares back in their original order."""
        total = sum(len(s) for s in shares)
        return [shares[i % self.size][i // self.size] for i in range(total)]
