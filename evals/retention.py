"""Retention: what fine-tuning costs a model's other abilities, measured against its base.

    python -m evals.retention --model runs/sft-in_weight-.../model    # the base: what the run started from
    python -m evals.retention --base runs/base-model --model runs/sft/model
    python -m evals.retention --base HuggingFaceTB/SmolLM2-135M-Instruct --model runs/sft/model --hellaswag hub
    python -m evals.retention --config configs/retention.yaml --out results/retention.json
    itl-retention --base smollm2-135m --model runs/sft/model     # the same, installed command

Divergence (``evals.divergence``): KL / total variation / NLL change of the model from the base on
the base's greedy continuations of a fixed prompt set, over the vocabulary both share (tokens the
fine-tune added, such as ``<tool_call>``, are left out and the model's distribution renormalised
over the rest). HellaSwag (``evals.hellaswag``, through lm-eval): zero-shot accuracy of both
models, the change and the model's accuracy as a % of the base's; the project's offline sample is
labelled as what it is.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from evals.divergence import Divergence, DivergenceProbe, load_prompts, shared_vocabulary
from evals.hellaswag import HellaSwagProbe, HellaSwagResult
from evals.provenance import provenance

logger = logging.getLogger("evals.retention")

PROG = "python -m evals.retention"


class RetentionReport(BaseModel):
    """What fine-tuning cost a model against its base: divergence (overall and per category) and HellaSwag."""

    model_config = ConfigDict(extra="forbid")

    base: str
    model: str
    prompts: int
    prompt_format: str
    rendered: str = Field("", description="how the prompts were rendered (template, system turn)")
    vocabulary: str = Field(description="the token ids compared, and what was left out")
    divergence: Divergence
    by_category: dict[str, Divergence]
    hellaswag: HellaSwagResult | None


class RetentionConfig(BaseModel):
    """One retention measurement: the fine-tuned model, its base, the prompts, HellaSwag's items and the device."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="the fine-tuned model: a run's model/ or checkpoint directory (or any model)")
    base: str | None = Field(
        None,
        description="the base: a directory, hub id, 'default' or 'smollm2-135m' (none: the model the run started "
        "from, as its run.json records)",
    )
    prompts: str | None = Field(None, description="prompt set JSONL (none: the project's set)")
    prompt_format: Literal["chat", "text"] = Field(
        "chat",
        description="chat: each prompt as a user turn in the base's chat template; text: the raw prompt, as a "
        "language model continues it (separates chat behaviour from the language model underneath)",
    )
    default_system: bool = Field(
        False,
        description="chat: keep the system turn a template writes when none is given (SmolLM2's); default: one user "
        "turn alone, as the paper's prompts",
    )
    max_new_tokens: int = Field(400, ge=1, description="length of the base's greedy continuations (the paper: 400)")
    first_tokens: int = Field(32, ge=1, description="KL also over each continuation's first N tokens")
    batch_size: int = Field(16, ge=1, description="sequences per forward pass")
    hellaswag: str = Field("auto", description="auto, hub, sample, none, or a JSONL file in HellaSwag's schema")
    hellaswag_limit: int | None = Field(200, ge=1, description="HellaSwag items scored (none: all)")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="float32, bfloat16, float16 or auto"
    )
    device: str = Field("cpu", description="torch device")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (none: torch's choice)")
    out: str | None = Field(None, description="also write the report to this JSON file")


def load_model(name: str, dtype: str, device: str) -> tuple[Any, Any]:
    """A directory, hub id, ``default`` or ``smollm2-135m`` (``evals.models``), as stored: no template changes."""
    import torch

    from evals.models import load_as_is

    model, tokenizer = load_as_is(name, dtype="auto" if dtype == "auto" else getattr(torch, dtype))
    return model.to(device).eval(), tokenizer


def base_of(model: str) -> str:
    """The model a run started from (its run.json), for a run's ``model/`` or checkpoint directory."""
    info = provenance(model) if Path(model).is_dir() else None
    if info is None:
        raise ValueError(f"{model} records no base (no run.json beside it): pass --base")
    return info["model"]


def vocabulary_note(base_tokenizer: Any, model_tokenizer: Any) -> str:
    shared = shared_vocabulary(base_tokenizer, model_tokenizer)
    added = len(model_tokenizer) - shared
    note = f"the base's {shared:,} token ids"
    if added > 0:
        note += f"; the fine-tuned model's {added} added token(s) are left out and its distribution renormalised"
    return note


def main(cfg: RetentionConfig) -> RetentionReport:
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    base_name = cfg.base or base_of(cfg.model)
    base, tokenizer = load_model(base_name, cfg.dtype, cfg.device)
    model, model_tokenizer = load_model(cfg.model, cfg.dtype, cfg.device)
    note = vocabulary_note(tokenizer, model_tokenizer)  # refuses two unrelated vocabularies before any work
    from tqdm import tqdm

    with tqdm(total=2, desc="retention", unit="stage") as bar:
        probe = DivergenceProbe(
            base,
            tokenizer,
            load_prompts(cfg.prompts),
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.batch_size,
            chat=cfg.prompt_format == "chat",
            default_system=cfg.default_system,
            first_tokens=cfg.first_tokens,
        )
        divergence, by_category = probe.measure(model, model_tokenizer)
        bar.update()
        hellaswag = None
        if cfg.hellaswag != "none":
            swag = HellaSwagProbe(base, tokenizer, cfg.hellaswag, limit=cfg.hellaswag_limit, batch_size=cfg.batch_size)
            hellaswag = swag.measure(model, model_tokenizer)
        bar.update()
    report = RetentionReport(
        base=base_name,
        model=cfg.model,
        prompts=len(probe.prompts),
        prompt_format=cfg.prompt_format,
        rendered=probe.rendering,
        vocabulary=note,
        divergence=divergence,
        by_category=by_category,
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
    from configs.cli import print_json, run_cli

    run_cli(PROG, lambda args: main(parse(args)), argv, show=print_json)


if __name__ == "__main__":
    cli()
