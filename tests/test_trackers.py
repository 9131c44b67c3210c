"""--report_to: recall reaches the trackers beside the loss, read back from TensorBoard's own files; a tracker that
is not installed is a usage error before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("tensorboard")

from trainers import grpo, sft

TINY = ["--hidden_size", "32", "--layers", "1", "--people", "12", "--unseen_people", "4", "--max_new_tokens", "16",
        "--max_turns", "2", "--logging_steps", "1", "--save_steps", "4", "--report_to", "tensorboard"]  # fmt: skip


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard holds for the run (all event files under its logging dir)."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    found: dict[str, list[tuple[int, float]]] = {}
    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(run / "runs"))
    mux.Reload()
    for name in mux.Runs():
        for tag in mux.Runs()[name]["scalars"]:
            found.setdefault(tag, []).extend((e.step, e.value) for e in mux.Scalars(name, tag))
    return found


def test_sft_recall_reaches_tensorboard_beside_the_loss(tmp_path):
    args = [*TINY, "--max_steps", "4", "--per_device_train_batch_size", "8", "--phrasings", "1", "--eval_every", "2",
            "--eval_sample", "3", "--final_eval_facts", "4"]  # fmt: skip
    cfg, training = sft.parse([*args, "--world", str(tmp_path / "w.db"), "--output_dir", str(tmp_path / "run")])
    result = sft.main(cfg, training)
    logged = scalars(Path(result.run_dir))
    assert len(logged["train/loss"]) == 4
    assert [step for step, _ in logged["train/eval/train_recall"]] == [2, 4]
    assert [step for step, _ in logged["train/eval/unseen_recall"]] == [2, 4]
    assert logged["train/final/train_recall"] == [(4, result.train_recall)]
    assert logged["train/final/unseen_recall"] == [(4, result.unseen_recall)]
    assert "train/final/tool_call_rate" in logged and "train/eval/parse_error_rate" in logged


def test_grpo_recall_before_and_after_reaches_tensorboard(tmp_path):
    args = [*TINY, "--max_steps", "2", "--per_device_train_batch_size", "2", "--num_generations", "2",
            "--max_completion_length", "32", "--eval_every", "0", "--final_eval_facts", "2"]  # fmt: skip
    cfg, training = grpo.parse([*args, "--world", str(tmp_path / "w.db"), "--output_dir", str(tmp_path / "run")])
    result = grpo.main(cfg, training)
    logged = scalars(Path(result.run_dir))
    assert logged["train/initial/train_recall"] == [(0, result.initial_train_recall)]
    assert logged["train/final/unseen_recall"] == [(2, result.unseen_recall)]
    assert len(logged["train/reward"]) == 2


def test_a_tracker_that_is_not_installed_is_a_usage_error_before_anything_is_written(tmp_path, capsys):
    from transformers.integrations.integration_utils import get_available_reporting_integrations

    missing = next(
        n for n in ("wandb", "comet_ml", "neptune", "clearml") if n not in get_available_reporting_integrations()
    )
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        sft.cli(["--report_to", missing, "--world", str(tmp_path / "w.db"), "--output_dir", str(out)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"--report_to: {missing} is not installed" in err
    assert not out.exists() and not (tmp_path / "w.db").exists()


def test_an_unknown_tracker_lists_the_valid_ones(tmp_path, capsys):
    with pytest.raises(SystemExit):
        sft.parse(["--report_to", "tensorbored", "--output_dir", str(tmp_path / "run")])
    assert "unknown tracker 'tensorbored'; valid: none, all," in capsys.readouterr().err
