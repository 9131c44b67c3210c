"""Byte-level tokenizer with special tokens for the roles and the tool-call markers.

Ids 0-255 are UTF-8 bytes. Above them: one token per role (``<|user|>``, ``<|assistant|>``,
``<|tool|>``), the end-of-turn token ``<|end|>``, and the opening and closing markers of the
tool-call format (```` ```sql ```` / ```` ``` ```` for ``find``, ``<tool_call>`` /
``</tool_call>`` for ``hermes``), so a call costs one token per marker. Decoding writes the
markers back as their text, so the environment's parser reads what the model wrote.

A conversation (OpenAI-format messages) is written as
``<|role|> content <|end|>`` per message; assistant tool calls are rendered with the format's
``render``, tool results are the tool message's content. Only assistant content and its
``<|end|>`` carry loss: the role tokens and everything else are given by the prompt.
"""

from __future__ import annotations

import re
from typing import Any

from itl_env.formats import ToolCall, ToolCallFormat, get_format

ROLES = ("user", "assistant", "tool")
# The literal text of each format's call markers (longest first where one is a prefix of the other).
CALL_MARKERS: dict[str, tuple[str, str]] = {"find": ("```sql", "```"), "hermes": ("<tool_call>", "</tool_call>")}


class ByteTokenizer:
    """The byte-level tokenizer of one tool-call format: UTF-8 bytes, role and end tokens, call markers."""

    def __init__(self, tool_format: str = "find"):
        if tool_format not in CALL_MARKERS:
            raise ValueError(f"unknown tool-call format {tool_format!r}; valid: {', '.join(CALL_MARKERS)}")
        self.tool_format = tool_format
        self.format: ToolCallFormat = get_format(tool_format)
        self.call_open, self.call_close = CALL_MARKERS[tool_format]
        names = [f"<|{role}|>" for role in ROLES] + ["<|end|>"]
        self.role_id = {role: 256 + i for i, role in enumerate(ROLES)}
        self.end_id = 256 + len(ROLES)
        self.call_open_id, self.call_close_id = self.end_id + 1, self.end_id + 2
        self.special_text = {256 + i: name for i, name in enumerate(names)}
        self.special_text |= {self.call_open_id: self.call_open, self.call_close_id: self.call_close}
        self.vocab_size = 256 + len(self.special_text)
        markers = sorted(
            {self.call_open: self.call_open_id, self.call_close: self.call_close_id}.items(), key=lambda kv: -len(kv[0])
        )
        self._marker_id = dict(markers)
        self._marker_re = re.compile("|".join(re.escape(text) for text, _ in markers))

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes of ``text``, with each tool-call marker as its one special token."""
        ids: list[int] = []
        last = 0
        for match in self._marker_re.finditer(text):
            ids.extend(text[last : match.start()].encode("utf-8"))
            ids.append(self._marker_id[match.group()])
            last = match.end()
        ids.extend(text[last:].encode("utf-8"))
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``; special tokens become their text, invalid UTF-8 becomes U+FFFD."""
        parts: list[str] = []
        run = bytearray()
        for i in ids:
            if i < 256:
                run.append(i)
                continue
            parts.append(run.decode("utf-8", errors="replace"))
            run.clear()
            parts.append(self.special_text[i])
        parts.append(run.decode("utf-8", errors="replace"))
        return "".join(parts)

    def message_text(self, message: dict[str, Any]) -> str:
        """What a message says as text: an assistant's tool calls rendered in this tokenizer's format."""
        content = message.get("content") or ""
        calls = message.get("tool_calls") or []
        if message["role"] != "assistant" or not calls:
            return content
        return self.format.render(
            [ToolCall(name=c["function"]["name"], arguments=c["function"]["arguments"]) for c in calls], content
        )

    def encode_conversation(self, messages: list[dict[str, Any]]) -> tuple[list[int], list[bool]]:
        """Token ids of a conversation and, per token, whether it is an assistant token (content + end of turn)."""
        ids: list[int] = []
        assistant: list[bool] = []
        for message in messages:
            role = message["role"]
            if role not in self.role_id:
                raise ValueError(f"unknown role {role!r}; valid: {', '.join(ROLES)}")
            body = self.encode(self.message_text(message)) + [self.end_id]
            ids += [self.role_id[role], *body]
            assistant += [False] + [role == "assistant"] * len(body)
        return ids, assistant

    def encode_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        """A conversation followed by ``<|assistant|>``: what the model continues to write its next message."""
        return self.encode_conversation(messages)[0] + [self.role_id["assistant"]]
