"""nanoLlama: a Llama-style decoder in one file (the model of the paper's controlled study).

RMSNorm -> causal self-attention with RoPE -> RMSNorm -> SwiGLU FFN, pre-norm residual blocks,
untied input and output embeddings. Sizes follow the paper: FFN width ``ffn_mult * emb_dim``
(4d, not Llama's 8/3 d), so with 2 layers the model has ``32 d^2 + (2 V + 5) d`` parameters
(``32 d^2 + 525 d`` for the paper's 260-token vocabulary).

Packed training: several dialogs share one row; ``documents`` (B, T) names the dialog of each
token and ``positions`` (B, T) restarts at 0 in each dialog, so attention is block-diagonal
causal and a token sees exactly what it would see alone. Decoding uses a static-shape KV cache
(``KVCache``): all sequences of a batch write their next token into the same slot, left padding
is masked out and RoPE positions are per sequence.

Shapes: B batch, T time, C = emb_dim, H heads, D = C // H head dim, V vocabulary, S cache slots.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LlamaConfig:
    """The shape of a nanoLlama: vocabulary, width, depth, heads, FFN multiple, RoPE and weight init."""

    vocab_size: int = 262
    emb_dim: int = 32
    n_layers: int = 2
    n_heads: int = 2
    ffn_mult: int = 4  # FFN hidden width = ffn_mult * emb_dim
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    max_seq_len: int = 1024  # RoPE table length: the longest dialog or decode the model will see
    init_std: float = 0.02  # weight init std (GPT-2/Llama); d ** -0.5 learned the copy skill slower here

    def __post_init__(self) -> None:
        if self.emb_dim % self.n_heads:
            raise ValueError(f"emb_dim {self.emb_dim} is not divisible by n_heads {self.n_heads}")
        if (self.emb_dim // self.n_heads) % 2:
            raise ValueError(f"head dim {self.emb_dim // self.n_heads} must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads

    @property
    def ffn_dim(self) -> int:
        return self.ffn_mult * self.emb_dim

    def to_dict(self) -> dict:
        return asdict(self)


def count_parameters(cfg: LlamaConfig) -> int:
    """Parameters of ``Llama(cfg)``: embeddings, per-layer attention + SwiGLU + 2 norms, final norm."""
    c, f = cfg.emb_dim, cfg.ffn_dim
    per_layer = 4 * c * c + 3 * c * f + 2 * c
    return 2 * cfg.vocab_size * c + cfg.n_layers * per_layer + c


def rope_table(cfg: LlamaConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and signed sine of every (position, dim), each (max_seq_len, D): Llama's rotate-half layout,
    where dim i < D/2 pairs with i + D/2. The sin's first half is negated so rotation is ``x cos + swap(x) sin``.
    """
    inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim)
    angles = torch.outer(torch.arange(cfg.max_seq_len, dtype=torch.float32), inv_freq)  # (L, D/2)
    return torch.cat((angles.cos(), angles.cos()), -1), torch.cat((-angles.sin(), angles.sin()), -1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, T, H, D) by per-token angles, cos/sin (B, T, 1, D) from ``rope_table``."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((x2, x1), dim=-1) * sin


class RMSNorm(nn.Module):
    """Root-mean-square normalisation over the last dimension, with a learned per-channel gain."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


class KVCache:
    """Static-shape keys and values of every layer: (B, H, S, D) each, written slot by slot."""

    def __init__(self, cfg: LlamaConfig, batch: int, slots: int, dtype: torch.dtype, device: torch.device | str):
        shape = (batch, cfg.n_heads, slots, cfg.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.slots = slots

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the sequences ``rows`` (drop finished ones from the batch)."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]


class Attention(nn.Module):
    """Multi-head causal self-attention with RoPE, over packed dialogs or a ``KVCache``."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        # separate projections: on CPU, chunks of one fused output are strided views that slow every op after
        self.q = nn.Linear(cfg.emb_dim, cfg.emb_dim, bias=False)
        self.k = nn.Linear(cfg.emb_dim, cfg.emb_dim, bias=False)
        self.v = nn.Linear(cfg.emb_dim, cfg.emb_dim, bias=False)
        self.out = nn.Linear(cfg.emb_dim, cfg.emb_dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: tuple[torch.Tensor, torch.Tensor, int] | None = None,
        select: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); with ``select`` (B, Q) only those positions query (keys/values: all T)."""
        B, T, C = x.shape
        shape = (B, T, self.n_heads, self.head_dim)
        k = apply_rope(self.k(x).view(shape), cos, sin).transpose(1, 2)  # (B, H, T, D)
        v = self.v(x).view(shape).transpose(1, 2)
        if select is not None:
            x, cos, sin = take(x, select), take(cos, select), take(sin, select)  # (B, Q, ...)
        q = apply_rope(self.q(x).view(B, -1, self.n_heads, self.head_dim), cos, sin).transpose(1, 2)  # (B, H, Q, D)
        if cache is not None:  # write this step's keys/values at slots [start, start + T), attend over all slots
            keys, values, start = cache
            keys[:, :, start : start + T] = k
            values[:, :, start : start + T] = v
            k, v = keys, values  # (B, H, S, D)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)  # (B, H, Q, D)
        return self.out(y.transpose(1, 2).reshape(B, -1, C))


class SwiGLU(nn.Module):
    """The feed-forward layer: ``down(silu(gate(x)) * up(x))``, hidden width ``ffn_mult * emb_dim``."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate = nn.Linear(cfg.emb_dim, cfg.ffn_dim, bias=False)
        self.up = nn.Linear(cfg.emb_dim, cfg.ffn_dim, bias=False)
        self.down = nn.Linear(cfg.ffn_dim, cfg.emb_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))  # (B, T, F) inside


