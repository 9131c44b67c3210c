"""Typed Python callables -> pydantic argument models and OpenAI/HF tool JSON schemas.

Two styles give the same result: a function whose parameters are typed and described in a
Google-style docstring, or a function taking a single pydantic ``BaseModel`` argument whose
fields (descriptions, enums, constraints) become the tool's parameters. The schema shape is
the one ``transformers.utils.get_json_schema`` produces, so chat templates render it as-is.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model

_SECTION = re.compile(r"^\s*(Args|Arguments|Returns|Raises|Yields|Examples?|Notes?):\s*$", re.M)
_ARG_LINE = re.compile(r"^\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


class ToolDefinitionError(TypeError):
    """A function cannot become a tool (missing type hint, undocumented argument...)."""


def parse_docstring(doc: str) -> tuple[str, dict[str, str], str | None]:
    """Split a Google-style docstring into (description, {arg: description}, returns)."""
    doc = inspect.cleandoc(doc)
    sections = list(_SECTION.finditer(doc))
    description = doc[: sections[0].start()].strip() if sections else doc.strip()
    args: dict[str, str] = {}
    returns = None
    for i, match in enumerate(sections):
        end = sections[i + 1].start() if i + 1 < len(sections) else len(doc)
        body = doc[match.end() : end]
        if match.group(1) in ("Args", "Arguments"):
            base, current = _indent_of_args(body), None
            for line in filter(str.strip, body.splitlines()):
                arg = _ARG_LINE.match(line)
                if arg and _indent(line) == base:  # a deeper line continues the previous argument
                    current = arg.group(1)
                    args[current] = arg.group(2).strip()
                elif current:
                    args[current] = f"{args[current]} {line.strip()}".strip()
        elif match.group(1) == "Returns":
            returns = " ".join(body.split()) or None
    return description, args, returns


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _indent_of_args(body: str) -> int:
    return min((_indent(line) for line in body.splitlines() if line.strip()), default=0)


def arguments_model(fn: Callable[..., Any]) -> tuple[type[BaseModel], bool, str, str | None]:
    """Build the pydantic model that validates ``fn``'s arguments.

    Returns (model, takes_model, description, returns_description); ``takes_model`` is True when
    ``fn`` takes one ``BaseModel`` argument (the model is then that argument's class, made to
    reject extra arguments if it does not already).
    """
    name = fn.__name__
    if not fn.__doc__:
        raise ToolDefinitionError(f"tool {name!r} needs a docstring: it is the description the model reads")
    description, arg_docs, returns = parse_docstring(fn.__doc__)
    hints = get_type_hints(fn, include_extras=True)  # keep Annotated constraints (Field(ge=...))
    params = list(inspect.signature(fn).parameters.values())
    if (
        len(params) == 1
        and isinstance(hints.get(params[0].name), type)
        and issubclass(hints[params[0].name], BaseModel)
    ):
        return _forbidding_extra(hints[params[0].name]), True, description, returns
    fields: dict[str, Any] = {}
    for param in params:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolDefinitionError(f"tool {name!r}: *args/**kwargs cannot be described to a model")
        if param.name not in hints:
            raise ToolDefinitionError(f"tool {name!r}: argument {param.name!r} has no type hint")
        if param.name not in arg_docs:
            raise ToolDefinitionError(f"tool {name!r}: argument {param.name!r} is not described under 'Args:'")
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (hints[param.name], Field(default, description=arg_docs[param.name]))
    model = create_model(f"{name}_arguments", __config__=ConfigDict(extra="forbid"), **fields)
    return model, False, description, returns


def _forbidding_extra(model: type[BaseModel]) -> type[BaseModel]:
    """``model``, or a subclass of it that rejects unknown arguments like a typed function's model does."""
    if model.model_config.get("extra") == "forbid":
        return model

    class Strict(model):  # a misspelt argument must be an error the model reads, not silently dropped
        model_config = ConfigDict(extra="forbid")

    Strict.__name__ = Strict.__qualname__ = model.__name__
    return Strict


def tool_json_schema(
    name: str, description: str, model: type[BaseModel], returns: str | None, return_hint: Any
) -> dict[str, Any]:
    """The OpenAI/HF ``{"type": "function", "function": {...}}`` schema of a tool."""
    raw = model.model_json_schema()
    defs = raw.get("$defs", {})
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {key: _openai_shape(value, defs) for key, value in raw.get("properties", {}).items()},
    }
    if raw.get("required"):
        parameters["required"] = raw["required"]
    function: dict[str, Any] = {"name": name, "description": description, "parameters": parameters}
    if return_hint is not inspect.Signature.empty and return_hint is not None:
        try:
            ret = _openai_shape(create_model("r", r=(return_hint, ...)).model_json_schema()["properties"]["r"], {})
        except Exception:  # noqa: BLE001 - like get_json_schema, an unconvertible return hint is left out
            ret = None
        if ret is not None:
            if returns:
                ret["description"] = returns
            function["return"] = ret
    return {"type": "function", "function": function}


_DROP = {"title", "default", "$defs"}


def _openai_shape(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Rewrite pydantic's JSON schema into the flat shape of ``get_json_schema``.

    Refs are inlined, titles and defaults dropped, ``anyOf [X, null]`` becomes ``X`` + nullable,
    and enums carry their JSON type.
    """
    if len(node.get("allOf", ())) == 1:  # older pydantic wraps a described $ref in allOf
        node = {**node["allOf"][0], **{k: v for k, v in node.items() if k != "allOf"}}
    if "$ref" in node:
        target = dict(defs[node["$ref"].split("/")[-1]])
        target.update({k: v for k, v in node.items() if k != "$ref"})
        return _openai_shape(target, defs)
    out: dict[str, Any] = {}
    if "anyOf" in node:
        variants = [v for v in node["anyOf"] if v.get("type") != "null"]
        nullable = len(variants) < len(node["anyOf"])
        shaped = [_openai_shape(v, defs) for v in variants]
        if len(shaped) == 1:
            out.update(shaped[0])
        elif all(set(s) == {"type"} and isinstance(s["type"], str) for s in shaped):
            kinds = sorted({s["type"] for s in shaped})
            out["type"] = kinds[0] if len(kinds) == 1 else kinds
        else:
            out["anyOf"] = shaped
        if nullable:
            out["nullable"] = True
    for key, value in node.items():
        if key in _DROP or key == "anyOf":
            continue
        if key == "items":
            out[key] = _openai_shape(value, defs)
        elif key == "prefixItems":
            out[key] = [_openai_shape(v, defs) for v in value]
        elif key == "additionalProperties" and isinstance(value, dict):
            out[key] = _openai_shape(value, defs)
        elif key == "properties":
            out[key] = {k: _openai_shape(v, defs) for k, v in value.items()}
        else:
            out[key] = value
    if out.get("type") == "array" and "prefixItems" in out:
        out.pop("maxItems", None)
        out.pop("minItems", None)
    return out
