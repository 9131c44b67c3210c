"""The paper's Section 6 on a pretrained model: in-tool learns facts without forgetting, in-weight erodes the model.

For each (mode, number of facts) a pretrained model (SmolLM2-135M-Instruct offline) is fine-tuned
through ``trainers.fine_tune`` (all weights by default, as in the paper; LoRA as an option) on the
oracle's dialogs. Every ``eval_every`` steps (a checkpoint is kept there) it is measured: recall on
a fixed sample of training facts and of unseen people (the environment, tools executed for real),
KL / TV / NLL change from the base on the retention prompts (``evals.divergence``) and HellaSwag
relative to the base (``evals.hellaswag``). A run stops once its training-fact recall reaches
``target_recall`` (unseen people never decide it) or at its step budget. Then, on a counterfactual
copy of its world (half the training facts changed), the share of answers giving the new value
(from the tool) and the old one (from memory) is measured (``evals.faithfulness``).

The command is ``python -m studies.finetune`` (``studies/finetune/__main__.py``). Each run's
directory is a ``trainers/sft.py`` run directory plus ``checkpoints.jsonl`` (one row per measured
step) and ``study_row.json`` (the run's row of the table); a finished run is skipped when the study
is started again, an interrupted one resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

import configs
from configs import jsonl
from evals.ranks import Ranks
from itl_env.oracle import Mode

logger = logging.getLogger("studies.finetune.study")


class PretrainedStudyConfig(BaseModel):
    """One fine-tuning study: the pretrained model, the modes and fact counts, how each run trains and is measured."""

    model_config = ConfigDict(extra="forbid")

    preset: str = Field("cpu", description="preset name (configs/finetune/<preset>.yaml) and default output folder")
    model: str = Field("smollm2-135m", description="the pretrained model: 'smollm2-135m' (offline), a path or hub id")
    modes: list[Mode] = Field(default_factory=lambda: ["in_tool", "in_weight"], description="modes to study")
    facts: list[int] = Field(default_factory=lambda: [500], description="numbers of training facts (4 per person)")
    unseen_people: int = Field(100, ge=1, description="people never trained on (in-tool generalisation)")
    world_seed: int = Field(0, description="seed of the worlds")
    lora: bool = Field(False, description="train a LoRA adapter instead of all weights (the paper: all weights)")
    learning_rate: dict[str, float] = Field(
        default_factory=lambda: {"in_tool": 1e-4, "in_weight": 1e-3}, description="learning rate per mode"
    )
    epochs: dict[str, float] = Field(
        default_factory=lambda: {"in_tool": 15, "in_weight": 30}, description="step budget per mode, in epochs"
    )
    max_steps: int | None = Field(None, ge=1, description="cap on every run's step budget (none: the epochs')")
    batch_size: dict[str, int] = Field(
        default_factory=lambda: {"in_tool": 8, "in_weight": 8}, description="dialogs per device step, per mode"
    )
    gradient_accumulation_steps: int = Field(1, ge=1)
    warmup_steps: int = Field(5, ge=0)
    eval_every: int = Field(10, ge=1, description="steps between checkpoints (each measured, each kept)")
    eval_sample: int = Field(100, ge=1, description="training facts (and unseen facts) sampled at each checkpoint")
    final_eval_facts: int = Field(0, ge=0, description="facts per split in the final evaluation (0: all)")
    target_recall: float = Field(0.99, gt=0, le=1, description="stop once training-fact recall reaches this")
    precisions: list[Literal["fp32", "bf16", "bf16_pure"]] = Field(
        default_factory=lambda: ["bf16"],
        min_length=1,
        description="numerical regimes, each a run per (mode, facts): fp32, bf16 (autocast over fp32 master weights; "
        "fp32 on a CPU without native bf16) or bf16_pure (weights and optimizer states stored in bf16, the paper's "
        "regime; exact bf16 storage over fp32 arithmetic without native bf16): trainers.precision",
    )
    eval_backend: Literal["hf", "vllm", "auto"] = Field(
        "auto",
        description="what plays the recall and faithfulness episodes: hf, vllm (an engine in .venv-vllm reloading "
        "each checkpoint's weights) or auto (vllm where installed, one process and all weights trained; else hf)",
    )
    max_new_tokens: int = Field(64, ge=1, description="tokens per assistant turn at evaluation")
    eval_batch_size: int = Field(64, ge=1, description="episodes played in lockstep at evaluation")
    retention_tokens: int = Field(
        400, ge=1, description="length of the base's greedy continuations of the retention prompts (the paper: 400)"
    )
    retention_first_tokens: int = Field(32, ge=1, description="KL also over each continuation's first N tokens")
    retention_batch: int = Field(16, ge=1)
    hellaswag: str = Field("auto", description="auto, hub, sample, none or a JSONL file (evals.hellaswag)")
    hellaswag_limit: int | None = Field(200, ge=1, description="HellaSwag items per measurement")
    faithfulness_sample: int = Field(200, ge=1, description="changed facts asked in the counterfactual world")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (none: torch's choice)")
    out: str | None = Field(None, description="output folder (default: runs/finetune/<preset>)")
    worlds: str | None = Field(
        None,
        description="where the worlds live: a folder or a PostgreSQL URL, each world a schema (default: OUT/worlds)",
    )
    results: str | None = Field(None, description="also copy the tables to this folder (e.g. results/)")
    published: str | None = Field(None, description="itl_large_scale_results.csv, to overlay the published rows")

    @model_validator(mode="after")
    def _every_value_usable(self) -> PretrainedStudyConfig:
        """Every value checked before the first run starts (not after hours of training)."""
        if not self.modes or not self.facts or any(f < 4 for f in self.facts):
            raise ValueError(f"modes and facts must be non-empty, each facts count at least 4 (got {self.facts})")
        for name in ("learning_rate", "epochs", "batch_size"):
            per_mode = getattr(self, name)
            missing = [m for m in self.modes if m not in per_mode]
            if missing:
                raise ValueError(f"{name} has no value for the mode(s) {', '.join(missing)}")
            if any(v <= 0 for v in per_mode.values()):
                raise ValueError(f"{name} values must be positive (got {per_mode})")
        if self.published is not None and not Path(self.published).is_file():
            raise ValueError(f"--published {self.published}: no such file")
        return self

    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs/finetune") / self.preset

    def budget(self, mode: str, facts: int) -> int:
        """The run's step budget: its epochs over the facts at this batch size, capped by ``max_steps``."""
        dialogs_per_step = self.batch_size[mode] * self.gradient_accumulation_steps
        steps = math.ceil(self.epochs[mode] * facts / dialogs_per_step)
        return max(1, min(steps, self.max_steps) if self.max_steps else steps)


