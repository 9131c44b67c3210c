"""The "use the environment elsewhere" recipes: ``examples/gymnasium_loop.py`` and ``examples/openai_agent_loop.py``.

The OpenAI recipe runs with the real ``openai`` client over real HTTP against
``openai_stub_server.ChatCompletionsStub``, a stand-in for ``vllm serve`` that answers with the
oracle policy (the real vLLM server is tested separately).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from openai_stub_server import ChatCompletionsStub  # tests/ is on sys.path (pytest rootdir conftest)

from itl_env import dialogs
from itl_env.env import ToolUseEnv
from itl_env.formats import HermesFormat, ToolCall
from itl_env.oracle import OraclePolicy
from itl_env.world import World

REPO = Path(__file__).resolve().parents[1]


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` by path (examples/ is a folder of scripts, not an installed package)."""
    spec = importlib.util.spec_from_file_location(f"examples_{name}", REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gymnasium_loop = load_example("gymnasium_loop")


class SaysUnknown:
    """A policy that never calls a tool and never knows: the loop must score it 0."""

    def generate(self, conversations: list[list[dict[str, Any]]]) -> list[str]:
        return [dialogs.UNKNOWN_ANSWER for _ in conversations]


class BrokenCallFirst:
    """Writes an unreadable tool call on its first turn, then plays the oracle."""

    def __init__(self, world: World):
        self.oracle = OraclePolicy(world)

    def generate(self, conversations: list[list[dict[str, Any]]]) -> list[str]:
        return [
            '<tool_call>{"name": "lookup", "arguments": </tool_call>'
            if not any(m["role"] == "assistant" for m in messages)
            else self.oracle.reply(messages)
            for messages in conversations
        ]


# --- Gymnasium ---------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "unseen"])
def test_gymnasium_loop_with_the_oracle_recalls_every_fact(shared_world: World, split: str) -> None:
    result = gymnasium_loop.main(shared_world.url, episodes=12, split=split)
    assert (result.episodes, result.recall, result.tool_call_rate, result.truncation_rate) == (12, 1.0, 1.0, 0.0)


def test_gymnasium_loop_scores_any_policy(shared_world: World) -> None:
    with warnings.catch_warnings(record=True) as caught:  # its first step ends the episode: Gymnasium checks that one
        warnings.simplefilter("always")
        result = gymnasium_loop.main(shared_world.url, policy=SaysUnknown(), episodes=6)
    assert (result.recall, result.tool_call_rate) == (0.0, 0.0)
    assert not [w for w in caught if "observation space" in str(w.message)]


def test_gymnasium_loop_runs_as_a_script(shared_world: World) -> None:
    done = subprocess.run(
        [sys.executable, "examples/gymnasium_loop.py", "--world", shared_world.url, "--episodes", "4"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["recall"] == 1.0


# --- OpenAI-compatible server --------------------------------------------------------------------

openai_agent_loop = load_example("openai_agent_loop")  # imports openai only inside main()
needs_openai = pytest.mark.skipif(importlib.util.find_spec("openai") is None, reason="needs the openai client")


def function_call(call_id: str, name: str, arguments: str) -> Any:
    """A tool call as the openai client parses it from a response."""
    from openai.types.chat import ChatCompletionMessageFunctionToolCall

    return ChatCompletionMessageFunctionToolCall(
        id=call_id, type="function", function={"name": name, "arguments": arguments}
    )


@needs_openai
def test_openai_loop_with_the_oracle_server_recalls_every_fact(shared_world: World) -> None:
    with ChatCompletionsStub(OraclePolicy(shared_world)) as server:
        result = openai_agent_loop.main(shared_world.url, base_url=server.base_url, api_key="test", episodes=8)
        requests = list(server.requests)
    assert (result.episodes, result.recall, result.tool_call_rate, result.truncation_rate) == (8, 1.0, 1.0, 0.0)
    assert len(requests) == 16  # ask -> tool call, tool result -> answer
    registry_schemas = ToolUseEnv(shared_world).tools
    assert [t["function"]["parameters"] for t in requests[0]["tools"]] == [
        s["function"]["parameters"] for s in registry_schemas
    ]
    assert requests[0]["model"] == "oracle"  # taken from the server's /v1/models
    second = requests[1]["messages"]
    assert [m["role"] for m in second] == ["user", "assistant", "tool"]
    assert second[2]["tool_call_id"] == second[1]["tool_calls"][0]["id"]


@needs_openai
def test_openai_loop_recovers_from_a_tool_call_the_server_could_not_parse(shared_world: World) -> None:
    import openai

    env = ToolUseEnv(shared_world, max_turns=4)
    with ChatCompletionsStub(BrokenCallFirst(shared_world)) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="test")
        info = openai_agent_loop.run_episode(client, "oracle", env, seed=3)
        client.close()
        last_request = server.requests[-1]["messages"]
    assert (info["reward"], info["turn"], info["truncated"]) == (1.0, 3, False)
    assert info["parse_errors"] and "not valid JSON" in info["parse_errors"][0]
    assert [m["role"] for m in last_request] == ["user", "assistant", "user", "assistant", "tool"]
    assert "could not read tool call" in last_request[2]["content"]


@needs_openai
def test_openai_loop_answers_a_call_with_broken_arguments_by_its_id(shared_world: World) -> None:
    env = ToolUseEnv(shared_world)
    fact = shared_world.facts("train")[0]
    env.reset(seed=0, options={"fact": fact})
    good_arguments = json.dumps({"name": fact.person, "attribute": fact.attribute.value})
    calls = [function_call("call_bad", "lookup", '{"name": '), function_call("call_good", "lookup", good_arguments)]
    before = len(env.messages)
    observation, _, terminated, _, info = env.step(openai_agent_loop.as_env_action("", calls, env))
    messages = openai_agent_loop.feedback(calls, info["messages"][before + 1 :], observation)
    assert not terminated
    assert [(m["role"], m.get("tool_call_id")) for m in messages] == [("tool", "call_bad"), ("tool", "call_good")]
    assert "arguments must be a JSON object" in messages[0]["content"]
    assert messages[1]["content"] == fact.value
    assert info["tool_calls"] == [{"name": "lookup", "arguments": json.loads(good_arguments)}]


@needs_openai
def test_openai_loop_keeps_tool_call_text_left_in_the_content_apart(shared_world: World) -> None:
    """A server that left a readable call in ``content`` next to a structured one: each reply goes to its owner."""
    env = ToolUseEnv(shared_world)
    fact, other = shared_world.facts("train")[0], shared_world.facts("train")[5]
    env.reset(seed=0, options={"fact": fact})
    stray = HermesFormat().render(
        [ToolCall(name="lookup", arguments={"name": other.person, "attribute": "occupation"})]
    )
    call = function_call("call_1", "lookup", json.dumps({"name": fact.person, "attribute": fact.attribute.value}))
    before = len(env.messages)
    observation, _, _, _, info = env.step(openai_agent_loop.as_env_action(stray, [call], env))
    messages = openai_agent_loop.feedback([call], info["messages"][before + 1 :], observation)
    assert messages[0] == {"role": "tool", "tool_call_id": "call_1", "content": fact.value}
    assert messages[1]["role"] == "user" and messages[1]["content"] == shared_world.by_name[other.person]["occupation"]


@needs_openai
def test_openai_loop_runs_as_a_script(shared_world: World) -> None:
    with ChatCompletionsStub(OraclePolicy(shared_world)) as server:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "examples.openai_agent_loop",
                "--world",
                shared_world.url,
                "--base-url",
                server.base_url,
                "--episodes",
                "3",
                "--split",
                "unseen",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"episodes": 3, "recall": 1.0, "tool_call_rate": 1.0, "truncation_rate": 0.0}


@needs_openai
def test_stub_server_rejects_a_tool_message_that_answers_no_call(shared_world: World) -> None:
    """The stand-in is strict, so the loop tests above would catch a malformed conversation."""
    import openai

    with ChatCompletionsStub(OraclePolicy(shared_world)) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="answers no open tool call"):
            client.chat.completions.create(
                model="oracle",
                messages=[
                    {"role": "user", "content": "When was Nobody born?"},
                    {"role": "tool", "tool_call_id": "call_x", "content": "1/1/1970"},
                ],
            )
        client.close()
