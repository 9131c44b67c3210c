"""The one config resolver, through the real entry points: every broken config or flag is a short, exact error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, Field

from configs import ConfigError, record, resolve
from evals import recall
from trainers import sft

REPO = Path(__file__).resolve().parents[1]


class Inner(BaseModel):
    steps: int = Field(10, ge=1)
    lr: float = 1e-3


class Outer(BaseModel):
    people: list[int] = [1]
    name: str | None = None
    fast: bool = False
    train: Inner = Field(default_factory=Inner)


def parse_outer(argv: list[str]) -> Outer:
    (cfg,) = resolve([Outer], argv, prog="prog")
    return cfg


def test_defaults_then_yaml_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("people: [2, 3]\ntrain: {steps: 5, lr: 0.1}\nfast: true\n")
    cfg = parse_outer(["--config", str(path), "--lr", "0.5", "--no-fast", "--name", "none"])
    assert cfg == Outer(people=[2, 3], name=None, fast=False, train=Inner(steps=5, lr=0.5))
    assert parse_outer(["--train-steps" if False else "--steps", "7", "--fast"]).train.steps == 7
    assert parse_outer(["--fast", "false"]).fast is False


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("people: [1\n", "c.yaml: not a valid YAML file at line 2, column 1"),
        ("- people\n- 3\n", "c.yaml: a config file must be a mapping of option: value, not a list"),
        ("train: [1, 2]\n", "c.yaml: train: expected a mapping of options, got a list"),
        ("steps: 3\n", "c.yaml: unknown option 'steps'"),
        ("train: {steps: [1]}\n", "c.yaml: steps: expected int (Input should be a valid integer), got [1]"),
        ("train: {lr: {a: 1}}\n", "c.yaml: lr: expected float"),
        ("train: {steps: 0}\n", "c.yaml: steps: Input should be greater than or equal to 1, got 0"),
        ("peeple: [1]\n", "c.yaml: unknown option 'peeple' (did you mean 'people'?)"),
    ],
)
def test_each_broken_file_is_one_line_naming_file_key_and_type(tmp_path, capsys, yaml_text, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(SystemExit) as exit_:
        parse_outer(["--config", str(path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err
    assert len(err.strip().splitlines()) == 2 and "Traceback" not in err


def test_a_missing_or_binary_config_file(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_outer(["--config", str(tmp_path / "nope.yaml")])
    assert "nope.yaml: cannot read the config file (No such file or directory)" in capsys.readouterr().err
    (tmp_path / "b.yaml").write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(SystemExit):
        parse_outer(["--config", str(tmp_path / "b.yaml")])
    assert "b.yaml: not a valid YAML file (not UTF-8 text" in capsys.readouterr().err


def test_record_writes_what_config_reads_back(tmp_path):
    cfg = Outer(people=[4], name="x", train=Inner(steps=3))
    path = record(tmp_path / "run" / "config.yaml", cfg)
    assert parse_outer(["--config", str(path)]) == cfg


def test_two_sections_naming_one_option_is_a_bug():
    class Other(BaseModel):
        fast: int = 1

    with pytest.raises(TypeError, match="option 'fast' is defined twice"):
        resolve([Outer, Other], [], prog="p")


@pytest.mark.parametrize("entry", ["sft", "recall"])
@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("mode: [in_tool\n", "not a valid YAML file at line"),
        ("[1, 2]\n", "a config file must be a mapping of option: value, not a list"),
        ("max_new_tokens: [1, 2]\n", "max_new_tokens: expected int"),
        ("max_new_tokens: {a: 1}\n", "max_new_tokens: expected int"),
    ],
)
def test_sft_and_recall_reject_broken_configs_in_one_line(tmp_path, capsys, entry, yaml_text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    parse = sft.parse if entry == "sft" else recall.parse
    with pytest.raises(SystemExit) as exit_:
        parse(["--config", str(path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and str(path) in err
    assert len(err.strip().splitlines()) == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max_steps", "-5"], "--max_steps: must be a positive number of steps (or -1: by num_train_epochs), got -5"),
        (["--max_steps", "0"], "--max_steps: must be a positive number of steps"),
        (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size: must be positive, got 0"),
        (["--learning_rate", "-1e-3"], "--learning_rate: must be positive"),
        (["--eval_sample", "0"], "--eval_sample: Input should be greater than or equal to 1"),
        (["--people", "-3"], "--people: Input should be greater than or equal to 1"),
        (["--mode", "in_brain"], "--mode: expected one of in_tool|in_weight"),
    ],
)
def test_non_positive_counts_and_bad_choices_are_rejected(capsys, argv, message):
    with pytest.raises(SystemExit):
        sft.parse(argv)
    assert message in capsys.readouterr().err


def test_max_steps_minus_one_means_epochs():
    _, training = sft.parse(["--max_steps", "-1", "--num_train_epochs", "2"])
    assert training.max_steps == -1 and training.num_train_epochs == 2


def test_a_usage_error_is_two_lines_not_trls_usage():
    done = subprocess.run(
        [sys.executable, "trainers/sft.py", "--no_such_option", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    announced, *lines = done.stderr.strip().splitlines()  # the first line, printed before TRL loads, says the plan
    assert announced.startswith("trainers/sft.py: in_tool run of model default")
    assert len(lines) == 2 and lines[1] == "trainers/sft.py: error: unrecognized arguments: --no_such_option 1"


def test_help_lists_config_and_both_sections():
    done = subprocess.run(
        [sys.executable, "trainers/sft.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0
    for flag in ("--config", "--mode", "--world", "--max_steps", "--learning_rate", "--lora"):
        assert flag in done.stdout


def test_the_run_config_round_trips(tmp_path):
    cfg, training = sft.parse(["--max_steps", "7", "--mode", "in_weight", "--output_dir", str(tmp_path / "r")])
    path = record(tmp_path / "config.yaml", cfg, training)
    again_cfg, again_training = sft.parse(["--config", str(path)])
    assert again_cfg == cfg and again_training.max_steps == 7 and again_training.output_dir == str(tmp_path / "r")
    assert yaml.safe_load(path.read_text())["mode"] == "in_weight"


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)
