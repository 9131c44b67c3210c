"""The ``@tool`` decorator, ``Tool``, ``ToolResult`` and ``ToolRegistry``.

A tool is a typed Python function with a Google-style docstring; everything else (argument
validation, JSON schema, execution) is derived from it. ``ToolRegistry.call`` and ``Tool.run``
never raise (``KeyboardInterrupt`` aside), never hang and never return unbounded text: unknown
tools, invalid arguments, failures inside a tool, values that cannot be written as text and calls
past the time limit come back as ``ok=False`` results whose text tells the model what was wrong
and what is valid. ``content`` holds at most ``max_result_chars`` characters, a cut note included.
"""

from __future__ import annotations

import _signal  # the C functions: signal.signal's enum conversion costs ~2 us a call, a tenth of a lookup
import contextlib
import importlib
import inspect
import itertools
import json
import logging
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, ValidationError

from tools.schema import ToolDefinitionError, arguments_model, tool_json_schema

logger = logging.getLogger(__name__)

MAX_ARGUMENT_CHARS = 4096  # a lookup needs ~100 characters; anything far larger is a runaway generation
DEFAULT_TIMEOUT_S = 10.0  # a lookup takes microseconds; the limit only stops a tool that hangs
DEFAULT_MAX_RESULT_CHARS = 8192
MIN_RESULT_CHARS = 100  # room for the cut note and the start of the text


class ToolError(Exception):
    """Raised inside a tool for an expected failure (no such person...); its text goes to the model."""


