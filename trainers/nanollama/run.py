"""One nanoLlama run from scratch on the oracle's dialogs, and its recall: the library of ``trainers/pretrain.py``.

A run directory holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` (loss curve and
evaluations), ``summary.json`` (``RunSummary``), ``records_train.jsonl`` / ``records_unseen.jsonl``
(one ``FactRecord`` per question, tools executed for real), ``checkpoint.pt`` and ``model/`` (the trained model
as a Hugging Face folder: ``python -m evals.recall --model <run>/model --tool_format find`` evaluates it again). Running the same
config again resumes from the checkpoint; a finished run returns its summary at once.
``pretrain_stacked`` trains runs that differ only in their seed as one stack in one process, each
ending as its single run would (``python -m studies.memory --stack_seeds`` uses it).
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

import configs
from itl_env.formats import FormatName
from itl_env.oracle import Mode
from trainers.nanollama.model import LlamaConfig
from trainers.nanollama.train import TrainConfig, TrainResult

if TYPE_CHECKING:
    import torch

    from trainers.nanollama.train import DistInfo

logger = logging.getLogger("trainers.pretrain")

CONFIG = "config.yaml"


class PretrainConfig(BaseModel):
    """One nanoLlama run: the mode, the world, the model's shape, its training, and how it is evaluated."""

    model_config = ConfigDict(extra="forbid")

    mode: Mode = Field("in_tool", description="answer from a tool call or from memory")
    people: int = Field(256, ge=1, description="training people (4 facts each)")
    unseen_people: int = Field(64, ge=0, description="held-out people for the in-tool generalisation eval")
    world_seed: int = Field(0, description="seed of the fact world")
    world_dir: str = Field(
        "runs/worlds",
        description="where worlds are generated and reused: a folder, or a PostgreSQL URL (each world a schema)",
    )
    tool_format: FormatName = Field("find", description="tool-call text format (find = the paper's)")
    emb_dim: int = Field(32, ge=2, description="model width d (params = 32 d^2 + (2 V + 5) d for 2 layers)")
    n_layers: int = Field(2, ge=1)
    n_heads: int = Field(2, ge=1)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval_unseen: bool | None = Field(None, description="also evaluate on unseen people (default: in_tool runs only)")
    eval_sample: int = Field(
        512, ge=1, description="facts in the periodic evaluations; the full evaluation runs once a sample passes"
    )
    eval_batch_size: int = Field(256, ge=1, description="sequences decoded together")
    max_new_tokens: int = Field(128, ge=1, description="decode limit per assistant message")
    out: str | None = Field(None, description="run directory (default: runs/pretrain/<mode>-p<people>-d<emb>-s<seed>)")
    device: str = Field("cpu", description="cpu, cuda, cuda:1 or auto")
    threads: int | None = Field(
        1, ge=1, description="torch CPU threads; 1 suits these tiny models (none = torch's choice)"
    )
    resume: bool = Field(True, description="continue from the run directory's checkpoint if there is one")
    progress: bool = Field(True, description="show progress bars")

    @model_validator(mode="after")
    def _check_shape(self) -> PretrainConfig:
        check_shape(self.emb_dim, self.n_layers, self.n_heads)
        return self

    def world_path(self) -> str:
        """The SQLite world this run trains on (shared by the runs of the same world)."""
        from itl_env.store import world_at

        return world_at(self.world_dir, f"world-s{self.world_seed}-p{self.people}-u{self.unseen_people}")

    def run_dir(self) -> Path:
        name = f"{self.mode}-p{self.people}-d{self.emb_dim}-s{self.train.seed}"
        return Path(self.out) if self.out else Path("runs/pretrain") / name


def check_shape(emb_dim: int, n_layers: int, n_heads: int) -> None:
    """Reject a model shape at config time (``ValueError``), not after the world and data are built."""
    LlamaConfig(emb_dim=emb_dim, n_layers=n_layers, n_heads=n_heads)


