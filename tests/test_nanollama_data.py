"""nanoLlama data: byte tokenizer, conversation rendering, assistant-only loss mask, packing and sharding."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from itl_env import dialogs
from itl_env.env import ToolUseEnv
from itl_env.oracle import OraclePolicy
from itl_env.world import WorldSpec, build_world
from trainers.nanollama.data import PackedStream, encode_dialogs, every_phrasing, pack_rows
from trainers.nanollama.tokenizer import ByteTokenizer


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    w = build_world(WorldSpec(seed=1, people=3, unseen_people=2), tmp_path_factory.mktemp("w") / "world.db")
    yield w
    w.close()


@pytest.mark.parametrize("fmt", ["find", "hermes"])
def test_tokenizer_round_trips_text_and_makes_call_markers_single_tokens(fmt):
    tok = ByteTokenizer(fmt)
    text = f"Zoë said {tok.call_open}\nFIND occupation FOR Ana Li\n{tok.call_close} — ok"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert ids.count(tok.call_open_id) == 1 and ids.count(tok.call_close_id) == 1
    assert max(ids) < tok.vocab_size == 262


def test_decode_replaces_invalid_utf8_instead_of_failing():
    assert ByteTokenizer().decode([0xFF, ord("a")]) == "\ufffda"


@pytest.mark.parametrize("fmt", ["find", "hermes"])
@pytest.mark.parametrize("mode", ["in_tool", "in_weight"])
def test_loss_mask_covers_exactly_the_assistant_messages(tiny_world, fmt, mode):
    tok = ByteTokenizer(fmt)
    conversation = every_phrasing(tiny_world, mode, fmt)[0]
    [dialog] = encode_dialogs([conversation], tok)
    scored = dialog.targets[dialog.scored].tolist()
    expected: list[int] = []
    for message in conversation:
        if message["role"] == "assistant":
            expected += tok.encode(tok.message_text(message)) + [tok.end_id]
    assert scored == expected
    assert tok.decode(dialog.targets[~dialog.scored].tolist()).count("<|assistant|>") == len(conversation) // 2


@pytest.mark.parametrize("fmt", ["find", "hermes"])
def test_rendering_round_trips_what_the_model_writes(tiny_world, fmt):
    """Text a model writes -> env parses it into a message -> rendering that message gives the same text."""
    tok = ByteTokenizer(fmt)
    env = ToolUseEnv(tiny_world, tool_format=fmt)
    oracle = OraclePolicy(tiny_world, "in_tool", fmt)
    env.reset(seed=0, options={"fact": tiny_world.facts()[1]})
    written = []
    while True:
        text = oracle.generate([env.messages])[0]
        written.append(text)
        _, _, terminated, truncated, _ = env.step(text)
        if terminated or truncated:
            break
    rendered = [tok.message_text(m) for m in env.messages if m["role"] == "assistant"]
    assert rendered == written
    prompt = tok.encode_prompt(env.messages[:1])
    assert tok.decode(prompt).endswith("<|end|><|assistant|>")


def test_oracle_dialogs_ask_every_fact_in_every_phrasing(tiny_world):
    conversations = every_phrasing(tiny_world, "in_weight", "find")
    facts = tiny_world.facts("train")
    variants = len(dialogs.QUESTIONS[facts[0].attribute])
    assert len(conversations) == len(facts) * variants
    questions = Counter(c[0]["content"] for c in conversations)
    assert len(questions) == len(conversations)  # no duplicate question
    for fact in facts:
        asked = {dialogs.question(fact.person, fact.attribute, v) for v in range(variants)}
        assert asked <= set(questions)


def _dialogs(tiny_world):
    return encode_dialogs(every_phrasing(tiny_world, "in_tool", "find"), ByteTokenizer("find"))


def test_packing_puts_every_dialog_once_per_epoch_and_within_rows(tiny_world):
    dialog_list = _dialogs(tiny_world)
    order = np.random.default_rng(0).permutation(len(dialog_list))
    rows = pack_rows(dialog_list, order, seq_len=300)
    assert sorted(i for row in rows for i in row) == list(range(len(dialog_list)))
    assert all(sum(len(dialog_list[i]) for i in row) <= 300 for row in rows)
    assert len(rows) < len(dialog_list)  # dialogs share rows


def test_packed_batch_marks_documents_positions_and_padding(tiny_world):
    stream = PackedStream(_dialogs(tiny_world), seq_len=300, batch_rows=4, seed=0)
    batch = stream.batch(0)
    for b in range(4):
        docs = batch.documents[b]
        for doc in docs.unique().tolist():
            where = (docs == doc).nonzero().squeeze(1)
            assert where.tolist() == list(range(int(where[0]), int(where[-1]) + 1))  # contiguous
            assert batch.positions[b, where].tolist() == list(range(len(where))) or batch.dialogs[b, where[0]] < 0
    padding = batch.dialogs < 0
    assert (batch.targets[padding] == -1).all()
    assert batch.real_tokens == int((~padding).sum())


def test_batches_are_a_function_of_seed_and_step_and_ranks_split_them(tiny_world):
    dialog_list = _dialogs(tiny_world)
    a, b = PackedStream(dialog_list, 300, 4, seed=7), PackedStream(dialog_list, 300, 4, seed=7)
    for step in (5, 0, 3):  # any order: batch k never depends on the batches read before it
        assert (a.batch(step).tokens == b.batch(step).tokens).all()
    assert not (a.batch(0).tokens == PackedStream(dialog_list, 300, 4, seed=8).batch(0).tokens).all()
    ranks = [PackedStream(dialog_list, 300, 4, seed=7, rank=r, world_size=2).batch(2) for r in range(2)]
    whole = a.batch(2)
    assert (np.concatenate([r.tokens for r in ranks]) == whole.tokens.numpy()).all()
    with pytest.raises(ValueError, match="divisible"):
        PackedStream(dialog_list, 300, 3, world_size=2)


def test_a_dialog_longer_than_a_row_is_an_error(tiny_world):
    with pytest.raises(ValueError, match="raise seq_len"):
        PackedStream(_dialogs(tiny_world), seq_len=64, batch_rows=2).batch(0)
