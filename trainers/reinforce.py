"""GRPO with TRL through the environment: the library path of ``trainers/grpo.py``.

Each prompt is one fact of a training person; ``num_generations`` rollouts of it see the same
question. A rollout is a real episode: the model's tool calls run through the environment's
registry (``itl_env.trl_adapter``), at most ``max_turns - 1`` tool rounds, and its final message
is scored by the environment (1.0 right, 0.0 otherwise). Recall is measured as ``trainers.fine_tune``
measures it (``evals.evaluator.RecallEvaluator``): before training, every ``eval_every`` steps and at the end.
"""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from evals.provenance import provenance
from trainers import run_dir
from trainers.hf_training import GracefulStop, ModelRecall, lora_config, progress_callback, run_result, train_and_finish
from trainers.options import RunOptions, RunResult, cuda_available, no_activation_checkpointing
from trainers.run_start import start_run

logger = logging.getLogger("trainers.grpo")


class GRPOScriptConfig(RunOptions):
    """What to train, on which facts, and how to evaluate it (TRL's GRPOConfig holds the optimisation settings).

    The world must be the model's SFT run's: its unseen people must stay unseen.
    """

    train_facts: int = Field(
        0, ge=0, description="facts of training people used as GRPO prompts (a fixed random sample; 0: all)"
    )
    max_turns: int = Field(
        3,
        ge=2,
        description="assistant turns per episode, in training and evaluation (max_tool_calling_iterations = "
        "max_turns - 1)",
    )
    initial_eval: bool = Field(
        True, description="evaluate before training, on the final evaluation's facts (recall before/after)"
    )
    eval_every: int = Field(50, ge=0, description="evaluate recall every N steps (0: only before and after)")


class GRPOResult(RunResult):
    """What a GRPO run reports: a run's results, plus recall before training and the last logged mean reward."""

    initial_train_recall: float | None
    initial_unseen_recall: float | None
    last_reward_mean: float | None

    def rows(self) -> list[tuple[str, str]]:
        def recall(before: float | None, after: float) -> str:
            return f"{after:.3f}" if before is None else f"{before:.3f} -> {after:.3f}"

        changed = {
            "recall, training facts": recall(self.initial_train_recall, self.train_recall),
            "recall, unseen people": recall(self.initial_unseen_recall, self.unseen_recall),
        }
        rows = [(k, changed.get(k, v)) for k, v in super().rows()]
        reward = "-" if self.last_reward_mean is None else f"{self.last_reward_mean:.3f}"
        return [*rows[:6], ("last logged reward", reward), *rows[6:]]


def training_defaults() -> dict[str, Any]:
    """TRL GRPOConfig values that suit a small model on a CPU; every one can be overridden."""
    return {
        "output_dir": run_dir.AUTO,
        "max_steps": 100,
        "per_device_train_batch_size": 32,  # 4 questions x 8 generations per step
        "num_generations": 8,
        "max_completion_length": 128,  # a call, its result and the answer take 53-101 tokens of the default model
        "temperature": 1.0,
        "learning_rate": 1e-4,
        "lr_scheduler_type": "constant_with_warmup",
        "warmup_steps": 5,
        "beta": 0.0,
        "logging_steps": 5,
        "save_strategy": "steps",
        "save_steps": 50,
        "save_total_limit": 2,
        "report_to": "none",
        "seed": 0,
        "dataloader_num_workers": 0,
        "ddp_find_unused_parameters": False,  # every parameter takes part: no extra pass over the graph under DDP
        "bf16": False,
        "use_cpu": not cuda_available(),  # TRL checks bf16 against the device when the config is built
        **no_activation_checkpointing(),
    }


