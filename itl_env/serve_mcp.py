"""Serve a world's tools over the Model Context Protocol (stdio or streamable HTTP).

    python -m itl_env.serve_mcp --world data/world.db                                # stdio (an MCP client spawns it)
    python -m itl_env.serve_mcp --world data/world.db --transport http --port 8765   # http://127.0.0.1:8765/mcp
    python -m itl_env.serve_mcp --world data/world.db --tools mypackage.tools:registry   # any registry factory
    itl-mcp --world data/world.db                                                    # the same, installed command

The registry is built by ``--tools`` (a ``module:callable`` called with the opened world; default:
the fact tools) and served by ``tools.mcp`` as it is. stdout is the stdio wire: logs go to stderr.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger("itl_env.serve_mcp")

PROG = "python -m itl_env.serve_mcp"


class ServeOptions(BaseModel):
    """Which world and tools to serve, and over which transport."""

    model_config = ConfigDict(extra="forbid")

    world: str = Field(description="the world to serve: SQLite file path or SQLAlchemy URL")
    tools: str | None = Field(None, description="registry factory 'module:callable' (none: the fact tools)")
    transport: Literal["stdio", "http"] = Field(
        "stdio", description="stdio: speak MCP on stdin/stdout; http: streamable HTTP at http://HOST:PORT/mcp"
    )
    host: str = Field("127.0.0.1", description="address to bind for --transport http")
    port: int = Field(8765, ge=1, le=65535, description="port for --transport http")


def main(argv: list[str] | None = None) -> None:
    """``python -m itl_env.serve_mcp`` / ``itl-mcp`` (``configs.run_cli``: a bad world or plug-in is one line)."""
    from configs.cli import run_cli

    run_cli(PROG, serve_world, argv)


def serve_world(argv: list[str] | None) -> None:
    from configs import resolve
    from itl_env.fact_tools import registry_for
    from itl_env.store import shown
    from itl_env.world import World
    from tools.mcp import build_server, serve
    from tools.plugins import PluginError

    (opts,) = resolve([ServeOptions], argv, prog=PROG, description="Serve a world's tools over MCP.")
    try:
        world = World.open(opts.world)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot open world {shown(opts.world)!r}: {err}") from err
    try:
        try:
            registry = registry_for(world, opts.tools)
        except PluginError as err:
            raise PluginError(f"--tools: {err}") from err
        logger.info("%r: serving tools %s over %s", world, ", ".join(registry.names), opts.transport)
        serve(build_server(registry), opts.transport, opts.host, opts.port)
    finally:
        world.close()


if __name__ == "__main__":
    main()
