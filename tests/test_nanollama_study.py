"""studies/memory/__main__.py: the size search, resume, tables, published thresholds and the plot."""

from __future__ import annotations

import csv
from collections.abc import Iterator

import pytest

from studies.memory.__main__ import parse
from studies.memory.launch import Launcher
from studies.memory.report import markdown_table, published_thresholds
from studies.memory.search import SizeSearch, Study, StudyConfig
from studies.memory.search import run_study as main
from trainers.nanollama.run import finished_summary
from trainers.nanollama.train import TrainConfig


def _search(grid, start, threshold, floor=0):
    """Run a SizeSearch against a known threshold index; return the tested indices and the answer."""
    search = SizeSearch(grid, start, floor)
    tested = []
    while (i := search.next()) is not None:
        tested.append(i)
        search.record(i, i >= threshold)
    return tested, search.threshold


@pytest.mark.parametrize("start", range(9))
@pytest.mark.parametrize("threshold", range(10))  # 9 = nothing in the grid passes
def test_size_search_finds_the_smallest_passing_width_from_any_start(start, threshold):
    grid = [8, 12, 16, 20, 24, 32, 40, 48, 64]
    tested, found = _search(grid, start, threshold)
    assert found == (threshold if threshold < len(grid) else None)
    assert len(tested) == len(set(tested)) <= 6  # never the same width twice, fewer than the grid (9)


def test_size_search_with_a_floor_starts_there_and_never_goes_below():
    tested, found = _search([8, 12, 16, 20, 24, 32], start=3, threshold=3, floor=3)
    assert tested == [3] and found == 3
    assert SizeSearch([8, 12], start=0, floor=2).next() is None  # floor past the grid: nothing left to try


def _tiny(tmp_path, **overrides) -> StudyConfig:
    base = dict(
        preset="tiny",
        people=[1, 2],
        emb_dims=[8, 16],
        unseen_people=1,
        workers=0,
        train=TrainConfig(steps=4, batch_rows=2, lr=1e-2, warmup_steps=1, eval_every=2),
        out=str(tmp_path / "study"),
    )
    return StudyConfig(**(base | overrides))


class CountingLauncher(Launcher):
    submitted: list[str] = []
    jobs: list[list[int]] = []  # the seeds of each job

    def submit(self, runs):
        CountingLauncher.submitted += [run.run_dir().name for run in runs]
        CountingLauncher.jobs.append([run.train.seed for run in runs])
        return super().submit(runs)


@pytest.fixture
def torch_threads() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_study_writes_its_tables_and_a_second_run_skips_finished_runs(tmp_path, torch_threads):
    cfg = _tiny(tmp_path)
    CountingLauncher.submitted = []
    first = main(cfg, CountingLauncher)
    assert first.launched == len(CountingLauncher.submitted) > 0 and first.reused == 0
    out = tmp_path / "study"
    for name in ("results.csv", "thresholds.csv", "thresholds.md", "study.json", "params_vs_facts.png"):
        assert (out / name).exists(), name
    with (out / "results.csv").open() as f:
        assert len(list(csv.DictReader(f))) == first.launched
    CountingLauncher.submitted = []
    second = main(cfg, CountingLauncher)
    assert CountingLauncher.submitted == [] and second.launched == 0
    assert second.reused == first.launched
    assert second.thresholds == first.thresholds


