"""How a tool call is written as text and parsed back.

Each named format has ``render(calls, content)`` and ``parse(text)``. Parsing never raises on
model text: it returns the calls it could read and an error for each one it could not.

- ``hermes`` (default): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, the format
  of Qwen, SmolLM3 and most open tool-calling models.
- ``find``: the paper's ```` ```sql\\nFIND birth_place FOR Kyler Ellison\\n``` ````, which can
  only express ``lookup`` calls.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from tools.text import valid_text, valid_value


# Plain dataclasses, not pydantic models: a rollout builds two per tool call, and their values are checked where
# they are made (the parsers below; the registry validates the arguments against the tool's schema).
@dataclass(slots=True, kw_only=True)
class ToolCall:
    """One call of a named tool with its arguments, as every format writes and parses it."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)

    def as_message_call(self, call_id: str) -> dict[str, Any]:
        """The OpenAI ``tool_calls`` entry for this call."""
        return {"id": call_id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(slots=True, kw_only=True)
class ParsedTurn:
    """What an assistant message says: its text outside tool calls, the calls, and parse errors."""

    content: str
    calls: list[ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class ToolCallFormat(Protocol):
    """How tool calls are written into an assistant message and read back from one."""

    name: str

    def render(self, calls: list[ToolCall], content: str = "") -> str: ...

    def parse(self, text: str) -> ParsedTurn: ...


# Whitespace, "{", then JSON syntax characters and whole strings (as strict JSON allows them: no raw
# control characters); possessive, so linear. It ends at the first "<" or "\" outside a string, or
# at an unterminated string.
_OBJECT_EXTENT = re.compile(r'\s*+\{(?:[^"<\\]++|"(?:[^"\\\x00-\x1f]++|\\.)*+")*+', re.S)


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class HermesFormat:
    """The ``hermes`` format: each call one JSON object inside ``<tool_call>`` ... ``</tool_call>``."""

    name = "hermes"
    shape = '<tool_call>{"name": "<tool>", "arguments": {...}}</tool_call>'  # how a call looks, for error messages
    open_tag, close_tag = "<tool_call>", "</tool_call>"

    def render(self, calls: list[ToolCall], content: str = "") -> str:
        blocks = [f"{self.open_tag}\n{self._json(c)}\n{self.close_tag}" for c in calls]
        return "\n".join([content, *blocks] if content else blocks)

    @staticmethod
    def _json(call: ToolCall) -> str:
        # "</" only occurs inside JSON strings; written <\/ (the same JSON value) a value holding
        # "</tool_call>" cannot close the block early
        return json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False).replace("</", "<\\/")

    def parse(self, text: str) -> ParsedTurn:
        """The calls in ``text``; a block's end is read from its JSON, so ``</tool_call>`` inside a string
        (other templates write it unescaped) does not end it. A block that is not one JSON value ends at
        its first closing tag.

        Linear in ``len(text)`` (the regex ``<tool_call>(.*?)</tool_call>`` is quadratic on many open
        tags without a close: 100k of them took minutes). A scan that runs past a block's first closing
        tag does so inside a JSON string, where a later block's scan, outside a string there, stops at
        the first ``<`` or ``\\``.
        """
        calls: list[ToolCall] = []
        errors: list[str] = []
        outside: list[str] = []
        position = 0
        while (start := text.find(self.open_tag, position)) >= 0:
            outside.append(text[position:start])
            body_start = start + len(self.open_tag)
            end = self._object_end(text, body_start)
            data, error = self._decode(text[body_start:end]) if end >= 0 else (None, "no JSON object")
            if error:  # not one JSON value: the block ends at its first closing tag
                first_close = text.find(self.close_tag, body_start)
                if first_close < 0:  # the text after an unclosed tag is not content
                    errors.append(f"a {self.open_tag} was opened but never closed with {self.close_tag}")
                    return ParsedTurn(content="".join(outside).strip(), calls=calls, errors=errors)
                if first_close != end:
                    data, error = self._decode(text[body_start:first_close])
                end = first_close
            call, error = (None, error) if error else self._call(data, text[body_start:end].strip())
            if call is not None:
                calls.append(call)
            else:
                errors.append(error)
            position = end + len(self.close_tag)
        outside.append(text[position:])
        return ParsedTurn(content="".join(outside).strip(), calls=calls, errors=errors)

    def _object_end(self, text: str, start: int) -> int:
        """Where the closing tag after the ``{...}`` at ``start`` begins (-1 if none follows): strings are
        skipped whole, and the scan stops at the first ``<`` or ``\\`` outside one.
        """
        scan = _OBJECT_EXTENT.match(text, start)
        return scan.end() if scan is not None and text.startswith(self.close_tag, scan.end()) else -1

    @staticmethod
    def _decode(body: str) -> tuple[Any, str]:
        """(the JSON value of ``body``, ""), or (None, why it is not JSON)."""
        try:
            return json.loads(body.strip()), ""
        except (ValueError, RecursionError) as err:  # JSONDecodeError, too many digits, too deeply nested
            reason = getattr(err, "msg", None) or ("too deeply nested" if isinstance(err, RecursionError) else str(err))
            return None, f"tool call is not valid JSON ({_clip(reason)}): {_clip(body.strip())!r}"

    @staticmethod
    def _call(data: Any, body: str) -> tuple[ToolCall | None, str]:
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return None, f'tool call must be a JSON object like {{"name": ..., "arguments": {{...}}}}: {_clip(body)!r}'
        arguments = data.get("arguments", {})
        if isinstance(arguments, str):  # some models double-encode the arguments
            try:
                arguments = json.loads(arguments)
            except (ValueError, RecursionError):
                pass
        if not isinstance(arguments, dict):
            return None, f"tool call arguments must be a JSON object, got {type(arguments).__name__}: {_clip(body)!r}"
        # a JSON escape like "\ud800" decodes to a lone surrogate: made valid here, so the call's arguments survive
        # every path they travel afterwards (records, the next prompt's tokenizer, datasets, MCP)
        return ToolCall(name=valid_text(data["name"]), arguments=valid_value(arguments)), ""


class FindFormat:
    """The paper's ``find`` format: each ``lookup`` call a ``FIND <attribute> FOR <name>`` query in a sql block."""

    name = "find"
    shape = "```sql FIND <attribute> FOR <full name>```"
    tool_name = "lookup"
    _block = re.compile(r"```sql[ \t]*\n?(.*?)```", re.S)
    _query = re.compile(r"FIND\s+(\w+)\s+FOR\s+(.+)", re.S)

    def render(self, calls: list[ToolCall], content: str = "") -> str:
        blocks = []
        for call in calls:
            if call.name != self.tool_name or set(call.arguments) != {"name", "attribute"}:
                raise ValueError(f"the find format can only write {self.tool_name}(name, attribute) calls, not {call}")
            blocks.append(f"```sql\nFIND {call.arguments['attribute']} FOR {call.arguments['name']}\n```")
        return "\n".join([content, *blocks] if content else blocks)

    def parse(self, text: str) -> ParsedTurn:
        calls: list[ToolCall] = []
        errors: list[str] = []
        text = valid_text(text)  # a raw lone surrogate (a model's, not the environment's) becomes U+FFFD
        for block in self._block.findall(text):
            query = self._query.fullmatch(block.strip())
            if query is None:
                errors.append(
                    f"expected 'FIND <attribute> FOR <full name>' inside ```sql, got {_clip(block.strip())!r}"
                )
            else:
                calls.append(
                    ToolCall(
                        name=self.tool_name, arguments={"name": query.group(2).strip(), "attribute": query.group(1)}
                    )
                )
        rest = self._block.sub("", text)
        if "```sql" in rest:
            errors.append("a ```sql block was opened but never closed with ```")
            rest = rest[: rest.index("```sql")]
        return ParsedTurn(content=rest.strip(), calls=calls, errors=errors)


FORMATS: dict[str, ToolCallFormat] = {f.name: f for f in (HermesFormat(), FindFormat())}
FormatName = Literal["hermes", "find"]  # the keys of FORMATS, for typed options


def get_format(name: str) -> ToolCallFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown tool-call format {name!r}; valid: {', '.join(FORMATS)}") from None
