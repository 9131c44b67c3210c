"""tool_choice (auto, required, a tool's name, none) on the hf backend, the rollout and evals.recall; the openai
backend's request. (vLLM: tests/test_vllm_backend.py.)"""

from __future__ import annotations

import pytest

from evals.backends.hf import HFPolicy
from itl_env.formats import get_format
from itl_env.people_tools import registry as people_registry
from itl_env.tool_choice import call_frame, call_schema, check, for_turn


@pytest.fixture(scope="module")
def default_model():
    from evals.models import load

    return load("default", for_training=False)


def questions(world, n: int = 4) -> list[list[dict]]:
    return [[{"role": "user", "content": f"How old was {row['name']} on 1/1/2000?"}] for row in world.rows[:n]]


def forced_calls(policy, world, choice: str):
    replies = policy.generate(questions(world), tool_choice=[choice] * 4)
    return [get_format("hermes").parse(reply) for reply in replies]


def test_a_forced_call_is_valid_for_every_people_tool(default_model, shared_world):
    """An untrained model, forced: every reply is exactly one call of the chosen tool with arguments the tool
    accepts (its own errors, e.g. no such person, are fine; invalid arguments are not)."""
    model, tokenizer = default_model
    registry = people_registry(shared_world)
    policy = HFPolicy(model, tokenizer, registry.schemas(), max_new_tokens=32)
    for name in [*registry.names, "required"]:
        for turn in forced_calls(policy, shared_world, name):
            assert turn.errors == [] and len(turn.calls) == 1, turn
            call = turn.calls[0]
            assert name == "required" or call.name == name
            result = registry.call(call.name, call.arguments)
            assert "invalid arguments" not in result.content and "must be" not in result.content, result


def test_a_forced_call_of_a_tool_the_project_does_not_ship(default_model, shared_world):
    from test_new_tool import registry

    model, tokenizer = default_model
    tools = registry(shared_world)
    policy = HFPolicy(model, tokenizer, tools.schemas(), max_new_tokens=16)
    for turn in forced_calls(policy, shared_world, "initials"):
        (call,) = turn.calls
        assert call.name == "initials" and set(call.arguments) == {"name"}
        assert "invalid arguments" not in tools.call(call.name, call.arguments).content


def call_happy(model, tokenizer):
    """``model`` with its output layer tipped towards the call's opening token: under auto it opens a call."""
    import torch

    opening = tokenizer("<tool_call>", add_special_tokens=False)["input_ids"][0]
    tipped = type(model)(model.config)
    tipped.load_state_dict(model.state_dict())
    with torch.no_grad():
        tipped.lm_head.weight[opening] += 5 * tipped.lm_head.weight.abs().max()
    return tipped


def test_none_never_calls_where_auto_does(default_model, shared_world):
    model, tokenizer = default_model
    tools = people_registry(shared_world).schemas()
    policy = HFPolicy(call_happy(model, tokenizer), tokenizer, tools, max_new_tokens=16)
    auto = [get_format("hermes").parse(r) for r in policy.generate(questions(shared_world))]
    none = [get_format("hermes").parse(r) for r in policy.generate(questions(shared_world), tool_choice=["none"] * 4)]
    assert all(t.calls or t.errors for t in auto)  # it opens a call on its own
    assert not any(t.calls or t.errors for t in none) and all("<tool_call>" not in t.content for t in none)


def test_mixed_choices_in_one_batch_keep_their_order(default_model, shared_world):
    model, tokenizer = default_model
    policy = HFPolicy(model, tokenizer, people_registry(shared_world).schemas(), max_new_tokens=32)
    replies = policy.generate(questions(shared_world), tool_choice=["age_on", "auto", "count_people", "none"])
    parsed = [get_format("hermes").parse(r) for r in replies]
    assert [t.calls[0].name for t in (parsed[0], parsed[2])] == ["age_on", "count_people"]
    assert not parsed[3].calls and len(policy.last_token_counts) == 4


def test_the_frame_and_schema_come_from_the_template_and_the_tool(default_model, shared_world):
    _, tokenizer = default_model
    tools = people_registry(shared_world).schemas()
    assert call_frame(tokenizer, tools) == ("<tool_call>\n", "\n</tool_call>")
    schema = call_schema(tools, "age_on")
    assert schema["properties"]["name"] == {"const": "age_on"}
    assert schema["properties"]["arguments"]["additionalProperties"] is False
    assert len(call_schema(tools, "required")["anyOf"]) == len(tools)
    with pytest.raises(ValueError, match="names no offered tool"):
        call_schema(tools, "rm_rf")


def test_choices_are_checked_and_the_last_repeats():
    assert check(["required", "auto"], ["lookup"]) == ["required", "auto"]
    assert [for_turn(["required", "auto"], t) for t in range(3)] == ["required", "auto", "auto"]
    with pytest.raises(ValueError, match="not one of auto, required, none, lookup"):
        check(["sometimes"], ["lookup"])
    with pytest.raises(ValueError, match="needs tools"):
        check(["required"], [])


def test_recall_forces_the_first_turn_and_frees_the_next(shared_world, tmp_path):
    """evals.recall --tool_choice required auto: the untrained default model calls on turn 1 of every episode."""
    from evals.recall import RecallConfig, main
    from itl_env.rollout import read_records

    main(RecallConfig(world=shared_world.target, limit=6, out=str(tmp_path), tool_choice=["required", "auto"],
                      max_new_tokens=24, progress=False))  # fmt: skip
    records = read_records(tmp_path / "records-train.jsonl")
    assert len(records) == 6 and all(r.tool_called and r.tool_name == "lookup" for r in records)


def test_recall_refuses_an_unknown_choice(shared_world, tmp_path):
    from evals.recall import cli

    with pytest.raises(SystemExit) as raised:
        cli(["--world", shared_world.target, "--limit", "2", "--out", str(tmp_path), "--tool_choice", "rm_rf"])
    assert "tool_choice 'rm_rf' is not one of" in str(raised.value.code)


def test_the_openai_backend_sends_tool_choice(shared_world):
    from openai_stub_server import ChatCompletionsStub

    from evals.backends.openai import OpenAIPolicy
    from itl_env.fact_tools import fact_registry
    from itl_env.oracle import OraclePolicy

    tools = fact_registry(shared_world).schemas()
    with ChatCompletionsStub(OraclePolicy(shared_world, "in_tool")) as server:
        policy = OpenAIPolicy(server.base_url, tools, model="oracle")
        try:
            policy.generate(questions(shared_world, 3), tool_choice=["required", "lookup", "auto"])
        finally:
            policy.close()
        sent = sorted((r.get("tool_choice") is None, str(r.get("tool_choice"))) for r in server.requests)
    assert sent == [
        (False, "required"),
        (False, str({"type": "function", "function": {"name": "lookup"}})),
        (True, "None"),
    ]
