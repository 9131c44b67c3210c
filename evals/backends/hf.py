"""Hugging Face transformers backend: batched greedy ``generate`` with the tokenizer's chat template."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


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
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.tools = tools or None
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
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
        prompts = [
            tok.apply_chat_template(c, tools=self.tools, add_generation_prompt=True, tokenize=False)
            for c in conversations
        ]
        side = tok.padding_side
        tok.padding_side = "left"  # decoder-only batches must end where generation starts
        try:
            batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
        finally:
            tok.padding_side = side
        was_training = self.model.training
        self.model.eval()
        with torch.inference_mode():
            out = self.model.generate(
                **batch,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        if was_training:
            self.model.train()
        new = out[:, batch["input_ids"].shape[1] :].tolist()
        texts, counts = [], []
        for ids in new:
            if tok.eos_token_id in ids:
                ids = ids[: ids.index(tok.eos_token_id) + 1]
            else:
                ids = [i for i in ids if i != tok.pad_token_id]
            counts.append(len(ids))
            text = tok.decode(
                [i for i in ids if i not in (tok.eos_token_id, tok.pad_token_id)], skip_special_tokens=False
            )
            texts.append(text.strip())
        return texts, counts