class ToolResult(BaseModel):
    """What a call gave: the text the model reads, and whether the call succeeded (errors are results too)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    ok: bool
    content: str


@dataclass(frozen=True)
class Tool:
    """A registered typed function: its name and description, its pydantic argument model and JSON schema (both
    derived from the signature and docstring by ``@tool``). ``run`` validates arguments and always returns a
    ``ToolResult``; calling the tool calls the function as written.
    """

    name: str
    description: str
    fn: Callable[..., Any]
    arguments: type[BaseModel]
    takes_model: bool
    json_schema: dict[str, Any]
    time_limited: bool = True  # False: the tool bounds its own time (see ``tool``), so no timer is armed per call

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    @property
    def parameter_names(self) -> list[str]:
        return list(self.arguments.model_fields)

    def run(
        self,
        arguments: Mapping[str, Any],
        *,
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
        max_result_chars: int = DEFAULT_MAX_RESULT_CHARS,
    ) -> ToolResult:
        """Validate and run, for at most ``timeout_s`` seconds (``None``: no limit); never raises (see the module)."""
        try:
            validated = self.arguments.model_validate(arguments)
        except ValidationError as err:
            message = f"invalid arguments for {self.name}: {_describe(err)}; expected {self.signature()}"
            return self._fail(message, max_result_chars)
        except Exception as err:  # noqa: BLE001 - a mapping whose keys() or __getitem__ raises is still only a result
            return self._fail(f"arguments for {self.name} could not be read: {_error_text(err)}", max_result_chars)
        outcome = _within(timeout_s if self.time_limited else None, self._attempt, validated)
        ok, text = outcome if outcome is not None else (False, f"{self.name} did not finish within {timeout_s:g} s")
        return ToolResult(name=self.name, ok=ok, content=_cut(text, max_result_chars))

    def _attempt(self, validated: BaseModel) -> tuple[bool, str]:
        """Call the tool and write its value as text, both inside the time limit; a failure is ``(False, why)``."""
        try:
            # __dict__ holds exactly the fields (extra is forbidden); dict(model) is several times slower
            value = self.fn(validated) if self.takes_model else self.fn(**validated.__dict__)
        except ToolError as err:
            return False, _error_text(err, with_type=False)
        except (Exception, SystemExit) as err:  # noqa: BLE001 - a crashing tool must not end the rollout nor the process
            text = _error_text(err)
            logger.warning("tool %s raised %s", self.name, text[:500])
            return False, f"{self.name} failed: {text}"
        try:
            return True, value if type(value) is str else _as_text(value)
        except (Exception, SystemExit) as err:  # noqa: BLE001 - too many digits, a cycle, a raising __str__...
            return False, f"{self.name} returned a value that cannot be written as text: {_error_text(err)}"

    def signature(self) -> str:
        """A one-line reminder of the valid call, e.g. ``lookup(name: string, attribute: one of ...)``."""
        params = self.json_schema["function"]["parameters"]["properties"]
        parts = []
        for key, spec in params.items():
            kind = "one of " + "|".join(map(str, spec["enum"])) if "enum" in spec else spec.get("type", "any")
            parts.append(f"{key}: {kind}")
        return f"{self.name}({', '.join(parts)})"

    def _fail(self, message: str, max_result_chars: int = DEFAULT_MAX_RESULT_CHARS) -> ToolResult:
        return ToolResult(name=self.name, ok=False, content=_cut(message, max_result_chars))

    def __reduce__(self) -> tuple[Any, ...]:
        # The argument model is built at run time and has no importable name: a tool pickles as what it is
        # made from. A module-level ``@tool`` is found again by its name; any other tool is rebuilt from its
        # function (a bound method pickles with its instance; a closure cannot be pickled at all).
        module, qualname = getattr(self.fn, "__module__", None), getattr(self.fn, "__qualname__", "")
        if module in sys.modules and _lookup(module, qualname) is self:
            return (_lookup, (module, qualname))
        return (_rebuild, (self.fn, self.name, self.time_limited))


def _lookup(module: str, qualname: str) -> Any:
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part, None)
    return target


def _rebuild(fn: Callable[..., Any], name: str, time_limited: bool = True) -> Tool:
    return tool(fn, name=name, time_limit=time_limited)


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None, time_limit: bool = True) -> Any:
    """Turn a typed, documented function into a ``Tool``. Usable as ``@tool`` or ``@tool(name=...)``.

    ``time_limit=False`` is for a tool that bounds its own time (e.g. a query with the database's own timeouts):
    the registry then arms no timer for it. Every other tool runs for at most the registry's ``timeout_s``.
    """

    def wrap(func: Callable[..., Any]) -> Tool:
        model, takes_model, description, returns = arguments_model(func)
        tool_name = name or func.__name__
        if not tool_name.isidentifier():
            raise ToolDefinitionError(f"tool name {tool_name!r} must be a Python identifier")
        return_hint = get_type_hints(func).get("return", inspect.Signature.empty)
        schema = tool_json_schema(tool_name, description, model, returns, return_hint)
        return Tool(tool_name, description, func, model, takes_model, schema, time_limit)

    return wrap(fn) if fn is not None else wrap


class ToolRegistry:
    """Named tools; ``call`` executes one by name and always returns a ``ToolResult``.

    ``timeout_s`` bounds each call's run time (``None``: no limit); ``max_result_chars`` bounds each
    result's ``content``, cut note included.
    """

    def __init__(
        self,
        tools: Iterable[Tool | Callable[..., Any]] = (),
        *,
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
        max_result_chars: int = DEFAULT_MAX_RESULT_CHARS,
    ):
        if timeout_s is not None and not 0 < timeout_s <= 1e6:  # setitimer takes at most ~1e9 s
            raise ValueError(f"timeout_s must be in (0, 1e6] seconds, or None for no limit; got {timeout_s!r}")
        if max_result_chars < MIN_RESULT_CHARS:
            raise ValueError(f"max_result_chars must be at least {MIN_RESULT_CHARS}; got {max_result_chars!r}")
        self.timeout_s, self.max_result_chars = timeout_s, max_result_chars
        self._tools: dict[str, Tool] = {}
        for item in tools:
            self.register(item)

    def register(self, item: Tool | Callable[..., Any]) -> Tool:
        if not isinstance(item, Tool) and not callable(item):
            raise ToolDefinitionError(f"{type(item).__name__} {str(item)[:40]!r} is not a tool nor a typed function")
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
        key = str.__str__(name) if issubclass(type(name), str) else None  # exact: a subclass may redefine hashing
        found = self._tools.get(key) if key is not None else None
        if found is None:
            label = key[:64] if key is not None else type(name).__name__
            problem = f"unknown tool {label!r}" if key is not None else f"a tool name is a string, not {label}"
            content = _cut(f"{problem}; valid tools: {', '.join(self._tools)}", self.max_result_chars)
            return ToolResult(name=label, ok=False, content=content)
        readable = _read_arguments(found, arguments)
        if isinstance(readable, str):
            return found._fail(readable, self.max_result_chars)
        return found.run(readable, timeout_s=self.timeout_s, max_result_chars=self.max_result_chars)


def _read_arguments(found: Tool, arguments: Any) -> Mapping[Any, Any] | str:
    """``arguments`` (a mapping or its JSON text) as a mapping within the size limit, or why not (a ``str``)."""
    if issubclass(type(arguments), str):
        arguments = str.__str__(arguments)
        if len(arguments) > MAX_ARGUMENT_CHARS:
            return f"arguments for {found.name} are {len(arguments)} characters; the limit is {MAX_ARGUMENT_CHARS}"
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except (ValueError, RecursionError) as err:  # JSONDecodeError, too many digits, too deeply nested
            reason = getattr(err, "msg", None) or type(err).__name__
            return f"arguments for {found.name} are not valid JSON ({reason}); expected {found.signature()}"
    if type(arguments) is not dict and not isinstance(arguments, Mapping):  # the exact type first: ABCs are slow
        return f"arguments for {found.name} must be a JSON object; expected {found.signature()}"
    try:
        size = _text_size(arguments)
    except Exception as err:  # noqa: BLE001 - a list inside itself, a mapping whose items() raises...
        return f"arguments for {found.name} could not be read: {_error_text(err)}"
    if size > MAX_ARGUMENT_CHARS:
        return f"arguments for {found.name} hold more than {MAX_ARGUMENT_CHARS} characters of text, the limit"
    return arguments


def _text_size(arguments: Mapping[Any, Any]) -> int:
    """Characters of text in ``arguments``, keys and nested values included; may stop counting past the limit."""
    size = 0
    for key, value in arguments.items():  # the common case, flat string arguments, stays a cheap loop
        size += len(key) if type(key) is str else _nested_size(key)
        size += len(value) if type(value) is str else _nested_size(value)
        if size > MAX_ARGUMENT_CHARS:
            break
    return size


def _nested_size(value: Any) -> int:
    """Characters of text in ``value``, any other item (a list or mapping included) counting as one.

    Iterative (depth cannot overflow the stack) and stops past the limit. ``ValueError`` for a list inside itself.
    """
    size, on_path, stack = 0, set(), [(0, iter((value,)))]  # (id, iterator over its items) per open container
    while stack:
        item = next(stack[-1][1], stack)  # the stack itself marks the end: it is never an item
        if item is stack:
            on_path.discard(stack.pop()[0])
            continue
        size += len(item) if isinstance(item, str) else 1
        if size > MAX_ARGUMENT_CHARS:
            break
        if isinstance(item, Mapping | list | tuple):
            if id(item) in on_path:
                raise ValueError("a list or mapping contains itself")
            on_path.add(id(item))
            stack.append(
                (id(item), itertools.chain.from_iterable(item.items()) if isinstance(item, Mapping) else iter(item))
            )
    return size


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors(include_url=False):
        where = ".".join(str(p) for p in e["loc"]) or "arguments"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


def _error_text(err: BaseException, *, with_type: bool = True) -> str:
    """``Type: text`` of an exception (or only its text), even when its ``__str__`` raises."""
    try:
        text = str(err)
    except (Exception, SystemExit) as failure:  # noqa: BLE001 - the exception's own text is what failed
        return f"{type(err).__name__} (its text cannot be shown: str() raised {type(failure).__name__})"
    if not with_type:
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _as_text(value: Any) -> str:
    """A tool's value as text: text as is, anything else as JSON (``str()`` where JSON has no form)."""
    if isinstance(value, str):
        return str.__str__(value)  # an exact str: a subclass may redefine len() or slicing, which the cut relies on
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    try:
        return _json_default(value) if isinstance(value, bytes) else json.dumps(value, default=_json_default)
    except TypeError:  # keys JSON cannot hold, e.g. tuples
        return str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, set | frozenset):  # sorted: a set's order changes from one process to the next
        return sorted(value, key=repr)
    return str(value)


