"""The nanoLlama training loop: AdamW, warm-up + cosine schedule, early stopping, checkpoint/resume, DDP.

Deterministic: the initial weights come from ``seed`` and batch ``k`` from ``(data seed, k)``
(``PackedStream``), so a run resumed from its checkpoint writes the same loss curve as one that
never stopped. Early stopping costs no extra forward pass: each training step records whether
the model's greedy prediction was right on every assistant token of each dialog in the batch
(the *teacher-forced exact match*, which implies the greedy reply is the oracle's); when that
proxy reaches ``target_recall`` on the dialogs of the last ``eval_every`` steps, the caller's
``evaluate`` (a real rollout with real tool calls) decides whether to stop.

DDP (``torchrun``): each rank trains on its slice of every global batch; the loss is the sum
over the rank's scored tokens divided by the global count (times the world size, which the
gradient averaging divides back out), so the gradient equals the single-process one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field

from trainers.nanollama.data import PackedBatch, PackedStream
from trainers.nanollama.model import Llama

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


class TrainConfig(BaseModel):
    """How a nanoLlama trains: step budget, batches, AdamW and its schedule, early stopping and checkpoints."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(2000, ge=1, description="step budget (the cosine schedule's length)")
    batch_rows: int = Field(32, ge=1, description="packed rows per global batch")
    seq_len: int = Field(256, ge=8, description="tokens per packed row")
    lr: float = Field(3e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final learning rate as a share of lr")
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float | None = Field(1.0, description="max global grad norm; None = no clipping")
    seed: int = Field(0, description="seeds the initial weights and the data order")
    eval_every: int = Field(50, ge=1, description="steps between early-stopping checks")
    target_recall: float = Field(0.99, ge=0, le=1, description="stop once the rollout recall reaches this")
    proxy_gate: float = Field(
        0.9, ge=0, le=1, description="run the rollout eval only once the teacher-forced proxy reaches this (0 = always)"
    )
    checkpoint_every: int = Field(0, ge=0, description="steps between checkpoints (0 = only at the end)")
    log_every: int = Field(25, ge=1)


class EvalPoint(BaseModel):
    """One early-stopping check: the step, the rollout recall, the teacher-forced proxy and its seconds."""

    model_config = ConfigDict(extra="forbid")

    step: int
    recall: float
    proxy: float
    seconds: float


class TrainResult(BaseModel):
    """How a training run ended: steps, whether it reached the target, losses, evaluations and throughput."""

    model_config = ConfigDict(extra="forbid")

    steps: int
    reached_target: bool
    stopped_early: bool
    final_loss: float
    losses: list[float]
    evals: list[EvalPoint]
    train_seconds: float
    eval_seconds: float
    tokens: int = Field(description="non-padding tokens trained on (all ranks)")
    tokens_per_s: float


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``min_lr_ratio * lr`` at ``steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; matrices and embeddings are decayed, norm gains are not."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    keep = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": keep, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


class RunLog:
    """One model's training record: the loss curve, per-dialog teacher-forced exactness (the early-stopping
    proxy), evaluations, tokens and time. A ``Trainer`` keeps one; a stack of models keeps one per model.
    """

    _STATE = ("losses", "last_seen", "exact", "tokens", "train_seconds", "eval_seconds", "reached")  # checkpointed

    def __init__(self, n_dialogs: int):
        self.last_seen = np.full(n_dialogs, -1, dtype=np.int64)  # step at which each dialog was last trained on
        self.exact = np.zeros(n_dialogs, dtype=bool)  # was greedy right on all its assistant tokens then?
        self.losses: list[float] = []
        self.evals: list[EvalPoint] = []
        self.tokens = 0
        self.train_seconds = 0.0
        self.eval_seconds = 0.0
        self.reached = False  # the last evaluation met target_recall

    def record_exact(self, step: int, batch: PackedBatch, logits: torch.Tensor, scored: torch.Tensor) -> None:
        """Per dialog in the batch: were all its assistant tokens predicted right (teacher forced)?
        ``logits`` are those of the scored tokens, in order.
        """
        wrong = (logits.argmax(-1) != batch.targets[scored]).cpu().numpy()
        dialog_of_token = batch.dialogs[scored].cpu().numpy()
        present = np.unique(batch.dialogs[batch.dialogs >= 0].cpu().numpy())
        self.last_seen[present] = step
        self.exact[present] = True
        self.exact[np.unique(dialog_of_token[wrong])] = False

    @staticmethod
    def proxy_of(last_seen: np.ndarray, exact: np.ndarray, step: int, window: int) -> float:
        """Share of the dialogs trained on in the last ``window`` steps that were teacher-forced exact."""
        recent = last_seen >= max(0, step - window)  # flags from the current stretch of training
        return float(exact[recent].mean()) if recent.any() else 0.0

    def evaluated(self, step: int, recall: float, proxy: float, seconds: float, target: float) -> None:
        self.eval_seconds += seconds
        self.evals.append(EvalPoint(step=step, recall=recall, proxy=proxy, seconds=round(seconds, 3)))
        self.reached = recall >= target
        logger.info("step %d: proxy %.4f recall %.4f (%.1fs)", step, proxy, recall, seconds)

    def state(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._STATE} | {"evals": [e.model_dump() for e in self.evals]}

    def load_state(self, state: dict[str, Any]) -> None:
        for name in self._STATE:
            setattr(self, name, state[name])
        self.losses = list(self.losses)
        self.evals = [EvalPoint.model_validate(e) for e in state["evals"]]

    def result(self, cfg: TrainConfig) -> TrainResult:
        steps = len(self.losses)
        return TrainResult(
            steps=steps,
            reached_target=self.reached,
            stopped_early=self.reached and steps < cfg.steps,
            final_loss=self.losses[-1] if self.losses else float("nan"),
            losses=self.losses,
            evals=self.evals,
            train_seconds=round(self.train_seconds, 3),
            eval_seconds=round(self.eval_seconds, 3),
            tokens=self.tokens,
            tokens_per_s=round(self.tokens / max(self.train_seconds, 1e-9), 1),
        )

    def write_metrics(self, run_dir: Path, cfg: TrainConfig) -> None:
        """metrics.jsonl: the loss every ``log_every`` steps, then every evaluation."""
        lines = [
            {"step": s + 1, "loss": round(self.losses[s], 6), "lr": lr_at(s, cfg)}
            for s in range(len(self.losses))
            if (s + 1) % cfg.log_every == 0 or s + 1 == len(self.losses)
        ]
        lines += [{"eval": e.model_dump()} for e in self.evals]
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")


class DistInfo(BaseModel):
    """Where this process sits in a ``torchrun`` job (rank 0 of 1 when not launched by torchrun)."""

    model_config = ConfigDict(extra="forbid")

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls) -> DistInfo:
        return cls(
            rank=int(os.environ.get("RANK", 0)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
        )

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()


class Trainer:
    """Trains ``model`` on ``stream``; ``evaluate(model, final) -> recall`` is called on rank 0 only (``final``: the
    step budget is spent, so this is the run's last evaluation).
    """

    def __init__(
        self,
        model: Llama,
        cfg: TrainConfig,
        stream: PackedStream,
        run_dir: str | Path,
        evaluate: Callable[[Llama, bool], float] | None = None,
        device: torch.device | str = "cpu",
        dist_info: DistInfo | None = None,
        progress: bool = True,
    ):
        self.model, self.cfg, self.stream = model, cfg, stream
        self.run_dir = Path(run_dir)
        self.evaluate = evaluate
        self.device = torch.device(device)
        self.dist = dist_info or DistInfo()
        self.progress = progress
        self.module: torch.nn.Module = model  # what the forward pass goes through (DDP wrapper or the model)
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.module = DistributedDataParallel(model, device_ids=ids)
        self.optimizer = build_optimizer(model, cfg)
        self.log = RunLog(len(stream.dialogs))
        self.step = 0

    # -- checkpointing -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            **self.log.state(),
            "train_config": self.cfg.model_dump(),
            "model_config": self.model.cfg.to_dict(),
        }

    def save(self) -> Path:
        """Write the checkpoint atomically (rank 0)."""
        path = self.run_dir / CHECKPOINT
        if self.dist.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(self.state(), tmp)
            os.replace(tmp, path)
        return path

    def load(self, path: str | Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=False)
        if state["model_config"] != self.model.cfg.to_dict():
            raise ValueError(f"checkpoint {path} is of another model: {state['model_config']}")
        saved, now = state["train_config"], self.cfg.model_dump()
        changed = sorted(k for k in now if k not in ("log_every", "checkpoint_every") and saved.get(k) != now[k])
        if changed:  # e.g. more steps: a longer cosine schedule would not continue the saved curve
            raise ValueError(
                f"checkpoint {path} was trained with other settings ({', '.join(changed)}): resume with the same "
                "settings, or start afresh (--no-resume, or another --out)"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        self.log.load_state(state)
        logger.info("resumed %s at step %d", path, self.step)

    # -- one step ------------------------------------------------------------------------------
    def train_step(self, batch: PackedBatch) -> float:
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, cfg)
        batch = batch.to(self.device)
        logits, mean_loss = self.module(batch.tokens, batch.positions, batch.documents, batch.targets)
        scored = batch.targets >= 0
        n_local = int(scored.sum())
        n_global = self._all_reduce_int(n_local)
        # scale so the DDP-averaged gradient equals the gradient of the global mean (exactly the mean at world 1)
        loss = mean_loss if self.dist.world_size == 1 else mean_loss * (n_local * self.dist.world_size / n_global)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.log.record_exact(self.step, batch, logits.detach(), scored)
        loss_sum = float(mean_loss.detach()) * n_local
        if self.dist.distributed:
            t = torch.tensor([loss_sum], dtype=torch.float64, device=self.device)
            dist.all_reduce(t)
            loss_sum = float(t)
        self.log.tokens += self._all_reduce_int(batch.real_tokens)
        return loss_sum / max(n_global, 1)

    def _all_reduce_int(self, value: int) -> int:
        if not self.dist.distributed:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t)
        return int(t)

    def proxy(self) -> float:
        """Share of the dialogs trained on in the last ``eval_every`` steps that were teacher-forced exact (all ranks
        merged): a free estimate of recall, so large worlds need not wait a whole epoch.
        """
        last_seen, exact = self.log.last_seen, self.log.exact
        if self.dist.distributed:
            pair = torch.from_numpy(np.stack([last_seen, exact.astype(np.int64)])).to(self.device)
            gathered = [torch.empty_like(pair) for _ in range(self.dist.world_size)]
            dist.all_gather(gathered, pair)
            stacked = torch.stack(gathered).cpu().numpy()  # (world, 2, n)
            latest = stacked[:, 0].argmax(0)
            last_seen = stacked[latest, 0, np.arange(stacked.shape[2])]
            exact = stacked[latest, 1, np.arange(stacked.shape[2])].astype(bool)
        return RunLog.proxy_of(last_seen, exact, self.step, self.cfg.eval_every)

    # -- the loop ------------------------------------------------------------------------------
    def maybe_evaluate(self, final: bool) -> bool:
        """Evaluate when due (rank 0 runs the rollout); returns whether every rank should stop."""
        cfg = self.cfg
        proxy = self.proxy()
        recall = -1.0
        if self.dist.rank == 0 and self.evaluate is not None and (final or proxy >= cfg.proxy_gate):
            start = time.perf_counter()
            self.model.eval()
            recall = float(self.evaluate(self.model, final))
            self.model.train()
            self.log.evaluated(self.step, recall, proxy, time.perf_counter() - start, cfg.target_recall)
        stop = recall >= cfg.target_recall
        if self.dist.distributed:
            t = torch.tensor([int(stop)], device=self.device)
            dist.broadcast(t, src=0)
            stop = bool(t)
        return stop

    def train(self, resume: bool = True) -> TrainResult:
        cfg = self.cfg
        checkpoint = self.run_dir / CHECKPOINT
        if resume and checkpoint.exists():
            self.load(checkpoint)
        from tqdm import tqdm

        self.model.train()
        bar = tqdm(
            total=cfg.steps, initial=self.step, desc="train", unit="step", disable=not self.progress or self.dist.rank
        )
        try:
            while self.step < cfg.steps and not self.log.reached:
                start = time.perf_counter()
                loss = self.train_step(self.stream.batch(self.step))
                self.log.train_seconds += time.perf_counter() - start
                self.log.losses.append(loss)
                self.step += 1
                bar.update()
                if self.step % cfg.log_every == 0:
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr_at(self.step - 1, cfg):.2e}")
                if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                    self.log.reached = self.maybe_evaluate(final=self.step == cfg.steps)
                    self.write_metrics()  # a long run shows its progress on disk
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save()
        finally:
            bar.close()
        self.save()
        self.write_metrics()
        return self.result()

    def result(self) -> TrainResult:
        return self.log.result(self.cfg)

    def write_metrics(self) -> None:
        if self.dist.rank == 0:
            self.log.write_metrics(self.run_dir, self.cfg)
