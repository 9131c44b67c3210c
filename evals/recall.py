"""Recall evaluation: a model plays ``ToolUseEnv`` (multi-turn, tools executed for real) on every fact of a split.

    python -m evals.recall --model runs/sft/model --backend hf --world data/world.db --split train --limit 1000
    python -m evals.recall --model runs/sft/model --backend vllm --world data/world.db --split unseen --out runs/recall-vllm
    python -m evals.recall --backend openai --base_url http://127.0.0.1:8000/v1 --world data/world.db --resume
    python -m evals.recall --config configs/recall.yaml --split unseen
    itl-recall --model runs/sft/model --world data/world.db          # the same, installed command

Writes ``OUT/records-SPLIT.jsonl`` (one ``FactRecord`` per fact, appended as episodes finish;
``--resume`` skips the facts already there), ``OUT/summary-SPLIT.json`` (``RecallSummary``:
recall, tool-call rate, parse-error rate, turns, generated tokens/s, engine start-up) and
``OUT/config-SPLIT.yaml`` (the resolved config). Decoding is greedy, so the hf, vllm and openai
backends give the same records for the same model. The evaluation is ``evals.evaluator``'s, the
same every trainer runs.

``--model default`` is the embedded untrained default model (saved to ``OUT/default-model`` for
the vllm backend); for the openai backend ``--model`` is the served model name (default: the
server's first).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field

from evals.policies import PolicyConfig, build_policy
from itl_env.formats import FormatName
from itl_env.oracle import Mode
from itl_env.rollout import RolloutSummary
from itl_env.world import Split

logger = logging.getLogger("evals.recall")

PROG = "python -m evals.recall"


class RecallConfig(PolicyConfig):
    """One recall evaluation: the policy, the world and split asked about, the tools, and where records go."""

    model_config = ConfigDict(extra="forbid")

    world: str | None = Field(None, description="world SQLite path or SQLAlchemy URL (none: a small generated world)")
    split: Split = Field("train", description="people asked about")
    mode: Mode = Field("in_tool", description="offer the lookup tool or not")
    tool_format: FormatName = Field("hermes", description="tool-call text format the env parses")
    tools: str | None = Field(None, description="registry factory 'module:callable' (none: the fact tools)")
    tasks: list[str] = Field(
        default_factory=list,
        description="evaluate these tool-task kinds (test phrasings, --limit per kind, default 50) instead of facts",
    )
    limit: int | None = Field(None, ge=1, description="evaluate the first N facts of the split (none: all)")
    out: str = Field("runs/recall", description="output directory (records-<split>.jsonl, summary, config)")
    resume: bool = Field(False, description="keep the records already in OUT and play only the missing facts")
    max_turns: int = Field(4, ge=1, description="assistant messages per episode")
    tool_choice: list[str] = Field(
        default_factory=lambda: ["auto"],
        description="per assistant turn, the last repeating: auto, required, none or a tool's name "
        "(e.g. required auto: a call forced on the first turn, free after)",
    )
    batch_size: int = Field(256, ge=1, description="episodes played in lockstep (one generate call per turn)")
    seed: int = Field(0, description="phrasing seed of the questions")
    progress: bool = Field(True, description="show a progress bar")


class RecallSummary(RolloutSummary):
    """The rollout summary of one evaluation, with what was evaluated and how long the engine took to start."""

    model: str
    backend: str
    split: str
    mode: str
    startup_s: float = Field(description="time to load the model or start the engine")


def main(cfg: RecallConfig) -> RecallSummary:
    import configs
    from evals.evaluator import RecallEvaluator
    from itl_env.env import default_world
    from itl_env.fact_tools import registry_for
    from itl_env.tasks import make_tasks, task_kinds
    from itl_env.world import World

    what = f"{cfg.limit or 'all'} {', '.join(cfg.tasks) if cfg.tasks else cfg.split + ' facts'}"
    logger.info(
        "recall of %s (%s backend) on %s of %s, writing to %s",
        cfg.model, cfg.backend, what, cfg.world or "the default world", cfg.out,
    )  # fmt: skip
    world = World.open(cfg.world) if cfg.world else default_world()
    policy = None
    try:
        registry = registry_for(world, cfg.tools)
        if cfg.tasks:
            facts = [
                t
                for i, kind in enumerate(task_kinds(cfg.tasks))
                for t in make_tasks(kind, world, registry, cfg.limit or 50, seed=1000 + i, phrasing="test")
            ]
        else:
            facts = world.facts(cfg.split)[: cfg.limit]
        if not facts:
            raise ValueError(f"the world at {world!r} has no {cfg.split} facts")
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        configs.record(out / f"config-{cfg.split}.yaml", cfg)
        evaluator = RecallEvaluator(
            world,
            mode=cfg.mode,
            registry=registry,
            tool_format=cfg.tool_format,
            max_turns=cfg.max_turns,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            tool_choice=cfg.tool_choice,
        )
        start = time.perf_counter()
        policy = build_policy(cfg, evaluator.tools, cache_dir=out, seed=cfg.seed)
        startup = getattr(policy, "startup_s", None) or time.perf_counter() - start
        result = evaluator.evaluate(
            policy,
            facts,
            out=out / f"records-{cfg.split}.jsonl",
            resume=cfg.resume,
            progress=cfg.progress,
            desc=f"recall {cfg.backend} {cfg.split}",
        )
    finally:
        if policy is not None and hasattr(policy, "close"):
            policy.close()
        world.close()
    wanted = {f.id for f in facts}
    if len(result.records) != len(wanted):  # a resumed file may hold facts beyond --limit
        from itl_env.rollout import summarise

        records = [r for r in result.records if r.fact_id in wanted]
        played = result.records[len(result.records) - result.summary.played :]
        result = result.model_copy(update={"summary": summarise(records, result.summary.seconds, played)})
    summary = RecallSummary(
        **result.summary.model_dump(),
        model=cfg.model or "",
        backend=cfg.backend,
        split=cfg.split,
        mode=cfg.mode,
        startup_s=round(startup, 3),
    )
    (out / f"summary-{cfg.split}.json").write_text(summary.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return summary


def parse(argv: list[str] | None = None) -> RecallConfig:
    from configs import resolve

    (cfg,) = resolve([RecallConfig], argv, prog=PROG, description=__doc__)
    return cfg


def cli(argv: list[str] | None = None) -> Any:
    from configs.cli import print_json, run_cli

    return run_cli(PROG, lambda args: main(parse(args)), argv, show=print_json)


if __name__ == "__main__":
    cli()
