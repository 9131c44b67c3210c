"""Many nanoLlamas trained at once: the weights of K same-shape models stacked on a leading model axis.

Every matrix becomes (K, out, in) and every op runs on all K models in one batched kernel (bmm,
one attention call over K x B rows), so a grid of seeds (and, one stack per width, of sizes)
trains in one process with K times fewer, K times larger kernel launches: the way to keep a GPU
busy with models this small. The loss is the sum of the K models' mean losses, so each model gets
exactly its own gradient; AdamW is elementwise and gradient clipping is done per model, so a
stacked model trains as it would alone (``tests/test_nanollama_stacked.py`` checks this).

    stack = StackedLlama([Llama(cfg) for _ in range(8)])        # 8 seeds of one width
    losses = train_stacked(stack, train_cfg, stream)             # (steps, 8)
    model_3 = stack.unstack(3)                                   # a plain Llama, e.g. for NanoLlamaPolicy

Shapes: K models, B rows, T tokens, C width, H heads, D head dim, N scored tokens, V vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainers.nanollama.data import PackedBatch, PackedStream
from trainers.nanollama.model import Llama, apply_rope, document_mask
from trainers.nanollama.train import TrainConfig, lr_at


class StackedLlama(nn.Module):
    def __init__(self, models: list[Llama]):
        super().__init__()
        if not models or any(m.cfg != models[0].cfg for m in models):
            raise ValueError("a stack needs one or more models of the same config")
        self.cfg, self.k = models[0].cfg, len(models)
        names = [name for name, _ in models[0].named_parameters()]
        states = [dict(m.named_parameters()) for m in models]
        self.weights = nn.ParameterDict(
            {_key(n): nn.Parameter(torch.stack([s[n].detach() for s in states])) for n in names}
        )
        self.register_buffer("rope_cos", models[0].rope_cos.clone(), persistent=False)
        self.register_buffer("rope_sin", models[0].rope_sin.clone(), persistent=False)

    def w(self, name: str) -> torch.Tensor:
        return self.weights[_key(name)]

    def unstack(self, i: int) -> Llama:
        """Model ``i`` of the stack as a plain ``Llama`` (a copy)."""
        model = Llama(self.cfg).to(self.rope_cos.device)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(self.w(name)[i])
        return model

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """x (K, M, in) @ W (K, out, in)^T -> (K, M, out)."""
        return torch.bmm(x, self.w(name).transpose(1, 2))

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),), eps=self.cfg.norm_eps) * self.w(name)[:, None, :]

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        """Mean cross-entropy over the scored tokens of ``batch``, per model: (K,)."""
        K, (B, T), C = self.k, batch.tokens.shape, self.cfg.emb_dim
        H, D = self.cfg.n_heads, self.cfg.head_dim
        cos = self.rope_cos[batch.positions].unsqueeze(2).repeat(K, 1, 1, 1)  # (K B, T, 1, D)
        sin = self.rope_sin[batch.positions].unsqueeze(2).repeat(K, 1, 1, 1)
        mask = document_mask(batch.documents).repeat(K, 1, 1, 1)  # (K B, 1, T, T)
        x = self.w("embed.weight")[:, batch.tokens.reshape(-1)]  # (K, B T, C)
        for i in range(self.cfg.n_layers):
            p = f"layers.{i}."
            h = self._norm(x, p + "attn_norm.weight")
            q, k, v = (self._linear(h, p + f"attn.{n}.weight").view(K * B, T, H, D) for n in "qkv")
            q, k = apply_rope(q, cos, sin).transpose(1, 2), apply_rope(k, cos, sin).transpose(1, 2)  # (K B, H, T, D)
            y = F.scaled_dot_product_attention(q, k, v.transpose(1, 2), attn_mask=mask)  # (K B, H, T, D)
            x = x + self._linear(y.transpose(1, 2).reshape(K, B * T, C), p + "attn.out.weight")
            h = self._norm(x, p + "ffn_norm.weight")
            gate, up = self._linear(h, p + "ffn.gate.weight"), self._linear(h, p + "ffn.up.weight")
            x = x + self._linear(F.silu(gate) * up, p + "ffn.down.weight")
        scored = (batch.targets >= 0).reshape(-1)  # the same tokens are scored for every model
        h = self._norm(x[:, scored], "norm.weight")  # (K, N, C)
        logits = self._linear(h, "lm_head.weight")  # (K, N, V)
        targets = batch.targets.reshape(-1)[scored].repeat(K)
        losses = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets, reduction="none")
        return losses.view(K, -1).mean(1)


def _key(name: str) -> str:
    return name.replace(".", "__")  # ParameterDict keys may not contain dots


def clip_per_model(stack: StackedLlama, max_norm: float) -> torch.Tensor:
    """Clip each model's gradient to ``max_norm`` by its own global norm; returns the K norms."""
    grads = [p.grad for p in stack.parameters() if p.grad is not None]
    norms = torch.stack([g.pow(2).flatten(1).sum(1) for g in grads]).sum(0).sqrt()  # (K,)
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))
    return norms


def build_stacked_optimizer(stack: StackedLlama, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW as ``train.build_optimizer``: stacked matrices (3-D) are decayed, stacked norm gains (2-D) are not."""
    decay = [p for p in stack.parameters() if p.dim() >= 3]
    keep = [p for p in stack.parameters() if p.dim() < 3]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": keep, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def train_stacked(
    stack: StackedLlama,
    cfg: TrainConfig,
    stream: PackedStream,
    steps: int | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Train every model of ``stack`` on the batches of ``stream``; returns the losses, (steps, K)."""
    optimizer = build_stacked_optimizer(stack, cfg)
    history = []
    for step in range(steps if steps is not None else cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        losses = stack(stream.batch(step).to(device))
        losses.sum().backward()  # model k's loss depends only on model k's weights: its own gradient
        if cfg.grad_clip is not None:
            clip_per_model(stack, cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        history.append(losses.detach())
    return torch.stack(history)
