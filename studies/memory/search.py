"""The controlled memory study (the paper's Section 5): the smallest nanoLlama that recalls its facts.

For each mode and number of people, search over the model width for the smallest model whose
rollout recall on the training facts reaches the target (0.99) within the step budget; every run
stops as soon as it gets there. In-tool models are also scored on unseen people.

The command is ``python -m studies.memory`` (``studies/memory/__main__.py``); this module is its library.

Search: widths come from the ``emb_dims`` grid, assumed monotone (a wider model that fails means
every narrower one fails). With ``chain`` (default) the people counts of a mode are searched in
increasing order, each starting from the previous threshold (in-weight thresholds only grow with
the facts), so the two modes run side by side as two chains; without it every (mode, people)
search runs independently (for a cluster). A search tests its start width, then doubles up after
a failure or halves down after a success until it brackets the threshold, then bisects.

Seeds: a width passes if any of its seeds does; seeds run one after another (stopping at the first
that passes), or with ``stack_seeds`` all at once as one stack in one process
(``trainers/nanollama/stacked.py``: one batched kernel per layer for every seed, the way to keep a
GPU busy with models this small; each run directory ends exactly as the separate run's would).

Output in ``out``: ``runs/<mode>-p<people>-d<width>-s<seed>/`` (one ``trainers/pretrain.py`` run
directory each; finished runs are skipped when the study is run again), ``results.csv`` (one row
per run), ``thresholds.csv`` / ``thresholds.md`` (per mode and people: threshold params, bits per
parameter for in-weight, unseen-people recall for in-tool, the published threshold when
``--published`` is given), ``study.json`` and ``params_vs_facts.png``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

import configs
from itl_env.formats import FormatName
from itl_env.oracle import Mode
from studies.memory.launch import Launcher, SlurmConfig
from studies.memory.report import (
    bits_per_fact,
    capacity_report,
    capacity_text,
    exposures,
    markdown_table,
    published_seed_shares,
    published_thresholds,
    seed_share_table,
    write_csv,
)
from trainers.nanollama.run import PretrainConfig, RunSummary, check_shape, finished_summary
from trainers.nanollama.train import TrainConfig

logger = logging.getLogger("studies.memory.search")


class StudyConfig(BaseModel):
    """One memory study: the modes, people counts and widths searched, each run's training, and where runs execute."""

    model_config = ConfigDict(extra="forbid")

    preset: str = Field("cpu", description="preset name (configs/study/<preset>.yaml) and default output folder")
    modes: list[Mode] = Field(default_factory=lambda: ["in_weight", "in_tool"], description="modes to study")
    people: list[PositiveInt] = Field(
        default_factory=lambda: [8, 32, 128], min_length=1, description="numbers of training people"
    )
    emb_dims: list[PositiveInt] = Field(
        default_factory=lambda: [8, 12, 16, 20, 24, 32, 40, 48, 64], description="candidate model widths (ascending)"
    )
    start_emb_dim: dict[str, int] = Field(
        default_factory=dict, description="first width tried per mode (default: the grid's middle)"
    )
    seeds: list[int] = Field(default_factory=lambda: [0], description="a width passes if any seed passes")
    stack_seeds: bool = Field(
        False,
        description="train all seeds of a width at once as one stack in one process (batched kernels: for GPUs; "
        "on a CPU separate runs are faster, and without it a width stops at its first passing seed)",
    )
    chain: bool = Field(True, description="search people counts of a mode in order, each from the last threshold")
    grid: dict[Mode, dict[int, list[int]]] | None = Field(
        None,
        description="a fixed grid instead of the search: mode -> people -> widths, every seed of every width run "
        "(what seed success rates need); sets modes, people and emb_dims",
    )
    unseen_people: int = Field(64, ge=0, description="unseen people for in-tool generalisation")
    world_seed: int = 0
    tool_format: FormatName = "find"
    train: TrainConfig = Field(default_factory=TrainConfig)
    launcher: Literal["local", "slurm"] = Field("local", description="local process pool or Slurm via submitit")
    workers: int = Field(2, ge=0, description="local worker processes (0 = run in this process)")
    threads: int = Field(1, ge=1, description="torch threads per run")
    device: str = Field("cpu", description="device of each run (cpu, cuda, auto)")
    gpus_per_run: int = Field(0, ge=0, description="GPUs per run; > 1 launches each run with torchrun (DDP)")
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    out: str | None = Field(None, description="output folder (default: runs/study/<preset>)")
    worlds: str | None = Field(
        None,
        description="where the worlds live: a folder or a PostgreSQL URL, each world a schema (default: OUT/worlds)",
    )
    published: str | None = Field(None, description="published results CSV (itl_grid4.csv) to compare and overlay")
    progress: bool = Field(False, description="progress bars inside runs")

    @model_validator(mode="after")
    def _check(self) -> StudyConfig:
        if self.grid:
            both = sorted({"modes", "people", "emb_dims"} & self.model_fields_set)
            if both:
                raise ValueError(f"grid fixes {', '.join(both)}: give either a grid or what to search (grid: none)")
            self.modes = list(self.grid)
            self.people = sorted({p for cells in self.grid.values() for p in cells})
            self.emb_dims = sorted({d for cells in self.grid.values() for widths in cells.values() for d in widths})
        if self.emb_dims != sorted(set(self.emb_dims)):
            raise ValueError("emb_dims must be ascending and distinct")
        shape = {k: PretrainConfig.model_fields[k].default for k in ("n_layers", "n_heads")}
        for d in self.emb_dims:
            try:
                check_shape(d, **shape)
            except ValueError as err:
                raise ValueError(f"emb_dims: width {d}: {err}") from err
        if sorted(set(self.people)) != self.people:
            raise ValueError("people must be ascending and distinct")
        if self.stack_seeds and self.gpus_per_run > 1:
            raise ValueError("stack_seeds trains a stack in one process: use gpus_per_run 0 or 1")
        unknown = set(self.start_emb_dim) - {"in_weight", "in_tool"}
        if unknown:
            raise ValueError(f"start_emb_dim has unknown modes {sorted(unknown)}")
        return self

    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs/study") / self.preset

    def run_config(self, mode: str, people: int, emb_dim: int, seed: int) -> PretrainConfig:
        out = self.out_dir()
        return PretrainConfig(
            mode=mode,
            people=people,
            unseen_people=self.unseen_people,
            world_seed=self.world_seed,
            world_dir=self.worlds or str(out / "worlds"),
            tool_format=self.tool_format,
            emb_dim=emb_dim,
            train=self.train.model_copy(update={"seed": seed}),
            out=str(out / "runs" / f"{mode}-p{people}-d{emb_dim}-s{seed}"),
            device=self.device,
            threads=self.threads,
            progress=self.progress,
        )


