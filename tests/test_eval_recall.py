"""``python -m evals.recall`` with the hf backend on a tiny real model: records, summary, resume, CLI."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from evals import recall
from evals.backends.hf import HFPolicy
from evals.default_model import DefaultModelConfig, save
from itl_env.rollout import FactRecord, read_records

TINY = DefaultModelConfig(hidden_size=32, layers=1, heads=1, intermediate_size=64)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A randomly initialised default-architecture model saved with its tokenizer and tool template."""
    return str(save(tmp_path_factory.mktemp("model") / "tiny", TINY))


def config(tiny_model: str, world_path: str, out: Path, **overrides) -> recall.RecallConfig:
    options = dict(
        model=tiny_model, world=world_path, out=str(out), max_new_tokens=6, batch_size=4, progress=False, threads=1
    )
    return recall.RecallConfig(**{**options, **overrides})


@pytest.fixture
def world_path(shared_world) -> str:
    return shared_world.url


def test_records_and_summary(tiny_model, world_path, tmp_path):
    summary = recall.main(config(tiny_model, world_path, tmp_path, limit=6, split="unseen"))
    records = read_records(tmp_path / "records-unseen.jsonl")
    assert len(records) == 6 and {r.split for r in records} == {"unseen"}
    assert all(isinstance(r, FactRecord) and r.mode == "in_tool" for r in records)
    assert all(1 <= r.tokens_generated <= 6 * r.turns for r in records)
    written = json.loads((tmp_path / "summary-unseen.json").read_text(encoding="utf-8"))
    assert recall.RecallSummary.model_validate(written) == summary
    assert summary.episodes == summary.played == 6
    assert summary.recall == sum(r.correct for r in records) / 6
    assert summary.tool_call_rate == sum(r.tool_called for r in records) / 6
    assert summary.mean_turns == sum(r.turns for r in records) / 6
    assert summary.tokens_generated == sum(r.tokens_generated for r in records)
    assert summary.tokens_per_s == pytest.approx(summary.tokens_generated / summary.seconds, rel=0.01)
    assert summary.startup_s > 0
    saved = yaml.safe_load((tmp_path / "config-unseen.yaml").read_text(encoding="utf-8"))
    assert saved["limit"] == 6 and saved["backend"] == "hf"


def test_resume_plays_only_missing_facts(tiny_model, world_path, tmp_path):
    fresh = recall.main(config(tiny_model, world_path, tmp_path / "fresh", limit=8))
    first = recall.main(config(tiny_model, world_path, tmp_path / "resumed", limit=3))
    resumed = recall.main(config(tiny_model, world_path, tmp_path / "resumed", limit=8, resume=True))
    assert first.played == 3 and resumed.played == 5 and resumed.episodes == 8
    assert read_records(tmp_path / "resumed" / "records-train.jsonl") == read_records(
        tmp_path / "fresh" / "records-train.jsonl"
    )
    assert resumed.recall == fresh.recall and resumed.tokens_generated == fresh.tokens_generated


def test_without_resume_records_are_replaced(tiny_model, world_path, tmp_path):
    recall.main(config(tiny_model, world_path, tmp_path, limit=5))
    summary = recall.main(config(tiny_model, world_path, tmp_path, limit=2))
    assert summary.played == 2 and len(read_records(tmp_path / "records-train.jsonl")) == 2


def test_batching_does_not_change_records(tiny_model, world_path, tmp_path):
    recall.main(config(tiny_model, world_path, tmp_path / "a", limit=6, batch_size=1, hf_batch_size=1))
    recall.main(config(tiny_model, world_path, tmp_path / "b", limit=6, batch_size=6, hf_batch_size=4))
    a = read_records(tmp_path / "a" / "records-train.jsonl")
    assert a == read_records(tmp_path / "b" / "records-train.jsonl")


def test_in_weight_mode_offers_no_tools(tiny_model, world_path, tmp_path):
    cfg = config(tiny_model, world_path, tmp_path, limit=2, mode="in_weight")
    assert recall.build_policy(cfg, [], cache_dir=tmp_path).tools is None
    recall.main(cfg)
    assert {r.mode for r in read_records(tmp_path / "records-train.jsonl")} == {"in_weight"}


