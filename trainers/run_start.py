"""How a TRL run (SFT, GRPO) starts: everything checked first, then the run directory made, once per job.

Order: the run directory is free (or is a run to resume); the world opens (or is built); the model loads; only
then is the directory created and config.yaml / run.json written, so a failed start leaves nothing that blocks
the corrected rerun. Under torchrun / accelerate launch, rank 0 does each of these while the other ranks wait
(``evals.ranks``): it chooses the directory and sends its name, it builds the world and the others open it.
The other ranks print nothing but errors.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configs import peek
from configs.cli import run_cli
from evals.provenance import write_provenance
from evals.ranks import Ranks
from itl_env.world import World
from trainers import precision, run_dir
from trainers.options import RunOptions

logger = logging.getLogger(__name__)


@dataclass
class RunStart:
    """What a started run holds: its directory, world, model and metrics log, and this process's rank."""

    out: Path
    world: World
    model: Any
    tokenizer: Any
    metrics: run_dir.MetricsLog
    ranks: Ranks
    prepared: Any = None
    fresh: bool = True  # this start created the directory (not a resumed run's)
    regime: precision.Regime | None = None  # the numerical regime it trains in

    def callbacks(self) -> list[Any]:
        """The trainer callbacks the run's precision regime needs."""
        return precision.callbacks(self.regime) if self.regime is not None else []

    def abandon(self) -> None:
        """After a failure before anything was trained: remove the directory this start created, so that the
        corrected command can run (a resumed run's directory, or one holding a checkpoint or model, stays).
        """
        if not self.fresh or not self.ranks.main or not self.out.is_dir():
            return
        if any(self.out.glob("checkpoint-*")) or (self.out / "model").exists():
            return
        shutil.rmtree(self.out, ignore_errors=True)
        logger.info("removed %s: the run failed before training anything", self.out)


def start_run(cfg: RunOptions, training: Any, *, kind: str, prepare: Callable[[World], Any] | None = None) -> RunStart:
    """Check, then create, the run of ``cfg`` / ``training`` (TRL's config; its ``output_dir`` is set here).

    ``prepare(world)`` builds what else the run needs from user input (tool registry, tasks, a dataset) or refuses
    the world, before anything is created; its value is ``RunStart.prepared``. The caller closes ``world``.
    """
    import torch

    if not torch.cuda.is_available():
        training.use_cpu = True
    regime = precision.choose(cfg.precision, training)
    _ = training.device  # joins the process group of a torchrun / accelerate launch job (TRL's own set-up)
    ranks = Ranks.current()

    def choose() -> str:
        return str(run_dir.check(run_dir.resolve(training.output_dir, kind, cfg.mode), resume=cfg.resume, kind=kind))

    out = Path(ranks.broadcast(ranks.first(choose, then=lambda: "")))
    training.output_dir = str(out)
    world_name = cfg.world or "a world built from the world options"
    processes = f", {ranks.size} processes" if ranks.size > 1 else ""
    logger.info("%s %s: run directory %s, world %s, model %s%s", kind, cfg.mode, out, world_name, cfg.model, processes)
    world = ranks.first(cfg.open_world)
    try:
        prepared = ranks.first(lambda: prepare(world)) if prepare is not None else None
        model, tokenizer = ranks.first(lambda: cfg.load_model(seed=training.seed))
        model = precision.prepare_model(model, regime)

        fresh = not (out.is_dir() and any(out.iterdir()))

        def create() -> None:
            run_dir.prepare(out, resume=cfg.resume)
            run_dir.write_config(out, cfg, training)
            write_provenance(out, kind=kind, model=cfg.model, world=world, precision=regime.describe())

        ranks.first(create, then=lambda: None)
    except BaseException:
        world.close()
        raise
    logger.info(
        "world %r (%d training people); model loaded; precision %s", world, len(world.people("train")),
        regime.describe(),
    )  # fmt: skip
    return RunStart(out, world, model, tokenizer, run_dir.MetricsLog(out), ranks, prepared, fresh, regime)


def train_cli(
    prog: str, kind: str, parse: Callable[[Any], tuple[Any, Any]], main: Callable[..., Any], argv: Any
) -> None:
    """A trainer's command line (``configs.run_cli``): a first line at once, then parse, run, and a summary.

    A bad value, file or directory is a one-line error (exit 1) and leaves nothing behind; a rank that waited for
    rank 0's failing step exits quietly (rank 0 prints the error); a run stopped by Ctrl-C is saved, exit 130.
    """

    def first_line(args: list[str] | None) -> str:
        given = peek(args, ("mode", "model", "world", "output_dir"))
        mode = given.get("mode", "in_tool")
        return (
            f"{mode} run of model {given.get('model', 'default')} on world "
            f"{given.get('world', '(the world options default: data/world-*.db, built if missing)')}, writing to "
            f"{given.get('output_dir', f'runs/{kind}-{mode}-<time>')}; loading TRL"
        )

    run_cli(
        prog, lambda args: main(*parse(args)), argv, show=lambda outcome: outcome.print(prog), first_line=first_line
    )
