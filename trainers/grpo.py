"""GRPO with TRL through the environment: the model plays ``ToolUseEnv``, rewarded by exact scoring.

    python trainers/grpo.py --model runs/sft-in_tool-.../model                  # continue an SFT model (same world options)
    python trainers/grpo.py --model runs/sft-in_tool-.../checkpoint-500 --max_steps 60 --output_dir runs/grpo
    python trainers/grpo.py --config configs/grpo_cpu.yaml --model runs/sft-in_tool-.../checkpoint-500   # README demo
    python trainers/grpo.py --model path/to/hf_model --use_vllm true --vllm_mode colocate   # GPU, vLLM rollouts
    python trainers/grpo.py --output_dir runs/my-grpo --resume true                         # continue a run

Each prompt is one fact of a training person; ``num_generations`` rollouts of it see the same
question. A rollout is a real episode: the model's tool calls run through the environment's
registry (``itl_env.trl_adapter``), at most ``max_turns - 1`` tool rounds, and its final message
is scored by the environment (1.0 right, 0.0 otherwise). Recall is measured like trainers/sft.py
measures it, by playing the environment greedily on fixed samples of training and unseen facts:
before training, every ``eval_every`` steps and at the end. Use the world the model was trained
on (the same ``--world``/``--people``/``--unseen_people``/``--world_seed`` as its SFT run).
"""

from __future__ import annotations

import logging
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python trainers/grpo.py` puts trainers/ first on sys.path; the project root is needed
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import yaml

from trainers import run_dir
from trainers.options import RunOptions, RunResult, parse_args

logger = logging.getLogger("trainers.grpo")


@dataclass
class GRPOScriptConfig(RunOptions):
    """What to train, on which facts, and how to evaluate it (TRL's GRPOConfig holds the optimisation settings).

    The world options must be those of the model's SFT run: its unseen people must stay unseen.
    """

    train_facts: int = field(
        default=0, metadata={"help": "facts of training people used as GRPO prompts (a fixed random sample; 0: all)"}
    )
    max_turns: int = field(
        default=3,
        metadata={
            "help": "assistant turns per episode, in training and evaluation (max_tool_calling_iterations = max_turns - 1)"
        },
    )
    initial_eval: bool = field(
        default=True,
        metadata={"help": "evaluate before training, on the final evaluation's facts (recall before/after)"},
    )
    eval_every: int = field(default=50, metadata={"help": "evaluate recall every N steps (0: only before and after)"})

    non_negative = (*RunOptions.non_negative, "train_facts")


class GRPOResult(RunResult):
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
        "bf16": False,
        "gradient_checkpointing": False,  # TRL turns it on; a small model on a CPU needs compute more than memory
    }


def parse(argv: list[str] | None = None) -> tuple[GRPOScriptConfig, Any]:
    from trl import GRPOConfig

    return parse_args(
        GRPOScriptConfig, GRPOConfig, prog="trainers/grpo.py", doc=__doc__, defaults=training_defaults(), argv=argv
    )


def main(cfg: GRPOScriptConfig, training: Any) -> GRPOResult:
    import torch
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    from itl_env.trl_adapter import answered, environment_factory, grpo_dataset
    from trainers.sft import RecallEvaluator, _lora, _Stop, train_and_finish

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # environment_factory is experimental in TRL 1.16
    started = time.perf_counter()
    _bound_tool_rounds(cfg, training)
    if training.use_vllm and cfg.model == "default":
        raise ValueError(
            "--use_vllm loads the weights from disk: pass a model directory (an SFT run's model/, or one written "
            "by evals.default_model.save), not 'default'"
        )
    out = run_dir.check(run_dir.resolve(training.output_dir, "grpo", cfg.mode), resume=cfg.resume)
    training.output_dir = str(out)
    if not torch.cuda.is_available():
        training.use_cpu = True
    random.seed(training.seed)

    world = cfg.open_world()
    _check_same_world(cfg.model, world.content_hash)
    model, tokenizer = cfg.load_model(seed=training.seed)
    run_dir.prepare(out, resume=cfg.resume)  # only once the world and the model loaded
    run_dir.write_config(
        out, script=cfg, training=training, world=cfg.world_spec().model_dump(), world_hash=world.content_hash
    )
    metrics = run_dir.MetricsLog(out)
    facts = world.facts("train")
    if cfg.train_facts and cfg.train_facts < len(facts):
        facts = random.Random(training.seed).sample(facts, cfg.train_facts)
    dataset = grpo_dataset(facts, seed=training.seed)
    evaluator = RecallEvaluator(world, cfg, tokenizer, out)
    initial: dict[str, float] | None = None
    if cfg.initial_eval and not cfg.resume:
        initial = evaluator.run(model, sample=cfg.final_eval_facts, tag="initial")
        metrics.write(step=0, **{f"initial/{k}": v for k, v in initial.items()})
    stop = _Stop()
    stop.install()
    last_reward: list[float] = []

    class Progress(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if state.is_world_process_zero and logs:
                metrics.write(step=state.global_step, **logs)
                if "reward" in logs:
                    last_reward[:] = [logs["reward"]]

        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            if stop.requested:
                control.should_save = True
                control.should_training_stop = True
                return
            if cfg.eval_every and state.global_step % cfg.eval_every == 0 and state.is_world_process_zero:
                summary = evaluator.run(model, sample=cfg.eval_sample, tag=f"step{state.global_step}")
                metrics.write(step=state.global_step, **{f"eval/{k}": v for k, v in summary.items()})

    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[answered],  # weight 0: hands the final answers over; the reward is the environment's
        args=training,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=_lora(cfg),
        callbacks=[Progress()],
        environment_factory=environment_factory(world, offer_tools=cfg.mode == "in_tool", max_turns=cfg.max_turns),
    )
    trained, trainable, final, interrupted = train_and_finish(trainer, cfg, stop, evaluator, metrics, tokenizer, out)
    result = GRPOResult(
        run_dir=str(out),
        mode=cfg.mode,
        model=cfg.model,
        parameters=sum(p.numel() for p in trained.parameters()),
        trainable_parameters=trainable,
        steps=trainer.state.global_step,
        wall_seconds=round(time.perf_counter() - started, 1),
        initial_train_recall=initial["train_recall"] if initial else None,
        initial_unseen_recall=initial["unseen_recall"] if initial else None,
        train_recall=final["train_recall"],
        unseen_recall=final["unseen_recall"],
        tool_call_rate=final["tool_call_rate"],
        parse_error_rate=final["parse_error_rate"],
        last_reward_mean=last_reward[0] if last_reward else None,
        interrupted=interrupted,
    )
    if trainer.is_world_process_zero():
        (out / "summary.json").write_text(result.model_dump_json(indent=2) + "\n", encoding="utf-8")
    world.close()
    return result


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
    config = Path(model).parent / "config.yaml"
    if not (Path(model).is_dir() and config.is_file()):
        return
    trained_on = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("world_hash")
    if trained_on and trained_on != world_hash:
        raise ValueError(
            f"{model} was trained on another world (see {config}): pass the --world, --people, --unseen_people and "
            "--world_seed of that run, or 'unseen' people would not be unseen"
        )


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        script_cfg, training_cfg = parse()
        outcome = main(script_cfg, training_cfg)
    except (run_dir.RunDirError, ValueError, FileNotFoundError) as err:
        sys.exit(f"trainers/grpo.py: error: {err}")
    outcome.print("trainers/grpo.py")
    sys.exit(130 if outcome.interrupted else 0)