def _cut(text: str, limit: int) -> str:
    """``text`` if it has at most ``limit`` characters, else its start and a note: ``limit`` characters in all."""
    if len(text) <= limit:
        return text
    note = "\n[cut: {:,} characters; the first {:,} are shown]"
    shown = max(0, limit - len(note.format(len(text), limit)))
    return text[:shown] + note.format(len(text), shown)


# The time limit. In the main thread a SIGALRM timer (5 system calls, 2-3 us) raises _Timeout in the tool: it
# stops Python code, sleeps and lock waits, but not a long C call (a slow SQLite query), which it stops
# once the call returns; a tool that catches BaseException can swallow it. A sooner timer already armed
# (an outer call's, pytest-timeout's) is left to rule; a later one is re-armed less the time spent, and
# the previous handler is put back. Python runs signal handlers in the main thread only, so other threads
# (the MCP server's workers) hand the call to a worker thread and wait; a call past its limit is abandoned
# there: stopped at its next Python instruction, or left blocked in C code, and its thread is not reused.
_alarm_owner: object | None = None  # the token of the main-thread call whose timer is armed


class _Timeout(BaseException):
    """A call ran past its limit; a BaseException, so that a tool's ``except Exception`` does not catch it."""


def _within(seconds: float | None, attempt: Callable[[Any], Any], arg: Any) -> Any:
    """``attempt(arg)``, or ``None`` if it ran more than ``seconds``."""
    if seconds is None:
        return attempt(arg)
    if threading.get_ident() == threading.main_thread().ident and _signal.getsignal(_signal.SIGALRM) is not None:
        return _with_alarm(seconds, attempt, arg)  # getsignal is None for a handler set outside Python: keep it
    return _on_worker(seconds, attempt, arg)


