"""``NanoLlamaPolicy``: batched greedy decoding with a KV cache, as a policy for the rollout driver.

``generate(conversations)`` writes each OpenAI-format conversation in the training byte format
(``ByteTokenizer.encode_prompt``), continues it greedily until ``<|end|>`` and returns the text;
the environment parses tool calls in it and executes them for real. Prompts of a batch are left
padded into one static-shape cache; finished sequences leave the batch once half of it is done.

    policy = NanoLlamaPolicy(model, tokenizer)
    RecallEvaluator(world, mode="in_tool", tool_format="find").evaluate(policy, world.facts("train"))
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from trainers.nanollama.model import KVCache, Llama
from trainers.nanollama.tokenizer import ByteTokenizer

logger = logging.getLogger(__name__)


class NanoLlamaPolicy:
    """A nanoLlama and its tokenizer as a rollout policy: batched greedy decoding of each conversation."""

    def __init__(
        self,
        model: Llama,
        tokenizer: ByteTokenizer,
        *,
        max_new_tokens: int = 128,
        batch_size: int = 256,
        use_cache: bool = True,
    ):
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be at least 1")
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.batch_size, self.use_cache = max_new_tokens, batch_size, use_cache
        self.stop_ids = {tokenizer.end_id, *tokenizer.role_id.values()}  # a new role also ends the turn
        self.last_token_counts: list[int] = []

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(self, conversations: list[list[dict[str, Any]]]) -> list[str]:
        limit = self.model.cfg.max_seq_len - self.max_new_tokens
        prompts = [self.tokenizer.encode_prompt(messages) for messages in conversations]
        if any(len(p) > limit for p in prompts):  # only runaway conversations (a model writing garbage) get here
            logger.warning("conversations over %d tokens keep only their last %d tokens", limit, limit)
            prompts = [p[-limit:] for p in prompts]
        replies = self.generate_ids(prompts)
        self.last_token_counts = [len(r) for r in replies]
        return [self.tokenizer.decode([t for t in r if t not in self.stop_ids]) for r in replies]

    @torch.no_grad()
    def generate_ids(self, prompts: list[list[int]]) -> list[list[int]]:
        """Greedy continuations (stop token included when reached), batched by prompt length."""
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths pad less
        out: list[list[int]] = [[] for _ in prompts]
        step = self.batch_size if self.use_cache else 1
        for first in range(0, len(order), step):
            chunk = order[first : first + step]
            decode = self._decode_cached if self.use_cache else self._decode_uncached
            for i, reply in zip(chunk, decode([prompts[i] for i in chunk]), strict=True):
                out[i] = reply
        return out

    def _decode_cached(self, prompts: list[list[int]]) -> list[list[int]]:
        model, dev = self.model, self.device
        B, P = len(prompts), max(len(p) for p in prompts)
        if P + self.max_new_tokens > model.cfg.max_seq_len:
            raise ValueError(
                f"prompt of {P} tokens + {self.max_new_tokens} new exceeds max_seq_len {model.cfg.max_seq_len}"
            )
        pad = torch.tensor([P - len(p) for p in prompts], device=dev)  # (B,) left padding
        tokens = torch.zeros(B, P, dtype=torch.long, device=dev)
        for b, p in enumerate(prompts):
            tokens[b, P - len(p) :] = torch.tensor(p, dtype=torch.long)
        slots = torch.arange(P + self.max_new_tokens, device=dev)
        valid = slots[None, :] >= pad[:, None]  # (B, S): real tokens (future slots are masked causally)
        positions = (slots[None, :P] - pad[:, None]).clamp(min=0)  # (B, P) per-sequence RoPE positions
        cache = KVCache(model.cfg, B, P + self.max_new_tokens, model.lm_head.weight.dtype, dev)
        logits = model.step_with_cache(tokens, positions, cache, 0, valid)
        rows = torch.arange(B, device=dev)  # which original sequence each live row is
        finished = torch.zeros(B, dtype=torch.bool, device=dev)
        replies: list[list[int]] = [[] for _ in range(B)]
        stop = torch.tensor(sorted(self.stop_ids), device=dev)
        for t in range(self.max_new_tokens):
            next_ids = logits.argmax(-1)  # (live,)
            for r, tok, done in zip(rows.tolist(), next_ids.tolist(), finished.tolist(), strict=True):
                if not done:
                    replies[r].append(tok)
            finished |= torch.isin(next_ids, stop)
            if t == self.max_new_tokens - 1 or bool(finished.all()):
                break
            if int(finished.sum()) * 2 >= len(rows):  # drop finished rows once half of the batch is done
                keep = (~finished).nonzero().squeeze(1)
                cache.select(keep)
                rows, next_ids, valid, pad, finished = (
                    rows[keep],
                    next_ids[keep],
                    valid[keep],
                    pad[keep],
                    finished[keep],
                )
            positions = (P + t - pad)[:, None]  # (live, 1)
            logits = model.step_with_cache(next_ids[:, None], positions, cache, P + t, valid)
        return replies

    def _decode_uncached(self, prompts: list[list[int]]) -> list[list[int]]:
        """Reference decoder: recompute the whole sequence for every new token (one prompt at a time)."""
        replies = []
        for prompt in prompts:
            ids = list(prompt)
            reply: list[int] = []
            for _ in range(self.max_new_tokens):
                logits, _ = self.model(torch.tensor([ids], device=self.device))
                tok = int(logits[0, -1].argmax())
                reply.append(tok)
                ids.append(tok)
                if tok in self.stop_ids:
                    break
            replies.append(reply)
        return replies
