"""``evals.retention``: divergence from the base on the project's prompt set, HellaSwag through the offline sample."""

from __future__ import annotations

from collections import Counter

import pytest

from evals import divergence, hellaswag, retention
from evals.default_model import DefaultModelConfig, save
from evals.models import ModelLoadError

TINY = DefaultModelConfig(hidden_size=32, layers=1, heads=1, intermediate_size=64)


@pytest.fixture(scope="module")
def base_and_perturbed(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A tiny random model and a copy with small noise added to every weight (same tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("retention")
    base = save(root / "base", TINY)
    model = AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    model.save_pretrained(root / "perturbed")
    AutoTokenizer.from_pretrained(base).save_pretrained(root / "perturbed")
    return str(base), str(root / "perturbed")


def run(base: str, model: str, **overrides) -> retention.RetentionReport:
    options = dict(base=base, model=model, max_new_tokens=8, hellaswag="none", threads=1, batch_size=32)
    return retention.main(retention.RetentionConfig(**{**options, **overrides}))


def test_prompt_set_covers_four_abilities():
    prompts = divergence.load_prompts()
    assert len(prompts) >= 100
    assert len({p.id for p in prompts}) == len(prompts)
    counts = Counter(p.category for p in prompts)
    assert set(counts) == {"factual", "creative", "math", "language"} and min(counts.values()) >= 25


def test_base_against_itself_has_zero_divergence(base_and_perturbed):
    base, _ = base_and_perturbed
    report = run(base, base)
    assert report.prompts >= 100 and report.divergence.tokens >= report.prompts
    assert report.divergence.kl == 0.0 and report.divergence.tv == 0.0
    assert report.divergence.nll_change == 0.0 and report.divergence.top1_agreement == 1.0
    assert report.divergence.base_nll > 0


def test_perturbed_copy_diverges(base_and_perturbed, tmp_path):
    base, perturbed = base_and_perturbed
    report = run(base, perturbed, out=str(tmp_path / "retention.json"))
    assert report.divergence.kl > 1e-4
    assert 0.0 < report.divergence.tv <= 1.0
    assert report.divergence.model_nll != report.divergence.base_nll
    assert set(report.by_category) == {"factual", "creative", "math", "language"}
    assert sum(d.tokens for d in report.by_category.values()) == report.divergence.tokens
    saved = retention.RetentionReport.model_validate_json((tmp_path / "retention.json").read_text(encoding="utf-8"))
    assert saved == report


def test_hellaswag_falls_back_to_the_sample_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source, items = hellaswag.load_hellaswag("auto")
    assert source == "sample" and len(items) >= 20
    assert all(len(i.endings) == 4 and 0 <= int(i.label) < 4 for i in items)
    assert hellaswag.load_hellaswag("sample", limit=5)[1] == items[:5]


def test_hellaswag_schema_is_enforced(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ind": 0, "ctx": "x", "endings": ["a", "b"], "label": "0"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="activity_label"):
        hellaswag.load_hellaswag(str(bad))


def test_hellaswag_scores_match_one_item_at_a_time(base_and_perturbed):
    """Batched, padded scoring picks the same endings as scoring each ending on its own."""
    import torch

    base, _ = base_and_perturbed
    model, tokenizer = retention.load_model(base, "float32", "cpu")
    _, items = hellaswag.load_hellaswag("sample", limit=6)
    acc, acc_norm = hellaswag.hellaswag_accuracy(model, tokenizer, items, batch_size=7)
    right = 0
    for item in items:
        context, endings = hellaswag.hellaswag_choices(item)
        start = len(tokenizer(context)["input_ids"])
        scores = []
        for ending in endings:
            ids = tokenizer(context + ending)["input_ids"]
            with torch.inference_mode():
                log_probs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
            scores.append(sum(float(log_probs[t - 1, ids[t]]) for t in range(start, len(ids))))
        right += max(range(4), key=scores.__getitem__) == int(item.label)
    assert acc == right / len(items)
    assert 0.0 <= acc_norm <= 1.0


def test_hellaswag_relative_to_base(base_and_perturbed):
    base, perturbed = base_and_perturbed
    same = run(base, base, hellaswag="sample").hellaswag
    assert same.source == "sample" and same.items >= 20
    assert same.acc_change == 0.0 and same.base_acc == same.model_acc
    other = run(base, perturbed, hellaswag="sample", hellaswag_limit=8).hellaswag
    assert other.items == 8 and other.acc_change == pytest.approx(other.model_acc - other.base_acc)


def test_config_rejects_unknown_keys(tmp_path, capsys):
    path = tmp_path / "retention.yaml"
    path.write_text("base: a\nmodel: b\nkl_only: true\n", encoding="utf-8")
    with pytest.raises(SystemExit):
        retention.parse(["--config", str(path)])
    assert "kl_only" in capsys.readouterr().err
    cfg = retention.parse(["--base", "a", "--model", "b", "--hellaswag-limit", "none", "--max-new-tokens", "4"])
    assert cfg.hellaswag_limit is None and cfg.max_new_tokens == 4


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no model directory at"):
        run(str(tmp_path / "no-such-model"), str(tmp_path / "no-such-model"))


def test_the_embedded_default_model_is_a_base_by_name(tmp_path):
    """``--base default`` is the model SFT starts from (tests/test_sft.py checks they are one), built offline."""
    saved = save(tmp_path / "default-copy", DefaultModelConfig())
    report = run("default", str(saved), max_new_tokens=2)
    assert report.divergence.tokens > 0 and report.divergence.kl == 0.0
