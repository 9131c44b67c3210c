"""The project's tool chat template: ChatML turns, hermes tool calls, training-compatible.

It is what any model whose own template cannot render tool calls gets (``CHAT_TEMPLATE``: the
tools' JSON schemas, descriptions and typed parameters, in the system turn, as hermes-style templates
show them) and what the embedded default model ships with (``COMPACT_CHAT_TEMPLATE``: one
``name(arg: enum|values)`` line per tool, which keeps a tiny from-scratch model's byte-level
sequences short). Both write the turns alike. Properties TRL checks and relies on:

- assistant ``tool_calls`` are written exactly as ``itl_env.formats.HermesFormat`` writes them,
  so the environment parses what the model learned to emit;
- each assistant turn, its end-of-turn token included, sits inside ``{% generation %}`` so
  ``assistant_only_loss`` trains exactly the assistant tokens and the stop token;
- earlier turns render the same whatever follows (prefix-preserving);
- ``RESPONSE_TEMPLATE`` lets ``tokenizer.parse_response`` (and TRL's GRPO tool loop) read replies.
"""

from __future__ import annotations

from typing import Any

END_OF_TURN = "<|im_end|>"
START_OF_TURN = "<|im_start|>"
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"

COMPACT_TOOLS = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\nTools:' }}"
    "{%- for tool in tools %}"
    "{%- set fn = tool.function if tool.function else tool %}"
    "{{- '\\n' + fn.name + '(' }}"
    "{%- for key, spec in fn.parameters.properties.items() %}"
    "{{- key }}{%- if spec.enum %}{{- ': ' + spec.enum | join('|') }}{%- endif %}"
    "{%- if not loop.last %}{{- ', ' }}{%- endif %}"
    "{%- endfor %}"
    "{{- ')' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
)

SCHEMA_TOOLS = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\nYou can call these functions to answer. Each is described by its JSON schema:\\n<tools>' }}"
    "{%- for tool in tools %}"
    "{{- '\\n' + (tool | tojson) }}"
    "{%- endfor %}"
    '{{- \'\\n</tools>\\nTo call one, write <tool_call>\\n{"name": <function name>, "arguments": <arguments object>}\''
    " + '\\n</tool_call> and wait for its result.<|im_end|>\\n' }}"
    "{%- endif %}"
)

TURNS = (
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}"
    "{{- message.content or '' }}"
    "{%- if message.tool_calls %}"
    "{%- for call in message.tool_calls %}"
    "{%- set fn = call.function if call.function else call %}"
    "{%- if loop.first and message.content %}{{- '\\n' }}{%- elif not loop.first %}{{- '\\n' }}{%- endif %}"
    # the call's JSON exactly as HermesFormat.render writes it: transformers' tojson is json.dumps with
    # ensure_ascii=False (Jinja's own escapes HTML); "</" becomes "<\/" (the same JSON value)
    "{%- if fn.arguments is string %}"
    "{%- set call_json = '{\"name\": ' + (fn.name | tojson) + ', \"arguments\": ' + fn.arguments + '}' %}"
    "{%- else %}"
    "{%- set call_json = {'name': fn.name, 'arguments': fn.arguments} | tojson %}"
    "{%- endif %}"
    "{{- '<tool_call>\\n' + (call_json | replace('</', '<\\\\/')) + '\\n</tool_call>' }}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- '<|im_end|>' }}"
    "{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + (message.content or '') + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

CHAT_TEMPLATE = SCHEMA_TOOLS + TURNS
COMPACT_CHAT_TEMPLATE = COMPACT_TOOLS + TURNS
TEMPLATES = (CHAT_TEMPLATE, COMPACT_CHAT_TEMPLATE)

# transformers' response-parsing spec (``tokenizer.response_template``) for the template above.
RESPONSE_TEMPLATE: dict[str, Any] = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "tool_calls": {
            "open": TOOL_CALL_OPEN,
            "close_pattern": r"</tool_call>\s*",
            "repeats": True,
            "content": "json",
            "transform": {"type": "function", "function": "{content}"},
        },
        "content": {"close_pattern": r"<\|im_end\|>\s*", "content": "text"},
    },
}


def supports_tools(tokenizer: Any) -> bool:
    """Whether ``tokenizer``'s own template renders a whole tool exchange (judged by rendering, not by name)."""
    from trl.chat_template_utils import supports_tool_calling

    try:
        return bool(tokenizer.chat_template) and supports_tool_calling(tokenizer)
    except Exception:  # noqa: BLE001 - a template that cannot even render has no tool support
        return False


def is_training_compatible(tokenizer: Any) -> bool:
    """TRL's requirements for multi-turn SFT with ``assistant_only_loss``."""
    from trl.chat_template_utils import (
        has_generation_markers,
        is_chat_template_prefix_preserving,
        is_chat_template_stop_token_trained,
    )

    return (
        has_generation_markers(tokenizer.chat_template)
        and is_chat_template_prefix_preserving(tokenizer)
        and is_chat_template_stop_token_trained(tokenizer)
    )


def template_token_ids(tokenizer: Any) -> list[int]:
    """The ids of the template's own tokens (turn markers, tool-call tags) that ``tokenizer`` has."""
    vocab = tokenizer.get_vocab()
    return sorted(vocab[t] for t in (START_OF_TURN, END_OF_TURN, TOOL_CALL_OPEN, TOOL_CALL_CLOSE) if t in vocab)


def install(tokenizer: Any, chat_template: str | None = None, *, call_tokens: bool = False) -> Any:
    """Give ``tokenizer`` the project's template (or ``chat_template``) and its response parser.

    The ChatML markers are added as special tokens when the vocabulary lacks them (the caller must
    then resize the model's embeddings: ``model.resize_token_embeddings(len(tokenizer))``). The
    tool-call tags become tokens of their own only with ``call_tokens`` (the embedded model, whose
    tokenizer is built for them): a pretrained model writes them as the text pieces it already
    knows, the same pieces the system turn shows it (as new tokens, their untrained embeddings kept
    SmolLM2 from opening a call for 60 steps, and they would change the vocabulary it is compared on).
    """
    from transformers import AddedToken

    template = chat_template or CHAT_TEMPLATE
    vocab = tokenizer.get_vocab()
    special = [AddedToken(t, special=True, normalized=False) for t in (START_OF_TURN, END_OF_TURN) if t not in vocab]
    plain = [
        AddedToken(t, special=False, normalized=False)
        for t in (TOOL_CALL_OPEN, TOOL_CALL_CLOSE)
        if call_tokens and t not in vocab
    ]
    if special:
        tokenizer.add_special_tokens({"additional_special_tokens": special}, replace_extra_special_tokens=False)
    if plain:  # not special: decoding with skip_special_tokens must keep the tool-call tags
        tokenizer.add_tokens(plain)
    tokenizer.chat_template = template
    if template in TEMPLATES:
        tokenizer.response_template = RESPONSE_TEMPLATE
    tokenizer.eos_token = END_OF_TURN
    if tokenizer.pad_token is None:
        tokenizer.pad_token = END_OF_TURN
    return tokenizer
