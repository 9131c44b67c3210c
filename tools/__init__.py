"""Typed tools: the ``@tool`` decorator, the registry, and fact lookups over the world database."""

from tools.registry import Tool, ToolError, ToolRegistry, ToolResult, tool

__all__ = ["Tool", "ToolError", "ToolRegistry", "ToolResult", "tool"]
