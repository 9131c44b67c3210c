"""The controlled memory study (the paper's Section 5): the smallest nanoLlama that recalls its facts.

    python -m studies.memory --preset cpu                      # ~45 min on 2 free CPU cores
    python -m studies.memory --preset cpu --published ../shared/reference/itl_grid4.csv
    python -m studies.memory --config configs/study/paper.yaml --launcher slurm --partition gpu
    python -m studies.memory --preset tiny --out runs/study/tiny --workers 0   # seconds; what the tests run
    itl-study --preset cpu                                  # the same, installed command

A preset is ``configs/study/<name>.yaml`` and names the default output folder
(``runs/study/<name>``); ``--config FILE`` replaces the preset file; flags override either. The
search, the runs it launches and what it writes are described in ``studies.memory.search``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the study's library imports torch (nanoLlama): loaded after the first line is printed
    from studies.memory.search import StudyConfig, StudyResult

PROG = "python -m studies.memory"


def parse(argv: list[str] | None = None) -> StudyConfig:
    from configs import resolve_preset
    from studies.memory.search import StudyConfig

    (cfg,) = resolve_preset([StudyConfig], argv, prog=PROG, description=__doc__, folder="study")
    return cfg


def main(cfg: StudyConfig) -> StudyResult:
    from studies.memory.search import run_study

    return run_study(cfg)


def cli(argv: list[str] | None = None) -> None:
    from configs import peek
    from configs.cli import run_cli

    def first_line(args: list[str] | None) -> str:
        given = peek(args, ("preset", "out"))
        preset = given.get("preset", "cpu")
        return f"memory study, preset {preset}, writing to {given.get('out', f'runs/study/{preset}')}; loading"

    def show(result: StudyResult) -> None:  # finished runs stay on disk: a rerun after an error resumes
        print((Path(result.out) / "thresholds.md").read_text(encoding="utf-8"))
        print(json.dumps({k: v for k, v in result.model_dump().items() if k != "thresholds"}, indent=2))

    run_cli(PROG, lambda args: main(parse(args)), argv, show=show, first_line=first_line)


if __name__ == "__main__":
    cli()
