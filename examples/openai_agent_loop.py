"""Run ``ToolUseEnv`` episodes against any OpenAI-compatible server with the ``openai`` client.

Usage:
    vllm serve MODEL --enable-auto-tool-choice --tool-call-parser hermes      # or any OpenAI-compatible server
    python examples/openai_agent_loop.py --world data/world.db --base-url http://127.0.0.1:8000/v1 --episodes 20
    python -m examples.openai_agent_loop --world data/world.db --model my-model --split unseen

The loop is the usual agent loop: send the conversation with ``tools=`` (the registry's tool
schemas), run the tool calls that come back, answer each with a ``tool`` message carrying its
``tool_call_id``, and stop at the first reply without tool calls. The environment stays the
referee: each reply is stepped through ``env.step`` (structured tool calls are written back
in the environment's own text format), so the environment executes the tools through its
registry, enforces its turn limit and scores the final answer exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from itl_env.env import ToolUseEnv
from itl_env.formats import HermesFormat, ToolCall
from itl_env.world import SPLITS


class LoopResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    episodes: int
    recall: float
    tool_call_rate: float
    truncation_rate: float


def openai_tools(schemas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The registry's schemas as OpenAI ``tools``: the ``return`` entry is a chat-template extension, left out."""
    keys = ("name", "description", "parameters")
    return [
        {"type": "function", "function": {k: s["function"][k] for k in keys if k in s["function"]}} for s in schemas
    ]


def decoded_arguments(raw: str) -> dict[str, Any] | None:
    """A tool call's ``arguments`` (JSON text on the wire) as a dict, or None when it is not a JSON object."""
    try:
        value = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def as_env_action(content: str, calls: list[Any], env: ToolUseEnv) -> str:
    """The reply as the text the environment reads: structured calls rendered in its tool-call format.

    A call whose arguments are not a JSON object is written as it came, so the environment
    records it as a parse error and answers with the reason.
    """
    readable, broken = [], []
    for call in calls:
        arguments = decoded_arguments(call.function.arguments)
        if arguments is None:
            raw = json.dumps({"name": call.function.name, "arguments": call.function.arguments})
            broken.append(f"{HermesFormat.open_tag}{raw}{HermesFormat.close_tag}")
        else:
            readable.append(ToolCall(name=call.function.name, arguments=arguments))
    text = env.format.render(readable, content) if readable else content
    return "\n".join(part for part in (text, *broken) if part)


def feedback(calls: list[Any], replies: list[dict[str, Any]], observation: str) -> list[dict[str, Any]]:
    """The environment's replies to one turn as OpenAI messages: a ``tool`` message per call, the rest as user text.

    The environment answers the calls it read (replies with a ``tool_call_id``) in text order,
    after the errors (replies without). The structured calls were written after the reply's
    content, so theirs are the last replies of each kind; anything else (tool-call text that the
    server left in the content) belongs to no ``tool_call_id`` and goes back as a user message.
    """
    results = [r for r in replies if "tool_call_id" in r]
    errors = [r for r in replies if "tool_call_id" not in r]
    readable = [decoded_arguments(c.function.arguments) is not None for c in calls]
    other_results, results = _split_tail(results, sum(readable))
    other_errors, errors = _split_tail(errors, len(calls) - sum(readable))
    messages = []
    for call, ok in zip(calls, readable, strict=True):
        source = results if ok else errors
        text = source.pop(0)["content"] if source else observation  # e.g. an over-long message: nothing was run
        messages.append({"role": "tool", "tool_call_id": call.id, "content": text})
    leftover = other_results + other_errors + results + errors
    if leftover:
        messages.append({"role": "user", "content": "\n".join(r["content"] for r in leftover)})
    return messages


def _split_tail(items: list[Any], n: int) -> tuple[list[Any], list[Any]]:
    cut = max(len(items) - n, 0)
    return items[:cut], items[cut:]


