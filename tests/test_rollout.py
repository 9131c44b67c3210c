"""The batched rollout driver with the oracle policy: recall, records, resume, batching."""

from __future__ import annotations

import json

import pytest

from itl_env import dialogs
from itl_env.env import ToolUseEnv
from itl_env.oracle import OraclePolicy
from itl_env.rollout import FactRecord, read_records, rollout


def play(world, mode="in_tool", tool_format="hermes", split="train", **kwargs):
    return rollout(
        OraclePolicy(world, mode, tool_format),
        lambda: ToolUseEnv(world, tool_format=tool_format, offer_tools=mode == "in_tool"),
        world.facts(split),
        mode=mode,
        progress=False,
        **kwargs,
    )


class Interrupt(RuntimeError):
    pass


class StopsAfter:
    """The oracle, until its ``calls``-th generate call: then the run dies like a killed job."""

    def __init__(self, policy: OraclePolicy, calls: int):
        self.policy, self.calls = policy, calls

    def generate(self, conversations):
        self.calls -= 1
        if self.calls < 0:
            raise Interrupt("killed")
        return self.policy.generate(conversations)


class AskedQuestions:
    """The oracle, noting every (person, attribute) it was asked about."""

    def __init__(self, policy: OraclePolicy):
        self.policy, self.facts = policy, set()

    def generate(self, conversations):
        for messages in conversations:
            name, attribute = dialogs.parse_question(messages[0]["content"])
            self.facts.add((name, attribute.value))
        return self.policy.generate(conversations)


class CountingTokens:
    """The oracle, reporting each reply's length in characters as its token count."""

    def __init__(self, policy: OraclePolicy):
        self.policy = policy
        self.last_token_counts: list[int] = []

    def generate(self, conversations):
        replies = self.policy.generate(conversations)
        self.last_token_counts = [len(r) for r in replies]
        return replies


@pytest.mark.parametrize("tool_format", ["hermes", "find"])
@pytest.mark.parametrize("split", ["train", "unseen"])
def test_in_tool_oracle_recalls_everything(shared_world, tool_format, split):
    result = play(shared_world, "in_tool", tool_format, split, batch_size=16)
    assert result.summary.episodes == len(shared_world.facts(split))
    assert result.summary.recall == 1.0
    assert result.summary.tool_call_rate == 1.0
    assert result.summary.mean_turns == 2.0
    assert all(r.tool_result == r.gold and r.split == split for r in result.records)


def test_in_weight_oracle_recalls_training_people(shared_world):
    result = play(shared_world, "in_weight", batch_size=16)
    assert result.summary.recall == 1.0
    assert result.summary.tool_call_rate == 0.0 and result.summary.mean_turns == 1.0


def test_in_weight_oracle_does_not_know_unseen_people(shared_world):
    result = play(shared_world, "in_weight", split="unseen", batch_size=16)
    assert result.summary.recall == 0.0
    assert {r.answer for r in result.records} == {dialogs.UNKNOWN_ANSWER}


def test_records_written_one_per_fact(shared_world, tmp_path):
    out = tmp_path / "runs" / "records.jsonl"
    result = play(shared_world, batch_size=8, out=out)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(shared_world.facts("train"))
    written = [FactRecord.model_validate(json.loads(line)) for line in lines]
    assert sorted(r.fact_id for r in written) == sorted(f.id for f in shared_world.facts("train"))
    assert sorted(written, key=lambda r: r.fact_id) == sorted(result.records, key=lambda r: r.fact_id)


def test_record_fields(shared_world):
    fact = shared_world.facts("train")[6]
    record = next(r for r in play(shared_world).records if r.fact_id == fact.id)
    assert record.model_dump() == {
        "fact_id": fact.id,
        "task": "fact_recall",
        "person": fact.person,
        "attribute": fact.attribute.value,
        "split": "train",
        "mode": "in_tool",
        "gold": fact.value,
        "tool_called": True,
        "tool_name": "lookup",
        "tool_arguments": {"name": fact.person, "attribute": fact.attribute.value},
        "tool_result": fact.value,
        "parse_error": None,
        "answer": dialogs.answer(fact.person, fact.attribute, fact.value),
        "correct": True,
        "truncated": False,
        "turns": 2,
        "tokens_generated": None,
    }


def test_record_schema_rejects_unknown_fields(shared_world):
    record = play(shared_world).records[0].model_dump()
    with pytest.raises(ValueError, match="extra"):
        FactRecord.model_validate({**record, "score": 1})