class CheckpointRow(BaseModel):
    """One measured checkpoint of one run."""

    model_config = ConfigDict(extra="forbid")

    mode: str
    facts: int
    precision: str = "bf16"  # the regime asked for (rows written before regimes were recorded: the then default)
    step: int
    train_recall: float
    unseen_recall: float
    kl: float
    kl_first: float | None = None  # KL over each continuation's first retention_first_tokens tokens
    tv: float
    nll_change: float
    hellaswag_acc: float | None = None
    hellaswag_acc_norm: float | None
    hellaswag_relative: float | None  # acc relative to the base's, % (acc_norm's before 2026-12-05)
    hellaswag_relative_norm: float | None = None
    seconds: float


class StudyRow(BaseModel):
    """One run's line of the table."""

    model_config = ConfigDict(extra="forbid")

    mode: str
    facts: int
    precision: str = Field("bf16", description="the regime asked for")
    regime: str = Field("", description="the regime the device ran (trainers.precision: native, emulated, fallback)")
    steps: int
    step_budget: int
    steps_to_target: int | None = Field(description="first measured step with training recall >= target")
    train_recall: float = Field(description="final evaluation, training facts")
    unseen_recall: float = Field(description="final evaluation, unseen people")
    kl: float
    kl_first: float | None = None
    tv: float
    nll_change: float
    hellaswag_relative: float | None = Field(description="acc relative to the base's, % (the paper's measure)")
    hellaswag_relative_norm: float | None = None
    hellaswag_item_points: float | None = Field(None, description="relative points one HellaSwag item is worth")
    hellaswag_source: str | None
    prompts_rendered: str = Field("", description="how the retention prompts were rendered for KL / TV")
    faithful_tool: float = Field(description="counterfactual world: share answering the new value (the tool's)")
    faithful_memory: float = Field(description="counterfactual world: share answering the old value (memory)")
    wall_seconds: float = Field(description="time spent on the run, summed over its resumed parts")


