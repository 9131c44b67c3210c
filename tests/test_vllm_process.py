"""vLLM driven from this interpreter: its engine in .venv-vllm (``evals.backends.vllm_process``), as a training
run's evaluations use it (``--eval_backend vllm``) and ``build_policy`` does where vLLM is not installed here.

The same tiny SFT run is trained twice, its recall evaluated by the hf backend and by one vLLM engine that
reloads each checkpoint's weights: every evaluation's records must be the same (greedy, float32). Runs in the
main lane, so the engine really crosses interpreters (``make test`` builds .venv-vllm first).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("trl")

from evals.backends.vllm_process import VLLMProcess, vllm_python
from trainers import sft
from trainers.fine_tune import fine_tune
from trainers.hf_training import eval_backend

pytestmark = pytest.mark.slow

needs_vllm = pytest.mark.skipif(vllm_python() is None, reason="no vLLM interpreter (`make vllm-env`)")

TINY = ["--hidden_size", "32", "--layers", "1", "--people", "12", "--unseen_people", "4", "--phrasings", "2",
        "--per_device_train_batch_size", "8", "--learning_rate", "1e-2", "--max_steps", "16", "--eval_every", "8",
        "--eval_sample", "8", "--final_eval_facts", "6", "--max_new_tokens", "24", "--max_turns", "2",
        "--save_steps", "8", "--logging_steps", "4", "--seed", "0"]  # fmt: skip


def records(folder: Path) -> dict[str, list[dict]]:
    return {p.name: [json.loads(line) for line in p.read_text().splitlines()] for p in sorted(folder.glob("*.jsonl"))}


@needs_vllm
def test_one_engine_reloading_each_checkpoint_gives_the_records_of_hf(tmp_path):
    runs, after = {}, {}
    question = [[{"role": "user", "content": "Where was the first person of the world born?"}]]
    for backend in ("hf", "vllm"):
        script, training = sft.parse(
            [*TINY, "--world", str(tmp_path / "world.db"), "--output_dir", str(tmp_path / backend),
             "--eval_backend", backend]
        )  # fmt: skip

        def then(policy, backend=backend):  # what played the run, handed on over the final model (a study's next step)
            after[backend] = (type(policy).__name__, policy.generate(question))

        fine_tune(script, training, then=then)
        runs[backend] = records(tmp_path / backend / "records")
    hf, vllm = runs["hf"], runs["vllm"]
    assert after["hf"][0] == "HFPolicy" and after["vllm"][0] == "VLLMProcess"  # the run's engine, still open
    assert after["vllm"][1] == after["hf"][1]
    assert sorted(hf) == ["final-train.jsonl", "final-unseen.jsonl", "step16-train.jsonl", "step16-unseen.jsonl",
                          "step8-train.jsonl", "step8-unseen.jsonl"]  # fmt: skip
    assert vllm == hf

    # the weights changed between the evaluations, so equal records mean the engine did reload them
    def replies(name: str) -> list[tuple]:
        return [(r["tool_name"], r["tool_arguments"], r["parse_error"], r["answer"]) for r in hf[name]]

    assert replies("step8-train.jsonl") != replies("step16-train.jsonl")
    assert not (tmp_path / "vllm" / "eval-model").exists()  # the saved weights are removed, the engine stopped
    assert (tmp_path / "vllm" / "vllm-engine.log").is_file()


@needs_vllm
def test_an_engine_that_cannot_start_is_a_clear_error(tmp_path):
    (tmp_path / "model").mkdir()  # no config.json, no weights
    with pytest.raises(RuntimeError, match="the vLLM engine"):
        VLLMProcess(tmp_path / "model", log=tmp_path / "engine.log", cache_dir=tmp_path)


def test_the_backend_choice_says_why_vllm_cannot_be_used(monkeypatch):
    assert eval_backend("hf", lora=False, processes=1) == "hf"
    assert eval_backend("auto", lora=True, processes=1) == "hf"
    assert eval_backend("auto", lora=False, processes=2) == "hf"
    with pytest.raises(ValueError, match="LoRA adapter.*2 processes"):
        eval_backend("vllm", lora=True, processes=2)
    monkeypatch.setenv("ITL_VLLM_PYTHON", "/usr/bin/python3")
    assert eval_backend("auto", lora=False, processes=1) == "vllm"


def test_a_small_machine_gives_the_engine_every_core(monkeypatch, tmp_path):
    import os

    from evals.backends.vllm import SMALL_MACHINE_CORES, configure_environment

    reserved = "VLLM_CPU_NUM_OF_RESERVED_CPU"
    for cores, user, expected in [(2, None, "0"), (SMALL_MACHINE_CORES + 1, None, None), (2, "1", "1")]:
        environ = {k: v for k, v in os.environ.items() if k != reserved} | ({reserved: user} if user else {})
        monkeypatch.setattr(os, "environ", environ)
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cores: set(range(n)))
        configure_environment(tmp_path)
        assert environ.get(reserved) == expected, (cores, user)  # vLLM's own choice on a bigger one; a user's kept
        assert environ["VLLM_CACHE_ROOT"] == str(tmp_path / "vllm")
