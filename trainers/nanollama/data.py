"""Training data: oracle trajectories -> byte tokens with an assistant-only loss mask -> packed rows.

The dialogs are the oracle policy's episodes in ``ToolUseEnv`` (the environment the models are
evaluated in, ``itl_env.trajectories``), one rollout per question phrasing so every fact is asked
in all its phrasings.

Packing: dialogs are laid end to end in rows of ``seq_len`` tokens (a dialog never straddles
two rows); each token carries its dialog's number (``documents``) and its position inside the
dialog, so attention stays inside a dialog (``model.document_mask``). Rows come in a fixed
order given by the seed: batch ``k`` is a pure function of ``(seed, k)``, so a resumed run reads
exactly the batches an uninterrupted run would, and ranks of a DDP run take disjoint slices of
each global batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from itl_env import dialogs
from itl_env.trajectories import oracle_conversations
from itl_env.world import World
from trainers.nanollama.tokenizer import ByteTokenizer

logger = logging.getLogger(__name__)


def every_phrasing(world: World, mode: str, tool_format: str, split: str = "train") -> list[list[dict]]:
    """The oracle's conversation for every fact of ``split`` in every question phrasing."""
    variants = max(len(v) for v in dialogs.QUESTIONS.values())
    facts = world.facts(split)
    conversations: list[list[dict]] = []
    for variant in range(variants):
        conversations += oracle_conversations(world, facts, mode, tool_format=tool_format, variant=variant)[0]
    return conversations


@dataclass
class Dialog:
    """One dialog as next-token pairs: ``inputs[i]`` predicts ``targets[i]``; ``scored[i]``: target is assistant."""

    inputs: np.ndarray
    targets: np.ndarray
    scored: np.ndarray

    def __len__(self) -> int:
        return len(self.inputs)


def encode_dialogs(conversations: list[list[dict]], tokenizer: ByteTokenizer) -> list[Dialog]:
    encoded = []
    for messages in conversations:
        ids, assistant = tokenizer.encode_conversation(messages)
        ids_a = np.asarray(ids, dtype=np.int64)
        encoded.append(Dialog(ids_a[:-1], ids_a[1:], np.asarray(assistant[1:], dtype=bool)))
    return encoded


@dataclass
class PackedBatch:
    """Rows of packed dialogs, each (B, T): ``targets`` is -1 where no loss is taken (and on padding);
    ``dialogs`` is the dialog index of each token (-1 on padding).
    """

    tokens: torch.Tensor
    targets: torch.Tensor
    positions: torch.Tensor
    documents: torch.Tensor
    dialogs: torch.Tensor

    def to(self, device: torch.device | str) -> PackedBatch:
        return PackedBatch(
            *(getattr(self, f).to(device) for f in ("tokens", "targets", "positions", "documents", "dialogs"))
        )

    @property
    def scored_tokens(self) -> int:
        return int((self.targets >= 0).sum())

    @property
    def real_tokens(self) -> int:
        return int((self.dialogs >= 0).sum())


def pack_rows(dialogs: list[Dialog], order: np.ndarray, seq_len: int, open_rows: int = 16) -> list[list[int]]:
    """First-fit packing over a window of ``open_rows`` rows: each dialog (in ``order``) goes into the first
    open row with room; when no row has room a new one opens and, past the window, the oldest is closed.
    Dialogs of ~half a row pair up instead of leaving half of every row empty.
    """
    rows: list[list[int]] = []
    window: list[tuple[int, int]] = []  # (row index, tokens used)
    for i in order.tolist():
        n = len(dialogs[i])
        if n > seq_len:
            raise ValueError(f"a dialog of {n + 1} tokens does not fit in seq_len {seq_len}; raise seq_len")
        for slot, (row, used) in enumerate(window):
            if used + n <= seq_len:
                rows[row].append(i)
                window[slot] = (row, used + n)
                break
        else:
            rows.append([i])
            window.append((len(rows) - 1, n))
            if len(window) > open_rows:
                window.pop(0)
    return rows


class PackedStream:
    """Global batch ``k`` = rows ``[k B, (k + 1) B)`` of the row stream: epoch after epoch, each a fresh
    seeded shuffle of the dialogs packed into rows. A DDP rank takes its ``B / world_size`` slice.
    """

    def __init__(
        self,
        dialogs: list[Dialog],
        seq_len: int,
        batch_rows: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not dialogs:
            raise ValueError("no dialogs to train on")
        if batch_rows % world_size:
            raise ValueError(f"batch_rows {batch_rows} is not divisible by the world size {world_size}")
        self.dialogs, self.seq_len, self.batch_rows, self.seed = dialogs, seq_len, batch_rows, seed
        self.rank, self.world_size = rank, world_size
        self._epochs: dict[int, list[list[int]]] = {}
        self._epoch_start = [0]  # global index of each epoch's first row

    def epoch_rows(self, epoch: int) -> list[list[int]]:
        if epoch not in self._epochs:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.dialogs))
            self._epochs = {e: r for e, r in self._epochs.items() if e >= epoch - 1}  # keep memory bounded
            self._epochs[epoch] = pack_rows(self.dialogs, order, self.seq_len)
        return self._epochs[epoch]

    def row(self, index: int) -> list[int]:
        while self._epoch_start[-1] <= index:  # find (and remember) where each epoch starts up to this row
            epoch = len(self._epoch_start) - 1
            self._epoch_start.append(self._epoch_start[-1] + len(self.epoch_rows(epoch)))
        epoch = int(np.searchsorted(self._epoch_start, index, side="right")) - 1
        return self.epoch_rows(epoch)[index - self._epoch_start[epoch]]

    def rows_per_epoch(self) -> int:
        return len(self.epoch_rows(0))

    def batch(self, step: int) -> PackedBatch:
        """This rank's share of global batch ``step``."""
        local = self.batch_rows // self.world_size
        first = step * self.batch_rows + self.rank * local
        return self.collate([self.row(i) for i in range(first, first + local)])

    def collate(self, rows: list[list[int]]) -> PackedBatch:
        B, T = len(rows), self.seq_len
        tokens = np.zeros((B, T), dtype=np.int64)
        targets = np.full((B, T), -1, dtype=np.int64)
        positions = np.zeros((B, T), dtype=np.int64)
        documents = np.full((B, T), -1, dtype=np.int64)
        dialog_ids = np.full((B, T), -1, dtype=np.int64)
        for b, row in enumerate(rows):
            at = 0
            for doc, i in enumerate(row):
                d = self.dialogs[i]
                n = len(d)
                tokens[b, at : at + n] = d.inputs
                targets[b, at : at + n] = np.where(d.scored, d.targets, -1)
                positions[b, at : at + n] = np.arange(n)
                documents[b, at : at + n] = doc
                dialog_ids[b, at : at + n] = i
                at += n
            documents[b, at:] = len(row)  # padding is its own document, so it never joins a dialog
        return PackedBatch(*(torch.from_numpy(a) for a in (tokens, targets, positions, documents, dialog_ids)))


def dialog_lengths(dialogs: list[Dialog]) -> dict[str, float]:
    lengths = np.array([len(d) + 1 for d in dialogs])
    return {"dialogs": len(dialogs), "mean_tokens": float(lengths.mean()), "max_tokens": int(lengths.max())}