class RunSummary(BaseModel):
    """What one run gives the study: size, whether and when it reached the target, recall on both splits."""

    model_config = ConfigDict(extra="forbid")

    mode: str
    people: int
    facts: int
    emb_dim: int
    params: int
    seed: int
    steps: int
    step_budget: int
    reached_target: bool
    stopped_early: bool
    train_recall: float
    unseen_recall: float | None
    final_loss: float
    tokens: int
    tokens_per_s: float
    train_seconds: float
    eval_seconds: float
    wall_seconds: float
    cpu_seconds: float = Field(description="CPU time of the run's process (all threads): load-independent cost")
    dialogs: int
    faithful_tool: float | None = Field(
        None, description="in-tool, counterfactual world: share answering the new value"
    )
    faithful_memory: float | None = Field(
        None, description="in-tool, counterfactual world: share answering the old one"
    )
    mean_dialog_tokens: float


def pretrain(cfg: PretrainConfig) -> RunSummary:
    import torch
    import torch.distributed as dist

    from trainers.nanollama.data import PackedStream
    from trainers.nanollama.model import Llama
    from trainers.nanollama.train import DistInfo, Trainer

    start, start_cpu = time.perf_counter(), time.process_time()
    finished = finished_summary(cfg) if cfg.resume else None
    if finished is not None:
        return finished
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    info = DistInfo.from_env()
    device = _device(cfg.device, info)
    if info.world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        data = _Data(cfg, info)
        stream = PackedStream(
            data.dialogs, cfg.train.seq_len, cfg.train.batch_rows, cfg.train.seed, info.rank, info.world_size
        )
        torch.manual_seed(cfg.train.seed)
        model = Llama(data.model_cfg).to(device)
        data.log_start(cfg, stream)
        if info.rank == 0:
            _write_config(cfg)
        trainer = Trainer(model, cfg.train, stream, cfg.run_dir(), data.evaluator(cfg), device, info, cfg.progress)
        result: TrainResult = trainer.train(resume=cfg.resume)
        if info.rank:
            return _summary(cfg, data, result, None, None, start, start_cpu)
        return data.finish(cfg, model, result, start, start_cpu)
    finally:
        if info.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def pretrain_stacked(cfgs: list[PretrainConfig]) -> list[RunSummary]:
    """Runs that differ only in their seed, trained as one stack (``StackedTrainer``: one process, batched
    kernels; for GPUs). Each run directory ends as the single run's would (same data order, initial weights,
    early stopping and files); finished runs are returned as they are. A run's ``wall_seconds`` and
    ``cpu_seconds`` are its share (1/K) of the stack's.
    """
    import torch

    from trainers.nanollama.data import PackedStream
    from trainers.nanollama.model import Llama
    from trainers.nanollama.stacked import StackedTrainer
    from trainers.nanollama.train import DistInfo

    if not cfgs:
        return []
    shared = [c.model_dump(exclude={"out": True, "train": {"seed"}}) for c in cfgs]
    if any(s != shared[0] for s in shared) or len({c.train.seed for c in cfgs}) < len(cfgs):
        raise ValueError("a stack takes runs that differ only in their seed (and output folder), one run per seed")
    if DistInfo.from_env().world_size > 1:
        raise ValueError("a stack of runs trains in one process: launch it without torchrun")
    start, start_cpu = time.perf_counter(), time.process_time()
    summaries = [finished_summary(c) if c.resume else None for c in cfgs]
    todo = [c for c, s in zip(cfgs, summaries, strict=True) if s is None]
    if not todo:
        return summaries
    first = todo[0]
    if first.threads:
        torch.set_num_threads(first.threads)
    device = _device(first.device, DistInfo())
    data = _Data(first, DistInfo())
    streams = [PackedStream(data.dialogs, c.train.seq_len, c.train.batch_rows, c.train.seed) for c in todo]
    models = []
    for c in todo:
        torch.manual_seed(c.train.seed)
        models.append(Llama(data.model_cfg).to(device))
        _write_config(c)
    data.log_start(first, streams[0], seeds=[c.train.seed for c in todo])
    trainer = StackedTrainer(
        models,
        first.train,
        streams,
        [data.evaluator(c) for c in todo],
        [c.run_dir() for c in todo],
        device,
        first.progress,
    )
    trained, results = trainer.train()
    done = iter(
        [data.finish(c, m, r, start, start_cpu, len(todo)) for c, m, r in zip(todo, trained, results, strict=True)]
    )
    return [s if s is not None else next(done) for s in summaries]


