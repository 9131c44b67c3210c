"""GRPO with TRL through the environment: the model plays ``ToolUseEnv``, rewarded by exact scoring.

    python trainers/grpo.py --model runs/sft-in_tool-.../model                  # continue an SFT model (same world options)
    python trainers/grpo.py --model runs/sft-in_tool-.../checkpoint-500 --max_steps 60 --output_dir runs/grpo
    python trainers/grpo.py --config configs/grpo_cpu.yaml --model runs/sft-in_tool-.../checkpoint-500   # README demo
    python trainers/grpo.py --model path/to/hf_model --use_vllm true --vllm_mode colocate   # GPU, vLLM rollouts
    python trainers/grpo.py --output_dir runs/my-grpo --resume true                         # continue a run
    torchrun --nproc-per-node 2 trainers/grpo.py --model runs/sft-in_tool-.../model          # one run, 2 processes
    itl-grpo --model runs/sft-in_tool-.../model                                             # installed command

Each prompt is one fact of a training person; ``num_generations`` rollouts of it see the same
question. A rollout is a real episode: the model's tool calls run through the environment's
registry (``itl_env.trl_adapter``), at most ``max_turns - 1`` tool rounds, and its final message
is scored by the environment (1.0 right, 0.0 otherwise). Recall is measured like trainers/sft.py
measures it (``evals.evaluator.RecallEvaluator``), by playing the environment greedily on fixed
samples of training and unseen facts: before training, every ``eval_every`` steps and at the end.
A model of an SFT run must be trained further on that run's world (its ``run.json`` says which).
The library path is ``trainers.reinforce.reinforce``.
"""

from __future__ import annotations

from typing import Any

from trainers.options import parse_args
from trainers.reinforce import GRPOResult, GRPOScriptConfig, reinforce, training_defaults
from trainers.run_start import train_cli

PROG = "trainers/grpo.py"


def parse(argv: list[str] | None = None) -> tuple[GRPOScriptConfig, Any]:
    from trl import GRPOConfig

    return parse_args(GRPOScriptConfig, GRPOConfig, prog=PROG, doc=__doc__, defaults=training_defaults(), argv=argv)


def main(cfg: GRPOScriptConfig, training: Any) -> GRPOResult:
    return reinforce(cfg, training)


def cli(argv: list[str] | None = None) -> None:
    train_cli(PROG, "grpo", parse, main, argv)


if __name__ == "__main__":
    cli()
