"""One tool-call text: what the chat template trains a model to write is what the environment parses.

The default tokenizer's template (``itl_env.chat_template``), the nanoLlama byte tokenizer and
``HermesFormat.render`` (oracle, OpenAI backend) must write the same bytes for any arguments, and
``HermesFormat.parse`` (the environment) and the response parser (TRL's GRPO tool loop) must read
them back. Also here: TRL adapter methods hand any argument name, ``self`` included, to the registry.
"""

from __future__ import annotations

import inspect
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evals.default_model import byte_tokenizer
from itl_env import chat_template
from itl_env.env import fact_registry
from itl_env.formats import HermesFormat, ToolCall
from trainers.nanollama.tokenizer import ByteTokenizer

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
hermes = HermesFormat()
QUESTION = [{"role": "user", "content": "When was Ana Silva born?"}]
ASSISTANT_HEADER = f"{chat_template.START_OF_TURN}assistant\n"
TURN_END = f"{chat_template.END_OF_TURN}\n"

# Text biased towards what can end a block early or break the JSON: tags, escapes, control and
# non-ASCII characters, the template's own turn markers.
AWKWARD = ["</tool_call>", "<tool_call>", "</", "<\\/", '"', "\\", "\n", "\t", "\x00", "\u2028", "é", "李", "😀",
           "<|im_end|>", "<|im_start|>assistant\n", "{", "}", "'"]  # fmt: skip
text = st.one_of(st.text(), st.lists(st.one_of(st.sampled_from(AWKWARD), st.text(max_size=3)), max_size=8).map("".join))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
tool_calls = st.lists(
    st.builds(ToolCall, name=text, arguments=st.dictionaries(text, json_values, max_size=4)), min_size=1, max_size=3
)
contents = st.one_of(st.just(""), text.filter(lambda s: HermesFormat.open_tag not in s))


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


def assistant_message(calls: list[ToolCall], content: str, *, arguments_as_text: bool = False) -> dict:
    message_calls = [call.as_message_call(f"call_{i}") for i, call in enumerate(calls)]
    if arguments_as_text:  # how some pipelines hand over arguments: already JSON text
        for entry in message_calls:
            entry["function"]["arguments"] = json.dumps(entry["function"]["arguments"], ensure_ascii=False)
    return {"role": "assistant", "content": content, "tool_calls": message_calls}


def template_turn(tokenizer, calls: list[ToolCall], content: str, **kwargs) -> str:
    """The text the template writes for the assistant turn (header to end of turn), after a question."""
    whole = tokenizer.apply_chat_template([*QUESTION, assistant_message(calls, content, **kwargs)], tokenize=False)
    prompt = tokenizer.apply_chat_template(QUESTION, tokenize=False)
    assert whole.startswith(prompt)
    return whole[len(prompt) :]


def assert_same_calls(parsed: list[ToolCall], calls: list[ToolCall]) -> None:
    # equality plus the rendered text: 1, 1.0 and true are equal in Python but not the same call
    assert parsed == calls
    assert hermes.render(parsed) == hermes.render(calls)


@FUZZ
@given(calls=tool_calls, content=contents, arguments_as_text=st.booleans())
def test_template_writes_exactly_what_hermes_renders(tokenizer, calls, content, arguments_as_text):
    turn = template_turn(tokenizer, calls, content, arguments_as_text=arguments_as_text)
    assert turn == ASSISTANT_HEADER + hermes.render(calls, content) + TURN_END


@FUZZ
@given(calls=tool_calls, content=contents)
def test_hermes_reads_back_what_it_renders(calls, content):
    parsed = hermes.parse(hermes.render(calls, content))
    assert parsed.errors == []
    assert_same_calls(parsed.calls, calls)
    assert parsed.content == content.strip()


@FUZZ
@given(calls=tool_calls, content=contents)
def test_hermes_reads_the_templates_turn(tokenizer, calls, content):
    turn = template_turn(tokenizer, calls, content)
    body = turn.removeprefix(ASSISTANT_HEADER).removesuffix(TURN_END)
    parsed = hermes.parse(body)
    assert parsed.errors == []
    assert_same_calls(parsed.calls, calls)
    assert parsed.content == content.strip()