def test_config_file_and_flag_override(tmp_path):
    path = tmp_path / "recall.yaml"
    path.write_text("backend: vllm\nlimit: 10\nsplit: unseen\nengine_args: {swap_space: 0}\n", encoding="utf-8")
    cfg = recall.parse(["--config", str(path), "--limit", "3", "--no-progress"])
    assert (cfg.backend, cfg.limit, cfg.split, cfg.progress) == ("vllm", 3, "unseen", False)
    assert cfg.engine_args == {"swap_space": 0}


def test_unknown_config_key_is_an_error(tmp_path, capsys):
    path = tmp_path / "recall.yaml"
    path.write_text("backend: hf\ntemprature: 0.5\n", encoding="utf-8")
    with pytest.raises(SystemExit):
        recall.parse(["--config", str(path)])
    assert "temprature" in capsys.readouterr().err


def test_bad_values_are_rejected(capsys):
    with pytest.raises(SystemExit):
        recall.parse(["--backend", "tgi"])
    with pytest.raises(SystemExit):
        recall.parse(["--limit", "0"])
    assert "limit" in capsys.readouterr().err


def test_missing_world_is_a_clear_error(tiny_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m itl_env.world"):
        recall.main(config(tiny_model, str(tmp_path / "nowhere.db"), tmp_path))


@pytest.mark.slow
def test_cli_runs_as_module_and_script(tiny_model, world_path, tmp_path):
    for runner in (["-m", "evals.recall"], [str(REPO / "evals" / "recall.py")]):
        out = tmp_path / runner[-1].replace("/", "_")
        argv = ["--model", tiny_model, "--world", world_path, "--limit", "2", "--max-new-tokens", "4"]
        done = subprocess.run(
            [sys.executable, *runner, *argv, "--out", str(out), "--no-progress", "--threads", "1"],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["episodes"] == 2
    help_text = subprocess.run(
        [sys.executable, "-m", "evals.recall", "--help"], capture_output=True, text=True, cwd=REPO, timeout=120
    ).stdout
    for option in ("--backend", "--resume", "--tensor_parallel_size", "--base_url", "--limit", "--config"):
        assert option in help_text


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_backend_without_vllm_says_how_to_get_it(tiny_model, world_path, tmp_path, monkeypatch):
    from evals.backends import vllm_process

    monkeypatch.delenv("ITL_VLLM_PYTHON", raising=False)
    monkeypatch.setattr(vllm_process, "ROOT", tmp_path)  # a checkout without .venv-vllm
    with pytest.raises(ValueError, match="make vllm-env"):
        recall.main(config(tiny_model, world_path, tmp_path, limit=1, backend="vllm"))
    monkeypatch.setenv("ITL_VLLM_PYTHON", str(tmp_path / "no-python"))
    with pytest.raises(ValueError, match="ITL_VLLM_PYTHON.*not an executable"):
        recall.main(config(tiny_model, world_path, tmp_path, limit=1, backend="vllm"))


def test_hf_policy_rejects_bad_sizes(tiny_model):
    with pytest.raises(ValueError, match="at least 1"):
        HFPolicy(None, None, max_new_tokens=0)


@pytest.mark.parametrize("temperature", [-0.1, float("nan")])
def test_hf_policy_rejects_a_bad_temperature(temperature):
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        HFPolicy(None, None, temperature=temperature)


def test_hf_policy_samples_reproducibly_with_a_temperature_and_decodes_greedily_without(tiny_model):
    import torch

    from evals.models import load

    model, tokenizer = load(tiny_model, for_training=False)
    prompts = [[{"role": "user", "content": "Where does Ana Silva live?"}]] * 4

    def replies(temperature: float, seed: int) -> list[str]:
        torch.manual_seed(seed)
        return HFPolicy(model, tokenizer, max_new_tokens=12, temperature=temperature).generate(prompts)

    greedy = replies(0.0, 0)
    assert len(set(greedy)) == 1 and replies(0.0, 1) == greedy  # greedy: no randomness at all
    sampled = replies(1.0, 0)
    assert replies(1.0, 0) == sampled and len(set(sampled)) > 1  # same seed, same draws; the batch varies