class Block(nn.Module):
    """One pre-norm residual block: RMSNorm -> attention, then RMSNorm -> SwiGLU, each added back to x."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.emb_dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.emb_dim, cfg.norm_eps)
        self.ffn = SwiGLU(cfg)

    def forward(self, x, cos, sin, mask, cache=None, select=None):
        """(B, T, C) -> (B, T, C), or (B, Q, C) at the positions ``select`` (B, Q)."""
        h = self.attn(self.attn_norm(x), cos, sin, mask, cache, select)
        x = (x if select is None else take(x, select)) + h
        return x + self.ffn(self.ffn_norm(x))


def take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` (B, Q) of each sequence of x (B, T, ...) -> (B, Q, ...)."""
    return x[torch.arange(x.size(0), device=x.device)[:, None], index]


def document_mask(documents: torch.Tensor) -> torch.Tensor:
    """Block-diagonal causal mask (B, 1, T, T): query i sees key j iff j <= i and both are in one dialog."""
    T = documents.size(1)
    same = documents[:, None, :, None] == documents[:, None, None, :]
    return same & torch.ones(T, T, dtype=torch.bool, device=documents.device).tril()


def additive(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A boolean mask as 0 / -inf scores: attention converts a boolean mask on every call, so convert it once."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


class Llama(nn.Module):
    """The from-scratch Llama of the memory study: token embedding, ``n_layers`` pre-norm blocks (RoPE attention,
    SwiGLU MLP), a final RMSNorm and an untied head; ``forward`` gives logits (and a loss given targets),
    ``step_with_cache`` decodes with a KV cache.
    """

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.emb_dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        cos, sin = rope_table(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue  # norm gains start at 1
            std = cfg.init_std
            if name.endswith(("attn.out.weight", "ffn.down.weight")):  # residual outputs shrink with depth (GPT-2)
                std /= math.sqrt(2 * cfg.n_layers)
            nn.init.normal_(p, mean=0.0, std=std)

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rope_cos[positions].unsqueeze(2), self.rope_sin[positions].unsqueeze(2)  # (B, T, 1, D)

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor | None = None,
        documents: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, V); or, given ``targets`` (B, T; -1 = no loss), the logits of the scored tokens (N, V, in
        row-major order) and their mean cross-entropy. Without ``documents`` a row is one causal sequence.

        With targets the last layer runs its queries, FFN and the LM head only at scored positions (its keys and
        values still cover every token): the loss is the same, the unscored half of that work is skipped.
        """
        B, T = tokens.shape
        if positions is None:
            positions = torch.arange(T, device=tokens.device).expand(B, T)
        if positions.max() >= self.cfg.max_seq_len:
            raise ValueError(f"position {int(positions.max())} exceeds max_seq_len {self.cfg.max_seq_len}")
        cos, sin = self._rope(positions)
        if targets is not None and documents is None:
            documents = torch.zeros_like(tokens)
        mask = None if documents is None else additive(document_mask(documents), self.embed.weight.dtype)  # (B,1,T,T)
        x = self.embed(tokens)  # (B, T, C)
        for layer in self.layers[:-1]:
            x = layer(x, cos, sin, mask)
        if targets is None:
            return self.lm_head(self.norm(self.layers[-1](x, cos, sin, mask))), None
        scored = targets >= 0  # (B, T)
        counts = scored.sum(1)
        # each row's scored positions first, in order (stable sort), then filler positions that are dropped below
        select = torch.argsort((~scored).to(torch.int8), dim=1, stable=True)[:, : int(counts.max())]  # (B, Q)
        keep = torch.arange(select.size(1), device=tokens.device)[None, :] < counts[:, None]  # (B, Q)
        x = self.layers[-1](x, cos, sin, take(mask.squeeze(1), select).unsqueeze(1), select=select)  # (B, Q, C)
        logits = self.lm_head(self.norm(x[keep]))  # (N, V)
        return logits, F.cross_entropy(logits, targets[scored])

    @torch.no_grad()
    def step_with_cache(
        self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, start: int, valid: torch.Tensor
    ) -> torch.Tensor:
        """Run ``tokens`` (B, T) at cache slots [start, start + T); ``valid`` (B, S) marks the slots each sequence
        may attend to (its real tokens so far, these included). Returns the last position's logits (B, V).
        """
        T = tokens.size(1)
        cos, sin = self._rope(positions)
        slots = torch.arange(cache.slots, device=tokens.device)
        query_slots = start + torch.arange(T, device=tokens.device)
        causal = slots[None, :] <= query_slots[:, None]  # (T, S)
        itself = slots[None, :] == query_slots[:, None]  # a padding query sees itself: no all-masked row, no NaN
        mask = ((valid[:, None, :] & causal[None]) | itself[None]).unsqueeze(1)  # (B, 1, T, S)
        x = self.embed(tokens)
        for layer, keys, values in zip(self.layers, cache.keys, cache.values, strict=True):
            x = layer(x, cos, sin, mask, (keys, values, start))
        return self.lm_head(self.norm(x[:, -1]))