def test_token_counts_are_summed(shared_world):
    policy = CountingTokens(OraclePolicy(shared_world))
    facts = shared_world.facts("train")[:4]
    result = rollout(policy, lambda: ToolUseEnv(shared_world), facts, mode="in_tool", batch_size=2, progress=False)
    for record in result.records:
        assert record.tokens_generated is not None and record.tokens_generated > len(record.answer)
    assert result.summary.tokens_generated == sum(r.tokens_generated for r in result.records)


def test_resume_skips_finished_facts(shared_world, tmp_path):
    reference = play(shared_world, batch_size=8)
    out = tmp_path / "records.jsonl"
    with pytest.raises(Interrupt):
        play_policy = StopsAfter(OraclePolicy(shared_world), calls=7)
        rollout(
            play_policy,
            lambda: ToolUseEnv(shared_world),
            shared_world.facts("train"),
            mode="in_tool",
            batch_size=8,
            out=out,
            progress=False,
        )
    finished = read_records(out)
    assert 0 < len(finished) < len(reference.records)

    asked = AskedQuestions(OraclePolicy(shared_world))
    resumed = rollout(
        asked,
        lambda: ToolUseEnv(shared_world),
        shared_world.facts("train"),
        mode="in_tool",
        batch_size=8,
        out=out,
        resume=True,
        progress=False,
    )
    assert asked.facts.isdisjoint({(r.person, r.attribute) for r in finished})  # finished facts not played again
    assert len(asked.facts) == len(reference.records) - len(finished)
    assert sorted(resumed.records, key=lambda r: r.fact_id) == sorted(reference.records, key=lambda r: r.fact_id)
    assert sorted(read_records(out), key=lambda r: r.fact_id) == sorted(reference.records, key=lambda r: r.fact_id)


def test_resume_after_half_the_facts(shared_world, tmp_path):
    facts = shared_world.facts("train")
    out = tmp_path / "records.jsonl"
    policy = OraclePolicy(shared_world)
    rollout(policy, lambda: ToolUseEnv(shared_world), facts[: len(facts) // 2], mode="in_tool", out=out, progress=False)
    resumed = rollout(
        policy, lambda: ToolUseEnv(shared_world), facts, mode="in_tool", out=out, resume=True, progress=False
    )
    full = play(shared_world)
    assert resumed.records == full.records
    assert read_records(out) == full.records


def test_resume_drops_a_torn_last_line(shared_world, tmp_path):
    out = tmp_path / "records.jsonl"
    full = play(shared_world, out=out)
    text = out.read_text(encoding="utf-8")
    out.write_text(text[: text.rindex("\n", 0, -1) + 20], encoding="utf-8")  # cut the last record mid-line
    resumed = play(shared_world, out=out, resume=True)
    assert sorted(resumed.records, key=lambda r: r.fact_id) == sorted(full.records, key=lambda r: r.fact_id)
    assert len(out.read_text(encoding="utf-8").splitlines()) == len(full.records)


def test_without_resume_the_file_is_replaced(shared_world, tmp_path):
    out = tmp_path / "records.jsonl"
    play(shared_world, out=out)
    play(shared_world, out=out)
    assert len(read_records(out)) == len(shared_world.facts("train"))


def test_batch_size_does_not_change_records(shared_world):
    n = len(shared_world.facts("train"))
    one = play(shared_world, batch_size=1, keep_conversations=True)
    many = play(shared_world, batch_size=n + 50, keep_conversations=True)
    assert one.records == many.records
    assert one.conversations == many.conversations


def test_keep_conversations_in_fact_order(shared_world):
    result = play(shared_world, batch_size=5, keep_conversations=True)
    assert len(result.conversations) == len(result.records)
    for record, conversation in zip(result.records, result.conversations, strict=True):
        assert dialogs.parse_question(conversation[0]["content"])[0] == record.person
        assert [m["role"] for m in conversation] == ["user", "assistant", "tool", "assistant"]


def test_seed_changes_phrasing_not_results(shared_world):
    a = play(shared_world, seed=0, keep_conversations=True)
    b = play(shared_world, seed=1, keep_conversations=True)
    assert [c[0]["content"] for c in a.conversations] != [c[0]["content"] for c in b.conversations]
    assert [r.correct for r in a.records] == [r.correct for r in b.records]


class WrongCount:
    def generate(self, conversations):
        return ["I don't know."] * (len(conversations) + 1)


def test_wrong_number_of_replies_raises(shared_world):
    with pytest.raises(ValueError, match=r"policy returned 5 replies for 4 conversations"):
        rollout(
            WrongCount(),
            lambda: ToolUseEnv(shared_world),
            shared_world.facts("train")[:4],
            mode="in_tool",
            batch_size=4,
            progress=False,
        )


def test_batch_size_must_be_positive(shared_world):
    with pytest.raises(ValueError, match="batch_size"):
        play(shared_world, batch_size=0)
