"""In-tool vs in-weight supervised fine-tuning with TRL, evaluated through the environment.

    python trainers/sft.py --mode in_tool                      # embedded default model and world
    python trainers/sft.py --mode in_weight
    python trainers/sft.py --config configs/sft_smollm2.yaml   # SmolLM2-135M-Instruct, offline, LoRA
    python trainers/sft.py --mode in_tool --model path/to/hf_model --lora true
    python trainers/sft.py --output_dir runs/my-run --resume true   # continue an interrupted run
    accelerate launch --config_file configs/accelerate/ddp.yaml trainers/sft.py --mode in_tool

Both modes train on the oracle's trajectories in ``ToolUseEnv`` (in_tool: ask -> call -> read ->
answer; in_weight: ask -> answer), with the loss on assistant tokens only, and are evaluated by
playing the same environment with the tools executed for real: periodically during training on
a sample, and at the end on the training people and on unseen people.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python trainers/sft.py` puts trainers/ first on sys.path; the project root is needed
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from trainers import run_dir
from trainers.options import RunOptions, RunResult, parse_args

logger = logging.getLogger("trainers.sft")


@dataclass
class SFTScriptConfig(RunOptions):
    """What to train and how to evaluate it (TRL's SFTConfig holds the optimisation settings)."""

    phrasings: int = field(
        default=4, metadata={"help": "passes of oracle dialogs over the training facts, each phrased anew"}
    )
    stop_at_recall: float = field(
        default=0.0,
        metadata={"help": "stop early once a periodic evaluation reaches this recall on both splits (0: never)"},
    )

    positive = (*RunOptions.positive, "phrasings")


def training_defaults() -> dict[str, Any]:
    """TRL SFTConfig values that suit the embedded model on a CPU; every one can be overridden."""
    return {
        "output_dir": run_dir.AUTO,
        "max_steps": 1500,
        "per_device_train_batch_size": 32,
        "learning_rate": 3e-3,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 30,
        "weight_decay": 0.01,
        "logging_steps": 10,
        "save_strategy": "steps",
        "save_steps": 100,
        "save_total_limit": 2,
        "report_to": "none",
        "assistant_only_loss": True,
        "max_length": 512,
        "seed": 0,
        "dataloader_num_workers": 0,
        "bf16": False,
        # TRL turns activation checkpointing on by default: it only costs time (~30% per step) on small models.
        "gradient_checkpointing": False,
    }


def parse(argv: list[str] | None = None) -> tuple[SFTScriptConfig, Any]:
    from trl import SFTConfig

    return parse_args(
        SFTScriptConfig, SFTConfig, prog="trainers/sft.py", doc=__doc__, defaults=training_defaults(), argv=argv
    )


class _Stop:
    """First SIGINT/SIGTERM: save a checkpoint and stop after the current step. Second: stop now."""

    requested = False
    _previous: dict[int, Any]

    def install(self) -> None:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("signal %d: saving a checkpoint and stopping after this step (again to stop at once)", signum)


def main(cfg: SFTScriptConfig, training: Any) -> RunResult:
    import torch
    from transformers import TrainerCallback
    from trl import SFTTrainer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    out = run_dir.check(run_dir.resolve(training.output_dir, "sft", cfg.mode), resume=cfg.resume)
    training.output_dir = str(out)
    if not torch.cuda.is_available():
        training.use_cpu = True
    random.seed(training.seed)

    world = cfg.open_world()
    model, tokenizer = cfg.load_model(seed=training.seed)
    run_dir.prepare(out, resume=cfg.resume)  # only once the world and the model loaded
    run_dir.write_config(
        out, script=cfg, training=training, world=cfg.world_spec().model_dump(), world_hash=world.content_hash
    )
    metrics = run_dir.MetricsLog(out)
    dataset = _dataset(world, cfg, rows=_rows_consumed(training))
    evaluator = RecallEvaluator(world, cfg, tokenizer, out)
    stop = _Stop()
    stop.install()

    class Progress(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if state.is_world_process_zero and logs:
                metrics.write(step=state.global_step, **logs)

        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            if stop.requested:
                control.should_save = True
                control.should_training_stop = True
                return
            if cfg.eval_every and state.global_step % cfg.eval_every == 0 and state.is_world_process_zero:
                summary = evaluator.run(model, sample=cfg.eval_sample, tag=f"step{state.global_step}")
                metrics.write(step=state.global_step, **{f"eval/{k}": v for k, v in summary.items()})
                threshold = cfg.stop_at_recall
                if threshold and summary["train_recall"] >= threshold and summary["unseen_recall"] >= threshold:
                    logger.info(
                        "recall %.3f / %.3f reached the stop threshold %.2f",
                        summary["train_recall"],
                        summary["unseen_recall"],
                        threshold,
                    )
                    control.should_save = True
                    control.should_training_stop = True

    trainer = SFTTrainer(
        model=model,
        args=training,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=_lora(cfg),
        callbacks=[Progress()],
    )
    trained, trainable, final, interrupted = train_and_finish(trainer, cfg, stop, evaluator, metrics, tokenizer, out)
    result = RunResult(
        run_dir=str(out),
        mode=cfg.mode,
        model=cfg.model,
        parameters=sum(p.numel() for p in trained.parameters()),
        trainable_parameters=trainable,
        steps=trainer.state.global_step,
        wall_seconds=round(time.perf_counter() - started, 1),
        train_recall=final["train_recall"],
        unseen_recall=final["unseen_recall"],
        tool_call_rate=final["tool_call_rate"],
        parse_error_rate=final["parse_error_rate"],
        interrupted=interrupted,
    )
    if trainer.is_world_process_zero():
        (out / "summary.json").write_text(result.model_dump_json(indent=2) + "\n", encoding="utf-8")
    world.close()
    return result


def train_and_finish(
    trainer: Any, cfg: RunOptions, stop: _Stop, evaluator: RecallEvaluator, metrics: Any, tokenizer: Any, out: Path
) -> tuple[Any, int, dict[str, float], bool]:
    """Train (resuming if asked) until done or stopped; then merge LoRA, save the model and evaluate it.

    Returns (trained model, trainable parameters, final evaluation, interrupted). An interrupted run
    keeps its checkpoints and is neither saved nor evaluated.
    """
    interrupted = False
    try:
        trainer.train(resume_from_checkpoint=_last_checkpoint(out) if cfg.resume else None)
    except KeyboardInterrupt:
        interrupted = True
        logger.warning("interrupted: checkpoints in %s are kept; continue with --resume true", out)
    finally:
        stop.uninstall()
    interrupted = interrupted or stop.requested
    trained = trainer.model
    trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    if cfg.lora and cfg.merge_lora:
        trained = trained.merge_and_unload()
    final = {"train_recall": 0.0, "unseen_recall": 0.0, "tool_call_rate": 0.0, "parse_error_rate": 0.0}
    if trainer.is_world_process_zero() and not interrupted:
        trained.save_pretrained(out / "model")
        tokenizer.save_pretrained(out / "model")
        final = evaluator.run(trained, sample=cfg.final_eval_facts, tag="final")
        metrics.write(step=trainer.state.global_step, **{f"final/{k}": v for k, v in final.items()})
    return trained, trainable, final, interrupted


def _dataset(world: Any, cfg: SFTScriptConfig, rows: int | None) -> Any:
    from itl_env.trajectories import sft_dataset

    dataset = sft_dataset(world, world.facts("train"), cfg.mode, epochs=cfg.phrasings, seed=1).shuffle(seed=0)
    if rows is not None and rows < len(dataset):
        # SFTTrainer tokenises every row up front; rows the run never reaches only cost start-up time.
        logger.info("training on the first %d of %d shuffled dialogs (what max_steps consumes)", rows, len(dataset))
        dataset = dataset.select(range(rows))
    return dataset


def _rows_consumed(training: Any) -> int | None:
    """Dialogs a run with max_steps reads (all ranks together); None when it runs by epochs."""
    if training.max_steps is None or training.max_steps <= 0:
        return None
    world_size = max(1, int(os.environ.get("WORLD_SIZE", "1")))
    return training.max_steps * training.per_device_train_batch_size * training.gradient_accumulation_steps * world_size


def _lora(cfg: SFTScriptConfig) -> Any:
    if not cfg.lora:
        return None
    from peft import LoraConfig

    targets: Any = (
        cfg.lora_target_modules if cfg.lora_target_modules == "all-linear" else cfg.lora_target_modules.split(",")
    )
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=targets, task_type="CAUSAL_LM")


def _last_checkpoint(out: Path) -> str | None:
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    if not checkpoints:
        logger.warning("no checkpoint in %s: training starts from the beginning", out)
        return None
    return str(checkpoints[-1])


class RecallEvaluator:
    """Plays the environment with the model on fixed samples of training and unseen facts."""

    def __init__(self, world: Any, cfg: SFTScriptConfig, tokenizer: Any, out: Path):
        from itl_env.env import ToolUseEnv

        self.world, self.cfg, self.tokenizer, self.out = world, cfg, tokenizer, out
        offer = cfg.mode == "in_tool"
        self.env_factory = lambda: ToolUseEnv(world, offer_tools=offer, max_turns=cfg.max_turns)
        self.tools = self.env_factory().tools
        self.facts = {split: world.facts(split) for split in ("train", "unseen")}

    def sample(self, split: str, n: int) -> list[Any]:
        """A fixed random sample of ``n`` facts (all of them for 0): the same facts at every evaluation."""
        facts = self.facts[split]
        return list(facts) if n == 0 or n >= len(facts) else random.Random(1234).sample(facts, n)

    def run(self, model: Any, *, sample: int, tag: str) -> dict[str, float]:
        from evals.backends.hf import HFPolicy
        from itl_env.rollout import rollout

        policy = HFPolicy(
            model,
            self.tokenizer,
            self.tools,
            max_new_tokens=self.cfg.max_new_tokens,
            batch_size=self.cfg.eval_batch_size,
        )
        summary: dict[str, float] = {}
        pooled = {"tool_call_rate": 0.0, "parse_error_rate": 0.0, "facts": 0}
        records_dir = self.out / "records"
        records_dir.mkdir(exist_ok=True)
        for split in ("train", "unseen"):
            facts = self.sample(split, sample)
            if not facts:
                continue
            result = rollout(
                policy,
                self.env_factory,
                facts,
                mode=self.cfg.mode,
                batch_size=self.cfg.eval_batch_size,
                out=records_dir / f"{tag}-{split}.jsonl",
                desc=f"eval {tag} {split}",
            )
            summary[f"{split}_recall"] = result.summary.recall
            summary[f"{split}_tool_call_rate"] = result.summary.tool_call_rate
            summary[f"{split}_parse_error_rate"] = result.summary.parse_error_rate
            pooled["tool_call_rate"] += result.summary.tool_call_rate * len(facts)
            pooled["parse_error_rate"] += result.summary.parse_error_rate * len(facts)
            pooled["facts"] += len(facts)
            logger.info(
                "%s %s: recall %.3f, tool calls %.3f, parse errors %.3f (%d facts)",
                tag,
                split,
                result.summary.recall,
                result.summary.tool_call_rate,
                result.summary.parse_error_rate,
                len(facts),
            )
        summary.setdefault("unseen_recall", 0.0)
        # the run's headline rates cover every evaluated episode, training and unseen facts alike
        summary["tool_call_rate"] = pooled["tool_call_rate"] / max(pooled["facts"], 1)
        summary["parse_error_rate"] = pooled["parse_error_rate"] / max(pooled["facts"], 1)
        return summary


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        script_cfg, training_cfg = parse()
        outcome = main(script_cfg, training_cfg)
    except (run_dir.RunDirError, ValueError, FileNotFoundError) as err:
        sys.exit(f"trainers/sft.py: error: {err}")
    outcome.print("trainers/sft.py")
    sys.exit(130 if outcome.interrupted else 0)