@FUZZ
@given(calls=tool_calls, content=contents)
def test_default_tokenizer_decodes_the_turn_it_encodes(tokenizer, calls, content):
    turn = template_turn(tokenizer, calls, content)
    ids = tokenizer(turn, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=False) == turn


@FUZZ
@given(calls=tool_calls, content=contents)
def test_nanollama_tokenizer_writes_what_hermes_renders(calls, content):
    byte_tokenizer_ = ByteTokenizer("hermes")
    message = assistant_message(calls, content)
    written = byte_tokenizer_.decode(byte_tokenizer_.encode(byte_tokenizer_.message_text(message)))
    assert written == hermes.render(calls, content)


# The response parser ends the content at the first end-of-turn marker, so content holding
# "<|im_end|>" is cut there (generation stops at that token anyway); tool calls holding it are read.
@FUZZ
@given(calls=tool_calls, content=contents.filter(lambda s: chat_template.END_OF_TURN not in s))
def test_response_template_reads_the_templates_tool_calls(tokenizer, calls, content):
    reply = hermes.render(calls, content) + chat_template.END_OF_TURN
    parsed = tokenizer.parse_response(
        reply, prefix=tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    )
    read = [ToolCall(name=c["function"]["name"], arguments=c["function"]["arguments"]) for c in parsed["tool_calls"]]
    assert_same_calls(read, calls)
    assert (parsed.get("content") or "").strip() == content.strip()


# --- TRL adapter: any argument name reaches the registry ---


def test_adapter_method_passes_an_argument_named_self_to_the_registry(world):
    from itl_env.trl_adapter import environment_factory

    environment = environment_factory(world)()
    fact = world.facts()[0]
    environment.reset(fact_id=fact.id)
    arguments = {"self": "x", "name": fact.person, "attribute": fact.attribute.value}
    got = environment.lookup(**arguments)
    assert got == fact_registry(world).call("lookup", arguments).content
    assert "self: Extra inputs are not permitted" in got
    assert [r["ok"] for r in environment.tool_results] == [False]


def test_adapter_method_signature_is_the_tools_schema(world):
    from transformers.utils import get_json_schema

    from itl_env.trl_adapter import environment_factory

    registry = fact_registry(world)
    environment = environment_factory(world, registry=registry)()
    cls = type(environment)
    for name in registry.names:
        assert get_json_schema(getattr(environment, name)) == registry[name].json_schema  # bound, as TRL reads it
        assert get_json_schema(getattr(cls, name)) == registry[name].json_schema  # the function itself
        parameters = inspect.signature(getattr(environment, name)).parameters
        assert list(parameters) == list(registry[name].json_schema["function"]["parameters"]["properties"])


def test_adapter_method_of_a_tool_taking_self_shows_and_passes_it(world):
    from transformers.utils import get_json_schema

    from itl_env.trl_adapter import environment_factory
    from tools.registry import tool

    def shout(self: str) -> str:
        """Shout a text.

        Args:
            self: The text.
        """
        return self.upper()

    registry = fact_registry(world)
    registry.register(tool(shout))
    environment = environment_factory(world, registry=registry)()
    assert get_json_schema(environment.shout) == registry["shout"].json_schema
    assert get_json_schema(type(environment).shout) == registry["shout"].json_schema
    environment.reset(fact_id=world.facts()[0].id)
    assert environment.shout(self="quiet") == "QUIET"


def test_adapter_refuses_a_tool_taking_both_self_and_cls():
    from itl_env.trl_adapter import adapter_class
    from tools.registry import ToolRegistry, tool

    def repeat(self: str, cls: int) -> str:
        """Repeat a text.

        Args:
            self: The text.
            cls: How many times.
        """
        return self * cls

    with pytest.raises(ValueError, match="named both self and cls"):
        adapter_class(ToolRegistry([tool(repeat)]))
