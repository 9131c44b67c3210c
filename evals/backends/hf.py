"""Hugging Face transformers backend: batched ``generate`` (greedy unless a temperature is given) with the
tokenizer's chat template.

``chat_prompts`` and ``reply_text`` are shared with the vLLM backend, so both see the same prompt
tokens and turn the same generated ids into the same text: greedy decoding then gives the same
records whichever backend runs the model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from itl_env.tool_choice import AUTO, FORCED_MIN_TOKENS, NONE, call_frame, call_grammar

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
        self._forced: Forcing | None = None

    def generate(
        self, conversations: list[list[dict[str, Any]]], tool_choice: Sequence[str] | None = None
    ) -> list[str]:
        """One reply per conversation; ``tool_choice`` (``itl_env.tool_choice``): one value per conversation."""
        choices = list(tool_choice) if tool_choice is not None else [AUTO] * len(conversations)
        texts: list[str] = [""] * len(conversations)
        counts: list[int] = [0] * len(conversations)
        for choice in dict.fromkeys(choices):  # conversations forced alike are generated together
            rows = [i for i, c in enumerate(choices) if c == choice]
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start : start + self.batch_size]
                chunk_texts, chunk_counts = self._generate([conversations[i] for i in chunk], choice)
                for i, text, count in zip(chunk, chunk_texts, chunk_counts, strict=True):
                    texts[i], counts[i] = text, count
        self.last_token_counts = counts
        return texts

    def _generate(self, conversations: list[list[dict[str, Any]]], choice: str = AUTO) -> tuple[list[str], list[int]]:
        import torch

        tok = self.tokenizer
        prompts = chat_prompts(tok, conversations, self.tools)
        constraint: dict[str, Any] = {}
        before = after = ""
        if choice == NONE and self.tools:
            constraint["bad_words_ids"] = [self._forcing().opening_ids]
        elif choice not in (AUTO, NONE):
            forcing = self._forcing()
            before, after = forcing.before, forcing.after
            prompts = [p + forcing.opening_ids_in_prompt for p in prompts]
            constraint["logits_processor"] = [forcing.processor(choice)]
            constraint["max_new_tokens"] = max(self.max_new_tokens, FORCED_MIN_TOKENS)
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
                    **{"max_new_tokens": self.max_new_tokens, **constraint},
                    **decoding,
                    eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id,
                )
        finally:
            if was_training:
                self.model.train()
        new = out[:, batch["input_ids"].shape[1] :].tolist()
        replies = [reply_text(tok, ids) for ids in new]
        return [(before + text + after).strip() for text, _ in replies], [count for _, count in replies]

    def _forcing(self) -> Forcing:
        if self._forced is None:
            if not self.tools:
                raise ValueError("tool_choice other than auto/none needs tools, and this policy offers none")
            self._forced = Forcing(self.tokenizer, self.tools, vocab_size=self.model.config.vocab_size)
        return self._forced


class Forcing:
    """What forcing a call takes for one tokenizer and tool set: the call's frame and compiled JSON grammars."""

    def __init__(self, tokenizer: Any, tools: list[dict[str, Any]], *, vocab_size: int):
        import xgrammar as xgr

        self.tools = tools
        self.before, self.after = call_frame(tokenizer, tools)
        # the opening (e.g. "<tool_call>\n") is written into the prompt, the JSON is generated under the grammar
        self.opening_ids_in_prompt = tokenizer(self.before, add_special_tokens=False)["input_ids"]
        self.opening_ids = tokenizer(self.before.strip(), add_special_tokens=False)["input_ids"]  # banned by none
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=[tokenizer.eos_token_id]
        )
        self.compiler = xgr.GrammarCompiler(info, max_threads=1)
        self.grammars: dict[str, Any] = {}

    def processor(self, choice: str) -> Any:
        """A fresh logits processor (xgrammar's are single-use) constraining the reply to one call of ``choice``."""
        import xgrammar.contrib.hf

        if choice not in self.grammars:
            self.grammars[choice] = self.compiler.compile_grammar(call_grammar(self.tools, choice))
        return xgrammar.contrib.hf.LogitsProcessor(self.grammars[choice])
