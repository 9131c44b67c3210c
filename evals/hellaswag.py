"""HellaSwag zero-shot accuracy (and length-normalised accuracy) of a model.

Items come through ``datasets`` from the hub (``hub``), from a JSONL file in HellaSwag's schema, or
from a small sample in the same schema written for this project (``sample``; ``auto`` tries the hub
and falls back to it offline). An ending is scored by its summed log-likelihood given the context.
"""

from __future__ import annotations

import logging
import re
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from evals.divergence import next_token_log_probs

logger = logging.getLogger(__name__)

HUB_DATASET = "Rowan/hellaswag"


class HellaSwagItem(BaseModel):
    """One HellaSwag row (the hub dataset's schema; ``label`` is the right ending's index as text)."""

    model_config = ConfigDict(extra="forbid")

    ind: int
    activity_label: str
    ctx_a: str
    ctx_b: str
    ctx: str
    endings: list[str] = Field(min_length=2)
    source_id: str
    split: str
    split_type: str
    label: str


class HellaSwagResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str
    items: int
    base_acc: float
    model_acc: float
    base_acc_norm: float
    model_acc_norm: float
    acc_change: float = Field(description="model_acc - base_acc")
    acc_norm_change: float = Field(description="model_acc_norm - base_acc_norm")


def load_hellaswag(source: str = "auto", limit: int | None = None) -> tuple[str, list[HellaSwagItem]]:
    """(where the items came from, the items): ``hub``, ``sample``, ``auto`` (hub, else sample) or a JSONL path."""
    if source in ("hub", "auto"):
        try:
            from datasets import load_dataset

            rows = load_dataset(HUB_DATASET, split="validation")
            if limit:
                rows = rows.select(range(min(limit, len(rows))))
            return f"hub:{HUB_DATASET}", [HellaSwagItem.model_validate(dict(r)) for r in rows]
        except Exception as err:  # offline, no such dataset, a schema change: fall back, or report it
            if source == "hub":
                raise RuntimeError(f"could not load {HUB_DATASET} from the hub: {err}") from err
            logger.warning("HellaSwag from the hub unavailable (%s); using the project's sample", type(err).__name__)
            source = "sample"
    if source == "sample":
        text = resources.files("evals").joinpath("data", "hellaswag_sample.jsonl").read_text(encoding="utf-8")
    else:
        text = Path(source).read_text(encoding="utf-8")
    items = [HellaSwagItem.model_validate_json(line) for line in text.splitlines() if line.strip()]
    return source, items[:limit] if limit else items


def _clean(text: str) -> str:
    """HellaSwag's WikiHow markup removed, as the usual zero-shot evaluation does."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_choices(item: HellaSwagItem) -> tuple[str, list[str]]:
    """(context, continuations) scored for one item."""
    context = _clean(f"{item.activity_label}: {item.ctx_a} {item.ctx_b.capitalize()}")
    return context, [" " + _clean(ending) for ending in item.endings]


def hellaswag_accuracy(model: Any, tokenizer: Any, items: list[HellaSwagItem], batch_size: int) -> tuple[float, float]:
    """(accuracy, length-normalised accuracy): the ending with the highest log-likelihood given the context."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    requests: list[tuple[list[int], int, int]] = []  # (ids, continuation start, characters)
    for item in items:
        context, endings = hellaswag_choices(item)
        context_ids = tokenizer(context)["input_ids"]
        for ending in endings:
            whole = tokenizer(context + ending)["input_ids"]
            requests.append((whole, len(context_ids), len(ending)))
    scores: list[float] = []
    for start in range(0, len(requests), batch_size):
        chunk = requests[start : start + batch_size]
        log_probs, _ = next_token_log_probs(model, [ids for ids, _, _ in chunk], pad)
        for k, (ids, begin, _) in enumerate(chunk):
            positions = range(max(begin, 1), len(ids))
            scores.append(sum(float(log_probs[k, t - 1, ids[t]]) for t in positions))
    right = right_norm = 0
    cursor = 0
    for item in items:
        n = len(item.endings)
        item_scores = scores[cursor : cursor + n]
        chars = [c for _, _, c in requests[cursor : cursor + n]]
        cursor += n
        gold = int(item.label)
        right += max(range(n), key=lambda i: item_scores[i]) == gold
        right_norm += max(range(n), key=lambda i: item_scores[i] / max(chars[i], 1)) == gold
    return right / len(items), right_norm / len(items)
