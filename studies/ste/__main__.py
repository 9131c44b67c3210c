"""STE from the command line: explore, distill, evaluate and continual learning, each step resumable.

    python -m studies.ste all --preset cpu            # every step (SmolLM2-135M explorer and learner, offline)
    python -m studies.ste explore --preset cpu        # only explore (episodes are appended to explore.jsonl)
    python -m studies.ste distill --preset cpu        # explorers/<explorer>/distilled/ (--dataset for trainers/sft.py)
    python -m studies.ste evaluate --preset cpu       # base, in-context, STE fine-tuned, oracle fine-tuned
    python -m studies.ste continual --preset cpu      # tools in rounds, with and without replay
    python -m studies.ste all --preset tiny --out runs/ste/tiny    # the plumbing on the embedded model
    torchrun --nproc-per-node 2 trainers/sft.py --dataset runs/ste/cpu/explorers/leave_one_out/distilled ...
    itl-ste all --preset cpu                           # the same, installed command

Outputs in ``runs/ste/<preset>/`` (or ``--out``): per explorer ``explorers/<explorer>/`` (explore.jsonl,
memory.jsonl, distilled/, distill.json), models/ (explorers, STE, oracle, rounds), ste.json, tables.md and CSVs
(``--results results`` copies the tables there). The
method: ``studies.ste.explore``, ``distill`` and ``pipeline``.
"""

from __future__ import annotations

import json
import os
import sys

from configs.cli import ReportedElsewhere
from studies.ste.pipeline import SteConfig, SteResult, run_pipeline

PROG = "python -m studies.ste"
STEPS = {"explore": ("explore",), "distill": ("distill",), "evaluate": ("evaluate",), "continual": ("continual",),
         "all": ("explore", "distill", "evaluate", "continual")}  # fmt: skip


def parse(argv: list[str] | None = None) -> tuple[tuple[str, ...], SteConfig]:
    import configs

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(f"usage: {PROG} {{{','.join(STEPS)}}} [--preset NAME] [--OPTION VALUE ...]\n\n{__doc__}")
        sys.exit(0)
    if not argv or argv[0] not in STEPS:
        configs.usage_error(PROG, f"give a step first: {', '.join(STEPS)}")
    step, rest = argv[0], argv[1:]
    (cfg,) = configs.resolve_preset([SteConfig], rest, prog=f"{PROG} {step}", description=__doc__, folder="ste")
    return STEPS[step], cfg


def main(steps: tuple[str, ...], cfg: SteConfig) -> SteResult:
    return run_pipeline(cfg, steps)


def cli(argv: list[str] | None = None) -> None:
    from configs.cli import launched_rank, run_cli

    def run(args: list[str] | None) -> tuple[SteConfig, SteResult]:
        steps, cfg = parse(args)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # exploration and distillation are one long sequence of generations: they run in one process. What STE
            # trains on is an SFT dataset, and that fine-tune runs on N processes through trainers/sft.py --dataset.
            if launched_rank() != 0:
                raise ReportedElsewhere
            raise ValueError(
                "runs in one process (launch it with python, not torchrun/accelerate); to fine-tune on N processes, "
                f"run its distill step, then: torchrun --nproc-per-node N trainers/sft.py --dataset "
                f"{cfg.out_dir() / 'explorers' / cfg.explorers[0] / 'distilled'} --model {cfg.learner} --tools {cfg.tools_factory}"
            )
        return cfg, main(steps, cfg)

    def show(outcome: tuple[SteConfig, SteResult]) -> None:
        cfg, result = outcome
        print((cfg.out_dir() / "tables.md").read_text(encoding="utf-8"))
        print(json.dumps({"wall_seconds": result.wall_seconds}, indent=2))

    run_cli(PROG, run, argv, show=show)


if __name__ == "__main__":
    cli()
