"""One run, N processes: SFT and GRPO under torchrun and accelerate launch, 2 gloo ranks on CPU, the tiny model.

Rank 0 chooses and creates the run directory and builds the world; the other rank waits, opens them, trains on
its slice of every batch, plays its share of every evaluation and prints nothing but errors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")

REPO = Path(__file__).resolve().parents[1]
SFT = ["--hidden_size", "32", "--layers", "1", "--people", "12", "--unseen_people", "4", "--phrasings", "2",
       "--per_device_train_batch_size", "4", "--max_steps", "12", "--learning_rate", "1e-2", "--logging_steps", "1",
       "--eval_every", "6", "--eval_sample", "5", "--final_eval_facts", "7", "--eval_batch_size", "1",
       "--max_new_tokens", "24", "--max_turns", "2", "--save_steps", "6"]  # fmt: skip
GRPO = ["--hidden_size", "32", "--layers", "1", "--people", "12", "--unseen_people", "4", "--max_steps", "2",
        "--per_device_train_batch_size", "2", "--num_generations", "2", "--max_completion_length", "48",
        "--eval_every", "0", "--final_eval_facts", "3", "--max_new_tokens", "16", "--logging_steps", "1",
        "--save_steps", "2"]  # fmt: skip
LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"],
    "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/cpu.yaml",
                   "--num_processes", "2"],
}  # fmt: skip


def launch(launcher: str, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*LAUNCHERS[launcher], script, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_rank_sft_is_one_run_whose_sharded_evaluation_equals_one_process(tmp_path, launcher):
    from evals.backends.hf import HFPolicy
    from evals.evaluator import RecallEvaluator
    from evals.models import load
    from itl_env.world import World

    world_path, out = tmp_path / "data" / "world.db", tmp_path / "run"  # a fresh world: rank 0 builds it
    done = launch(launcher, "trainers/sft.py", *SFT, "--world", str(world_path), "--output_dir", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run directory") == 1  # one summary: rank 1 prints none
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run"]
    assert not list(out.glob("config.resumed-*")) and (out / "summary.json").is_file()
    rows = records(out / "metrics.jsonl")
    losses = [row["loss"] for row in rows if "loss" in row]
    assert len(losses) == 12 and losses[-1] < losses[0]
    assert rows[0]["epoch"] > 0 and (out / "dataset").is_dir()  # the oracle dialogs rank 0 made, loaded by rank 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 12

    # the records the two ranks pooled are those one process writes for the saved model, line for line
    world = World.open(world_path)
    model, tokenizer = load(str(out / "model"))
    evaluator = RecallEvaluator(world, mode="in_tool", max_turns=2, batch_size=1)
    policy = HFPolicy(model, tokenizer, evaluator.tools, max_new_tokens=24, batch_size=1)
    alone = tmp_path / "alone"
    one = evaluator.evaluate_splits(policy, sample=7, tag="final", records_dir=alone, progress=False)
    world.close()
    for split in ("train", "unseen"):
        pooled = records(out / "records" / f"final-{split}.jsonl")
        assert len(pooled) == 7 and pooled == records(alone / f"final-{split}.jsonl")
    assert summary["train_recall"] == one["train_recall"] and summary["unseen_recall"] == one["unseen_recall"]


@pytest.mark.slow
def test_two_rank_grpo_is_one_run(tmp_path):
    out = tmp_path / "run"
    done = launch("torchrun", "trainers/grpo.py", *GRPO, "--world", str(tmp_path / "w.db"), "--output_dir", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run directory") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "w.db"]
    rows = records(out / "metrics.jsonl")
    assert len([row for row in rows if "reward" in row]) == 2
    assert {"initial/train_recall", "final/train_recall"} <= set().union(*rows)
    for split in ("train", "unseen"):
        assert len(records(out / "records" / f"final-{split}.jsonl")) == 3
    assert (out / "model" / "config.json").is_file() and not list(out.glob("config.resumed-*"))


@pytest.mark.slow
def test_a_failure_on_rank_zero_is_reported_once_and_creates_nothing(tmp_path):
    not_a_world = tmp_path / "notes.db"
    not_a_world.write_text("my notes")
    out = tmp_path / "run"
    done = launch("torchrun", "trainers/sft.py", *SFT, "--world", str(not_a_world), "--output_dir", str(out))
    assert done.returncode != 0
    assert done.stderr.count("trainers/sft.py: error:") == 1 and "left untouched" in done.stderr
    assert not out.exists() and not_a_world.read_text() == "my notes"


def test_the_first_line_says_where_the_run_writes_before_trl_loads(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model: my/model\nworld: data/mine.db\n")
    done = subprocess.run(
        [sys.executable, "trainers/sft.py", "--config", str(config), "--output_dir", str(tmp_path / "r"),
         "--max_steps", "-7"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    first = done.stderr.splitlines()[0]
    assert "my/model" in first and "data/mine.db" in first and str(tmp_path / "r") in first
    assert done.returncode == 2 and "--max_steps" in done.stderr and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_two_rank_finetune_study_writes_each_row_once(tmp_path):
    out = tmp_path / "study"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*LAUNCHERS["torchrun"], "-m", "studies.finetune.__main__", "--preset", "tiny", "--modes", "in_tool",
         "--out", str(out), "--results", str(tmp_path / "results")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count('"wall_seconds"') == 1  # rank 1 prints nothing
    (run,) = (out / "runs").iterdir()
    steps = [json.loads(line)["step"] for line in (run / "checkpoints.jsonl").read_text().splitlines()]
    assert steps and len(steps) == len(set(steps))  # measured once per checkpoint, by rank 0
    row = json.loads((run / "study_row.json").read_text())
    assert row["mode"] == "in_tool" and 0.0 <= row["faithful_tool"] <= 1.0
    assert len(records(run / "records" / "faithfulness.jsonl")) == 4  # both ranks' shares, pooled
    assert (out / "study.json").is_file() and not list(run.glob("config.resumed-*"))


@pytest.mark.slow
def test_two_rank_sft_trains_on_a_given_dataset_as_stes_fine_tune_does(tmp_path):
    from itl_env.trajectories import sft_dataset
    from itl_env.world import WorldSpec, build_world

    world = build_world(WorldSpec(seed=0, people=12, unseen_people=4), tmp_path / "w.db")
    data = tmp_path / "dialogs.jsonl"
    sft_dataset(world, world.facts("train")[:16], "in_tool").to_json(str(data))
    world.close()
    out = tmp_path / "run"
    args = ["--world", str(tmp_path / "w.db"), "--dataset", str(data), "--output_dir", str(out), "--max_steps", "2"]
    done = launch("torchrun", "trainers/sft.py", *SFT[:-4], *args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run directory") == 1 and (out / "model" / "config.json").is_file()
    assert len(records(out / "records" / "final-train.jsonl")) == 7


def test_ste_under_a_multi_process_launch_says_how_to_fine_tune_on_n_ranks(monkeypatch, capsys):
    from studies.ste.__main__ import cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SystemExit) as exit_:
        cli(["all", "--preset", "tiny"])
    assert "runs in one process" in str(exit_.value.code) and "trainers/sft.py --dataset" in str(exit_.value.code)