def reinforce(cfg: GRPOScriptConfig, training: Any) -> GRPOResult:
    """One GRPO run: check everything, create the run directory, train, evaluate, summarise (every rank)."""
    from trl import GRPOTrainer

    from itl_env.trl_adapter import answered, environment_factory, grpo_dataset

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # environment_factory is experimental in TRL 1.16
    started = time.perf_counter()
    _bound_tool_rounds(cfg, training)
    if training.use_vllm and cfg.model == "default":
        raise ValueError(
            "--use_vllm loads the weights from disk: pass a model directory (an SFT run's model/, or one written "
            "by evals.default_model.save), not 'default'"
        )
    random.seed(training.seed)
    cfg = _on_the_models_world(cfg)

    def prepare(world: Any) -> Any:
        _check_same_world(cfg.model, world.content_hash)
        return cfg.registry(world)

    run = start_run(cfg, training, kind="grpo", prepare=prepare)
    out, world, model, tokenizer, metrics = run.out, run.world, run.model, run.tokenizer, run.metrics
    recall: Any = None
    try:
        registry = run.prepared
        facts = world.facts("train")
        if cfg.train_facts and cfg.train_facts < len(facts):
            facts = random.Random(training.seed).sample(facts, cfg.train_facts)
        dataset = grpo_dataset(facts, seed=training.seed)
        recall = ModelRecall.of_run(run, cfg, registry)
        stop = GracefulStop()
        last_reward: list[float] = []

        def keep_reward(logs: dict[str, Any]) -> None:
            if "reward" in logs:
                last_reward[:] = [logs["reward"]]

        progress = progress_callback(cfg, stop, recall, on_log=keep_reward)
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[answered],  # weight 0: hands the final answers over; the reward is the environment's
            args=training,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora_config(cfg, tokenizer),
            callbacks=[progress, *run.callbacks()],
            environment_factory=environment_factory(
                world, registry=registry, offer_tools=cfg.mode == "in_tool", max_turns=cfg.max_turns
            ),
        )
        progress.attach(trainer, metrics)
        initial: dict[str, float] | None = None
        if cfg.initial_eval and not cfg.resume:
            initial = recall(trainer.model, sample=cfg.final_eval_facts, tag="initial")
            progress.report({f"initial/{k}": v for k, v in initial.items()})
        trained, trainable, final, interrupted = train_and_finish(trainer, progress, tokenizer)
        return run_result(
            GRPOResult, trainer, cfg, out, trained, trainable, final, interrupted, started,
            initial_train_recall=initial["train_recall"] if initial else None,
            initial_unseen_recall=initial["unseen_recall"] if initial else None,
            last_reward_mean=last_reward[0] if last_reward else None,
        )  # fmt: skip
    except BaseException:
        run.abandon()
        raise
    finally:
        if recall is not None:
            recall.close()  # its vLLM engine, if any
        world.close()


def _on_the_models_world(cfg: GRPOScriptConfig) -> GRPOScriptConfig:
    """Without --world, a model of an earlier run continues on that run's world (its run.json names it)."""
    info = provenance(cfg.model) if cfg.world is None and Path(cfg.model).is_dir() else None
    if info is None:
        return cfg
    logger.info("training on the world of %s's run: %s", cfg.model, info["world"]["target"])
    return cfg.model_copy(update={"world": info["world"]["target"]})


def _bound_tool_rounds(cfg: GRPOScriptConfig, training: Any) -> None:
    """One bound for training and evaluation: max_turns assistant turns, so max_turns - 1 tool rounds."""
    rounds = cfg.max_turns - 1
    if training.max_tool_calling_iterations is None:
        training.max_tool_calling_iterations = rounds
    elif training.max_tool_calling_iterations != rounds:
        raise ValueError(
            f"--max_tool_calling_iterations {training.max_tool_calling_iterations} disagrees with --max_turns "
            f"{cfg.max_turns} (evaluation allows {rounds} tool rounds); set --max_turns only"
        )
    if training.reward_weights not in (None, [0.0]):
        raise ValueError(
            "--reward_weights cannot be set: the reward is the environment's exact score (get_reward, weight 1); "
            "the one reward function, 'answered', only hands the answers over (weight 0)"
        )
    training.reward_weights = [0.0]


def _check_same_world(model: str, world_hash: str) -> None:
    """A model saved by trainers/sft.py or this script must be trained further on the world it was trained on."""
    info = provenance(model) if Path(model).is_dir() else None
    trained_on = info["world"]["content_hash"] if info else None
    if trained_on and trained_on != world_hash:
        raise ValueError(
            f"{model} was trained on another world ({info['world']['target']}, see its run.json): drop --world, or "
            "pass that one, or 'unseen' people would not be unseen"
        )
