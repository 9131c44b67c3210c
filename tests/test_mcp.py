"""``python -m itl_env.serve_mcp`` (``tools.mcp``): a real MCP client session over stdio and streamable HTTP.

Each transport test starts the real server process on a tmp world; the HTTP one binds
127.0.0.1 on a free port and is always terminated. Invalid calls must come back as MCP tool
errors (``isError``) with the registry's own message, and the server must keep serving.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

pytest.importorskip("mcp", reason="the MCP server is an optional extra: pip install 'itl[mcp]'")

from mcp.client import Client, ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from itl_env.env import fact_registry
from itl_env.world import World
from tools import ToolError, ToolRegistry, tool
from tools.mcp import HTTP_PATH, build_server

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 30.0
TRANSPORTS = ["stdio", "http"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_listening(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"MCP server exited with {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"MCP server not listening on 127.0.0.1:{port} after {READY_TIMEOUT_S} s:\n{log.read_text()}")


@asynccontextmanager
async def mcp_session(transport: str, world: World, tmp_path: Path) -> AsyncIterator[ClientSession]:
    """An initialised client session with ``python -m itl_env.serve_mcp --world <world>`` over ``transport``."""
    command = [sys.executable, "-m", "itl_env.serve_mcp", "--world", world.url]
    if transport == "stdio":
        params = StdioServerParameters(command=command[0], args=command[1:], cwd=REPO)
        with (tmp_path / "server.log").open("w") as log:
            async with stdio_client(params, errlog=log) as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                yield session
        return
    port = free_port()
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*command, "--transport", "http", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_listening(process, port, log_path)
        url = f"http://127.0.0.1:{port}{HTTP_PATH}"
        async with streamable_http_client(url) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            yield session
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def _timeout(seconds: int) -> Any:
    """Fail (instead of hanging the suite) if the block takes longer than ``seconds``: the server may not answer."""

    def expire(_signum: int, _frame: Any) -> None:
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run(scenario: Any) -> Any:
    async def bounded() -> Any:
        with anyio.fail_after(60):  # a hung server fails the test instead of hanging the suite
            return await scenario()

    return anyio.run(bounded)


def text_of(result: Any) -> str:
    assert len(result.content) == 1 and result.content[0].type == "text"
    return result.content[0].text


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_lists_lookup_with_the_registry_schema(transport: str, shared_world: World, tmp_path: Path) -> None:
    async def scenario() -> list[Any]:
        async with mcp_session(transport, shared_world, tmp_path) as session:
            return (await session.list_tools()).tools

    tools = run(scenario)
    expected = fact_registry(shared_world)["lookup"].json_schema["function"]
    assert [t.name for t in tools] == ["lookup"]
    assert tools[0].input_schema == expected["parameters"]
    assert tools[0].description == expected["description"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_lookup_returns_the_world_value(transport: str, shared_world: World, tmp_path: Path) -> None:
    facts = shared_world.facts("train")[:3] + shared_world.facts("unseen")[:1]

    async def scenario() -> list[Any]:
        async with mcp_session(transport, shared_world, tmp_path) as session:
            return [
                await session.call_tool("lookup", {"name": f.person, "attribute": f.attribute.value}) for f in facts
            ]

    results = run(scenario)
    assert [text_of(r) for r in results] == [f.value for f in facts]
    assert not any(r.is_error for r in results)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_invalid_calls_are_tool_errors_and_the_server_keeps_serving(
    transport: str, shared_world: World, tmp_path: Path
) -> None:
    fact = shared_world.facts("train")[0]
    calls = [
        ("lookup", {"name": fact.person, "attribute": "age"}),  # unknown attribute value
        ("lookup", {"name": fact.person}),  # missing argument
        ("search", {"query": fact.person}),  # unknown tool
        ("lookup", {"name": "Nobody Anywhere", "attribute": "occupation"}),  # no such person
    ]
    registry = fact_registry(shared_world)

    async def scenario() -> tuple[list[Any], Any]:
        async with mcp_session(transport, shared_world, tmp_path) as session:
            errors = [await session.call_tool(name, arguments) for name, arguments in calls]
            after = await session.call_tool("lookup", {"name": fact.person, "attribute": fact.attribute.value})
            return errors, after

    errors, after = run(scenario)
    assert [e.is_error for e in errors] == [True] * len(calls)
    assert [text_of(e) for e in errors] == [registry.call(name, arguments).content for name, arguments in calls]
    assert "valid tools: lookup" in text_of(errors[2])
    assert after.is_error is False and text_of(after) == fact.value


def test_a_newly_registered_tool_is_served_without_code_changes(shared_world: World) -> None:
    """Any registry is served as-is (in-process client, the SDK's modern per-request path)."""

    @tool
    def count_people(split: str) -> int:
        """Count the people of one split.

        Args:
            split: train or unseen.
        """
        if split not in ("train", "unseen"):
            raise ToolError(f"unknown split {split!r}; valid: train, unseen")
        return len(shared_world.people(split))

    registry = ToolRegistry([*fact_registry(shared_world), count_people])

    async def scenario() -> tuple[list[Any], Any, Any]:
        async with Client(build_server(registry)) as client:
            listed = (await client.list_tools()).tools
            ok = await client.call_tool("count_people", {"split": "unseen"})
            bad = await client.call_tool("count_people", {"split": "test"})
            return listed, ok, bad

    listed, ok, bad = run(scenario)
    assert {t.name: t.input_schema for t in listed} == {
        t.name: t.json_schema["function"]["parameters"] for t in registry
    }
    assert (ok.is_error, text_of(ok)) == (False, str(shared_world.spec.unseen_people))
    assert (bad.is_error, text_of(bad)) == (True, "unknown split 'test'; valid: train, unseen")


def test_cli_rejects_a_missing_world(tmp_path: Path) -> None:
    missing = tmp_path / "absent.db"
    done = subprocess.run(
        [sys.executable, "-m", "itl_env.serve_mcp", "--world", str(missing)],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "cannot open world" in done.stderr and str(missing) in done.stderr
    assert done.stdout == ""  # stdout is the stdio wire: nothing else may be written there
    assert not missing.exists()  # opening read-only must not create an empty database


def test_a_lone_surrogate_escape_in_a_call_still_gets_an_answer(shared_world: World) -> None:
    """Raw JSON-RPC over stdio: a ``\\ud800`` escape decodes to a lone surrogate, which the reply must not choke on."""
    fact = shared_world.facts("train")[0]
    server = subprocess.Popen(
        [sys.executable, "-m", "itl_env.serve_mcp", "--world", shared_world.url],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )

    def send(message: str) -> None:
        server.stdin.write(message.encode() + b"\n")
        server.stdin.flush()

    replies: list[dict[str, Any]] = []

    def answer(request_id: int | None) -> dict[str, Any]:
        while True:
            for reply in replies:
                if reply.get("id") == request_id:
                    replies.remove(reply)
                    return reply
            replies.append(json.loads(server.stdout.readline()))

    init = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
    try:
        with _timeout(60):
            send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init}))
            assert "result" in answer(1)
            send('{"jsonrpc": "2.0", "method": "notifications/initialized"}')
            send('{"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "\\ud800", "arguments": {}}}')
            send(
                '{"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "lookup", '
                '"arguments": {"name": "Ana \\udfff", "attribute": "occupation"}}}'
            )
            send('{"jsonrpc": "2.0", "id": 5, "method": 7}')  # not a JSON-RPC request
            send("{not json")  # not JSON: answered with id null
            call = {"name": "lookup", "arguments": {"name": fact.person, "attribute": fact.attribute.value}}
            send(json.dumps({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": call}))
            unknown, nobody, invalid, unparsable, ok = answer(2), answer(3), answer(5), answer(None), answer(4)
    finally:
        server.kill()
        server.wait(timeout=10)
    assert unknown["result"]["isError"] is True
    assert unknown["result"]["content"][0]["text"] == "unknown tool '\ufffd'; valid tools: lookup"
    assert nobody["result"]["isError"] is True
    assert "no person named 'Ana \ufffd'" in nobody["result"]["content"][0]["text"]
    assert invalid["error"]["code"] == -32600 and invalid["error"]["message"].startswith("invalid request")
    assert unparsable["error"] == {"code": -32700, "message": "parse error: JSONDecodeError"}
    assert ok["result"]["isError"] is False and ok["result"]["content"][0]["text"] == fact.value