@pytest.mark.slow
def test_stacked_seeds_run_as_one_job_per_width_and_match_separate_runs(tmp_path, torch_threads):
    stacked_cfg = _tiny(tmp_path, people=[1], modes=["in_tool"], seeds=[0, 1], stack_seeds=True)
    CountingLauncher.submitted, CountingLauncher.jobs = [], []
    stacked = main(stacked_cfg, CountingLauncher)
    assert CountingLauncher.jobs and all(seeds == [0, 1] for seeds in CountingLauncher.jobs)
    assert stacked.launched == 2 * len(CountingLauncher.jobs)
    separate_cfg = stacked_cfg.model_copy(update={"stack_seeds": False, "out": str(tmp_path / "separate")})
    separate = Study(separate_cfg)
    separate.run()
    for key, summary in separate.summaries.items():  # every run trained alone matches its stacked twin
        _, _, d, seed = key
        twin = finished_summary(stacked_cfg.run_config("in_tool", 1, d, seed))
        assert (twin.steps, twin.reached_target, twin.train_recall) == (
            summary.steps,
            summary.reached_target,
            summary.train_recall,
        )
    CountingLauncher.submitted = []
    again = main(stacked_cfg, CountingLauncher)
    assert CountingLauncher.submitted == [] and again.reused == stacked.launched


@pytest.mark.slow
@pytest.mark.parametrize("stack_seeds", [False, True])
def test_study_through_submitit_runs_the_same_trials(tmp_path, torch_threads, stack_seeds):
    """The Slurm launcher path, with submitit's in-process 'debug' cluster standing in for Slurm."""
    extra = {"seeds": [0, 1], "stack_seeds": True} if stack_seeds else {}
    cfg = _tiny(tmp_path, people=[1], modes=["in_tool"], launcher="slurm", slurm={"cluster": "debug"}, **extra)
    result = main(cfg)
    assert result.launched >= (2 if stack_seeds else 1)
    assert (tmp_path / "study" / "slurm").is_dir()
    assert len(list((tmp_path / "study" / "runs").glob("*/summary.json"))) == result.launched


def test_thresholds_use_the_smallest_passing_width_and_bits_per_parameter(tmp_path):
    from trainers.nanollama.run import RunSummary

    cfg = _tiny(tmp_path, people=[4], modes=["in_weight"], emb_dims=[8, 12, 16])
    study = Study(cfg, Launcher(cfg))
    study.searches[("in_weight", 4)] = SizeSearch(cfg.emb_dims, 1)
    for d, ok in ((12, True), (8, False), (16, True)):
        summary = RunSummary(
            **dict.fromkeys(("tokens", "dialogs"), 1),
            **dict.fromkeys(("final_loss", "tokens_per_s", "train_seconds", "eval_seconds", "wall_seconds", "cpu_seconds"), 1.0),
            mode="in_weight", people=4, facts=16, emb_dim=d, params=d * 1000, seed=0, steps=10, step_budget=10,
            reached_target=ok, stopped_early=ok, train_recall=1.0 if ok else 0.5, unseen_recall=None,
            mean_dialog_tokens=1.0,
        )  # fmt: skip
        study._record(("in_weight", 4, d, 0), summary)
    [row] = study.thresholds()
    assert row["threshold_params"] == 12000 and row["largest_failing_params"] == row["best_failing_params"] == 8000
    assert 0 < row["bits_per_param"] < 16 * 16 / 12000
    assert "12,000" in markdown_table([row])


def test_published_thresholds_take_the_best_seed(tmp_path):
    path = tmp_path / "grid.csv"
    rows = [
        ("16", "qa", "0", "8", "6248", "0.5"),
        ("16", "qa", "1", "8", "6248", "0.995"),
        ("16", "qa", "0", "12", "10908", "1.0"),
        ("16", "qatool", "0", "12", "10908", "0.98"),
        ("16", "qatool", "0", "16", "16592", "1.0"),
    ]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["", "loss_best", "accuracy_best", "data.nb_data", "data.key", "data.seed", "model.emb_dim", "nb_params"]
        )
        for i, (n, key, seed, d, params, acc) in enumerate(rows):
            writer.writerow([i, "0.1", acc, n, key, seed, d, params])
    assert published_thresholds(path) == {("in_weight", 16): 6248, ("in_tool", 16): 16592}