class WidthOutcomes:
    """Which width indices of one (mode, people) passed; the threshold is the smallest that did."""

    results: dict[int, bool]

    def record(self, index: int, passed: bool) -> None:
        self.results[index] = passed

    @property
    def threshold(self) -> int | None:
        """Index of the smallest passing width (None if none passed)."""
        passing = [i for i, ok in self.results.items() if ok]
        return min(passing) if passing else None


class SizeSearch(WidthOutcomes):
    """Smallest index of a monotone pass/fail grid: start, gallop (double/halve the width), then bisect."""

    def __init__(self, grid: list[int], start: int, floor: int = 0):
        self.grid = grid
        self.start = min(max(start, floor), len(grid) - 1)
        self.floor = floor  # indices below are known (or assumed) to fail
        self.results: dict[int, bool] = {}

    def _bounds(self) -> tuple[int, int]:
        fails = [i for i, ok in self.results.items() if not ok] + [self.floor - 1]
        passes = [i for i, ok in self.results.items() if ok] + [len(self.grid)]
        return max(fails), min(passes)

    def next(self) -> int | None:
        """The next index to test, or None when the threshold is bracketed (or nothing is left to try)."""
        if self.floor >= len(self.grid):
            return None
        if not self.results:
            return self.start
        lo, hi = self._bounds()
        if hi <= lo + 1:
            return None
        if hi == len(self.grid):  # nothing passed yet: double the width
            return min(len(self.grid) - 1, self._index_of_width(2 * self.grid[lo]))
        if lo < self.floor:  # nothing failed yet: halve the width
            return max(self.floor, min(hi - 1, self._index_of_width(self.grid[hi] / 2)))
        return (lo + hi) // 2

    def _index_of_width(self, width: float) -> int:
        return min(range(len(self.grid)), key=lambda i: (abs(self.grid[i] - width), i))


