"""A small OpenAI-compatible ``/v1/chat/completions`` server that answers with a policy, for tests.

This server is a stand-in for ``vllm serve``, used only to exercise the OpenAI client loop of
``examples/openai_agent_loop.py`` over real HTTP with the real ``openai`` client; it is not a
model server and says nothing about vLLM. The real vLLM server is tested separately.

It does what a tool-calling server does with a model's text: it asks ``policy.generate`` (the
oracle in the tests) for the assistant text, parses the hermes ``<tool_call>`` blocks in it
into OpenAI ``tool_calls`` (arguments as JSON text, ``finish_reason="tool_calls"``), and leaves
text it cannot parse in ``content``, as vLLM's hermes parser does. It checks the requests the
way a strict server would (400 with an OpenAI-style error body): known model, a ``tools`` list
of function tools, tool-call arguments sent back as JSON text, and every ``tool`` message
answering an earlier assistant ``tool_call_id`` exactly once. Bound to 127.0.0.1 on a free
port; it shuts itself down after ``lifetime_s`` even if a test forgets to.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from itl_env.formats import HermesFormat

logger = logging.getLogger(__name__)

MAX_BODY = 1 << 20


class RequestError(ValueError):
    """The request is not one an OpenAI-compatible server would accept."""


class ChatCompletionsStub:
    """``with ChatCompletionsStub(policy) as server:`` serves ``server.base_url`` until the block ends."""

    def __init__(self, policy: Any, model: str = "oracle", lifetime_s: float = 120.0):
        self.policy = policy
        self.model = model
        self.lifetime_s = lifetime_s
        self.requests: list[dict[str, Any]] = []  # every accepted /v1/chat/completions body, for assertions
        self._lock = threading.Lock()
        self._calls = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the server is not running")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> ChatCompletionsStub:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.rstrip("/") != "/v1/models":
                    return self._send(HTTPStatus.NOT_FOUND, _error(f"no route GET {self.path}"))
                models = {
                    "object": "list",
                    "data": [{"id": stub.model, "object": "model", "created": 0, "owned_by": "itl"}],
                }
                self._send(HTTPStatus.OK, models)

            def do_POST(self) -> None:
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(HTTPStatus.NOT_FOUND, _error(f"no route POST {self.path}"))
                length = int(self.headers.get("Content-Length") or 0)
                if not 0 < length <= MAX_BODY:
                    return self._send(HTTPStatus.BAD_REQUEST, _error(f"body of {length} bytes"))
                try:
                    body = json.loads(self.rfile.read(length))
                    self._send(HTTPStatus.OK, stub.complete(body))
                except (json.JSONDecodeError, RequestError) as err:
                    self._send(HTTPStatus.BAD_REQUEST, _error(str(err)))

            def _send(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("stub server: " + format, *args)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="chat-stub", daemon=True)
        self._thread.start()
        self._timer = threading.Timer(self.lifetime_s, self._httpd.shutdown)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._httpd = None

    def complete(self, body: Any) -> dict[str, Any]:
        """The chat completion for one request body (raises ``RequestError`` for a bad request)."""
        conversation = self._check(body)
        with self._lock:
            self.requests.append(body)
            (text,) = self.policy.generate([conversation])
            self._calls += 1
            call_id_base = self._calls
        parsed = HermesFormat().parse(text)
        if parsed.calls and not parsed.errors:
            tool_calls = [
                {
                    "id": f"call_{call_id_base}_{i}",
                    "type": "function",
                    "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
                }
                for i, c in enumerate(parsed.calls)
            ]
            message = {"role": "assistant", "content": parsed.content or None, "tool_calls": tool_calls}
            finish = "tool_calls"
        else:  # no call, or text the parser cannot read: it stays content, as with vLLM's parser
            message, finish = {"role": "assistant", "content": text}, "stop"
        return {
            "id": f"chatcmpl-{call_id_base}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        }

    def _check(self, body: Any) -> list[dict[str, Any]]:
        """Validate the request; return its conversation in the project's format (arguments as dicts)."""
        if not isinstance(body, dict):
            raise RequestError("the body must be a JSON object")
        if body.get("model") != self.model:
            raise RequestError(f"model {body.get('model')!r} does not exist; available: {self.model}")
        for spec in body.get("tools", []):
            function = spec.get("function") if isinstance(spec, dict) else None
            if not isinstance(function, dict) or spec.get("type") != "function" or "name" not in function:
                raise RequestError(f"tools entries must be function tools, got {spec!r}")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError("messages must be a non-empty list")
        open_calls: set[str] = set()
        conversation = []
        for i, message in enumerate(messages):
            role = message.get("role") if isinstance(message, dict) else None
            if role not in ("system", "user", "assistant", "tool"):
                raise RequestError(f"messages[{i}] has an invalid role {role!r}")
            message = dict(message)
            if role == "assistant" and message.get("tool_calls"):
                calls = []
                for call in message["tool_calls"]:
                    arguments = call.get("function", {}).get("arguments")
                    if not isinstance(arguments, str):
                        raise RequestError(f"messages[{i}]: tool call arguments must be a JSON string")
                    open_calls.add(call["id"])
                    try:  # the project's messages carry arguments as a dict; undecodable text is kept as it came
                        arguments = json.loads(arguments)
                    except json.JSONDecodeError:
                        pass
                    calls.append({**call, "function": {**call["function"], "arguments": arguments}})
                message["tool_calls"] = calls
            elif role == "tool":
                call_id = message.get("tool_call_id")
                if call_id not in open_calls:
                    raise RequestError(f"messages[{i}]: tool_call_id {call_id!r} answers no open tool call")
                open_calls.discard(call_id)
            conversation.append(message)
        if open_calls and messages[-1].get("role") != "assistant":
            raise RequestError(f"tool calls {sorted(open_calls)} were never answered with a tool message")
        return conversation


def _error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
