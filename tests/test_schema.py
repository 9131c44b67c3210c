"""Tool schemas: the ``@tool`` JSON schema is exactly ``transformers.utils.get_json_schema``'s."""

from __future__ import annotations

from enum import Enum, IntEnum
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field
from transformers.utils import get_json_schema

from tools import ToolRegistry, tool
from tools.schema import ToolDefinitionError, parse_docstring


class Colour(Enum):
    red = "red"
    green = "green"


class Priority(IntEnum):
    low = 1
    high = 2


def takes_str(name: str) -> str:
    """Greet someone.

    Args:
        name: Who to greet.
    """
    return f"hello {name}"


def takes_numbers(count: int, ratio: float, strict: bool) -> float:
    """Scale a count.

    Args:
        count: How many items.
        ratio: The scale factor.
        strict: Whether to round down.
    """
    return count * ratio


def takes_enum(colour: Colour) -> str:
    """Paint something.

    Args:
        colour: The paint colour.
    """
    return colour.value


def takes_int_enum(priority: Priority) -> int:
    """Schedule a job.

    Args:
        priority: How urgent the job is.
    """
    return int(priority)


def takes_literal(unit: Literal["cm", "inch"], precision: Literal[1, 2] = 1) -> str:
    """Convert a length.

    Args:
        unit: Target unit.
        precision: Decimal places.
    """
    return unit


def takes_list(names: list[str]) -> list[str]:
    """Sort names.

    Args:
        names: The names to sort.
    """
    return sorted(names)


def takes_defaults(query: str, limit: int = 10, exact: bool = False) -> str:
    """Search the catalogue.

    Args:
        query: What to look for.
        limit: The most results to return.
        exact: Match the whole query only.
    """
    return query


def takes_optional(name: str, city: str | None = None) -> str:
    """Find a person.

    Args:
        name: The person's full name.
        city: Where they live, when known.
    """
    return name


def documents_return(day: int) -> str:
    """Name a weekday.

    Args:
        day: Day number, 0 is Monday.

    Returns:
        The weekday's English name.
    """
    return str(day)


def multi_line_arg(name: str) -> str:
    """Look somebody up.

    Args:
        name: The person's full name, as written in
            the question, first name then last name.
    """
    return name


@pytest.mark.parametrize(
    "fn",
    [
        takes_str,
        takes_numbers,
        takes_enum,
        takes_int_enum,
        takes_literal,
        takes_list,
        takes_defaults,
        takes_optional,
        documents_return,
        multi_line_arg,
    ],
)
def test_schema_equals_transformers_get_json_schema(fn):
    assert tool(fn).json_schema == get_json_schema(fn)


def test_optional_argument_is_not_required_and_nullable():
    parameters = tool(takes_optional).json_schema["function"]["parameters"]
    assert parameters["required"] == ["name"]
    assert parameters["properties"]["city"] == {
        "type": "string",
        "nullable": True,
        "description": "Where they live, when known.",
    }


def test_enum_schema_lists_values():
    schema = tool(takes_enum).json_schema["function"]["parameters"]["properties"]["colour"]
    assert schema["enum"] == ["red", "green"]
    assert schema["type"] == "string"


class SearchArguments(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(description="What to look for.")
    colour: Colour = Field(description="The paint colour.")
    limit: int = Field(10, description="The most results to return.")


class LaxSearchArguments(BaseModel):  # no extra="forbid": the registry must still reject unknown arguments
    query: str = Field(description="What to look for.")
    colour: Colour = Field(description="The paint colour.")
    limit: int = Field(10, description="The most results to return.")


def search_typed(query: str, colour: Colour, limit: int = 10) -> str:
    """Search the catalogue.

    Args:
        query: What to look for.
        colour: The paint colour.
        limit: The most results to return.
    """
    return f"{query}/{colour.value}/{limit}"


def search_model(arguments: SearchArguments) -> str:
    """Search the catalogue.

    Args:
        arguments: The search.
    """
    return f"{arguments.query}/{arguments.colour.value}/{arguments.limit}"


def search_lax_model(arguments: LaxSearchArguments) -> str:
    """Search the catalogue.

    Args:
        arguments: The search.
    """
    return f"{arguments.query}/{arguments.colour.value}/{arguments.limit}"


@pytest.mark.parametrize("model_fn", [search_model, search_lax_model])
def test_model_argument_gives_the_typed_function_schema(model_fn):
    typed = tool(name="search")(search_typed)
    modeled = tool(name="search")(model_fn)
    assert modeled.json_schema == typed.json_schema
    assert modeled.takes_model and not typed.takes_model


@pytest.mark.parametrize("model_fn", [search_model, search_lax_model])
@pytest.mark.parametrize(
    "arguments",
    [
        {"query": "lamp", "colour": "red"},
        {"query": "lamp", "colour": "red", "limit": 3},
        {"query": "lamp", "colour": "blue"},
        {"query": 3, "colour": "red"},
        {"colour": "red"},
        {},
        {"query": "lamp", "colour": "red", "page": 2},
        {"query": "lamp", "colour": "red", "limit": "many"},
    ],
)
def test_model_argument_validates_like_the_typed_function(model_fn, arguments):
    typed = ToolRegistry([tool(name="search")(search_typed)]).call("search", arguments)
    modeled = ToolRegistry([tool(name="search")(model_fn)]).call("search", arguments)
    assert modeled == typed


def test_lax_model_tool_rejects_an_extra_argument():
    result = ToolRegistry([tool(name="search")(search_lax_model)]).call(
        "search", {"query": "lamp", "colour": "red", "page": 2}
    )
    assert not result.ok
    assert "page: Extra inputs are not permitted" in result.content


def test_model_tool_receives_the_model_instance():
    result = ToolRegistry([tool(name="search")(search_lax_model)]).call("search", {"query": "lamp", "colour": "green"})
    assert result.ok and result.content == "lamp/green/10"


def test_untyped_argument_is_a_definition_error():
    def untyped(name) -> str:
        """Greet.

        Args:
            name: Who.
        """
        return name

    with pytest.raises(ToolDefinitionError, match="'name' has no type hint"):
        tool(untyped)


def test_undocumented_argument_is_a_definition_error():
    def undocumented(name: str, age: int) -> str:
        """Greet.

        Args:
            name: Who.
        """
        return name

    with pytest.raises(ToolDefinitionError, match="'age' is not described"):
        tool(undocumented)


def test_missing_docstring_is_a_definition_error():
    def bare(name: str) -> str:
        return name

    with pytest.raises(ToolDefinitionError, match="needs a docstring"):
        tool(bare)


def test_var_keyword_arguments_are_a_definition_error():
    def loose(**options: str) -> str:
        """Anything.

        Args:
            options: Whatever.
        """
        return ""

    with pytest.raises(ToolDefinitionError, match=r"\*args/\*\*kwargs"):
        tool(loose)


def test_tool_name_must_be_an_identifier():
    with pytest.raises(ToolDefinitionError, match="must be a Python identifier"):
        tool(name="look up")(takes_str)


def test_parse_docstring_joins_continuation_lines():
    description, args, returns = parse_docstring(documents_return.__doc__)
    assert description == "Name a weekday."
    assert args == {"day": "Day number, 0 is Monday."}
    assert returns == "The weekday's English name."
    assert parse_docstring(multi_line_arg.__doc__)[1] == {
        "name": "The person's full name, as written in the question, first name then last name."
    }
