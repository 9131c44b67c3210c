"""Serve a ``ToolRegistry`` over the Model Context Protocol (stdio or streamable HTTP).

Every tool in the registry is served as it is: its MCP ``inputSchema`` is the registry's JSON
schema (``function.parameters``), and a call goes through ``ToolRegistry.call``, so arguments
are validated and errors worded exactly as inside ``ToolUseEnv``. An ``ok=False`` result is an
MCP tool error (``isError: true``) whose text the model can read; nothing raises.

Why the SDK's low-level ``Server`` and not ``MCPServer`` (the FastMCP of mcp 1.x): MCPServer
derives each tool's schema from a Python signature, validates arguments itself and rewrites
error texts ("Error executing tool ...", "Unknown tool: ..."). The registry already owns the
schema, the validation and the wording; the low-level server's ``on_list_tools`` /
``on_call_tool`` handlers take them as they are, so a newly registered tool is served with no
code change here.

This module is generic: it serves any registry. ``python -m itl_env.serve_mcp`` is the command
that opens a world and serves its tools. Names and arguments are made valid Unicode before the
call (a JSON ``"\\ud800"`` escape is a lone surrogate the SDK cannot write back), so every request
gets an answer. The ``mcp`` package is an optional dependency, imported only when a server is built or run.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

from tools.registry import ToolRegistry, ToolResult
from tools.text import valid_text, valid_value

if TYPE_CHECKING:
    from mcp.server import Server

logger = logging.getLogger(__name__)

SERVER_NAME = "itl-tools"
HTTP_PATH = "/mcp"
Transport = Literal["stdio", "http"]


def mcp_tools(registry: ToolRegistry) -> list[Any]:
    """The registry's tools as MCP ``Tool`` definitions, schemas copied verbatim."""
    import mcp.types as mcp_types

    return [
        mcp_types.Tool(
            name=tool.name,
            description=tool.json_schema["function"]["description"],
            input_schema=tool.json_schema["function"]["parameters"],
        )
        for tool in registry
    ]


def call_result(result: ToolResult) -> Any:
    """A ``ToolResult`` as an MCP ``CallToolResult``: ``ok=False`` becomes ``isError: true``."""
    import mcp.types as mcp_types

    return mcp_types.CallToolResult(
        content=[mcp_types.TextContent(type="text", text=valid_text(result.content))], is_error=not result.ok
    )


def build_server(registry: ToolRegistry, name: str = SERVER_NAME) -> Server:
    """An MCP server that lists and calls every tool of ``registry``."""
    import anyio.to_thread
    import mcp.types as mcp_types
    from mcp.server import Server

    async def list_tools(ctx: Any, params: Any) -> mcp_types.ListToolsResult:
        return mcp_types.ListToolsResult(tools=mcp_tools(registry))  # read per request: newly registered tools show

    async def call_tool(ctx: Any, params: mcp_types.CallToolRequestParams) -> mcp_types.CallToolResult:
        # Tools are plain sync functions (a DB lookup); a worker thread keeps a slow one off the event loop.
        name, arguments = valid_text(params.name), valid_value(params.arguments or {})
        result = await anyio.to_thread.run_sync(registry.call, name, arguments)
        if not result.ok:
            logger.info("tool %r error: %s", params.name, result.content)
        return call_result(result)

    return Server(name, on_list_tools=list_tools, on_call_tool=call_tool)


class ReadableLines:
    """stdin lines for the SDK's stdio reader, each one it can read, so every request gets an answer.

    The SDK drops a line it cannot validate without replying (the client then waits forever): a JSON
    ``"\\ud800"`` escape (a lone surrogate) is one. Lines are passed on with such strings made valid
    Unicode; a line that is still not a JSON-RPC message is answered here with JSON-RPC's own error
    (parse error, or invalid request with the request's id), through the server's write stream.
    """

    def __init__(self) -> None:
        import sys
        from io import TextIOWrapper

        import anyio

        self._stdin = anyio.wrap_file(TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace"))
        self.replies: Any = None

    def __aiter__(self) -> Any:
        return self._lines()

    async def _lines(self) -> Any:
        async for line in self._stdin:
            fixed, error = readable_line(line)
            if fixed is not None:
                yield fixed
            elif error is not None and self.replies is not None:
                from mcp.shared.message import SessionMessage

                await self.replies.send(SessionMessage(error))


def readable_line(line: str) -> tuple[str | None, Any]:
    """(a line the SDK reads, None) or (None, the JSON-RPC error that answers it; None for a bad notification)."""
    import json

    import mcp_types as mcp_types
    from pydantic import ValidationError

    try:
        mcp_types.jsonrpc_message_adapter.validate_json(line, by_name=False)
        return line, None
    except ValidationError:
        pass
    try:
        data = valid_value(json.loads(line))
    except (ValueError, RecursionError) as err:
        return None, _error(None, mcp_types.PARSE_ERROR, f"parse error: {type(err).__name__}")
    fixed = json.dumps(data, ensure_ascii=False)
    try:
        mcp_types.jsonrpc_message_adapter.validate_json(fixed, by_name=False)
        return fixed, None
    except ValidationError as err:
        request_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(request_id, int | str) or isinstance(request_id, bool):
            request_id = None
        if request_id is None and isinstance(data, dict) and "method" in data:
            return None, None  # a notification: JSON-RPC answers none
        problem = err.errors(include_url=False)[0]["msg"]
        return None, _error(request_id, mcp_types.INVALID_REQUEST, f"invalid request: {problem}")


def _error(request_id: Any, code: int, message: str) -> Any:
    import mcp_types as mcp_types

    return mcp_types.JSONRPCError(jsonrpc="2.0", id=request_id, error=mcp_types.ErrorData(code=code, message=message))


def serve(server: Server, transport: Transport = "stdio", host: str = "127.0.0.1", port: int = 8765) -> None:
    """Run ``server`` until its client disconnects (stdio) or the process is stopped (http)."""
    import anyio

    if transport == "stdio":
        from mcp.server.stdio import stdio_server

        async def run_stdio() -> None:
            lines = ReadableLines()
            async with stdio_server(stdin=lines) as (read_stream, write_stream):
                lines.replies = write_stream  # set before the reader's first line: it runs at the next await
                await server.run(read_stream, write_stream, server.create_initialization_options())

        anyio.run(run_stdio)
    elif transport == "http":
        import uvicorn

        app = server.streamable_http_app(streamable_http_path=HTTP_PATH, host=host)
        logger.info("serving MCP over streamable HTTP at http://%s:%d%s", host, port, HTTP_PATH)
        uvicorn.run(app, host=host, port=port, log_level="warning")
    else:
        raise ValueError(f"unknown transport {transport!r}; valid: stdio, http")