# -- the study ------------------------------------------------------------------------------------
class FixedWidths(WidthOutcomes):
    """The grid's widths of one (mode, people), every one tried (``SizeSearch``'s interface)."""

    def __init__(self, indices: list[int]):
        self.indices = sorted(indices)
        self.results: dict[int, bool] = {}

    def next(self) -> int | None:
        return next((i for i in self.indices if i not in self.results), None)


class StudyResult(BaseModel):
    """What a memory study found: the width thresholds, their growth per mode, bits per parameter, and its cost."""

    model_config = ConfigDict(extra="forbid")

    out: str
    launched: int = Field(description="runs trained by this invocation")
    reused: int = Field(description="finished runs found on disk and skipped")
    wall_seconds: float
    run_seconds: float = Field(description="sum of the wall time of every run in the study (incl. earlier invocations)")
    cpu_seconds: float = Field(description="sum of the CPU time of every run: the cost on an unloaded machine")
    thresholds: list[dict[str, Any]]
    shape: dict[str, float | None]
    seed_shares: list[dict[str, Any]] = Field(default_factory=list)
    capacity: dict[str, Any] = Field(default_factory=dict)


class Study:
    """The searches of every (mode, people): decides which runs to train next from the summaries that come back."""

    def __init__(self, cfg: StudyConfig, launcher: Launcher | None = None):
        self.cfg = cfg
        self.launcher = launcher or Launcher(cfg)
        self.summaries: dict[tuple[str, int, int, int], RunSummary] = {}
        self.launched = self.reused = 0
        self.searches: dict[tuple[str, int], SizeSearch | FixedWidths] = {}
        self.submitted: set[tuple[str, int, int, int]] = set()
        for mode, cells in (cfg.grid or {}).items():
            for people, widths in cells.items():
                self.searches[(mode, people)] = FixedWidths([cfg.emb_dims.index(d) for d in widths])

    def _start(self, mode: str, people: int) -> tuple[int, int] | None:
        """(start index, floor) of the search for (mode, people), or None while its chain predecessor runs."""
        grid = self.cfg.emb_dims
        first = grid.index(self.cfg.start_emb_dim[mode]) if mode in self.cfg.start_emb_dim else len(grid) // 2
        position = self.cfg.people.index(people)
        if not self.cfg.chain or position == 0:
            return first, 0
        previous = self.searches.get((mode, self.cfg.people[position - 1]))
        if previous is None or previous.next() is not None:
            return None
        if mode != "in_weight":  # in-tool may need less width for more people (copying beats memorising): no floor
            return (previous.threshold if previous.threshold is not None else first), 0
        if previous.threshold is None:  # in-weight needs at least as much width for more facts: none in the grid
            return len(grid), len(grid)
        return previous.threshold, previous.threshold

    def _trial_passed(self, mode: str, people: int, index: int) -> bool | None:
        """Whether any seed of this width passed (None while a seed is still to run; on a grid, every seed runs)."""
        d = self.cfg.emb_dims[index]
        results = [self.summaries.get((mode, people, d, s)) for s in self.cfg.seeds]
        if self.cfg.grid and any(r is None for r in results):
            return None
        if any(r is not None and r.reached_target for r in results):
            return True
        return None if any(r is None for r in results) else False

    def _seeds_to_run(self, mode: str, people: int, index: int) -> list[int]:
        """The seeds of this width still to train: the next one, or (``stack_seeds``) all that are left."""
        d = self.cfg.emb_dims[index]
        left = [s for s in self.cfg.seeds if (mode, people, d, s) not in self.summaries]
        return left if self.cfg.stack_seeds else left[:1]

    def run(self) -> StudyResult:
        cfg = self.cfg
        out = cfg.out_dir()
        configs.claim_output(out, cfg, "memory study")
        self._prepare_worlds()
        start = time.perf_counter()
        in_flight: dict[Future, list[tuple[str, int, int, int]]] = {}
        busy: set[tuple[str, int]] = set()
        from tqdm import tqdm

        if cfg.grid:
            most = sum(len(widths) for people in cfg.grid.values() for widths in people.values()) * len(cfg.seeds)
        else:  # a search stops at each cell's threshold: usually well below every width of every cell
            most = len(self.cells()) * len(cfg.emb_dims) * len(cfg.seeds)
        logger.info(
            "memory study %s: %d cells, %s%d runs into %s", cfg.preset, len(self.cells()), "" if cfg.grid else "at most ",
            most, out,
        )  # fmt: skip
        bar = tqdm(total=most, desc="study runs" if cfg.grid else f"study runs (at most {most})", unit="run")
        try:
            while True:
                (self._schedule_grid if cfg.grid else self._schedule)(in_flight, busy)
                if not in_flight:
                    if all(self._search_done(m, p) for m, p in self.cells()):
                        break
                    raise RuntimeError("the study scheduler has nothing to run but searches are unfinished")
                done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
                for future in done:
                    keys = in_flight.pop(future)
                    busy.discard(keys[0][:2])
                    for key, result in zip(keys, future.result(), strict=True):
                        summary = RunSummary.model_validate(result)
                        self._record(key, summary)
                        bar.update()
                        bar.set_postfix_str(
                            f"{key[0]} p={key[1]} d={key[2]} s={key[3]}: recall {summary.train_recall:.3f} "
                            f"in {summary.steps} steps"
                        )
        finally:
            bar.close()
            self.launcher.close()
        wall = time.perf_counter() - start
        return self.write(wall)

    def cells(self) -> list[tuple[str, int]]:
        """The (mode, people) pairs studied: a grid's own cells (a mode need not have every people count)."""
        every = [(m, p) for m in self.cfg.modes for p in self.cfg.people]
        return [c for c in every if c in self.searches] if self.cfg.grid else every

    def _search_done(self, mode: str, people: int) -> bool:
        search = self.searches.get((mode, people))
        return search is not None and search.next() is None

    def _schedule(self, in_flight: dict[Future, list[tuple[str, int, int, int]]], busy: set[tuple[str, int]]) -> None:
        """Start every trial that can start: reuse finished runs from disk, submit the rest while slots are free."""
        progressed = True
        while progressed:
            progressed = False
            for mode in self.cfg.modes:
                for people in self.cfg.people:
                    if (mode, people) in busy:
                        continue
                    search = self.searches.get((mode, people))
                    if search is None:
                        begin = self._start(mode, people)
                        if begin is None:
                            continue
                        search = self.searches[(mode, people)] = SizeSearch(self.cfg.emb_dims, *begin)
                    index = search.next()
                    if index is None:
                        continue
                    d = self.cfg.emb_dims[index]
                    runs = [
                        self.cfg.run_config(mode, people, d, seed) for seed in self._seeds_to_run(mode, people, index)
                    ]
                    existing = [(run, finished_summary(run)) for run in runs]
                    for run, summary in existing:
                        if summary is not None:
                            self.reused += 1
                            self._record((mode, people, d, run.train.seed), summary)
                    if any(summary is not None for _, summary in existing):
                        progressed = True
                        continue
                    if len(in_flight) >= self.launcher.slots:
                        continue
                    logger.info("run %s", ", ".join(run.run_dir().name for run in runs))
                    in_flight[self.launcher.submit(runs)] = [(mode, people, d, run.train.seed) for run in runs]
                    self.launched += len(runs)
                    busy.add((mode, people))

    def _schedule_grid(self, in_flight: dict[Future, list[tuple[str, int, int, int]]], _busy: set) -> None:
        """Every trial of the grid is independent: reuse finished runs, submit the rest while slots are free."""
        for (mode, people), cells in sorted(self.searches.items()):
            for index in cells.indices:
                d = self.cfg.emb_dims[index]
                seeds = [s for s in self.cfg.seeds if (mode, people, d, s) not in self.submitted]
                groups = [seeds] if self.cfg.stack_seeds and seeds else [[s] for s in seeds]
                for group in groups:
                    runs = [self.cfg.run_config(mode, people, d, seed) for seed in group]
                    done = [(run, finished_summary(run)) for run in runs]
                    if all(summary is not None for _, summary in done):
                        for run, summary in done:
                            self.submitted.add((mode, people, d, run.train.seed))
                            self.reused += 1
                            self._record((mode, people, d, run.train.seed), summary)
                        continue
                    if len(in_flight) >= self.launcher.slots:
                        return
                    keys = [(mode, people, d, seed) for seed in group]
                    self.submitted.update(keys)
                    in_flight[self.launcher.submit(runs)] = keys
                    self.launched += len(runs)

    def _record(self, key: tuple[str, int, int, int], summary: RunSummary) -> None:
        mode, people, d, _ = key
        self.summaries[key] = summary
        index = self.cfg.emb_dims.index(d)
        passed = self._trial_passed(mode, people, index)
        if passed is not None:
            self.searches[(mode, people)].record(index, passed)
        self._write_results()

    def _prepare_worlds(self) -> None:
        """Build each world once here, so parallel runs never race to write the same file."""
        from evals.faithfulness import counterfactual_world
        from itl_env.world import WorldSpec, ensure_world

        for people in self.cfg.people:
            run = self.cfg.run_config(self.cfg.modes[0], people, self.cfg.emb_dims[0], self.cfg.seeds[0])
            spec = WorldSpec(seed=run.world_seed, people=people, unseen_people=run.unseen_people)
            world = ensure_world(spec, run.world_path())
            counterfactual_world(world, run.world_dir).close()  # what in-tool runs are asked on afterwards
            world.close()

    # -- outputs ------------------------------------------------------------------------------------
    def _write_results(self) -> None:
        rows = [s.model_dump() for _, s in sorted(self.summaries.items())]
        if rows:
            write_csv(self.cfg.out_dir() / "results.csv", rows)

    def thresholds(self) -> list[dict[str, Any]]:
        published = published_thresholds(self.cfg.published, self.cfg.train.target_recall) if self.cfg.published else {}
        bits = bits_per_fact()
        rows = []
        for mode, people in self.cells():
            search = self.searches.get((mode, people))
            index = search.threshold if search else None
            runs = [s for (m, p, _, _), s in self.summaries.items() if m == mode and p == people]
            best = None
            if index is not None:
                d = self.cfg.emb_dims[index]
                best = min(
                    (s for s in runs if s.emb_dim == d and s.reached_target), key=lambda s: s.steps, default=None
                )
            failed = [s for s in runs if not s.reached_target]
            largest_fail = max(failed, key=lambda s: s.params, default=None)
            best_fail = max(failed, key=lambda s: (s.train_recall, s.params), default=None)
            row: dict[str, Any] = {
                "mode": mode,
                "people": people,
                "facts": 4 * people,
                "threshold_emb_dim": best.emb_dim if best else None,
                "threshold_params": best.params if best else None,
                "steps_to_target": best.steps if best else None,
                "train_recall": best.train_recall if best else None,
                "unseen_recall": best.unseen_recall if best else None,
                "largest_failing_params": largest_fail.params if largest_fail else None,
                "best_failing_params": best_fail.params if best_fail else None,
                "best_failing_recall": best_fail.train_recall if best_fail else None,
                "best_failing_unseen_recall": best_fail.unseen_recall if best_fail else None,
                "runs": len(runs),
                "bits_per_param": round(4 * people * bits / best.params, 4) if best and mode == "in_weight" else None,
                "faithful_tool": best.faithful_tool if best else None,
                "faithful_memory": best.faithful_memory if best else None,
            }
            if published:
                pub = published.get((mode, people))
                row["published_params"] = pub
                row["ratio_to_published"] = round(best.params / pub, 3) if best and pub else None
            rows.append(row)
        return rows

    def seed_shares(self) -> list[dict[str, Any]]:
        """Per (mode, people, width) tried: the share of seeds reaching the target, beside the published share."""
        published = (
            published_seed_shares(self.cfg.published, self.cfg.train.target_recall) if self.cfg.published else {}
        )
        cells: dict[tuple[str, int, int], list[RunSummary]] = {}
        for (mode, people, d, _), summary in sorted(self.summaries.items()):
            cells.setdefault((mode, people, d), []).append(summary)
        rows = []
        for (mode, people, d), runs in cells.items():
            passed = sum(r.reached_target for r in runs)
            pub = published.get((mode, people, d))
            rows.append(
                {
                    "mode": mode,
                    "people": people,
                    "emb_dim": d,
                    "params": runs[0].params,
                    "seeds": len(runs),
                    "reached": passed,
                    "share": round(passed / len(runs), 3),
                    "published_seeds": pub[1] if pub else None,
                    "published_reached": pub[0] if pub else None,
                    "published_share": round(pub[0] / pub[1], 3) if pub else None,
                }
            )
        return rows

    def shape(self, rows: list[dict[str, Any]]) -> dict[str, float | None]:
        """Threshold growth from the fewest to the most people, per mode (paper: in-weight ~linear, in-tool flat).
        When the most people were not reached, ``<mode>_growth_at_least`` is the largest width tried over the first
        threshold: a lower bound if success is monotone in width.
        """
        out: dict[str, float | None] = {}
        for mode in self.cfg.modes:
            mine = [r for r in rows if r["mode"] == mode]
            first, last = mine[0]["threshold_params"], mine[-1]
            out[f"{mode}_growth"] = (
                round(last["threshold_params"] / first, 3) if first and last["threshold_params"] else None
            )
            tried = last["largest_failing_params"]
            out[f"{mode}_growth_at_least"] = (
                round(tried / first, 3) if first and not last["threshold_params"] and tried else None
            )
        return out

    def write(self, wall: float) -> StudyResult:
        out = self.cfg.out_dir()
        self._write_results()
        rows = self.thresholds()
        write_csv(out / "thresholds.csv", rows)
        shares = self.seed_shares()
        capacity = capacity_report(rows, self.cfg.published, self.cfg.train.target_recall)
        tables = [markdown_table(rows)]
        if shares:
            write_csv(out / "seed_shares.csv", shares)
            tables.append(seed_share_table(shares))
        tables.append(capacity_text(capacity))
        write_csv(out / "exposures.csv", exposures([s.model_dump() for s in self.summaries.values()]))
        (out / "thresholds.md").write_text("\n\n".join(tables) + "\n", encoding="utf-8")
        result = StudyResult(
            out=str(out),
            launched=self.launched,
            reused=self.reused,
            wall_seconds=round(wall, 1),
            run_seconds=round(sum(s.wall_seconds for s in self.summaries.values()), 1),
            cpu_seconds=round(sum(s.cpu_seconds for s in self.summaries.values()), 1),
            thresholds=rows,
            shape=self.shape(rows),
            seed_shares=shares,
            capacity=capacity,
        )
        (out / "study.json").write_text(result.model_dump_json(indent=2) + "\n", encoding="utf-8")
        try:
            from studies.memory.plots import plot_params_vs_facts

            plot_params_vs_facts(rows, out / "params_vs_facts.png", self.cfg.published, self.cfg.train.target_recall)
        except ImportError as err:  # matplotlib is optional: the tables are the result
            logger.warning("no plot (%s); pip install matplotlib", err)
        return result


def run_study(cfg: StudyConfig, launcher_factory: Callable[[StudyConfig], Launcher] = Launcher) -> StudyResult:
    """Run (or finish) the study ``cfg`` and write its tables."""
    return Study(cfg, launcher_factory(cfg)).run()
