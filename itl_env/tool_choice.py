"""``tool_choice`` as OpenAI-compatible APIs define it, for every policy backend, turn by turn.

``auto`` (the model decides), ``required`` (the reply is a call of one of the offered tools), a tool's name
(a call of that tool), ``none`` (no call). A rollout takes a list, one value per assistant turn, the last one
repeating: ``["required", "auto"]`` forces the first turn's call and lets the model answer after.

A forced call is written the way the model's chat template writes one (``call_frame``: the text before and after
the call's JSON, read from the template by rendering a call) with the JSON constrained to ``call_schema``: the
tool's name and its arguments' JSON schema, so it is always valid JSON naming a real tool with well-typed
arguments. Forcing therefore writes what training on the template's dialogs writes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

AUTO, REQUIRED, NONE = "auto", "required", "none"
# A forced string argument is at most this long (unless the tool's schema says otherwise): a model that would
# write one string forever (an untrained one does) must still close the call within the turn's token budget.
MAX_FORCED_STRING = 64
# A forced turn's token budget is at least this: a call of the people tools takes 40-70 tokens of the byte-level
# default model, and a capped string argument up to 64 more.
FORCED_MIN_TOKENS = 256
_SENTINEL_NAME, _SENTINEL_KEY = "tool_name_c0ffee", "argument_c0ffee"


def check(choices: Sequence[str], tool_names: Sequence[str]) -> list[str]:
    """``choices`` as a list, every value ``auto``, ``required``, ``none`` or one of ``tool_names``."""
    choices = list(choices) or [AUTO]
    for choice in choices:
        if choice not in (AUTO, REQUIRED, NONE) and choice not in tool_names:
            known = ", ".join([AUTO, REQUIRED, NONE, *tool_names])
            raise ValueError(f"tool_choice {choice!r} is not one of {known}")
        if choice != AUTO and choice != NONE and not tool_names:
            raise ValueError(f"tool_choice {choice!r} needs tools, and none are offered (an in-weight run)")
    return choices


def for_turn(choices: Sequence[str], turn: int) -> str:
    """The choice of assistant turn ``turn`` (0: the first); the last value repeats."""
    return choices[min(turn, len(choices) - 1)] if choices else AUTO


def assistant_turns(conversation: Sequence[dict[str, Any]]) -> int:
    """How many assistant messages ``conversation`` holds: the index of the turn it asks for next."""
    return sum(message.get("role") == "assistant" for message in conversation)


def call_schema(tools: list[dict[str, Any]], choice: str) -> dict[str, Any]:
    """The JSON schema of one call ``{"name": ..., "arguments": {...}}`` that ``choice`` allows."""
    variants = []
    for entry in tools:
        function = entry.get("function", entry)
        if choice != REQUIRED and function["name"] != choice:
            continue
        parameters = _capped({"type": "object", "properties": {}, **function.get("parameters", {})})
        parameters.setdefault("additionalProperties", False)  # a forced call names no argument the tool lacks
        variants.append(
            {
                "type": "object",
                "properties": {"name": {"const": function["name"]}, "arguments": parameters},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    if not variants:
        raise ValueError(f"tool_choice {choice!r} names no offered tool")
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


# xgrammar's JSON strings admit raw control characters (JSON does not); a pattern excludes them, and the
# backslash (no escapes needed in a forced argument), and bounds the length
_FREE_STRING = '^[^\\x00-\\x1f"\\\\]{0,' + str(MAX_FORCED_STRING) + "}$"


def call_grammar(tools: list[dict[str, Any]], choice: str) -> str:
    """``call_schema`` as an EBNF grammar (xgrammar's), JSON written as ``json.dumps`` writes it (", " and ": ",
    no other whitespace): one grammar text for every backend, so a forced call is the same text on each.
    """
    import xgrammar

    schema = json.dumps(call_schema(tools, choice))
    return str(xgrammar.Grammar.from_json_schema(schema, any_whitespace=False, separators=(", ", ": ")))


def _capped(schema: Any) -> Any:
    """``schema`` with every free string (no enum, const, bound or pattern of its own) bounded: ``_FREE_STRING``."""
    if isinstance(schema, list):
        return [_capped(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    capped = {k: _capped(v) for k, v in schema.items()}
    if capped.get("type") == "string" and not {"enum", "const", "maxLength", "format", "pattern"} & set(capped):
        capped["pattern"] = _FREE_STRING
    return capped


def call_frame(tokenizer: Any, tools: list[dict[str, Any]] | None) -> tuple[str, str]:
    """(text before, text after) the JSON of a call in an assistant turn, as ``tokenizer``'s chat template writes
    one, without the end-of-turn token: e.g. ``("<tool_call>\\n", "\\n</tool_call>")`` for hermes templates.
    """
    user = [{"role": "user", "content": "q"}]
    call = {"type": "function", "function": {"name": _SENTINEL_NAME, "arguments": {_SENTINEL_KEY: "v"}}}
    prompt = tokenizer.apply_chat_template(user, tools=tools, add_generation_prompt=True, tokenize=False)
    whole = tokenizer.apply_chat_template(
        [*user, {"role": "assistant", "content": "", "tool_calls": [call]}], tools=tools, tokenize=False
    )
    if not whole.startswith(prompt) or _SENTINEL_NAME not in whole[len(prompt) :]:
        raise ValueError("the chat template does not write a tool call after its generation prompt: cannot force one")
    turn = whole[len(prompt) :]
    named = turn.index(_SENTINEL_NAME)
    start = turn.rfind("{", 0, named)
    try:
        decoded, end = json.JSONDecoder().raw_decode(turn, start)
    except ValueError:
        decoded, end = None, -1
    if not isinstance(decoded, dict) or decoded.get("name") != _SENTINEL_NAME:
        raise ValueError("the chat template writes tool calls in a form other than one JSON object per call")
    after = turn[end:]
    eos = tokenizer.eos_token or ""
    if eos and eos in after:
        after = after[: after.index(eos)]
    return turn[:start], after.rstrip()


def openai_tool_choice(choice: str) -> str | dict[str, Any]:
    """``choice`` as the chat-completions request's ``tool_choice`` field."""
    if choice in (AUTO, REQUIRED, NONE):
        return choice
    return {"type": "function", "function": {"name": choice}}
