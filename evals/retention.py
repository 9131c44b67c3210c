"""Retention: what in-weight learning costs a model's other abilities, measured against its base.

    python -m evals.retention --base runs/base-model --model runs/sft/model
    python -m evals.retention --base HuggingFaceTB/SmolLM2-135M-Instruct --model runs/sft/model --hellaswag hub
    python evals/retention.py --config configs/retention.yaml --out results/retention.json

Divergence: the base model continues each prompt of a fixed set written for this project
(``evals/data/retention_prompts.jsonl``: factual, creative, math and language prompts, in the
chat template when the tokenizer has one) greedily; on those continuations both models'
next-token distributions are compared token by token: KL(base || model), total variation, the
negative log-likelihood each gives the base's tokens and its base-relative change
``(nll_model - nll_base) / nll_base``, and how often their top tokens agree.

HellaSwag: zero-shot accuracy (and length-normalised accuracy) of both models, through
``datasets`` from the hub (``--hellaswag hub``) or from a small sample in the same schema written
for this project (``--hellaswag sample``; ``auto`` tries the hub and falls back to it offline);
reported with the fine-tuned model's change relative to the base.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

if __package__ in (None, ""):  # `python evals/retention.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

logger = logging.getLogger("evals.retention")

HUB_DATASET = "Rowan/hellaswag"


class Prompt(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    category: Literal["factual", "creative", "math", "language"]
    prompt: str


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


class Divergence(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens: int
    kl: float = Field(description="mean per token of KL(base || model), nats")
    tv: float = Field(description="mean per token of the total-variation distance")
    base_nll: float = Field(description="mean NLL of the base's continuation tokens under the base")
    model_nll: float = Field(description="the same under the fine-tuned model")
    nll_change: float = Field(description="(model_nll - base_nll) / base_nll")
    top1_agreement: float = Field(description="share of positions where both models' most likely token agree")


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


# ---------------------------------------------------------------------------------------------- data


def load_prompts(path: str | os.PathLike[str] | None = None) -> list[Prompt]:
    """The prompt set: ``path`` or the project's ``evals/data/retention_prompts.jsonl``."""
    text = (
        Path(path).read_text(encoding="utf-8")
        if path
        else resources.files("evals").joinpath("data", "retention_prompts.jsonl").read_text(encoding="utf-8")
    )
    return [Prompt.model_validate_json(line) for line in text.splitlines() if line.strip()]


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


# ---------------------------------------------------------------------------------------------- model side


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """A prompt as the model is asked it: a user turn in the chat template when there is one, else raw text."""
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt)["input_ids"]


def greedy_continuations(
    model: Any, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int, batch_size: int
) -> list[list[int]]:
    """The base's greedy continuation of each prompt, up to and including its end-of-turn token."""
    import torch

    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(map(len, chunk))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=model.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=model.device)
        with torch.inference_mode():
            generated = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=pad,
            )
        for row in generated[:, width:].tolist():
            out.append(row[: row.index(eos) + 1] if eos in row else row)
    return out


def _log_probs(model: Any, sequences: list[list[int]], pad: int) -> tuple[Any, Any]:
    """(log-probabilities (B, T, V) of each next token, mask (B, T)) of right-padded ``sequences``."""
    import torch

    width = max(map(len, sequences))
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in sequences], device=model.device)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences], device=model.device)
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
    return torch.log_softmax(logits, dim=-1), mask


def divergence_terms(
    base: Any, model: Any, prompts: list[list[int]], continuations: list[list[int]], batch_size: int, pad: int
) -> list[dict[str, list[float]]]:
    """Per prompt, per continuation token: KL, TV, both NLLs and top-1 agreement."""
    import torch

    rows: list[dict[str, list[float]]] = []
    pairs = list(zip(prompts, continuations, strict=True))
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        base_lp, _ = _log_probs(base, [p + c for p, c in chunk], pad)
        model_lp, _ = _log_probs(model, [p + c for p, c in chunk], pad)
        if base_lp.shape[-1] != model_lp.shape[-1]:
            vocab = min(base_lp.shape[-1], model_lp.shape[-1])  # padded embedding rows: compare the shared ids
            base_lp = torch.log_softmax(base_lp[..., :vocab], dim=-1)
            model_lp = torch.log_softmax(model_lp[..., :vocab], dim=-1)
        for k, (prompt, continuation) in enumerate(chunk):
            # position t predicts token t+1: the continuation is predicted from len(prompt)-1 on
            span = slice(len(prompt) - 1, len(prompt) - 1 + len(continuation))
            b, m = base_lp[k, span], model_lp[k, span]
            target = torch.tensor(continuation, device=b.device).unsqueeze(-1)
            p = b.exp()
            rows.append(
                {
                    "kl": (p * (b - m)).sum(-1).clamp_min(0).tolist(),
                    "tv": (0.5 * (p - m.exp()).abs().sum(-1)).tolist(),
                    "base_nll": (-b.gather(-1, target).squeeze(-1)).tolist(),
                    "model_nll": (-m.gather(-1, target).squeeze(-1)).tolist(),
                    "agree": (b.argmax(-1) == m.argmax(-1)).float().tolist(),
                }
            )
    return rows


def summarise(rows: list[dict[str, list[float]]]) -> Divergence:
    def mean(key: str) -> float:
        values = [v for row in rows for v in row[key]]
        return sum(values) / len(values) if values else 0.0

    tokens = sum(len(row["kl"]) for row in rows)
    base_nll, model_nll = mean("base_nll"), mean("model_nll")
    return Divergence(
        tokens=tokens,
        kl=mean("kl"),
        tv=mean("tv"),
        base_nll=base_nll,
        model_nll=model_nll,
        nll_change=(model_nll - base_nll) / base_nll if base_nll > 0 else 0.0,
        top1_agreement=mean("agree"),
    )


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
        log_probs, _ = _log_probs(model, [ids for ids, _, _ in chunk], pad)
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
    """``RetentionConfig`` from defaults < ``--config`` YAML < the flags given; unknown keys are an error."""
    import yaml

    parser = argparse.ArgumentParser(
        prog="python -m evals.retention",
        description="KL / total variation of a fine-tuned model from its base on the base's own continuations, "
        "and HellaSwag accuracy relative to the base.",
    )
    parser.add_argument("--config", help="YAML file of options (the flags' names with underscores); flags override it")
    for name, field in RetentionConfig.model_fields.items():
        required = field.is_required()
        default = "required" if required else field.default if field.default is not None else "none"
        kind = int if field.annotation in (int, int | None) else str
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=(lambda text, k=kind: None if text.lower() == "none" else k(text)),
            default=argparse.SUPPRESS,
            help=f"{field.description} ({default})".replace("%", "%%"),
        )
    args = vars(parser.parse_args(argv))
    config_path = args.pop("config", None)
    data: dict[str, Any] = {}
    if config_path:
        data = yaml.safe_load(Path(config_path).read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            parser.error(f"{config_path}: a config file must be a mapping of option: value")
    try:
        return RetentionConfig.model_validate({**data, **args})
    except ValidationError as err:
        parser.error(str(err))
        raise  # unreachable: parser.error exits


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = parse()
    try:
        result = main(config)
    except (OSError, ValueError, RuntimeError) as err:
        sys.exit(f"evals.retention: {err}")
    print(json.dumps(result.model_dump(), indent=2))
