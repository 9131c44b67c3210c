"""The fact tools over a world: ``lookup(name, attribute)`` and the registry every episode gets by default.

The tools are methods of ``FactTools``, which holds only its world: a registry of them pickles (a
world pickles as its target), so environments can be sent to spawned workers or Ray actors.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

from itl_env.store import Attribute
from tools.plugins import PluginError, call_plugin
from tools.registry import Tool, ToolError, ToolRegistry, tool

if TYPE_CHECKING:
    from itl_env.world import World


class FactTools:
    """The typed fact tools of one world (read through its read-only engine)."""

    def __init__(self, world: World):
        self.world = world

    def lookup(self, name: str, attribute: Attribute) -> str:
        """Look up one attribute of a person in the facts database.

        Args:
            name: The person's full name, e.g. "Kyler Ellison".
            attribute: Which fact to return.
        """
        value = self.world.index.value(name.strip(), attribute)
        if value is None:
            shown = name if len(name) <= 80 else name[:77] + "..."
            raise ToolError(f"no person named {shown!r} in the database; give the full name as written in the question")
        return value


# Building a tool (pydantic models, schema) takes milliseconds; tools are immutable, so a world's
# environments share them (a rollout makes batch_size environments).
_TOOLS: weakref.WeakKeyDictionary[World, list[Tool]] = weakref.WeakKeyDictionary()


def fact_tools(world: World) -> list[Tool]:
    """The fact tools over ``world`` (built once per world)."""
    if world not in _TOOLS:
        # lookup bounds its own time (an indexed SELECT; SQLite's busy timeout, a server's connect and statement
        # timeouts: store.read_only_engine), so no timer is armed per call, a fifth of a call's cost
        _TOOLS[world] = [tool(FactTools(world).lookup, time_limit=False)]
    return _TOOLS[world]


def fact_registry(world: World) -> ToolRegistry:
    """A new registry of the fact tools over ``world`` (the tools themselves are shared)."""
    return ToolRegistry(fact_tools(world))


DEFAULT_TOOLS = "itl_env.fact_tools:fact_registry"


def registry_for(world: World, tools: str | None = None) -> ToolRegistry:
    """The registry built by the factory ``tools`` ("module:callable", called with the world; default: the fact
    tools). The factory returns a ``ToolRegistry`` or an iterable of tools / typed functions.
    """
    reference = tools or DEFAULT_TOOLS
    made = call_plugin(reference, "--tools", world)
    if isinstance(made, ToolRegistry):
        registry = made
    elif isinstance(made, list | tuple):
        try:
            registry = ToolRegistry(made)
        except (TypeError, ValueError) as err:  # not a tool nor a typed, documented function; a name twice
            raise PluginError(f"--tools {reference}: {err}") from err
    else:
        raise PluginError(f"--tools {reference} returned {type(made).__name__}, not a ToolRegistry or a list of tools")
    if not registry.names:
        raise PluginError(f"--tools {reference} returned no tools")
    return registry