class Measures:
    """Everything measured against the base, built once: the base's continuations and its HellaSwag accuracy."""

    def __init__(self, cfg: PretrainedStudyConfig):
        from evals.divergence import DivergenceProbe
        from evals.hellaswag import HellaSwagProbe
        from evals.models import load_as_is

        self.base, self.tokenizer = load_as_is(cfg.model)
        self.base.eval()
        self.divergence = DivergenceProbe(
            self.base, self.tokenizer, max_new_tokens=cfg.retention_tokens, batch_size=cfg.retention_batch,
            default_system=False, first_tokens=cfg.retention_first_tokens,
            cache=cfg.out_dir() / "base_continuations.json",
        )  # fmt: skip
        self.hellaswag = (
            None
            if cfg.hellaswag == "none"
            else HellaSwagProbe(
                self.base, self.tokenizer, cfg.hellaswag, limit=cfg.hellaswag_limit, batch_size=cfg.retention_batch
            )
        )

    def measure(self, model: Any, tokenizer: Any) -> dict[str, Any]:
        """KL / TV / NLL change and HellaSwag of ``model`` (put in eval mode for it, then back)."""
        training = model.training
        model.eval()
        try:
            divergence, _ = self.divergence.measure(model, tokenizer)
            swag = self.hellaswag.measure(model, tokenizer) if self.hellaswag is not None else None
        finally:
            model.train(training)
        return {
            "kl": divergence.kl,
            "kl_first": divergence.kl_first,
            "tv": divergence.tv,
            "nll_change": divergence.nll_change,
            "hellaswag_acc": swag.model_acc if swag else None,
            "hellaswag_acc_norm": swag.model_acc_norm if swag else None,
            "hellaswag_relative": swag.relative if swag else None,
            "hellaswag_relative_norm": swag.relative_norm if swag else None,
            "hellaswag_source": swag.source if swag else None,
        }


def stop_rule(summary: dict[str, float], target: float) -> bool:
    """Stop once recall on the training facts reaches ``target``: chosen on training facts only, never on unseen
    people (whose recall is measured and reported, not used).
    """
    return summary["train_recall"] >= target


def run_dir(cfg: PretrainedStudyConfig, mode: str, facts: int, precision: str) -> Path:
    return cfg.out_dir() / "runs" / f"{mode}-f{facts}-{precision}"


def read_rows(path: Path) -> list[CheckpointRow]:
    """A run's checkpoint rows, one per step (a step measured twice, e.g. around an interruption, keeps its last)."""
    rows = {row.step: row for row in jsonl.read(path, CheckpointRow.model_validate)}
    return [rows[step] for step in sorted(rows)]


