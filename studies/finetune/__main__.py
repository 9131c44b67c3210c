"""The paper's Section 6 on a pretrained model: fine-tune to recall N facts in-tool and in-weight, measure the cost.

    python -m studies.finetune --preset cpu      # SmolLM2-135M-Instruct offline, both modes, 500 facts (2 CPU cores)
    python -m studies.finetune --preset gpu      # the paper's settings: 500..10k facts, batch 128 (one H200)
    python -m studies.finetune --preset cpu --published ../shared/reference/itl_large_scale_results.csv
    python -m studies.finetune --preset tiny --out runs/finetune/tiny   # the plumbing, on a tiny model
    torchrun --nproc-per-node 8 -m studies.finetune --preset gpu   # each run on 8 GPUs (DDP)
    itl-finetune-study --preset cpu                  # the same, installed command

A preset is ``configs/finetune/<name>.yaml``; ``--config FILE`` replaces it; flags override either.
Writes into ``runs/finetune/<preset>/`` (or ``--out``): per run a ``trainers/sft.py`` run directory
with ``checkpoints.jsonl``; ``results.csv`` (one row per run), ``checkpoints.csv`` (one per measured
step), ``table.md``, ``recall_vs_steps.png`` and ``kl_vs_facts.png`` (``--results`` copies them into
the repository's ``results/``). Started again, it skips finished runs and resumes an interrupted one.
What is measured and when runs stop: ``studies.finetune.study``.
"""

from __future__ import annotations

import json
from pathlib import Path

from studies.finetune.study import PretrainedStudyConfig, PretrainedStudyResult, run_study

PROG = "python -m studies.finetune"


def parse(argv: list[str] | None = None) -> PretrainedStudyConfig:
    from configs import resolve_preset

    (cfg,) = resolve_preset([PretrainedStudyConfig], argv, prog=PROG, description=__doc__, folder="finetune")
    return cfg


def main(cfg: PretrainedStudyConfig) -> PretrainedStudyResult:
    return run_study(cfg)


def cli(argv: list[str] | None = None) -> None:
    from configs.cli import run_cli

    def show(result: PretrainedStudyResult) -> None:
        print((Path(result.out) / "table.md").read_text(encoding="utf-8"))
        print(json.dumps({"out": result.out, "wall_seconds": result.wall_seconds}, indent=2))

    run_cli(PROG, lambda args: main(parse(args)), argv, show=show)


if __name__ == "__main__":
    cli()
