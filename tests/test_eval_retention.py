"""``evals.retention``: divergence from the base on the project's prompt set, HellaSwag through the offline sample."""

from __future__ import annotations

import shutil
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


def test_text_prompts_skip_the_chat_template(base_and_perturbed):
    from transformers import AutoTokenizer

    base, perturbed = base_and_perturbed
    tokenizer = AutoTokenizer.from_pretrained(base)
    prompt = divergence.load_prompts()[0].prompt
    chat, text = divergence.prompt_ids(tokenizer, prompt), divergence.prompt_ids(tokenizer, prompt, chat=False)
    assert text == tokenizer(prompt)["input_ids"] and len(chat) > len(text)
    report = run(base, perturbed, prompt_format="text")
    assert report.prompt_format == "text" and report.divergence.kl > 1e-4
    assert run(base, perturbed).divergence.kl != report.divergence.kl


def test_hellaswag_sample_is_loaded_and_its_schema_enforced(tmp_path):
    items = hellaswag.load_items("sample")
    assert len(items) == 24 and all(len(i.endings) == 4 and 0 <= int(i.label) < 4 for i in items)
    assert hellaswag.load_items("sample", limit=5) == items[:5]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ind": 0, "ctx": "x", "endings": ["a", "b"], "label": "0"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="activity_label"):
        hellaswag.load_items(str(bad))


@pytest.mark.slow  # lm-eval's harness: 9-46 s
def test_lm_eval_scores_the_local_items_as_a_direct_loglikelihood_would(base_and_perturbed):
    """lm-eval's choice (acc) per item equals the ending with the highest summed log-likelihood, computed here."""
    import torch

    base, _ = base_and_perturbed
    model, tokenizer = retention.load_model(base, "float32", "cpu")
    items = hellaswag.load_items("sample", limit=6)
    acc, acc_norm, n = hellaswag.lm_eval_accuracy(model, tokenizer, "sample", limit=6, batch_size=7)
    right = 0
    for item in items:
        doc = hellaswag.lm_eval_doc(item)
        context = tokenizer(doc["query"])["input_ids"]
        scores = []
        for choice in doc["choices"]:
            whole = tokenizer(doc["query"] + " " + choice)["input_ids"]
            with torch.inference_mode():
                log_probs = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].float(), -1)
            scores.append(sum(float(log_probs[t - 1, whole[t]]) for t in range(len(context), len(whole))))
        right += max(range(4), key=scores.__getitem__) == doc["gold"]
    assert n == 6 and acc == pytest.approx(right / 6) and 0.0 <= acc_norm <= 1.0


