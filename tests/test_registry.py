"""``ToolRegistry.call``: every outcome is a ``ToolResult``; nothing raises into the rollout."""

from __future__ import annotations

import json
from enum import StrEnum

import pytest

from tools import ToolError, ToolRegistry, ToolResult, tool
from tools.registry import MAX_ARGUMENT_CHARS


class Unit(StrEnum):
    celsius = "celsius"
    fahrenheit = "fahrenheit"


@tool
def convert(degrees: float, unit: Unit, digits: int = 1) -> str:
    """Convert a Celsius temperature.

    Args:
        degrees: Temperature in Celsius.
        unit: Unit of the answer.
        digits: Decimal places.
    """
    value = degrees if unit is Unit.celsius else degrees * 9 / 5 + 32
    return f"{value:.{digits}f}"


@tool
def divide(a: int, b: int) -> float:
    """Divide two integers.

    Args:
        a: Numerator.
        b: Denominator.
    """
    return a / b


@tool
def find_city(name: str) -> str:
    """Find a city.

    Args:
        name: City name.
    """
    if name != "Lyon":
        raise ToolError(f"no city named {name!r}; try Lyon")
    return "France"


@pytest.fixture
def registry() -> ToolRegistry:
    return ToolRegistry([convert, divide, find_city])


def test_success(registry):
    result = registry.call("convert", {"degrees": 100, "unit": "fahrenheit"})
    assert result == ToolResult(name="convert", ok=True, content="212.0")


def test_non_string_return_is_json(registry):
    assert registry.call("divide", {"a": 7, "b": 2}).content == "3.5"


def test_unknown_tool_lists_valid_tools(registry):
    result = registry.call("weather", {"city": "Lyon"})
    assert not result.ok
    assert result.content == "unknown tool 'weather'; valid tools: convert, divide, find_city"


def test_non_string_tool_name(registry):
    result = registry.call(None, {})
    assert not result.ok and "valid tools: convert, divide, find_city" in result.content


def test_missing_argument(registry):
    result = registry.call("convert", {"degrees": 3})
    assert not result.ok
    assert "unit: Field required" in result.content
    assert "expected convert(degrees: number, unit: one of celsius|fahrenheit, digits: integer)" in result.content


def test_extra_argument(registry):
    result = registry.call("convert", {"degrees": 3, "unit": "celsius", "scale": "kelvin"})
    assert not result.ok and "scale: Extra inputs are not permitted" in result.content


def test_wrong_type(registry):
    result = registry.call("convert", {"degrees": "hot", "unit": "celsius"})
    assert not result.ok and "degrees: Input should be a valid number" in result.content


def test_bad_enum_value_lists_valid_values(registry):
    result = registry.call("convert", {"degrees": 3, "unit": "kelvin"})
    assert not result.ok
    assert "unit: Input should be 'celsius' or 'fahrenheit'" in result.content


def test_arguments_as_json_string(registry):
    result = registry.call("convert", json.dumps({"degrees": 0, "unit": "fahrenheit", "digits": 0}))
    assert result == ToolResult(name="convert", ok=True, content="32")


def test_malformed_json_string(registry):
    result = registry.call("convert", '{"degrees": 0, "unit": ')
    assert not result.ok
    assert result.content.startswith("arguments for convert are not valid JSON (Expecting value)")


def test_deeply_nested_json_string(registry):
    result = registry.call("convert", "[" * 4000)
    assert not result.ok and "not valid JSON" in result.content


@pytest.mark.parametrize("arguments", ["[1, 2]", '"text"', [1, 2], 7, None])
def test_non_object_arguments(registry, arguments):
    result = registry.call("convert", arguments)
    assert not result.ok and result.content.startswith("arguments for convert must be a JSON object")


def test_exception_inside_tool_is_a_result(registry):
    result = registry.call("divide", {"a": 1, "b": 0})
    assert result == ToolResult(name="divide", ok=False, content="divide failed: ZeroDivisionError: division by zero")


def test_tool_error_text_goes_to_the_model(registry):
    result = registry.call("find_city", {"name": "Paris"})
    assert result == ToolResult(name="find_city", ok=False, content="no city named 'Paris'; try Lyon")


def test_oversized_argument_value(registry):
    result = registry.call("find_city", {"name": "x" * 100_000})
    assert not result.ok
    assert f"more than {MAX_ARGUMENT_CHARS} characters" in result.content
    assert len(result.content) < 200


def test_oversized_json_string(registry):
    result = registry.call("find_city", json.dumps({"name": "x" * 100_000}))
    assert not result.ok and len(result.content) < 200


def test_oversized_nested_value(registry):
    result = registry.call("find_city", {"name": ["x" * 50_000, "y" * 50_000]})
    assert not result.ok and f"more than {MAX_ARGUMENT_CHARS} characters" in result.content


def test_oversized_key_does_not_echo_back(registry):
    result = registry.call("find_city", {"k" * 100_000: "Lyon"})
    assert not result.ok and len(result.content) < 200


def test_duplicate_registration_is_refused(registry):
    with pytest.raises(ValueError, match="already registered"):
        registry.register(convert)


def test_schemas_in_registration_order(registry):
    assert [s["function"]["name"] for s in registry.schemas()] == ["convert", "divide", "find_city"]
    assert registry.names == ["convert", "divide", "find_city"]
