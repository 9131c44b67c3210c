"""Hugging Face transformers backend: batched ``generate`` (greedy unless a temperature is given) with the
tokenizer's chat template.

``chat_prompts`` and ``reply_text`` are shared with the vLLM backend, so both see the same prompt
tokens and turn the same generated ids into the same text: greedy decoding then gives the same
records whichever backend runs the model.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


def chat_prompts(
    tokenizer: Any, conversations: list[list[dict[str, Any]]], tools: list[dict[str, Any]] | None
) -> list[list[int]]:
    """The prompt token ids of each conversation: its chat template rendering plus the assistant header."""
    texts = [
        tokenizer.apply_chat_template(c, tools=tools, add_generation_prompt=True, tokenize=False) for c in conversations
    ]
    # the template writes every special token itself: adding a BOS again would change the prompt
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def reply_text(tokenizer: Any, ids: list[int]) -> tuple[str, int]:
    """(assistant text, tokens generated) of one generated id sequence.

    The reply ends at the first end-of-turn (eos) token, which counts as generated but is not
    returned; padding after it is dropped. Other special tokens are kept, so tool-call tags survive.
    """
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos in ids:
        ids = ids[: ids.index(eos) + 1]
    elif pad is not None and pad != eos:
        ids = [i for i in ids if i != pad]
    text = tokenizer.decode([i for i in ids if i not in (eos, pad)], skip_special_tokens=False)
    return text.strip(), len(ids)


class HFPolicy:
    """Continues conversations with a causal LM; tool-call tags are kept in the returned text.

    ``tools`` (OpenAI/HF schemas) go to the chat template: pass none for in-weight models.
    Replies end at the tokenizer's end-of-turn (eos) token, which is not returned.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        tools: list[dict[str, Any]] | None = None,
        *,
        max_new_tokens: int = 128,
        batch_size: int = 64,
        temperature: float = 0.0,
    ):
        if max_new_tokens < 1 or batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be at least 1")
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature}")
        self.model = model
        self.tokenizer = tokenizer
        self.tools = tools or None
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.temperature = temperature
        self.last_token_counts: list[int] = []

    def generate(self, conversations: list[list[dict[str, Any]]]) -> list[str]:
        texts: list[str] = []
        counts: list[int] = []
        for start in range(0, len(conversations), self.batch_size):
            chunk_texts, chunk_counts = self._generate(conversations[start : start + self.batch_size])
            texts += chunk_texts
            counts += chunk_counts
        self.last_token_counts = counts
        return texts

    def _generate(self, conversations: list[list[dict[str, Any]]]) -> tuple[list[str], list[int]]:
        import torch

        tok = self.tokenizer
        prompts = chat_prompts(tok, conversations, self.tools)
        side = tok.padding_side
        tok.padding_side = "left"  # decoder-only batches must end where generation starts
        try:
            batch = tok.pad({"input_ids": prompts}, return_tensors="pt", padding=True).to(self.model.device)
        finally:
            tok.padding_side = side
        was_training = self.model.training
        self.model.eval()
        # sampling (exploration wants varied proposals) draws from torch's global generator: seed it to repeat
        decoding = (
            {"do_sample": True, "temperature": self.temperature, "top_p": 0.95}
            if self.temperature
            else {"do_sample": False}
        )
        try:
            with torch.inference_mode():
                out = self.model.generate(
                    **batch,
                    max_new_tokens=self.max_new_tokens,
                    **decoding,
                    eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id,
                )
        finally:
            if was_training:
                self.model.train()
        new = out[:, batch["input_ids"].shape[1] :].tolist()
        replies = [reply_text(tok, ids) for ids in new]
        return [text for text, _ in replies], [count for _, count in replies]