@pytest.mark.slow  # lm-eval's harness: 9-46 s
def test_hellaswag_relative_to_base_and_offline_fallback_is_labelled(base_and_perturbed, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base, perturbed = base_and_perturbed
    same = run(base, base, hellaswag="auto", hellaswag_limit=8).hellaswag
    assert same.source == hellaswag.SAMPLE_LABEL and "not HellaSwag" in same.source and same.items == 8
    assert same.acc_change == 0.0 and same.relative_norm == pytest.approx(100.0)
    assert same.relative == (pytest.approx(100.0) if same.base_acc else None)  # a base at 0: no ratio
    other = run(base, perturbed, hellaswag="sample", hellaswag_limit=8).hellaswag
    assert other.acc_change == pytest.approx(other.model_acc - other.base_acc)
    if other.base_acc:
        assert other.relative == pytest.approx(100 * other.model_acc / other.base_acc)  # the paper's: acc
    assert other.relative_norm == pytest.approx(100 * other.model_acc_norm / other.base_acc_norm)
    assert other.item_points == (pytest.approx(100 / round(other.base_acc * other.items)) if other.base_acc else 0.0)
    assert run(base, perturbed, hellaswag="none").hellaswag is None


@pytest.mark.slow  # lm-eval's harness: 9-46 s
def test_hellaswag_from_the_hub_offline_is_a_clear_error(base_and_perturbed, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base, _ = base_and_perturbed
    with pytest.raises(RuntimeError, match="could not run lm-eval's hellaswag"):
        run(base, base, hellaswag="hub", hellaswag_limit=2)


def test_retention_across_tokens_a_fine_tune_added(tmp_path):
    """The project's template adds <tool_call> tokens to a model that lacks them: compare on the base's vocabulary."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evals.models import load

    base = plain_model(tmp_path / "plain")
    model, tokenizer = load(str(base))  # no tool template: the project's is installed, tokens added, embeddings grown
    assert len(tokenizer) > len(AutoTokenizer.from_pretrained(base))
    model.save_pretrained(tmp_path / "grown")
    tokenizer.save_pretrained(tmp_path / "grown")
    report = run(str(base), str(tmp_path / "grown"))
    assert "added token(s) are left out and its distribution renormalised" in report.vocabulary
    assert report.divergence.kl == pytest.approx(0.0, abs=1e-6) and report.divergence.top1_agreement == 1.0
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "grown").get_input_embeddings().weight.shape[0] == len(
        tokenizer
    )


def test_unrelated_vocabularies_are_refused(base_and_perturbed, tmp_path):
    base, _ = base_and_perturbed
    with pytest.raises(ValueError, match="does not extend the base's"):
        run(base, str(plain_model(tmp_path / "plain")))


def test_the_base_is_the_model_the_run_started_from(tmp_path, base_and_perturbed):
    import json
    import shutil

    base, perturbed = base_and_perturbed
    run_dir = tmp_path / "run"
    shutil.copytree(perturbed, run_dir / "model")
    (run_dir / "run.json").write_text(json.dumps({"kind": "sft", "model": base, "world": {}}))
    report = retention.main(retention.RetentionConfig(model=str(run_dir / "model"), max_new_tokens=4, hellaswag="none"))
    assert report.base == base and report.divergence.kl > 0
    with pytest.raises(ValueError, match="records no base"):
        retention.main(retention.RetentionConfig(model=perturbed, hellaswag="none"))


def plain_model(path):
    """A tiny Llama whose byte-level tokenizer has no chat template and no tool-call tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(
        ["a plain corpus of words"], trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"], show_progress=False)
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<eos>")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=1, num_key_value_heads=1, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


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


CHATML_WITH_DEFAULT = (
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_WITH_DEFAULT = (
    "{{ '<|begin_of_text|>' }}{% if messages[0]['role'] != 'system' %}"
    "{{ '<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: 2023<|eot_id|>' }}{% endif %}"
    "{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] "
    "+ '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
NO_DEFAULT = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (CHATML_WITH_DEFAULT, "<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n"),
        (
            LLAMA3_WITH_DEFAULT,
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhy?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ),  # fmt: skip
        (NO_DEFAULT, "<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n"),
    ],
)
def test_prompts_leave_out_the_system_turn_a_template_adds_on_its_own(base_and_perturbed, template, expected):
    """The paper's prompts are one user turn: a default system turn (SmolLM2's, Llama 3's date) is left out,
    and ``rendering`` says which was done; with default_system=True the template renders as it likes."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_and_perturbed[0])
    tokenizer.chat_template = template
    plain = divergence.chat_text(tokenizer, "Why?")
    assert divergence.without_default_system(tokenizer, "Why?", plain) == expected
    ids = divergence.prompt_ids(tokenizer, "Why?", chat=True, default_system=False)
    assert tokenizer.decode(ids) == expected
    assert tokenizer.decode(divergence.prompt_ids(tokenizer, "Why?", chat=True, default_system=True)) == plain
    said = divergence.rendering(tokenizer, chat=True, default_system=False)
    assert ("without the default system turn" in said) is (template != NO_DEFAULT)


def test_base_continuations_are_made_once_and_kl_is_also_over_the_first_tokens(
    base_and_perturbed, tmp_path, monkeypatch
):
    from evals.models import load_as_is

    base, tokenizer = load_as_is(base_and_perturbed[0])
    model, _ = load_as_is(base_and_perturbed[1])
    prompts = divergence.load_prompts()[:6]
    cache = tmp_path / "continuations.json"
    first = divergence.DivergenceProbe(base, tokenizer, prompts, max_new_tokens=12, first_tokens=3, cache=cache)
    made = []
    original = divergence.greedy_continuations
    monkeypatch.setattr(divergence, "greedy_continuations", lambda *a, **k: made.append(1) or original(*a, **k))
    again = divergence.DivergenceProbe(base, tokenizer, prompts, max_new_tokens=12, first_tokens=3, cache=cache)
    assert again.continuations == first.continuations and not made  # read back, not generated
    moved = shutil.copytree(base_and_perturbed[0], tmp_path / "moved")  # the same weights from another folder
    elsewhere, _ = load_as_is(str(moved))
    divergence.DivergenceProbe(elsewhere, tokenizer, prompts, max_new_tokens=12, first_tokens=3, cache=cache)
    assert not made  # the cache is the weights', not the path's
    other, _ = load_as_is(base_and_perturbed[1])
    divergence.DivergenceProbe(other, tokenizer, prompts, max_new_tokens=12, first_tokens=3, cache=cache)
    assert made  # another base: made again
    made.clear()
    longer = divergence.DivergenceProbe(base, tokenizer, prompts, max_new_tokens=13, cache=cache)
    assert made and len(longer.continuations) == len(prompts)  # another length: made again
    whole, _ = first.measure(model, tokenizer)
    rows = divergence.divergence_terms(base, model, first.ids, first.continuations, 8, first.pad)
    # batched by length, scored over the continuations only: each prompt's row as when it is scored alone
    alone = divergence.divergence_terms(base, model, first.ids, first.continuations, 1, first.pad)
    assert [len(r["kl"]) for r in rows] == [len(c) for c in first.continuations]
    for batched, single in zip(rows, alone, strict=True):
        for key in ("kl", "tv", "base_nll", "model_nll"):
            assert batched[key] == pytest.approx(single[key], rel=1e-4, abs=1e-6)
    early = [v for row in rows for v in row["kl"][:3]]
    assert whole.first_tokens == 3 and whole.kl_first == pytest.approx(sum(early) / len(early), rel=1e-4)
    assert whole.tokens == sum(map(len, first.continuations)) > len(early)
