"""The ``@tool`` decorator, ``Tool``, ``ToolResult`` and ``ToolRegistry``.

A tool is a typed Python function with a Google-style docstring; everything else (argument
validation, JSON schema, execution) is derived from it. ``ToolRegistry.call`` never raises:
unknown tools, invalid arguments and failures inside a tool come back as ``ok=False`` results
whose text tells the model what was wrong and what is valid.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, ValidationError

from tools.schema import ToolDefinitionError, arguments_model, tool_json_schema

logger = logging.getLogger(__name__)

MAX_ARGUMENT_CHARS = 4096  # a lookup needs ~100 characters; anything far larger is a runaway generation


class ToolError(Exception):
    """Raised inside a tool for an expected failure (no such person...); its text goes to the model."""


class ToolResult(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    ok: bool
    content: str


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    fn: Callable[..., Any]
    arguments: type[BaseModel]
    takes_model: bool
    json_schema: dict[str, Any]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    @property
    def parameter_names(self) -> list[str]:
        return list(self.arguments.model_fields)

    def run(self, arguments: Mapping[str, Any]) -> ToolResult:
        """Validate ``arguments`` and run the tool; every failure becomes an ``ok=False`` result."""
        try:
            validated = self.arguments.model_validate(arguments)
        except ValidationError as err:
            return self._fail(f"invalid arguments for {self.name}: {_describe(err)}; expected {self.signature()}")
        try:
            # __dict__ holds exactly the fields (extra is forbidden); dict(model) is several times slower
            value = self.fn(validated) if self.takes_model else self.fn(**validated.__dict__)
        except ToolError as err:
            return self._fail(str(err))
        except Exception as err:  # noqa: BLE001 - a crashing tool must not kill the rollout
            logger.warning("tool %s raised %r", self.name, err)
            return self._fail(f"{self.name} failed: {type(err).__name__}: {err}")
        return ToolResult(name=self.name, ok=True, content=_as_text(value))

    def signature(self) -> str:
        """A one-line reminder of the valid call, e.g. ``lookup(name: string, attribute: one of ...)``."""
        params = self.json_schema["function"]["parameters"]["properties"]
        parts = []
        for key, spec in params.items():
            kind = "one of " + "|".join(map(str, spec["enum"])) if "enum" in spec else spec.get("type", "any")
            parts.append(f"{key}: {kind}")
        return f"{self.name}({', '.join(parts)})"

    def _fail(self, message: str) -> ToolResult:
        return ToolResult(name=self.name, ok=False, content=message)


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
    """Turn a typed, documented function into a ``Tool``. Usable as ``@tool`` or ``@tool(name=...)``."""

    def wrap(func: Callable[..., Any]) -> Tool:
        model, takes_model, description, returns = arguments_model(func)
        tool_name = name or func.__name__
        if not tool_name.isidentifier():
            raise ToolDefinitionError(f"tool name {tool_name!r} must be a Python identifier")
        return_hint = get_type_hints(func).get("return", inspect.Signature.empty)
        schema = tool_json_schema(tool_name, description, model, returns, return_hint)
        return Tool(tool_name, description, func, model, takes_model, schema)

    return wrap(fn) if fn is not None else wrap


class ToolRegistry:
    """Named tools; ``call`` executes one by name and always returns a ``ToolResult``."""

    def __init__(self, tools: Iterable[Tool | Callable[..., Any]] = ()):
        self._tools: dict[str, Tool] = {}
        for item in tools:
            self.register(item)

    def register(self, item: Tool | Callable[..., Any]) -> Tool:
        registered = item if isinstance(item, Tool) else tool(item)
        if registered.name in self._tools:
            raise ValueError(f"a tool named {registered.name!r} is already registered")
        self._tools[registered.name] = registered
        return registered

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __getitem__(self, name: str) -> Tool:
        return self._tools[name]

    def __iter__(self):
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def schemas(self) -> list[dict[str, Any]]:
        """The tools in the OpenAI/HF format that chat templates and ``/v1/chat/completions`` take."""
        return [t.json_schema for t in self._tools.values()]

    def call(self, name: Any, arguments: Any) -> ToolResult:
        """Run tool ``name`` on ``arguments`` (a mapping or its JSON text). Never raises."""
        label = name if isinstance(name, str) else repr(name)
        found = self._tools.get(name) if isinstance(name, str) else None
        if found is None:
            return ToolResult(
                name=label[:64], ok=False, content=f"unknown tool {label[:64]!r}; valid tools: {', '.join(self._tools)}"
            )
        if isinstance(arguments, str):
            if len(arguments) > MAX_ARGUMENT_CHARS:
                return found._fail(
                    f"arguments for {found.name} are {len(arguments)} characters; the limit is {MAX_ARGUMENT_CHARS}"
                )
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except (ValueError, RecursionError) as err:  # JSONDecodeError, too many digits, too deeply nested
                reason = getattr(err, "msg", None) or type(err).__name__
                return found._fail(
                    f"arguments for {found.name} are not valid JSON ({reason}); expected {found.signature()}"
                )
        if not isinstance(arguments, Mapping):
            return found._fail(f"arguments for {found.name} must be a JSON object; expected {found.signature()}")
        size = _text_size(arguments)
        if size > MAX_ARGUMENT_CHARS:
            return found._fail(
                f"arguments for {found.name} hold more than {MAX_ARGUMENT_CHARS} characters of text, the limit"
            )
        return found.run(arguments)


def _text_size(arguments: Mapping[Any, Any]) -> int:
    """Characters of text in ``arguments``, keys and nested values included."""
    size = 0
    for key, value in arguments.items():  # the common case, flat string arguments, stays a cheap loop
        size += len(key) if type(key) is str else _nested_size(key)
        size += len(value) if type(value) is str else _nested_size(value)
    return size


def _nested_size(value: Any) -> int:
    size, pending = 0, [value]
    while pending and size <= MAX_ARGUMENT_CHARS:  # iterative: nesting depth cannot overflow the stack
        value = pending.pop()
        if isinstance(value, str):
            size += len(value)
        elif isinstance(value, Mapping):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list | tuple):
            pending.extend(value)
        else:
            size += 1
    return size


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors(include_url=False):
        where = ".".join(str(p) for p in e["loc"]) or "arguments"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    try:
        return json.dumps(value, default=str)
    except TypeError:
        return str(value)
