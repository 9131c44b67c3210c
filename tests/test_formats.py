"""Tool-call text formats: render/parse round trips, and parse never raises on model text."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from itl_env.formats import FORMATS, ToolCall, get_format
from itl_env.store import Attribute

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
hermes, find = get_format("hermes"), get_format("find")


def lookup(name: str, attribute: str = "birth_place") -> ToolCall:
    return ToolCall(name="lookup", arguments={"name": name, "attribute": attribute})


def test_formats_registered():
    assert set(FORMATS) == {"hermes", "find"}
    with pytest.raises(ValueError, match="unknown tool-call format 'xml'; valid: hermes, find"):
        get_format("xml")


def test_hermes_render_shape():
    text = hermes.render([lookup("Kyler Ellison")])
    assert text == (
        '<tool_call>\n{"name": "lookup", "arguments": {"name": "Kyler Ellison", "attribute": "birth_place"}}\n</tool_call>'
    )


def test_find_render_shape():
    assert find.render([lookup("Kyler Ellison")]) == "```sql\nFIND birth_place FOR Kyler Ellison\n```"


@pytest.mark.parametrize("fmt", [hermes, find])
def test_round_trip_calls_and_content(fmt):
    calls = [lookup("Kyler Ellison", "birth_date"), lookup("Ana Silva", "occupation")]
    parsed = fmt.parse(fmt.render(calls, content="Let me check."))
    assert parsed.calls == calls
    assert parsed.content == "Let me check."
    assert parsed.errors == []


def test_hermes_round_trips_any_tool_and_arguments():
    calls = [ToolCall(name="convert", arguments={"degrees": 3.5, "unit": "celsius", "tags": ["a", "b"], "n": None})]
    assert hermes.parse(hermes.render(calls)).calls == calls


def test_find_only_writes_lookup_calls():
    with pytest.raises(ValueError, match="can only write lookup"):
        find.render([ToolCall(name="convert", arguments={"degrees": 3})])


def test_text_without_calls_is_content():
    for fmt in (hermes, find):
        parsed = fmt.parse("  Kyler Ellison was born in Japan.\n")
        assert parsed.calls == [] and parsed.errors == []
        assert parsed.content == "Kyler Ellison was born in Japan."


def test_hermes_accepts_double_encoded_arguments():
    parsed = hermes.parse('<tool_call>{"name": "lookup", "arguments": "{\\"name\\": \\"Ana Silva\\"}"}</tool_call>')
    assert parsed.calls == [ToolCall(name="lookup", arguments={"name": "Ana Silva"})]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("<tool_call>{'name': 'lookup'}</tool_call>", "tool call is not valid JSON"),
        ('<tool_call>{"name": "lookup", "arguments": {</tool_call>', "tool call is not valid JSON"),
        ("<tool_call>" + "[" * 100_000 + "</tool_call>", "too deeply nested"),
        ('<tool_call>{"name": "x", "arguments": {"n": ' + "9" * 5000 + "}}</tool_call>", "tool call is not valid JSON"),
        ('<tool_call>["lookup"]</tool_call>', "must be a JSON object"),
        ('<tool_call>{"arguments": {}}</tool_call>', "must be a JSON object"),
        ('<tool_call>{"name": 7}</tool_call>', "must be a JSON object"),
        ('<tool_call>{"name": "lookup", "arguments": [1]}</tool_call>', "arguments must be a JSON object, got list"),
        ('<tool_call>{"name": "lookup", "arguments": "oops"}</tool_call>', "arguments must be a JSON object, got str"),
        ('<tool_call>{"name": "lookup", "arguments": {}}', "opened but never closed"),
    ],
)
def test_hermes_malformed_calls_are_errors(text, error):
    parsed = hermes.parse(text)
    assert parsed.calls == []
    assert len(parsed.errors) == 1 and error in parsed.errors[0]


def test_hermes_error_quotes_are_clipped():
    parsed = hermes.parse("<tool_call>" + "x" * 10_000 + "</tool_call>")
    assert len(parsed.errors[0]) < 300


def test_hermes_keeps_good_calls_next_to_bad_ones():
    text = hermes.render([lookup("Ana Silva")]) + "\n<tool_call>{broken</tool_call>"
    parsed = hermes.parse(text)
    assert parsed.calls == [lookup("Ana Silva")] and len(parsed.errors) == 1


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("```sql\nSELECT * FROM people\n```", "expected 'FIND <attribute> FOR <full name>'"),
        ("```sql\nFIND birth_place FOR\n```", "expected 'FIND <attribute> FOR <full name>'"),
        ("```sql\nFIND FOR Ana Silva\n```", "expected 'FIND <attribute> FOR <full name>'"),
        ("```sql\nFIND birth_place FOR Ana Silva", "opened but never closed"),
    ],
)
def test_find_malformed_calls_are_errors(text, error):
    parsed = find.parse(text)
    assert parsed.calls == []
    assert len(parsed.errors) == 1 and error in parsed.errors[0]


def test_find_keeps_unknown_attribute_for_the_tool_to_reject():
    assert find.parse("```sql\nFIND shoe_size FOR Ana Silva\n```").calls == [lookup("Ana Silva", "shoe_size")]


@FUZZ
@given(st.text())
def test_hermes_parse_never_raises(text):
    parsed = hermes.parse(text)
    assert isinstance(parsed.content, str)


@FUZZ
@given(st.text())
def test_find_parse_never_raises(text):
    parsed = find.parse(text)
    assert isinstance(parsed.content, str)


tagged_text = st.lists(
    st.one_of(
        st.text(max_size=20),
        st.sampled_from(["<tool_call>", "</tool_call>", "```sql\n", "```", "FIND ", " FOR ", '{"name": "lookup"', "}"]),
    ),
    max_size=12,
).map("".join)


@FUZZ
@given(tagged_text)
def test_parse_never_raises_on_tag_soup(text):
    for fmt in (hermes, find):
        parsed = fmt.parse(text)
        assert all(isinstance(e, str) for e in parsed.errors)


@pytest.mark.parametrize(
    "name", ["José Ñúñez", "李小龙", "a</tool_call>b", "<tool_call>", '"quoted" \\ back', "emoji 😀", "line\nbreak"]
)
def test_hermes_round_trips_awkward_names(name):
    call = lookup(name)
    assert hermes.parse(hermes.render([call])).calls == [call]


@FUZZ
@given(name=st.text(), attribute=st.sampled_from([a.value for a in Attribute]))
def test_hermes_round_trips_arbitrary_names(name, attribute):
    call = lookup(name, attribute)
    assert hermes.parse(hermes.render([call])).calls == [call]


find_names = st.text(min_size=1).filter(lambda s: "`" not in s and "\n" not in s and s.strip() == s and s != "")


@FUZZ
@given(name=find_names, attribute=st.sampled_from([a.value for a in Attribute]))
def test_find_round_trips_names_without_backticks_or_newlines(name, attribute):
    call = lookup(name, attribute)
    assert find.parse(find.render([call])).calls == [call]


def test_hermes_escapes_every_closing_slash():
    text = hermes.render([lookup("a</tool_call>b")])
    assert "a<\\/tool_call>b" in text and text.count("</tool_call>") == 1


def test_hermes_reads_an_unescaped_closing_tag_inside_a_json_string():
    # how templates that write arguments with a plain tojson (Qwen's, for one) put it
    text = '<tool_call>\n{"name": "lookup", "arguments": {"name": "a</tool_call>b", "attribute": "occupation"}}\n</tool_call>'
    parsed = hermes.parse(text + "\nDone.")
    assert parsed.calls == [lookup("a</tool_call>b", "occupation")]
    assert parsed.errors == [] and parsed.content == "Done."


def test_hermes_block_that_is_not_one_json_value_ends_at_its_first_closing_tag():
    text = '<tool_call>{"name": "lookup"} trailing</tool_call>' + hermes.render([lookup("Ana Silva")])
    parsed = hermes.parse(text)
    assert parsed.calls == [lookup("Ana Silva")]
    assert len(parsed.errors) == 1 and "tool call is not valid JSON (Extra data)" in parsed.errors[0]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@FUZZ
@given(
    name=st.text(),
    arguments=st.dictionaries(st.text() | st.just("</tool_call>"), json_values | st.just("x</tool_call>"), max_size=4),
    ensure_ascii=st.booleans(),
)
def test_hermes_reads_plain_json_dumps_of_any_arguments(name, arguments, ensure_ascii):
    """Other templates' text: ``json.dumps`` without escaping ``</``, ASCII-only or not."""
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=ensure_ascii)
    parsed = hermes.parse(f"<tool_call>\n{body}\n</tool_call>")
    assert parsed.errors == []
    assert parsed.calls == [ToolCall(name=name, arguments=arguments)]


HOSTILE = {
    "unclosed open tags": "<tool_call>" * 200_000,
    "open tag then an endless string": '<tool_call>"' + '</tool_call><tool_call>\\"' * 100_000,
    "strings that span blocks": '<tool_call>{"a": "' + '</tool_call><tool_call>", "a": "' * 100_000,
    "closing tags inside strings": '<tool_call>"</tool_call>' * 100_000,
    "objects that do not end at a closing tag": '<tool_call>{"name": "x"} x</tool_call>' * 100_000,
    "an object with an endless string": '<tool_call>{"' + '</tool_call><tool_call>{\\"' * 100_000,
    "objects whose strings cross closing tags": '<tool_call>{"a</tool_call>b" x' * 100_000,
    "objects then a control character": '<tool_call>{"</tool_call>\n' * 100_000,
}


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_hermes_parse_is_linear_on_hostile_text(text):
    started = time.perf_counter()
    parsed = hermes.parse(text)
    assert time.perf_counter() - started < 5.0  # a quadratic scan of these takes minutes
    assert parsed.calls == [] and parsed.errors
