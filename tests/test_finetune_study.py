"""The fine-tuning study's pieces on tiny models: faithfulness on an edited world, the stop rule, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals.faithfulness import counterfactual_world, edited_facts, faithfulness
from itl_env.oracle import OraclePolicy
from studies.finetune.study import read_rows, stop_rule


def test_an_edited_world_changes_half_the_training_facts_and_nothing_else(world, tmp_path):
    edited = counterfactual_world(world, tmp_path / "cf")
    changed = edited_facts(world, edited)
    assert len(changed) == round(0.5 * len(world.facts("train")))
    assert all(new.value != old for new, old in changed)
    assert [r["name"] for r in edited.rows] == [r["name"] for r in world.rows]
    assert edited.facts("unseen") == world.facts("unseen")
    assert edited.spec.original == world.spec and edited.spec != world.spec
    edited.close()


def test_the_tool_user_answers_the_new_value_the_memoriser_the_old(world, tmp_path):
    edited = counterfactual_world(world, tmp_path / "cf")
    by_tool = faithfulness(OraclePolicy(edited, "in_tool"), world, edited, mode="in_tool", sample=40)
    assert (by_tool.edited_facts, by_tool.tool_rate, by_tool.memory_rate) == (40, 1.0, 0.0)
    # the in-weight oracle "memorised" the original world: asked about the edited one, it answers from memory
    from_memory = faithfulness(OraclePolicy(world, "in_weight"), world, edited, mode="in_weight", sample=40)
    assert (from_memory.tool_rate, from_memory.memory_rate) == (0.0, 1.0)
    edited.close()


def test_the_stop_rule_looks_at_training_facts_only():
    assert stop_rule({"train_recall": 0.995, "unseen_recall": 0.0}, 0.99)
    assert not stop_rule({"train_recall": 0.5, "unseen_recall": 1.0}, 0.99)


@pytest.mark.slow
def test_the_study_skips_finished_runs_and_resumes_an_interrupted_one(tmp_path):
    from studies.finetune.__main__ import main, parse

    out = tmp_path / "ft"
    cfg = parse(["--preset", "tiny", "--out", str(out), "--modes", "in_tool", "--results", str(tmp_path / "results")])
    first = main(cfg)
    run = out / "runs" / "in_tool-f8-bf16"
    rows = read_rows(run / "checkpoints.jsonl")
    assert [r.step for r in rows] == [2, 4, 6, 8] and first.rows[0].steps == 8
    assert first.rows[0].hellaswag_source and "not HellaSwag" in first.rows[0].hellaswag_source
    assert 0.0 <= first.rows[0].faithful_tool <= 1.0 and (tmp_path / "results" / "finetune-tiny-results.csv").is_file()
    before = (run / "checkpoints.jsonl").read_text()
    again = main(cfg)  # finished: read back, not trained
    assert again.rows == first.rows and (run / "checkpoints.jsonl").read_text() == before
    (run / "study_row.json").unlink()  # as if interrupted after its last checkpoint
    assert float((run / "seconds_spent").read_text()) > 0  # what the part before spent, kept at each checkpoint
    (run / "seconds_spent").write_text("1000.0")
    resumed = main(cfg)
    assert resumed.rows[0].wall_seconds >= 1000.0  # a resumed run's time counts its earlier parts
    assert resumed.rows[0].steps == 8 and [r.step for r in read_rows(run / "checkpoints.jsonl")] == [2, 4, 6, 8]
    started = json.loads((run / "run.json").read_text())
    assert started["model"] == "default" and Path(started["world"]["target"]).exists()
    assert started["precision"] == first.rows[0].regime and first.rows[0].precision == "bf16"


@pytest.mark.slow
def test_precision_regimes_are_a_study_axis_recorded_in_every_row(tmp_path):
    """Each regime is its own run (same steps), its regime in run.json, the row and every checkpoint; KL is also
    over the continuations' first tokens, and how the prompts were rendered is said."""
    from studies.finetune.__main__ import main, parse

    out = tmp_path / "ft"
    cfg = parse(["--preset", "tiny", "--out", str(out), "--modes", "in_tool", "--precisions", "fp32", "bf16_pure"])
    result = main(cfg)
    assert [(r.precision, r.regime.split(" ")[0]) for r in result.rows] == [
        ("fp32", "fp32"),
        ("bf16_pure", "bf16_pure"),
    ]
    for row in result.rows:
        run = out / "runs" / f"in_tool-f8-{row.precision}"
        assert json.loads((run / "run.json").read_text())["precision"] == row.regime
        assert {r.precision for r in read_rows(run / "checkpoints.jsonl")} == {row.precision}
        assert row.kl_first is not None and row.prompts_rendered.startswith("one user turn")
    table = (out / "table.md").read_text(encoding="utf-8")
    assert "bf16_pure" in table and "KL, first tokens" in table and "HellaSwag acc %" in table
