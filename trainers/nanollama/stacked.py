"""Many nanoLlamas trained at once: the weights of K same-shape models stacked on a leading model axis.

Every matrix becomes (K, out, in) and every op runs on all K models in one batched kernel (bmm,
one attention call over K x B rows), so a grid of seeds (and, one stack per width, of sizes)
trains in one process with K times fewer, K times larger kernel launches: the way to keep a GPU
busy with models this small (on a CPU it is no faster than one model after another). Each model
reads its own batches (its seed's data order) and the loss is the sum of the K models' mean
losses, so each model gets exactly its own gradient; AdamW is elementwise and gradient clipping
is done per model, so a stacked model trains as it would alone (``tests/test_nanollama_stacked.py``
checks this against ``Trainer``, early stopping included).

    models = [Llama(cfg) for seed in seeds]                        # each initialised from its seed
    trainer = StackedTrainer(models, train_cfg, streams, evaluates, run_dirs=dirs)
    trained, results = trainer.train()                             # plain Llamas, one TrainResult each

``StackedTrainer`` applies ``Trainer``'s early stopping to each model: a model that reaches the
target leaves the stack (its rows of every weight and optimizer tensor are dropped) and the rest
train on. Each run directory gets what ``Trainer`` writes: ``metrics.jsonl`` and a final
``checkpoint.pt`` in the same format (per-model optimizer state included), so a stacked run can be
resumed or extended alone. There is no mid-run checkpoint of a stack.

Shapes: K models, B rows, T tokens, C width, H heads, D head dim, N scored tokens, V vocabulary.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from trainers.nanollama.data import PackedBatch, PackedStream
from trainers.nanollama.model import Llama, apply_rope, document_mask
from trainers.nanollama.train import RunLog, TrainConfig, Trainer, TrainResult, lr_at


class StackedLlama(nn.Module):
    """K same-shape ``Llama``s as one module: each weight stacked on a leading model axis, (K, ...)."""

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
        """Batched linear layer: x (K, M, in) @ W (K, out, in)^T -> (K, M, out)."""
        return torch.bmm(x, self.w(name).transpose(1, 2))

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),), eps=self.cfg.norm_eps) * self.w(name)[:, None, :]

    def forward(self, batches: PackedBatch | Sequence[PackedBatch]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Mean cross-entropy over each model's scored tokens, (K,), and each model's logits on them, (N_k, V).
        ``batches``: one batch per model (same shape), or one batch that every model reads.
        """
        if isinstance(batches, PackedBatch):
            batches = [batches] * self.k
        if len(batches) != self.k:
            raise ValueError(f"{len(batches)} batches for a stack of {self.k} models")
        K, (B, T), C = self.k, batches[0].tokens.shape, self.cfg.emb_dim
        H, D = self.cfg.n_heads, self.cfg.head_dim
        positions = torch.cat([b.positions for b in batches])  # (K B, T)
        cos, sin = self.rope_cos[positions].unsqueeze(2), self.rope_sin[positions].unsqueeze(2)  # (K B, T, 1, D)
        mask = document_mask(torch.cat([b.documents for b in batches]))  # (K B, 1, T, T)
        tokens = torch.stack([b.tokens.reshape(-1) for b in batches])  # (K, B T)
        embed = self.w("embed.weight")  # (K, V, C)
        x = embed[torch.arange(K, device=tokens.device)[:, None], tokens]  # (K, B T, C)
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
        scored = [(b.targets >= 0).reshape(-1) for b in batches]
        counts = [int(s.sum()) for s in scored]
        h = pad_sequence([x[i, s] for i, s in enumerate(scored)], batch_first=True)  # (K, N max, C)
        logits = self._linear(self._norm(h, "norm.weight"), "lm_head.weight")  # (K, N max, V)
        targets = pad_sequence([b.targets.reshape(-1)[s] for b, s in zip(batches, scored, strict=True)], True, -100)
        losses = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none").sum(1)
        losses = losses / torch.tensor(counts, device=losses.device).clamp(min=1)
        return losses, [logits[i, :n] for i, n in enumerate(counts)]

    def select(self, keep: list[int]) -> StackedLlama:
        """A stack of models ``keep`` only (copies)."""
        return StackedLlama([self.unstack(i) for i in keep])


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


def carry_state(
    optimizer: torch.optim.AdamW,
    params: dict[str, nn.Parameter],
    into: torch.optim.AdamW,
    into_params: dict[str, nn.Parameter],
    rows: list[int] | int,
) -> None:
    """Copy ``optimizer``'s AdamW state for rows ``rows`` of ``params`` (moments, step counts, current lr) into
    ``into`` for the parameters of the same names: a smaller stack (a list of rows) or one model (a row).
    """
    for group, old in zip(into.param_groups, optimizer.param_groups, strict=True):
        group["lr"] = old["lr"]
    for name, p in into_params.items():
        state = optimizer.state.get(params[name])
        if state:
            into.state[p] = {k: v[rows].clone() if v.dim() else v.clone() for k, v in state.items()}


