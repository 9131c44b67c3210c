"""OpenAI-compatible backend: any ``/v1/chat/completions`` server with ``tools`` (e.g. ``vllm serve``).

The environment's conversation is sent as API messages (``api_messages``): assistant tool calls
keep their ids with the arguments as JSON text, each ``tool`` message answers its
``tool_call_id``, and the environment's error notes (``tool`` messages named ``error`` that answer
no call: unreadable tool-call text, an over-long message) become user messages after the turn's
tool messages. The server's reply, text plus structured ``tool_calls``, is written back as hermes
text (``reply_as_text``) so the environment parses and executes the calls itself.

A batch is one request per conversation, sent concurrently so the server can batch them.

    vllm serve runs/sft/model --enable-auto-tool-choice --tool-call-parser hermes --generation-config vllm
    python -m evals.recall --backend openai --base-url http://127.0.0.1:8000/v1 --world data/world.db
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from itl_env.formats import HermesFormat, ToolCall
from itl_env.tool_choice import AUTO, NONE, openai_tool_choice

logger = logging.getLogger(__name__)

ERROR_TOOL = "error"  # the name ToolUseEnv gives its notes that answer no tool call


def openai_tools(schemas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The registry's schemas as OpenAI ``tools``: the ``return`` entry is a chat-template extension, left out."""
    keys = ("name", "description", "parameters")
    return [
        {"type": "function", "function": {k: s["function"][k] for k in keys if k in s["function"]}} for s in schemas
    ]


def decoded_arguments(raw: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """A tool call's ``arguments`` (JSON text on the wire) as a dict, or None when it is not a JSON object."""
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw) if raw and raw.strip() else {}
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def api_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An environment conversation (OpenAI format, arguments as dicts) as chat-completions request messages."""
    out: list[dict[str, Any]] = []
    notes: list[str] = []  # error notes of the current turn, sent after its tool messages

    def flush() -> None:
        if notes:
            out.append({"role": "user", "content": "\n".join(notes)})
            notes.clear()

    for message in messages:
        role = message["role"]
        if role == "tool" and "tool_call_id" not in message:
            if message.get("name") != ERROR_TOOL:
                raise ValueError(f"a tool message must answer a tool_call_id: {message!r}")
            notes.append(message.get("content") or "")
            continue
        if role == "tool":
            out.append({"role": "tool", "tool_call_id": message["tool_call_id"], "content": message["content"]})
            continue
        flush()
        if role == "assistant":
            out.append(_assistant(message))
        elif role in ("user", "system"):
            out.append({"role": role, "content": message.get("content") or ""})
        else:
            raise ValueError(f"unknown message role {role!r}")
    flush()
    return out


def _assistant(message: dict[str, Any]) -> dict[str, Any]:
    converted: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
    calls = message.get("tool_calls") or []
    if calls:
        converted["tool_calls"] = [
            {
                "id": call["id"],
                "type": "function",
                "function": {
                    "name": call["function"]["name"],
                    # json.dumps as transformers' tojson writes it: the server renders the same prompt
                    "arguments": call["function"]["arguments"]
                    if isinstance(call["function"]["arguments"], str)
                    else json.dumps(call["function"]["arguments"], ensure_ascii=False),
                },
            }
            for call in calls
        ]
    return converted


def reply_as_text(content: str | None, calls: list[Any]) -> str:
    """A reply's text and structured tool calls as the hermes text the environment reads.

    ``calls`` are the response's ``tool_calls`` (objects with ``.function.name`` and
    ``.function.arguments``, or the same as dicts). A call whose arguments are not a JSON object is
    written as it came, so the environment records it as a parse error and answers with the reason.
    """
    readable, broken = [], []
    for call in calls:
        function = call["function"] if isinstance(call, dict) else call.function
        name = function["name"] if isinstance(function, dict) else function.name
        raw = function["arguments"] if isinstance(function, dict) else function.arguments
        arguments = decoded_arguments(raw)
        if arguments is None:
            text = json.dumps({"name": name, "arguments": raw}, ensure_ascii=False)
            broken.append(f"{HermesFormat.open_tag}{text}{HermesFormat.close_tag}")
        else:
            readable.append(ToolCall(name=name, arguments=arguments))
    content = (content or "").strip()
    text = HermesFormat().render(readable, content) if readable else content
    return "\n".join(part for part in (text, *broken) if part)


class OpenAIPolicy:
    """Greedy replies from an OpenAI-compatible server; ``model`` defaults to the server's first model."""

    def __init__(
        self,
        base_url: str,
        tools: list[dict[str, Any]] | None = None,
        *,
        model: str | None = None,
        api_key: str | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        concurrency: int = 64,
        timeout: float = 120.0,
        extra_body: dict[str, Any] | None = None,
    ):
        import openai

        if max_new_tokens < 1 or concurrency < 1:
            raise ValueError("max_new_tokens and concurrency must be at least 1")
        self.client = openai.OpenAI(
            base_url=base_url,
            api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",  # local servers accept any key
            timeout=timeout,
            max_retries=2,
        )
        self.model = model or self.client.models.list().data[0].id
        self.tools = openai_tools(tools) if tools else None
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.extra_body = extra_body
        self.last_token_counts: list[int] = []
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="openai-policy")

    def generate(
        self, conversations: list[list[dict[str, Any]]], tool_choice: Sequence[str] | None = None
    ) -> list[str]:
        """One reply per conversation; ``tool_choice`` (one value per conversation) goes to the server as is."""
        choices = list(tool_choice) if tool_choice is not None else [AUTO] * len(conversations)
        replies = list(self._pool.map(self._complete, conversations, choices))
        self.last_token_counts = [count for _, count in replies]
        return [text for text, _ in replies]

    def _complete(self, messages: list[dict[str, Any]], choice: str = AUTO) -> tuple[str, int]:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": api_messages(messages),
            "temperature": self.temperature,
            "max_tokens": self.max_new_tokens,
        }
        if self.tools:
            request["tools"] = self.tools
            if choice != AUTO:
                request["tool_choice"] = openai_tool_choice(choice)
        elif choice not in (AUTO, NONE):
            raise ValueError("tool_choice other than auto/none needs tools, and this policy offers none")
        if self.extra_body:
            request["extra_body"] = self.extra_body
        response = self.client.chat.completions.create(**request)
        message = response.choices[0].message
        calls = [c for c in message.tool_calls or [] if c.type == "function"]
        tokens = response.usage.completion_tokens if response.usage is not None else -1
        return reply_as_text(message.content, calls), tokens

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.client.close()

    def __enter__(self) -> OpenAIPolicy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
