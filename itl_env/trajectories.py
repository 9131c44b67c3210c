"""Training dialogs: the oracle policy's trajectories in ``ToolUseEnv``, as a Hugging Face dataset.

Training and evaluation share the environment, so they cannot disagree on format: in_tool
rows are ask -> call -> tool result -> answer, in_weight rows are ask -> answer, and each row
carries the tools the environment offered (none for in_weight).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from itl_env.env import ToolUseEnv
from itl_env.oracle import Mode, OraclePolicy
from itl_env.rollout import rollout
from itl_env.tasks import Task
from itl_env.world import Fact, World
from tools.registry import ToolRegistry


def oracle_conversations(
    world: World,
    facts: Sequence[Fact | Task],
    mode: Mode,
    *,
    tool_format: str = "hermes",
    registry: ToolRegistry | None = None,
    seed: int = 0,
    variant: int | None = None,
    progress: bool = False,
) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
    """(conversations, tools shown) of the oracle playing every fact (or tool task) once, the tools of
    ``registry`` (default: the fact tools) offered; ``seed`` draws each fact question's phrasing, or ``variant``
    fixes it.
    """
    offer_tools = mode == "in_tool"
    if offer_tools and registry is not None and "lookup" not in registry and any(isinstance(f, Fact) for f in facts):
        raise ValueError(
            f"fact recall in_tool is answered with the lookup tool, which the registry lacks (its tools: "
            f"{', '.join(registry.names)}); add the fact tools to it (itl_env.fact_tools.fact_tools) or drop fact_recall"
        )

    def env_factory() -> ToolUseEnv:
        return ToolUseEnv(world, tool_format=tool_format, registry=registry, offer_tools=offer_tools)

    tasks = [item for item in facts if isinstance(item, Task)]
    result = rollout(
        OraclePolicy(world, mode, tool_format, tasks=tasks),
        env_factory,
        facts,
        mode=mode,
        batch_size=256,
        seed=seed,
        keep_conversations=True,
        progress=progress,
        desc=f"oracle {mode}",
        variant=variant,
    )
    wrong = [r.fact_id for r in result.records if not r.correct]
    if wrong:
        raise RuntimeError(
            f"the oracle answered {len(wrong)} facts wrongly (first: {wrong[0]}); the world is inconsistent"
        )
    tools = env_factory().tools
    return result.conversations or [], tools


def training_row(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> dict[str, Any]:
    """One ``{messages, tools}`` dataset row, with tool-call arguments and the tools as JSON text: Arrow would
    otherwise merge the argument objects of different tools into one struct (every call gaining the others'
    keys as nulls). The chat template writes a JSON-text argument as is; TRL decodes the tools.
    """
    written = []
    for message in messages:
        calls = message.get("tool_calls")
        if calls:
            calls = [
                {**call, "function": {**call["function"], "arguments": _json(call["function"]["arguments"])}}
                for call in calls
            ]
            message = {**message, "tool_calls": calls}
        written.append(message)
    return {"messages": written, "tools": json.dumps(tools) if tools else None}


ROLES = ("system", "user", "assistant", "tool")


def row_problem(row: Any, tool_names: set[str]) -> str | None:
    """Why ``row`` is not a ``training_row`` the trainers can learn from (None if it is one): a list of
    messages with known roles and text content, at least one assistant message, every tool call naming one of
    ``tool_names`` with a JSON object as arguments.
    """
    messages = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list of messages"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            role = message.get("role") if isinstance(message, dict) else type(message).__name__
            return f"message {i}: role {role!r} is not one of {', '.join(ROLES)}"
        if message.get("content") is not None and not isinstance(message["content"], str):
            return f"message {i}: content must be text"
        for call in message.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, dict) else None
            name = function.get("name") if isinstance(function, dict) else None
            if name not in tool_names:
                return f"message {i}: a call of {name!r}, which is not a tool of this run ({', '.join(sorted(tool_names))})"
            try:
                call_arguments(function.get("arguments"))
            except ValueError as error:
                return f"message {i}: the arguments of {name} {error}"
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant message: nothing to learn"
    return None


def call_arguments(arguments: Any) -> dict[str, Any]:
    """A tool call's arguments as a mapping: chat messages carry them as a JSON text (OpenAI's format) or as an
    object (what chat templates render); ValueError when they are neither an object nor its JSON.
    """
    try:
        decoded = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        raise ValueError(f"are not JSON: {str(arguments)[:80]!r}") from None
    if not isinstance(decoded, dict):
        raise ValueError("must be a JSON object")
    return decoded


def _json(arguments: Any) -> str:
    # exactly HermesFormat's json.dumps, so the template's text equals what the environment parses
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def sft_dataset(
    world: World,
    facts: Sequence[Fact],
    mode: Mode,
    *,
    epochs: int = 1,
    tool_format: str = "hermes",
    seed: int = 0,
    registry: ToolRegistry | None = None,
    tasks: Sequence[Task] = (),
) -> Any:
    """A ``datasets.Dataset`` of ``{"messages", "tools"}`` rows: every fact ``epochs`` times, phrased anew each
    time, and every tool task once (the caller draws as many as it wants, in train phrasings).
    """
    from datasets import Dataset

    rows = []
    for epoch in range(epochs if facts else 0):
        conversations, tools = oracle_conversations(
            world, facts, mode, tool_format=tool_format, registry=registry, seed=seed + epoch
        )
        rows += [training_row(c, tools) for c in conversations]
    if tasks:
        conversations, tools = oracle_conversations(world, tasks, mode, tool_format=tool_format, registry=registry)
        rows += [training_row(c, tools) for c in conversations]
    return Dataset.from_list(rows)
