"""The openai backend's conversions on real environment conversations, and its loop over real HTTP.

The end-to-end test against ``vllm serve`` is in ``test_vllm_backend.py``; here the server is the
project's ``ChatCompletionsStub`` answering with the oracle (strict about tool_call_ids), which runs
in the main suite without vLLM.
"""

from __future__ import annotations

import json

import pytest
from openai_stub_server import ChatCompletionsStub  # tests/ is on sys.path (pytest rootdir conftest)

from evals.backends.openai import OpenAIPolicy, api_messages, openai_tools, reply_as_text
from itl_env.env import ToolUseEnv
from itl_env.formats import HermesFormat, ToolCall
from itl_env.oracle import OraclePolicy
from itl_env.rollout import rollout


def played(world, *actions: str) -> list[dict]:
    """The environment's conversation after stepping ``actions`` on the first training fact."""
    env = ToolUseEnv(world)
    env.reset(seed=0, options={"fact": world.facts("train")[0]})
    for action in actions:
        env.step(action)
    return env.messages


def lookup(world, attribute: str = "birth_place") -> str:
    return HermesFormat().render(
        [ToolCall(name="lookup", arguments={"name": world.facts("train")[0].person, "attribute": attribute})]
    )


def test_tool_calls_keep_their_ids_and_arguments_become_json_text(shared_world):
    messages = api_messages(played(shared_world, lookup(shared_world)))
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    (call,) = messages[1]["tool_calls"]
    assert call["id"] == messages[2]["tool_call_id"]
    assert json.loads(call["function"]["arguments"]) == {
        "name": shared_world.facts("train")[0].person,
        "attribute": "birth_place",
    }
    person = shared_world.facts("train")[0].person
    assert messages[2]["content"] == shared_world.by_name[person]["birth_place"]


def test_error_notes_become_a_user_message_after_the_tool_messages(shared_world):
    text = "<tool_call>{not json}</tool_call>\n" + lookup(shared_world)
    env_messages = played(shared_world, text)
    assert [m["role"] for m in env_messages] == ["user", "assistant", "tool", "tool"]
    assert env_messages[2]["name"] == "error" and "tool_call_id" not in env_messages[2]
    messages = api_messages(env_messages)
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "user"]
    assert "could not read tool call" in messages[3]["content"]


def test_a_turn_with_only_an_error_note(shared_world):
    messages = api_messages(played(shared_world, "<tool_call>oops"))
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert "tool_calls" not in messages[1]


def test_a_tool_message_without_id_that_is_no_error_note_is_refused():
    with pytest.raises(ValueError, match="tool_call_id"):
        api_messages([{"role": "user", "content": "hi"}, {"role": "tool", "name": "lookup", "content": "x"}])


def test_reply_calls_become_the_hermes_text_the_env_reads(shared_world):
    calls = [{"function": {"name": "lookup", "arguments": '{"name": "Ann Lee", "attribute": "occupation"}'}}]
    text = reply_as_text("Let me check.", calls)
    parsed = HermesFormat().parse(text)
    assert parsed.content == "Let me check."
    assert parsed.calls == [ToolCall(name="lookup", arguments={"name": "Ann Lee", "attribute": "occupation"})]
    assert not parsed.errors


def test_unreadable_reply_arguments_become_a_parse_error(shared_world):
    text = reply_as_text(None, [{"function": {"name": "lookup", "arguments": "[1, 2"}}])
    parsed = HermesFormat().parse(text)
    assert not parsed.calls and len(parsed.errors) == 1


def test_the_server_renders_the_prompt_the_hf_backend_renders(shared_world):
    """String arguments are written as transformers' tojson writes dicts: same prompt on both paths."""
    from evals.default_model import byte_tokenizer

    tokenizer = byte_tokenizer()
    env = ToolUseEnv(shared_world)
    conversation = played(shared_world, lookup(shared_world, "birth_date"))
    direct = tokenizer.apply_chat_template(conversation, tools=env.tools, tokenize=False, add_generation_prompt=True)
    served = tokenizer.apply_chat_template(
        api_messages(conversation), tools=openai_tools(env.tools), tokenize=False, add_generation_prompt=True
    )
    assert served == direct


def test_oracle_behind_a_server_recalls_everything(shared_world):
    facts = shared_world.facts("unseen")[:12]
    with ChatCompletionsStub(OraclePolicy(shared_world)) as server:
        with OpenAIPolicy(server.base_url, ToolUseEnv(shared_world).tools, concurrency=4) as policy:
            assert policy.model == "oracle"
            result = rollout(policy, lambda: ToolUseEnv(shared_world), facts, mode="in_tool", progress=False)
    direct = rollout(
        OraclePolicy(shared_world), lambda: ToolUseEnv(shared_world), facts, mode="in_tool", progress=False
    )
    assert result.summary.recall == 1.0 and result.summary.mean_turns == 2.0
    assert result.records == direct.records
    assert all("tools" in body and body["temperature"] == 0.0 for body in server.requests)


class BadCallThenOracle:
    """Writes an unreadable tool call, then a good one next to a bad one, then plays the oracle."""

    def __init__(self, world):
        self.oracle = OraclePolicy(world)

    def generate(self, conversations):
        replies = []
        for messages in conversations:
            turn = sum(m["role"] == "assistant" for m in messages)
            oracle = self.oracle.reply(messages)
            replies.append(
                {0: "<tool_call>{oops}</tool_call>", 1: oracle + "\n<tool_call>[]</tool_call>"}.get(turn, oracle)
            )
        return replies


def test_error_notes_reach_the_server_as_accepted_messages(shared_world):
    facts = shared_world.facts("train")[:3]
    with ChatCompletionsStub(BadCallThenOracle(shared_world)) as server:
        with OpenAIPolicy(server.base_url, ToolUseEnv(shared_world).tools, concurrency=3) as policy:
            result = rollout(
                policy, lambda: ToolUseEnv(shared_world, max_turns=4), facts, mode="in_tool", progress=False
            )
    assert all(r.parse_error is not None for r in result.records)
    last = server.requests[-1]["messages"]
    assert [m["role"] for m in last][:2] == ["user", "assistant"]
    assert any(m["role"] == "user" and "could not read tool call" in m["content"] for m in last[1:])