def _on_alarm(signum: int, frame: Any) -> None:
    if _alarm_owner is not None:
        raise _Timeout(_alarm_owner)


def _with_alarm(seconds: float, attempt: Callable[[Any], Any], arg: Any) -> Any:
    global _alarm_owner
    outer_delay, outer_interval = _signal.getitimer(_signal.ITIMER_REAL)
    if outer_delay and outer_delay <= seconds:  # a sooner timer (an outer call's, pytest-timeout's) rules
        return attempt(arg)
    outer_owner, owner = _alarm_owner, object()
    previous_handler = _signal.signal(_signal.SIGALRM, _on_alarm)
    try:
        try:
            _alarm_owner = owner  # before arming: the alarm may come at once
            _signal.setitimer(_signal.ITIMER_REAL, seconds)
            return attempt(arg)
        finally:
            _alarm_owner = None  # an alarm of ours still pending now does nothing
            left = _signal.setitimer(_signal.ITIMER_REAL, 0)[0]
            _signal.signal(_signal.SIGALRM, previous_handler)
            _alarm_owner = outer_owner
            if outer_delay:  # the later timer this call displaced, less the time it took
                _signal.setitimer(_signal.ITIMER_REAL, max(outer_delay - (seconds - left), 1e-6), outer_interval)
    except _Timeout as timeout:
        if timeout.args != (owner,):  # an outer call's
            raise
        return None


class _Worker(threading.Thread):
    def __init__(self):
        super().__init__(name="itl-tool-worker", daemon=True)  # daemon: a hung tool must not block exit
        self.jobs: queue.SimpleQueue[tuple[Callable[[Any], Any], Any, queue.SimpleQueue]] = queue.SimpleQueue()
        self.abandoned = False

    def run(self) -> None:
        with contextlib.suppress(_Timeout):  # the stop sent to an abandoned call may land just after its tool returned
            while True:
                attempt, arg, reply = self.jobs.get()  # reply: the caller's own queue for the outcome
                try:
                    outcome = (attempt(arg), None)
                except BaseException as err:  # noqa: BLE001 - re-raised in the calling thread
                    outcome = (None, err)
                with _POOL_LOCK:
                    if self.abandoned:
                        return
                    reply.put(outcome)
                    _IDLE.append(self)


_POOL_LOCK = threading.Lock()
_IDLE: list[_Worker] = []
os.register_at_fork(after_in_child=_IDLE.clear)  # a forked child has none of its parent's threads


def _on_worker(seconds: float, attempt: Callable[[Any], Any], arg: Any) -> Any:
    with _POOL_LOCK:
        worker = _IDLE.pop() if _IDLE else _Worker()
    if worker.ident is None:
        worker.start()
    reply: queue.SimpleQueue[tuple[Any, BaseException | None]] = queue.SimpleQueue()
    worker.jobs.put((attempt, arg, reply))
    try:
        value, error = reply.get(timeout=seconds)
    except queue.Empty:
        with _POOL_LOCK:
            if reply.empty():  # still running: never reuse it, and stop it if it runs Python code
                worker.abandoned = True
                import ctypes  # CPython's C API, needed only once a call has run past its limit

                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(worker.ident), ctypes.py_object(_Timeout))
                return None
        value, error = reply.get()
    if error is not None:
        raise error
    return value