class StackedTrainer:
    """Trains same-shape ``models`` as one stack, model k on ``streams[k]``, with ``Trainer``'s early stopping
    for each: ``evaluates[k](model, final) -> recall`` is called on a plain copy of model k when its proxy passes
    the gate (or at the end); a model that reaches the target leaves the stack.
    """

    def __init__(
        self,
        models: list[Llama],
        cfg: TrainConfig,
        streams: list[PackedStream],
        evaluates: list[Callable[[Llama, bool], float]] | None = None,
        run_dirs: list[str | Path] | None = None,
        device: torch.device | str = "cpu",
        progress: bool = True,
    ):
        if len(streams) != len(models) or (evaluates is not None and len(evaluates) != len(models)):
            raise ValueError("one stream (and one evaluate, if any) per model")
        self.models, self.cfg, self.streams, self.evaluates = models, cfg, streams, evaluates
        self.run_dirs = [Path(d) for d in run_dirs] if run_dirs is not None else None
        self.device = torch.device(device)
        self.progress = progress
        self.logs = [RunLog(len(s.dialogs)) for s in streams]

    def train(self) -> tuple[list[Llama], list[TrainResult]]:
        """Train to the step budget or each model's target; returns the trained models and their results."""
        cfg = self.cfg
        active = list(range(len(self.models)))  # models still in the stack, in stack order
        stack = StackedLlama(self.models).to(self.device)
        optimizer = build_stacked_optimizer(stack, cfg)
        trained: dict[int, Llama] = {}
        from tqdm import tqdm

        step = 0
        with tqdm(total=cfg.steps, desc=f"train x{len(active)}", unit="step", disable=not self.progress) as bar:
            while step < cfg.steps and active:
                start = time.perf_counter()
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, cfg)
                batches = [self.streams[k].batch(step).to(self.device) for k in active]
                losses, logits = stack(batches)
                losses.sum().backward()  # model k's loss depends only on model k's weights: its own gradient
                if cfg.grad_clip is not None:
                    clip_per_model(stack, cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                seconds = time.perf_counter() - start  # the stack's step: each model's training time
                for i, k in enumerate(active):
                    log = self.logs[k]
                    log.losses.append(float(losses[i].detach()))
                    log.record_exact(step, batches[i], logits[i].detach(), batches[i].targets >= 0)
                    log.tokens += batches[i].real_tokens
                    log.train_seconds += seconds
                step += 1
                bar.update()
                if step % cfg.eval_every == 0 or step == cfg.steps:
                    done = [i for i, k in enumerate(active) if self._evaluate(k, stack, i, step)]
                    if done:
                        for i in done:
                            trained[active[i]] = self._finish(active[i], stack, optimizer, i, step)
                        keep = [i for i in range(len(active)) if i not in done]
                        active = [active[i] for i in keep]
                        if active:
                            smaller = stack.select(keep).to(self.device)
                            moved = build_stacked_optimizer(smaller, cfg)
                            carry_state(optimizer, dict(stack.weights), moved, dict(smaller.weights), keep)
                            optimizer, stack = moved, smaller
                            bar.set_description(f"train x{len(active)}")
        for i, k in enumerate(active):
            trained[k] = self._finish(k, stack, optimizer, i, step)
        order = range(len(self.models))
        return [trained[k] for k in order], [self.logs[k].result(cfg) for k in order]

    def _evaluate(self, k: int, stack: StackedLlama, i: int, step: int) -> bool:
        """``Trainer.maybe_evaluate`` for model k (stack row i): whether it reached the target."""
        cfg, log = self.cfg, self.logs[k]
        final = step == cfg.steps
        proxy = RunLog.proxy_of(log.last_seen, log.exact, step, cfg.eval_every)
        if self.evaluates is not None and (final or proxy >= cfg.proxy_gate):
            start = time.perf_counter()
            recall = float(self.evaluates[k](stack.unstack(i).eval(), final))
            log.evaluated(step, recall, proxy, time.perf_counter() - start, cfg.target_recall)
        if self.run_dirs is not None:
            log.write_metrics(self.run_dirs[k], cfg)  # a long run shows its progress on disk
        return log.reached

    def _finish(self, k: int, stack: StackedLlama, optimizer: torch.optim.AdamW, i: int, step: int) -> Llama:
        """Model k as a plain ``Llama``; its run directory gets ``Trainer``'s checkpoint and metrics."""
        model = stack.unstack(i)
        if self.run_dirs is not None:
            alone = Trainer(model, self.cfg, self.streams[k], self.run_dirs[k], device=self.device, progress=False)
            params = dict(model.named_parameters())
            carry_state(optimizer, {name: stack.w(name) for name in params}, alone.optimizer, params, i)
            alone.log, alone.step = self.logs[k], step
            alone.save()
            alone.write_metrics()
        return model
