"""trainers/pretrain.py end to end: a tiny model learns one person's facts and calls the real tool."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator

import pytest
import yaml

from trainers.nanollama.run import PretrainConfig, RunSummary, pretrain_stacked
from trainers.nanollama.train import TrainConfig
from trainers.pretrain import main, parse


def _config(tmp_path, mode: str, steps: int = 300) -> PretrainConfig:
    return PretrainConfig(
        mode=mode,
        people=1,
        unseen_people=1,
        world_dir=str(tmp_path / "worlds"),
        emb_dim=16,
        train=TrainConfig(steps=steps, batch_rows=4, lr=1e-2, warmup_steps=10, eval_every=10),
        out=str(tmp_path / mode),
        threads=1,
        progress=False,
    )


@pytest.fixture(scope="module")
def in_tool_run(tmp_path_factory) -> Iterator[tuple[PretrainConfig, RunSummary]]:
    import torch

    threads = torch.get_num_threads()
    cfg = _config(tmp_path_factory.mktemp("pretrain"), "in_tool")
    try:
        yield cfg, main(cfg)  # main sets torch's thread count from cfg.threads: give it back afterwards
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_tiny_in_tool_run_learns_to_call_the_tool_and_writes_its_run_dir(in_tool_run):
    cfg, summary = in_tool_run
    run_dir = cfg.run_dir()
    assert summary.reached_target and summary.train_recall >= 0.99 and summary.stopped_early
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoint.pt", "records_train.jsonl"):
        assert (run_dir / name).exists(), name
    losses = [
        json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line
    ]
    assert losses[-1] < 0.2 * losses[0]
    assert summary.unseen_recall is not None and (run_dir / "records_unseen.jsonl").exists()


@pytest.mark.slow
def test_policy_tool_calls_are_executed_against_the_sqlite_world(in_tool_run):
    cfg, _ = in_tool_run
    records = [json.loads(line) for line in (cfg.run_dir() / "records_train.jsonl").read_text().splitlines()]
    # the run's own world, not the counterfactual copy its faithfulness check writes beside it
    world_db = cfg.world_path()
    with sqlite3.connect(world_db) as db:
        for record in records:
            assert record["tool_called"] and record["tool_name"] == "lookup"
            arguments = record["tool_arguments"]
            [(value,)] = db.execute(
                f"SELECT {arguments['attribute']} FROM people WHERE name = ?",  # attribute: a column name the tool accepted
                (arguments["name"],),
            ).fetchall()
            assert record["tool_result"] == value == record["gold"]
            assert record["correct"]


@pytest.mark.slow
def test_finished_run_is_returned_without_training_again(in_tool_run):
    cfg, summary = in_tool_run
    mtime = (cfg.run_dir() / "checkpoint.pt").stat().st_mtime_ns
    again = main(cfg)
    assert again == summary
    assert (cfg.run_dir() / "checkpoint.pt").stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_seeds_stacked_in_one_process_end_as_their_single_runs(in_tool_run, tmp_path):
    single, summary = in_tool_run  # seed 0, trained alone

    def seeded(seed: int, out: str) -> PretrainConfig:
        return single.model_copy(update={"train": single.train.model_copy(update={"seed": seed}), "out": out})

    cfgs = [seeded(s, str(tmp_path / f"stack-s{s}")) for s in (0, 1)]
    stacked = pretrain_stacked(cfgs)
    alone = [summary, main(seeded(1, str(tmp_path / "alone-s1")))]
    for got, want in zip(stacked, alone, strict=True):
        assert (got.seed, got.steps, got.reached_target) == (want.seed, want.steps, want.reached_target)
        assert (got.train_recall, got.unseen_recall) == (want.train_recall, want.unseen_recall)
        assert got.final_loss == pytest.approx(want.final_loss, rel=1e-2)  # bmm vs mm: float drift over the steps
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoint.pt", "records_unseen.jsonl"):
        assert (tmp_path / "stack-s1" / name).exists(), name
    records = (tmp_path / "stack-s0" / "records_train.jsonl").read_text()
    assert records == (single.run_dir() / "records_train.jsonl").read_text()
    assert pretrain_stacked(cfgs) == stacked  # finished runs come back without training
    with pytest.raises(ValueError, match="differ only in their seed"):
        pretrain_stacked([cfgs[0], cfgs[1].model_copy(update={"emb_dim": 8})])


def test_cli_flags_override_the_yaml_config_and_unknown_keys_fail(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"mode": "in_weight", "emb_dim": 24, "train": {"lr": 0.005, "steps": 10}}))
    cfg = parse(["--config", str(path), "--emb-dim", "12", "--batch-rows", "8"])
    assert (cfg.mode, cfg.emb_dim, cfg.train.lr, cfg.train.steps, cfg.train.batch_rows) == (
        "in_weight",
        12,
        0.005,
        10,
        8,
    )
    path.write_text(yaml.safe_dump({"mode": "in_weight", "learning_rate": 0.1}))
    with pytest.raises(SystemExit):
        parse(["--config", str(path)])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--emb-dim", "14"], "head dim 7 must be even"),
        (["--emb-dim", "16", "--n-heads", "3"], "not divisible by n_heads 3"),
        (["--config", "{missing}"], "cannot read the config file"),
        (["--config", "{broken}"], "not a valid YAML file"),
        (["--config", "{binary}"], "not a valid YAML file"),
        (["--config", "{listing}"], "must be a mapping"),
    ],
)
def test_broken_configs_exit_with_a_clear_message(tmp_path, capsys, argv, message):
    files = {"missing": tmp_path / "none.yaml", "broken": tmp_path / "broken.yaml", "binary": tmp_path / "bin.yaml"}
    files["listing"] = tmp_path / "list.yaml"
    files["broken"].write_text("train: [1, 2\n")
    files["binary"].write_bytes(b"\xff\xfe\x00")
    files["listing"].write_text("- mode\n")
    with pytest.raises(SystemExit) as exit_info:
        parse([a.format(**files) for a in argv])
    assert exit_info.value.code == 2  # argparse's usage error, before any world or data is built
    assert message in capsys.readouterr().err


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        parse(["--help"])
    text = capsys.readouterr().out
    for flag in ("--mode", "--people", "--emb-dim", "--steps", "--lr", "--tool-format", "--eval-every", "--out"):
        assert flag in text


@pytest.mark.slow
def test_a_trained_run_is_evaluated_again_by_evals_recall(in_tool_run, tmp_path):
    """The run's model/ folder (HF weights, byte tokenizer, chat template) played through evals.recall gives the
    run's own answers, fact by fact."""
    from evals.recall import RecallConfig
    from evals.recall import main as recall

    cfg, _ = in_tool_run
    ours = {r["fact_id"]: r for r in map(json.loads, (cfg.run_dir() / "records_unseen.jsonl").read_text().splitlines())}
    summary = recall(RecallConfig(model=str(cfg.run_dir() / "model"), world=cfg.world_path(), split="unseen",
                                  mode="in_tool", tool_format=cfg.tool_format, max_turns=4,
                                  max_new_tokens=cfg.max_new_tokens, out=str(tmp_path / "recall"), progress=False))  # fmt: skip
    again = [json.loads(line) for line in (tmp_path / "recall" / "records-unseen.jsonl").read_text().splitlines()]
    assert {r["fact_id"] for r in again} == set(ours)
    for record in again:
        mine = ours[record["fact_id"]]
        assert (record["answer"], record["tool_called"], record["correct"]) == (
            mine["answer"], mine["tool_called"], mine["correct"]
        )  # fmt: skip
    assert summary.recall == sum(r["correct"] for r in ours.values()) / len(ours)