def train_run(cfg: PretrainedStudyConfig, mode: str, facts: int, precision: str, measures: Measures | None) -> StudyRow:
    """One (mode, facts, precision) run: fine-tune, measure every checkpoint, stop on training recall, then faithfulness.

    In a multi-process job every rank trains and plays its share of each evaluation; the main process alone
    measures against the base (``measures`` is None elsewhere) and writes the run's row.
    """
    from transformers import TrainerCallback
    from trl import SFTConfig

    from evals.faithfulness import counterfactual_world, faithfulness
    from itl_env.store import world_at
    from itl_env.world import open_or_build
    from trainers.fine_tune import SFTScriptConfig, fine_tune
    from trainers.options import cuda_available, no_activation_checkpointing

    out = run_dir(cfg, mode, facts, precision)
    finished = out / "study_row.json"
    if finished.exists():
        return StudyRow.model_validate_json(finished.read_text(encoding="utf-8"))
    people = max(1, facts // 4)
    worlds = cfg.worlds or str(cfg.out_dir() / "worlds")
    world_path = world_at(worlds, f"world-{people}-{cfg.unseen_people}-{cfg.world_seed}")
    ranks = Ranks.current()
    world = ranks.first(
        lambda: open_or_build(world_path, people=people, unseen_people=cfg.unseen_people, seed=cfg.world_seed)
    )
    budget = cfg.budget(mode, facts)
    dialogs = budget * cfg.batch_size[mode] * cfg.gradient_accumulation_steps
    resume = (out / "config.yaml").exists()
    spent = _Clock(out / "seconds_spent")
    script = SFTScriptConfig(
        mode=mode,
        model=cfg.model,
        world=str(world_path),
        lora=cfg.lora,
        phrasings=max(1, math.ceil(dialogs / (4 * people))),  # enough oracle dialogs for the whole budget
        eval_every=cfg.eval_every,
        eval_sample=cfg.eval_sample,
        final_eval_facts=cfg.final_eval_facts,
        eval_batch_size=cfg.eval_batch_size,
        max_new_tokens=cfg.max_new_tokens,
        precision=precision,
        eval_backend=cfg.eval_backend,
        resume=resume,
    )
    training = SFTConfig(
        output_dir=str(out),
        max_steps=budget,
        per_device_train_batch_size=cfg.batch_size[mode],
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate[mode],
        lr_scheduler_type="constant_with_warmup",  # runs stop at the target: a decay tied to the budget would not fit
        warmup_steps=cfg.warmup_steps,
        weight_decay=0.0,
        logging_steps=max(1, cfg.eval_every // 2),
        save_strategy="steps",
        save_steps=cfg.eval_every,
        save_total_limit=1,
        report_to="none",
        assistant_only_loss=True,
        max_length=1024,
        seed=0,
        use_cpu=not cuda_available(),
        **no_activation_checkpointing(),
        disable_tqdm=False,
    )
    rows_path = out / "checkpoints.jsonl"
    recalls: dict[int, dict[str, float]] = {}
    last_measured = [max((r.step for r in read_rows(rows_path)), default=0)]

    def reached(step: int, summary: dict[str, float]) -> bool:
        recalls[step] = summary
        return stop_rule(summary, cfg.target_recall)

    class Measure(TrainerCallback):
        """After the periodic recall (fine_tune's callback runs first), the same checkpoint against the base."""

        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            summary = recalls.pop(state.global_step, None)
            if summary is not None and measures is not None:  # the main process measures; the others wait
                t0 = time.perf_counter()
                row = CheckpointRow(
                    mode=mode,
                    facts=facts,
                    precision=precision,
                    step=state.global_step,
                    train_recall=summary["train_recall"],
                    unseen_recall=summary["unseen_recall"],
                    seconds=0.0,
                    **{
                        k: v
                        for k, v in measures.measure(model, kw["processing_class"]).items()
                        if k != "hellaswag_source"
                    },
                )
                row = row.model_copy(update={"seconds": round(time.perf_counter() - t0, 1)})
                jsonl.append(rows_path, [row])
                last_measured[0] = state.global_step
                spent.save()
                logger.info(
                    "%s f=%d step %d: recall %.3f / %.3f, KL %.4f",
                    mode,
                    facts,
                    row.step,
                    row.train_recall,
                    row.unseen_recall,
                    row.kl,
                )

    faithful: list[Any] = []

    def measure_faithfulness(policy: Any) -> None:
        """The final model in a counterfactual copy of its world, played by the run's own evaluator (its engine)."""
        edited = ranks.first(lambda: counterfactual_world(world, worlds))  # every rank plays its share of it
        try:
            faithful.append(
                faithfulness(
                    policy,
                    world,
                    edited,
                    mode=mode,
                    sample=cfg.faithfulness_sample,
                    batch_size=cfg.eval_batch_size,
                    out=out / "records" / "faithfulness.jsonl",
                    ranks=ranks,
                )
            )
        finally:
            edited.close()

    try:
        result = fine_tune(script, training, callbacks=[Measure()], on_eval=reached, then=measure_faithfulness)
        if result.interrupted:
            raise KeyboardInterrupt
        final_model = out / "model"
        measure_end = measures is not None and last_measured[0] != result.steps
        end = measures.measure(*_load(final_model)) if measure_end else None
    finally:
        world.close()
    if not ranks.main:  # the main process measured: its row is the run's
        return ranks.broadcast(None)
    rows = read_rows(rows_path)
    last = rows[-1] if rows else None
    swag_source = measures.hellaswag.label if measures.hellaswag is not None else None
    final = end or (last.model_dump() if last else {})
    row = StudyRow(
        mode=mode,
        facts=facts,
        precision=precision,
        regime=result.precision,
        steps=result.steps,
        step_budget=budget,
        steps_to_target=next((r.step for r in rows if r.train_recall >= cfg.target_recall), None),
        train_recall=result.train_recall,
        unseen_recall=result.unseen_recall,
        kl=final.get("kl", 0.0),
        kl_first=final.get("kl_first"),
        tv=final.get("tv", 0.0),
        nll_change=final.get("nll_change", 0.0),
        hellaswag_relative=final.get("hellaswag_relative"),
        hellaswag_relative_norm=final.get("hellaswag_relative_norm"),
        hellaswag_item_points=measures.hellaswag.item_points if measures.hellaswag is not None else None,
        prompts_rendered=measures.divergence.rendering,
        hellaswag_source=swag_source,
        faithful_tool=faithful[0].tool_rate,
        faithful_memory=faithful[0].memory_rate,
        wall_seconds=spent.seconds(),
    )
    finished.write_text(row.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return ranks.broadcast(row)


class _Clock:
    """A run's time over its resumed parts: what earlier parts spent up to their last checkpoint (kept in ``path``;
    work after it is redone on resume) plus this part's.
    """

    def __init__(self, path: Path):
        self.path, self.started = path, time.perf_counter()
        try:
            self.before = float(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.before = 0.0

    def seconds(self) -> float:
        return round(self.before + time.perf_counter() - self.started, 1)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(f"{self.seconds()}\n", encoding="utf-8")


def _load(model_dir: Path) -> tuple[Any, Any]:
    from evals.models import load_as_is

    return load_as_is(str(model_dir))


class PretrainedStudyResult(BaseModel):
    """What a fine-tuning study produced: its output folder, one row per (mode, facts) run, and its wall time."""

    model_config = ConfigDict(extra="forbid")

    out: str
    rows: list[StudyRow]
    wall_seconds: float


def run_study(cfg: PretrainedStudyConfig) -> PretrainedStudyResult:
    """Every (mode, facts) run in turn (finished ones read back), then the tables and plots."""
    import torch
    from tqdm import tqdm

    from studies.finetune.report import write_report

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    ranks = Ranks.join()
    out = cfg.out_dir()

    def create() -> None:
        configs.claim_output(out, cfg, "fine-tuning study")

    ranks.first(create, then=lambda: None)
    runs = [(mode, facts, precision) for facts in cfg.facts for precision in cfg.precisions for mode in cfg.modes]
    processes = f" on {ranks.size} processes" if ranks.size > 1 else ""
    logger.info("fine-tuning study: %d runs into %s%s; measuring the base model first", len(runs), out, processes)
    measures = Measures(cfg) if ranks.main else None
    rows = []
    with tqdm(runs, desc="fine-tuning study", unit="run", disable=not ranks.main) as bar:
        for mode, facts, precision in bar:
            bar.set_postfix_str(f"{mode} {facts} facts {precision}")
            rows.append(train_run(cfg, mode, facts, precision, measures))
    result = PretrainedStudyResult(out=str(out), rows=rows, wall_seconds=round(time.perf_counter() - started, 1))
    if ranks.main:
        checkpoints = [r for run in runs for r in read_rows(run_dir(cfg, *run) / "checkpoints.jsonl")]
        write_report(out, rows, checkpoints, cfg.published, cfg.results, cfg.preset)
        (out / "study.json").write_text(json.dumps(result.model_dump(), indent=2) + "\n", encoding="utf-8")
    return result
