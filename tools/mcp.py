"""Serve a ``ToolRegistry`` over the Model Context Protocol (stdio or streamable HTTP).

Usage:
    python -m tools.mcp --world data/world.db                                  # stdio (an MCP client spawns it)
    python -m tools.mcp --world data/world.db --transport http --port 8765     # http://127.0.0.1:8765/mcp

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

``tools/`` sits below ``itl_env/``: ``build_server`` takes any registry; only the CLI's
``main`` imports ``itl_env`` (lazily) to open a world and build its fact registry. The ``mcp``
package is an optional dependency and is imported only when a server is built or run.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tools.registry import ToolRegistry, ToolResult

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
        content=[mcp_types.TextContent(type="text", text=result.content)], is_error=not result.ok
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
        result = await anyio.to_thread.run_sync(registry.call, params.name, params.arguments or {})
        if not result.ok:
            logger.info("tool %r error: %s", params.name, result.content)
        return call_result(result)

    return Server(name, on_list_tools=list_tools, on_call_tool=call_tool)


def serve(server: Server, transport: Transport = "stdio", host: str = "127.0.0.1", port: int = 8765) -> None:
    """Run ``server`` until its client disconnects (stdio) or the process is stopped (http)."""
    import anyio

    if transport == "stdio":
        from mcp.server.stdio import stdio_server

        async def run_stdio() -> None:
            async with stdio_server() as (read_stream, write_stream):
                await server.run(read_stream, write_stream, server.create_initialization_options())

        anyio.run(run_stdio)
    elif transport == "http":
        import uvicorn

        app = server.streamable_http_app(streamable_http_path=HTTP_PATH, host=host)
        logger.info("serving MCP over streamable HTTP at http://%s:%d%s", host, port, HTTP_PATH)
        uvicorn.run(app, host=host, port=port, log_level="warning")
    else:
        raise ValueError(f"unknown transport {transport!r}; valid: stdio, http")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.mcp",
        description="Serve the fact-lookup tools of a world over the Model Context Protocol.",
    )
    parser.add_argument("--world", required=True, help="the world to serve: SQLite file path or SQLAlchemy URL")
    parser.add_argument(
        "--transport",
        choices=("stdio", "http"),
        default="stdio",
        help="stdio: speak MCP on stdin/stdout (for a client that spawns this process); "
        f"http: streamable HTTP at http://HOST:PORT{HTTP_PATH} (default: %(default)s)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind for --transport http (default: %(default)s)"
    )
    parser.add_argument("--port", type=int, default=8765, help="port for --transport http (default: %(default)s)")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port must be in 1..65535, got {args.port}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)  # stdout is the stdio wire
    from itl_env.env import fact_registry  # the one upward import: the CLI opens a world, the library does not
    from itl_env.world import World

    try:
        world = World.open(args.world)
    except Exception as err:  # noqa: BLE001 - any failure to open is one clear message and exit status 1
        sys.exit(f"python -m tools.mcp: cannot open world {args.world!r}: {type(err).__name__}: {err}")
    try:
        registry = fact_registry(world)
        logger.info("%r: serving tools %s over %s", world, ", ".join(registry.names), args.transport)
        serve(build_server(registry), args.transport, args.host, args.port)
    finally:
        world.close()


if __name__ == "__main__":
    # `python tools/mcp.py` puts tools/ first on sys.path, where this file would shadow the `mcp` package.
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)
    main()