def run_episode(client: Any, model: str, env: ToolUseEnv, seed: int, temperature: float = 0.0) -> dict[str, Any]:
    """One episode; returns the environment's final ``info`` with ``reward`` and ``truncated`` added."""
    if env.format.name != HermesFormat.name:
        raise ValueError(f"the loop writes tool calls back as hermes text; the env reads {env.format.name!r}")
    question, info = env.reset(seed=seed)
    messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
    tools = openai_tools(env.tools)
    while True:
        request: dict[str, Any] = {"model": model, "messages": messages, "temperature": temperature}
        if tools:
            request["tools"] = tools
        reply = client.chat.completions.create(**request).choices[0].message
        calls = [c for c in reply.tool_calls or [] if c.type == "function"]
        before = len(info["messages"])
        observation, reward, terminated, truncated, info = env.step(as_env_action(reply.content or "", calls, env))
        if terminated or truncated:
            return {**info, "reward": reward, "truncated": truncated}
        messages.append(reply.model_dump(include={"role", "content", "tool_calls"}, exclude_none=True))
        messages.extend(feedback(calls, info["messages"][before + 1 :], observation))


def main(
    world: str | Path | None = None,
    *,
    base_url: str = "http://127.0.0.1:8000/v1",
    api_key: str | None = None,
    model: str | None = None,
    episodes: int = 20,
    split: str = "train",
    max_turns: int = 4,
    temperature: float = 0.0,
    seed: int = 0,
    timeout: float = 60.0,
) -> LoopResult:
    """Play ``episodes`` episodes of ``split`` against the server at ``base_url``; ``model`` defaults to its first."""
    import openai

    if episodes < 1:
        raise ValueError("episodes must be at least 1")
    client = openai.OpenAI(
        base_url=base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY", timeout=timeout
    )
    model = model or client.models.list().data[0].id
    env = ToolUseEnv(world, split=split, max_turns=max_turns, tool_format="hermes")
    try:
        infos = [run_episode(client, model, env, seed + i, temperature) for i in range(episodes)]
    finally:
        env.world.close()
        client.close()
    return LoopResult(
        episodes=episodes,
        recall=sum(i["reward"] for i in infos) / episodes,
        tool_call_rate=sum(bool(i["tool_calls"]) for i in infos) / episodes,
        truncation_rate=sum(i["truncated"] for i in infos) / episodes,
    )


def parse(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python examples/openai_agent_loop.py",
        description="Play ToolUseEnv episodes against an OpenAI-compatible /v1/chat/completions server; print recall.",
    )
    parser.add_argument("--world", help="world SQLite path or SQLAlchemy URL (default: a small generated world)")
    parser.add_argument(
        "--base-url", default="http://127.0.0.1:8000/v1", help="the server's /v1 URL (default: %(default)s)"
    )
    parser.add_argument("--api-key", help="API key (default: $OPENAI_API_KEY, else 'EMPTY' as local servers accept)")
    parser.add_argument("--model", help="model name to request (default: the first of the server's /v1/models)")
    parser.add_argument("--episodes", type=int, default=20, help="episodes to play (default: %(default)s)")
    parser.add_argument("--split", choices=SPLITS, default="train", help="people to ask about (default: %(default)s)")
    parser.add_argument(
        "--max-turns", type=int, default=4, help="assistant messages per episode (default: %(default)s)"
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default: %(default)s)")
    parser.add_argument(
        "--seed", type=int, default=0, help="episode i is reset with seed SEED+i (default: %(default)s)"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error("--episodes must be at least 1")
    return vars(args)


if __name__ == "__main__":
    import openai

    options = parse()
    try:
        result = main(**options)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"openai_agent_loop: {err}")
    except openai.APIError as err:  # unreachable server, unknown model, rejected request...
        sys.exit(f"openai_agent_loop: {options['base_url']}: {type(err).__name__}: {err}")
    print(result.model_dump_json())
