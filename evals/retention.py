"""Retention: what fine-tuning costs a model's other abilities, measured against its base.

    python -m evals.retention --base runs/base-model --model runs/sft/model
    python -m evals.retention --base HuggingFaceTB/SmolLM2-135M-Instruct --model runs/sft/model --hellaswag hub
    python -m evals.retention --config configs/retention.yaml --out results/retention.json
    itl-retention --base smollm2-135m --model runs/sft/model     # the same, installed command

Divergence (``evals.divergence``): KL / total variation / NLL change of the model from the base on
the base's greedy continuations of a fixed prompt set. HellaSwag (``evals.hellaswag``): zero-shot
accuracy of both models, with the fine-tuned model's change relative to the base.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from evals.divergence import Divergence, divergence_terms, greedy_continuations, load_prompts, prompt_ids, summarise
from evals.hellaswag import HellaSwagResult, hellaswag_accuracy, load_hellaswag

logger = logging.getLogger("evals.retention")

PROG = "python -m evals.retention"


class RetentionReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: str
    model: str
    prompts: int
    divergence: Divergence
    by_category: dict[str, Divergence]
    hellaswag: HellaSwagResult | None


class RetentionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: str = Field(description="the base model: a directory, hub id, 'default' or 'smollm2-135m'")
    model: str = Field(description="the fine-tuned model (a directory, or as --base)")
    prompts: str | None = Field(None, description="prompt set JSONL (none: the project's set)")
    max_new_tokens: int = Field(32, ge=1, description="length of the base's greedy continuations")
    batch_size: int = Field(16, ge=1, description="sequences per forward pass")
    hellaswag: str = Field("auto", description="auto, hub, sample, none, or a JSONL file in HellaSwag's schema")
    hellaswag_limit: int | None = Field(200, ge=1, description="HellaSwag items scored (none: all)")
    dtype: str = Field("float32", description="float32, bfloat16, float16 or auto")
    device: str = Field("cpu", description="torch device")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (none: torch's choice)")
    out: str | None = Field(None, description="also write the report to this JSON file")


def load_model(name: str, dtype: str, device: str) -> tuple[Any, Any]:
    """A directory, hub id, ``default`` or ``smollm2-135m`` (``evals.models``), as stored: no template changes."""
    import torch

    from evals.models import load_as_is

    model, tokenizer = load_as_is(name, dtype="auto" if dtype == "auto" else getattr(torch, dtype))
    return model.to(device).eval(), tokenizer


def main(cfg: RetentionConfig) -> RetentionReport:
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    base, tokenizer = load_model(cfg.base, cfg.dtype, cfg.device)
    model, model_tokenizer = load_model(cfg.model, cfg.dtype, cfg.device)
    if model_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"{cfg.model} and {cfg.base} have different vocabularies: token-level divergence is undefined")
    prompts = load_prompts(cfg.prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    from tqdm import tqdm

    with tqdm(total=3, desc="retention", unit="stage") as bar:
        ids = [prompt_ids(tokenizer, p.prompt) for p in prompts]
        continuations = greedy_continuations(base, tokenizer, ids, cfg.max_new_tokens, cfg.batch_size)
        bar.update()
        rows = divergence_terms(base, model, ids, continuations, cfg.batch_size, pad)
        bar.update()
        hellaswag = None
        if cfg.hellaswag != "none":
            source, items = load_hellaswag(cfg.hellaswag, cfg.hellaswag_limit)
            base_acc, base_norm = hellaswag_accuracy(base, tokenizer, items, cfg.batch_size)
            model_acc, model_norm = hellaswag_accuracy(model, tokenizer, items, cfg.batch_size)
            hellaswag = HellaSwagResult(
                source=source,
                items=len(items),
                base_acc=base_acc,
                model_acc=model_acc,
                base_acc_norm=base_norm,
                model_acc_norm=model_norm,
                acc_change=model_acc - base_acc,
                acc_norm_change=model_norm - base_norm,
            )
        bar.update()
    categories = sorted({p.category for p in prompts})
    report = RetentionReport(
        base=cfg.base,
        model=cfg.model,
        prompts=len(prompts),
        divergence=summarise(rows),
        by_category={
            c: summarise([r for r, p in zip(rows, prompts, strict=True) if p.category == c]) for c in categories
        },
        hellaswag=hellaswag,
    )
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return report


def parse(argv: list[str] | None = None) -> RetentionConfig:
    from configs import resolve

    (cfg,) = resolve([RetentionConfig], argv, prog=PROG, description=__doc__)
    return cfg


def cli(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = parse(argv)
    try:
        result = main(cfg)
    except (OSError, ValueError, RuntimeError) as err:
        sys.exit(f"{PROG}: {err}")
    print(json.dumps(result.model_dump(), indent=2))


if __name__ == "__main__":
    cli()