class _Data:
    """What a run needs besides its model: the world, the oracle dialogs, the model shape and the evaluations."""

    def __init__(self, cfg: PretrainConfig, info: DistInfo):
        import torch.distributed as dist

        from itl_env.world import WorldSpec, ensure_world
        from trainers.nanollama.data import dialog_lengths, encode_dialogs, every_phrasing
        from trainers.nanollama.model import count_parameters
        from trainers.nanollama.tokenizer import ByteTokenizer

        world_path = cfg.world_path()
        spec = WorldSpec(seed=cfg.world_seed, people=cfg.people, unseen_people=cfg.unseen_people)
        world = ensure_world(spec, world_path) if info.rank == 0 else None
        if info.world_size > 1:
            dist.barrier()  # rank 0 built the world; the others open it
        self.world = world or ensure_world(spec, world_path)
        self.tokenizer = ByteTokenizer(cfg.tool_format)
        self.dialogs = encode_dialogs(every_phrasing(self.world, cfg.mode, cfg.tool_format), self.tokenizer)
        self.lengths = dialog_lengths(self.dialogs)
        self.model_cfg = LlamaConfig(
            vocab_size=self.tokenizer.vocab_size, emb_dim=cfg.emb_dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads
        )
        self.params = count_parameters(self.model_cfg)
        facts = self.world.facts("train")
        self.sample = (
            [facts[i] for i in sorted(random.Random(cfg.world_seed).sample(range(len(facts)), cfg.eval_sample))]
            if cfg.eval_sample < len(facts)
            else None
        )

    def log_start(self, cfg: PretrainConfig, stream, seeds: list[int] | None = None) -> None:
        logger.info(
            "%s, %d people, d=%d: %d params, %d dialogs (mean %.0f tokens), %d rows/epoch%s",
            cfg.mode,
            cfg.people,
            cfg.emb_dim,
            self.params,
            len(self.dialogs),
            self.lengths["mean_tokens"],
            stream.rows_per_epoch(),
            f", seeds {seeds} stacked" if seeds else "",
        )

    def policy(self, cfg: PretrainConfig, model):
        from trainers.nanollama.policy import NanoLlamaPolicy

        return NanoLlamaPolicy(model, self.tokenizer, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.eval_batch_size)

    def recall(self, cfg: PretrainConfig):
        """The run's ``RecallEvaluator`` (the project's one; nanoLlama answers in ``cfg.tool_format``)."""
        from evals.evaluator import RecallEvaluator

        return RecallEvaluator(self.world, mode=cfg.mode, tool_format=cfg.tool_format, max_turns=4, batch_size=512)

    def evaluator(self, cfg: PretrainConfig):
        """``evaluate(model, final) -> recall`` on the training facts: a fixed sample first, all of them once the
        sample passes (or at the end).
        """
        recall = self.recall(cfg)

        def evaluate(model, final: bool) -> float:
            policy = self.policy(cfg, model)
            if self.sample is not None and not final:
                passed = recall.evaluate(policy, self.sample).summary.recall
                if passed < cfg.train.target_recall:
                    return passed
            out = cfg.run_dir() / "records_train.jsonl"
            return recall.evaluate(policy, self.world.facts("train"), out=out).summary.recall

        return evaluate

    def faithfulness(self, cfg: PretrainConfig, model) -> Any:
        """The trained model on the world's counterfactual copy: does it answer from the tool or from memory?"""
        from evals.faithfulness import counterfactual_world, faithfulness

        edited = counterfactual_world(self.world, cfg.world_dir)
        try:
            out = cfg.run_dir() / "records_faithfulness.jsonl"
            return faithfulness(
                self.policy(cfg, model), self.world, edited, mode=cfg.mode, tool_format=cfg.tool_format, max_turns=4,
                sample=512, batch_size=512, out=out,
            )  # fmt: skip
        finally:
            edited.close()

    def finish(self, cfg: PretrainConfig, model, result: TrainResult, start, start_cpu, share: int = 1) -> RunSummary:
        """Score the trained model on unseen people (in-tool runs by default) and write ``summary.json``."""
        eval_unseen = cfg.eval_unseen if cfg.eval_unseen is not None else cfg.mode == "in_tool"
        unseen = None
        if eval_unseen and cfg.unseen_people:
            model.eval()
            out = cfg.run_dir() / "records_unseen.jsonl"
            unseen = self.recall(cfg).evaluate(self.policy(cfg, model), self.world.facts("unseen"), out=out)
            unseen = unseen.summary.recall
        faithful = self.faithfulness(cfg, model) if cfg.mode == "in_tool" and result.reached_target else None
        train_recall = result.evals[-1].recall if result.evals else float("nan")
        summary = _summary(cfg, self, result, train_recall, unseen, start, start_cpu, share)
        if faithful is not None:
            summary = summary.model_copy(
                update={"faithful_tool": faithful.tool_rate, "faithful_memory": faithful.memory_rate}
            )
        from trainers.nanollama.export import save_hf

        save_hf(model, self.tokenizer, cfg.run_dir() / "model")  # itl-recall --model <run>/model evaluates it again
        (cfg.run_dir() / "summary.json").write_text(summary.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return summary


def _write_config(cfg: PretrainConfig) -> None:
    configs.record(cfg.run_dir() / CONFIG, cfg)


def _summary(cfg, data: _Data, result, train_recall, unseen, start, start_cpu, share: int = 1) -> RunSummary:
    return RunSummary(
        mode=cfg.mode,
        people=cfg.people,
        facts=4 * cfg.people,
        emb_dim=cfg.emb_dim,
        params=data.params,
        seed=cfg.train.seed,
        steps=result.steps,
        step_budget=cfg.train.steps,
        reached_target=result.reached_target,
        stopped_early=result.stopped_early,
        train_recall=train_recall if train_recall is not None else float("nan"),
        unseen_recall=unseen,
        final_loss=result.final_loss,
        tokens=result.tokens,
        tokens_per_s=result.tokens_per_s,
        train_seconds=result.train_seconds,
        eval_seconds=result.eval_seconds,
        wall_seconds=round((time.perf_counter() - start) / share, 3),
        cpu_seconds=round((time.process_time() - start_cpu) / share, 3),
        dialogs=data.lengths["dialogs"],
        mean_dialog_tokens=round(data.lengths["mean_tokens"], 2),
    )


def finished_summary(cfg: PretrainConfig) -> RunSummary | None:
    """The summary of a finished run of ``cfg`` in its run directory, if there is one made with the same options
    (options that cannot change the result, like threads or progress bars, may differ).
    """
    run_dir = cfg.run_dir()
    config_path, summary_path = run_dir / CONFIG, run_dir / "summary.json"
    if not (config_path.exists() and summary_path.exists()):
        return None
    cosmetic = {"progress", "resume", "threads", "device", "out", "eval_batch_size"}
    old = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    new = configs.as_mapping(cfg)
    if {k: v for k, v in old.items() if k not in cosmetic} != {k: v for k, v in new.items() if k not in cosmetic}:
        return None
    return RunSummary.model_validate_json(summary_path.read_text(encoding="utf-8"))


def _device(name: str, info: DistInfo) -> torch.device:
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda was asked for but no CUDA device is available")
        if info.world_size > 1:
            device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    return device