def test_presets_load_and_unknown_keys_fail(tmp_path):
    cfg = parse(["--preset", "cpu", "--workers", "1", "--lr", "0.002"])
    assert cfg.preset == "cpu" and cfg.workers == 1 and cfg.train.lr == 0.002
    listed = parse(["--preset", "tiny", "--modes", "in_tool", "--people", "1", "3", "--grad-clip", "none"])
    assert (listed.modes, listed.people, listed.train.grad_clip) == (["in_tool"], [1, 3], None)
    bad = tmp_path / "bad.yaml"
    bad.write_text("people: [4]\nnot_an_option: 1\n")
    with pytest.raises(SystemExit):
        parse(["--config", str(bad)])
    with pytest.raises(SystemExit):
        parse(["--preset", "no-such-preset"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "tiny", "--emb-dims", "8", "14"], "emb_dims: width 14: head dim 7 must be even"),
        (["--emb-dims", "8", "16"], "grid fixes emb_dims: give either a grid or what to search (grid: none)"),
        (["--config", "{missing}"], "cannot read the config file"),
        (["--config", "{broken}"], "not a valid YAML file"),
    ],
)
def test_broken_study_configs_exit_before_any_run(tmp_path, capsys, argv, message):
    broken = tmp_path / "broken.yaml"
    broken.write_text("people: [1, 2\n")
    argv = [a.format(missing=tmp_path / "none.yaml", broken=broken) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        parse([*argv, "--out", str(tmp_path / "study")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "study").exists()


def test_a_grid_runs_every_seed_and_reports_seed_shares_beside_the_published_ones(tmp_path):
    published = tmp_path / "grid.csv"
    header = ",loss_best,accuracy_best,data.nb_data,data.key,data.seed,model.emb_dim,model.nb_layers,model.block.nb_heads,nb_params\n"
    rows = [f"{i},0.0,{acc},1,qa,{i},8,2,2,6248\n" for i, acc in enumerate([1.0, 1.0, 0.5])]
    rows += [
        f"{9 + i},0.0,1.0,{p},qa,0,{d},2,2,{n}\n"
        for i, (p, d, n) in enumerate([(2, 8, 6248), (8, 16, 16592), (32, 32, 49696)])
    ]
    published.write_text(header + "".join(rows))
    base = _tiny(tmp_path).model_dump(exclude={"people", "emb_dims", "modes"})
    # in-weight is not studied at 2 people: the study ends with the grid's own cells done
    cfg = StudyConfig(**{**base, "grid": {"in_weight": {1: [8, 16]}, "in_tool": {1: [8], 2: [8]}}, "seeds": [0, 1],
                         "published": str(published)})  # fmt: skip
    result = main(cfg, CountingLauncher)
    assert len(CountingLauncher.submitted) == 8  # 4 cells x 2 seeds, none skipped by an earlier seed's success
    shares = {(r["mode"], r["people"], r["emb_dim"]): r for r in result.seed_shares}
    assert set(shares) == {("in_weight", 1, 8), ("in_weight", 1, 16), ("in_tool", 1, 8), ("in_tool", 2, 8)}
    assert [(r["mode"], r["people"]) for r in result.thresholds] == [("in_weight", 1), ("in_tool", 1), ("in_tool", 2)]
    cell = shares[("in_weight", 1, 8)]
    assert cell["seeds"] == 2 and cell["share"] == cell["reached"] / 2
    assert (cell["published_reached"], cell["published_seeds"], cell["published_share"]) == (2, 3, 0.667)
    assert result.capacity["published_params_per_fact"] == pytest.approx(
        round(_slope([(4, 6248), (8, 6248), (32, 16592), (128, 49696)]), 2)
    )
    assert result.capacity["bits_per_person"] == pytest.approx(38.16, abs=0.01)
    text = (tmp_path / "study" / "thresholds.md").read_text()
    assert "seeds reaching 0.99" in text and "Capacity:" in text
    again = main(cfg, CountingLauncher)  # finished runs are reused
    assert again.reused == 8


def _slope(points):
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


def test_a_grid_and_a_search_are_not_mixed():
    with pytest.raises(ValueError, match="grid fixes people"):
        StudyConfig(grid={"in_tool": {1: [8]}}, people=[1])
