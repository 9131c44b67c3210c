"""``ToolRegistry.call``: every outcome is a ``ToolResult``; nothing raises into the rollout."""

from __future__ import annotations

import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum

import pytest
from pydantic import BaseModel

from tools import ToolError, ToolRegistry, ToolResult, tool
from tools.registry import MAX_ARGUMENT_CHARS


class Unit(StrEnum):
    celsius = "celsius"
    fahrenheit = "fahrenheit"


@tool
def convert(degrees: float, unit: Unit, digits: int = 1) -> str:
    """Convert a Celsius temperature.

    Args:
        degrees: Temperature in Celsius.
        unit: Unit of the answer.
        digits: Decimal places.
    """
    value = degrees if unit is Unit.celsius else degrees * 9 / 5 + 32
    return f"{value:.{digits}f}"


@tool
def divide(a: int, b: int) -> float:
    """Divide two integers.

    Args:
        a: Numerator.
        b: Denominator.
    """
    return a / b


@tool
def find_city(name: str) -> str:
    """Find a city.

    Args:
        name: City name.
    """
    if name != "Lyon":
        raise ToolError(f"no city named {name!r}; try Lyon")
    return "France"


@pytest.fixture
def registry() -> ToolRegistry:
    return ToolRegistry([convert, divide, find_city])


def test_success(registry):
    result = registry.call("convert", {"degrees": 100, "unit": "fahrenheit"})
    assert result == ToolResult(name="convert", ok=True, content="212.0")


def test_non_string_return_is_json(registry):
    assert registry.call("divide", {"a": 7, "b": 2}).content == "3.5"


def test_unknown_tool_lists_valid_tools(registry):
    result = registry.call("weather", {"city": "Lyon"})
    assert not result.ok
    assert result.content == "unknown tool 'weather'; valid tools: convert, divide, find_city"


def test_non_string_tool_name(registry):
    result = registry.call(None, {})
    assert not result.ok and "valid tools: convert, divide, find_city" in result.content


def test_missing_argument(registry):
    result = registry.call("convert", {"degrees": 3})
    assert not result.ok
    assert "unit: Field required" in result.content
    assert "expected convert(degrees: number, unit: one of celsius|fahrenheit, digits: integer)" in result.content


def test_extra_argument(registry):
    result = registry.call("convert", {"degrees": 3, "unit": "celsius", "scale": "kelvin"})
    assert not result.ok and "scale: Extra inputs are not permitted" in result.content


def test_wrong_type(registry):
    result = registry.call("convert", {"degrees": "hot", "unit": "celsius"})
    assert not result.ok and "degrees: Input should be a valid number" in result.content


def test_bad_enum_value_lists_valid_values(registry):
    result = registry.call("convert", {"degrees": 3, "unit": "kelvin"})
    assert not result.ok
    assert "unit: Input should be 'celsius' or 'fahrenheit'" in result.content


def test_arguments_as_json_string(registry):
    result = registry.call("convert", json.dumps({"degrees": 0, "unit": "fahrenheit", "digits": 0}))
    assert result == ToolResult(name="convert", ok=True, content="32")


def test_malformed_json_string(registry):
    result = registry.call("convert", '{"degrees": 0, "unit": ')
    assert not result.ok
    assert result.content.startswith("arguments for convert are not valid JSON (Expecting value)")


def test_deeply_nested_json_string(registry):
    result = registry.call("convert", "[" * 4000)
    assert not result.ok and "not valid JSON" in result.content


@pytest.mark.parametrize("arguments", ["[1, 2]", '"text"', [1, 2], 7, None])
def test_non_object_arguments(registry, arguments):
    result = registry.call("convert", arguments)
    assert not result.ok and result.content.startswith("arguments for convert must be a JSON object")


def test_exception_inside_tool_is_a_result(registry):
    result = registry.call("divide", {"a": 1, "b": 0})
    assert result == ToolResult(name="divide", ok=False, content="divide failed: ZeroDivisionError: division by zero")


def test_tool_error_text_goes_to_the_model(registry):
    result = registry.call("find_city", {"name": "Paris"})
    assert result == ToolResult(name="find_city", ok=False, content="no city named 'Paris'; try Lyon")


def test_oversized_argument_value(registry):
    result = registry.call("find_city", {"name": "x" * 100_000})
    assert not result.ok
    assert f"more than {MAX_ARGUMENT_CHARS} characters" in result.content
    assert len(result.content) < 200


def test_oversized_json_string(registry):
    result = registry.call("find_city", json.dumps({"name": "x" * 100_000}))
    assert not result.ok and len(result.content) < 200


def test_oversized_nested_value(registry):
    result = registry.call("find_city", {"name": ["x" * 50_000, "y" * 50_000]})
    assert not result.ok and f"more than {MAX_ARGUMENT_CHARS} characters" in result.content


def test_oversized_key_does_not_echo_back(registry):
    result = registry.call("find_city", {"k" * 100_000: "Lyon"})
    assert not result.ok and len(result.content) < 200


def test_duplicate_registration_is_refused(registry):
    with pytest.raises(ValueError, match="already registered"):
        registry.register(convert)


def test_schemas_in_registration_order(registry):
    assert [s["function"]["name"] for s in registry.schemas()] == ["convert", "divide", "find_city"]
    assert registry.names == ["convert", "divide", "find_city"]


# --- every exception a tool raises is a result ------------------------------------------------------------------


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no text")


class UnprintableToolError(ToolError):
    def __str__(self):
        raise RuntimeError("no text")


def single(fn) -> ToolRegistry:
    # The default time limit: these tests are about what a call returns, and a loaded machine can take more than a
    # fraction of a second to build and cut a 10 MB message (a tight limit made them flaky; timeouts are tested below).
    return ToolRegistry([fn])


@tool
def boom() -> str:
    """Raise an exception that cannot be printed."""
    raise Unprintable()


@tool
def quit_process(code: int = 3) -> str:
    """Call sys.exit.

    Args:
        code: Exit status.
    """
    raise SystemExit(code)


@tool
def interrupt() -> str:
    """Raise KeyboardInterrupt, as Ctrl-C does."""
    raise KeyboardInterrupt


def test_exception_whose_str_raises_is_a_result():
    result = single(boom).call("boom", {})
    assert result == ToolResult(
        name="boom", ok=False, content="boom failed: Unprintable (its text cannot be shown: str() raised RuntimeError)"
    )


def test_tool_error_whose_str_raises_is_a_result():
    @tool
    def refuse() -> str:
        """Refuse with an unprintable ToolError."""
        raise UnprintableToolError()

    result = single(refuse).call("refuse", {})
    assert result.content == "UnprintableToolError (its text cannot be shown: str() raised RuntimeError)"
    assert not result.ok


def test_system_exit_inside_a_tool_is_a_result():
    assert single(quit_process).call("quit_process", {}).content == "quit_process failed: SystemExit: 3"


def test_keyboard_interrupt_propagates_and_restores_the_alarm():
    before = signal.getsignal(signal.SIGALRM)
    with pytest.raises(KeyboardInterrupt):
        single(interrupt).call("interrupt", {})
    assert signal.getsignal(signal.SIGALRM) is before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


# --- values that cannot be written as text ----------------------------------------------------------------------


def returning(value: object) -> ToolRegistry:
    @tool
    def produce() -> str:
        """Return a prepared value."""
        return value

    return single(produce)


def circular_list() -> list:
    items: list = []
    items.append(items)
    return items


def circular_dict() -> dict:
    mapping: dict = {}
    mapping["self"] = mapping
    return mapping


class UnprintableValue:
    def __str__(self):
        raise RuntimeError("no text")


class Point(BaseModel):
    x: int


def int_str_error() -> str:
    try:
        str(10**5000)
    except ValueError as err:
        return str(err)
    raise AssertionError("this Python has no int->str digit limit")


CANNOT_BE_TEXT = "produce returned a value that cannot be written as text: "


@pytest.mark.parametrize(
    ("value", "ok", "content"),
    [
        (10**5000, False, CANNOT_BE_TEXT + "ValueError: " + int_str_error()),
        (circular_list(), False, CANNOT_BE_TEXT + "ValueError: Circular reference detected"),
        (circular_dict(), False, CANNOT_BE_TEXT + "ValueError: Circular reference detected"),
        (UnprintableValue(), False, CANNOT_BE_TEXT + "RuntimeError: no text"),
        ([UnprintableValue()], False, CANNOT_BE_TEXT + "RuntimeError: no text"),
        (b"Lyon", True, "Lyon"),
        (b"\xffLyon", True, "\\xffLyon"),
        ({"b", "a"}, True, '["a", "b"]'),
        (frozenset({2, 10}), True, "[10, 2]"),
        (Point(x=1), True, '{"x":1}'),
        ([Point(x=1), b"x"], True, '[{"x": 1}, "x"]'),
        ({(1, 2): 3}, True, "{(1, 2): 3}"),
        (None, True, "null"),
    ],
    ids=[
        "huge_int",
        "circular_list",
        "circular_dict",
        "unprintable",
        "unprintable_inside",
        "bytes",
        "bad_utf8",
        "set",
        "frozenset",
        "pydantic",
        "nested_pydantic_bytes",
        "tuple_keys",
        "none",
    ],
)
def test_values_as_text(value, ok, content):
    assert returning(value).call("produce", {}) == ToolResult(name="produce", ok=ok, content=content)


def test_deeply_nested_value_is_a_result():
    value: list = []
    for _ in range(100_000):
        value = [value]
    result = returning(value).call("produce", {})
    assert not result.ok and result.content.startswith(CANNOT_BE_TEXT + "RecursionError: maximum recursion depth")


def test_str_subclass_cannot_dodge_the_cut():
    class Short(str):
        def __len__(self):
            return 0

    result = ToolRegistry([returning(Short("x" * 10_000))["produce"]], max_result_chars=200).call("produce", {})
    assert result.ok and len(result.content) == 200 and type(result.content) is str


# --- arguments that contain themselves or nest deeply -----------------------------------------------------------


@tool
def total(groups: list[list[int]]) -> int:
    """Sum groups of numbers.

    Args:
        groups: Lists of numbers.
    """
    return sum(map(sum, groups))


SELF_REFERENCE = "arguments for find_city could not be read: ValueError: a list or mapping contains itself"


def test_self_referencing_list_argument(registry):
    assert registry.call("find_city", {"name": circular_list()}) == ToolResult(
        name="find_city", ok=False, content=SELF_REFERENCE
    )


def test_self_referencing_mapping_argument(registry):
    arguments: dict = {}
    arguments["name"] = arguments
    assert registry.call("find_city", arguments).content == SELF_REFERENCE


def test_one_value_in_two_places_is_not_a_self_reference():
    group = [1, 2]
    assert ToolRegistry([total]).call("total", {"groups": [group, group]}).content == "6"


def test_deeply_nested_argument(registry):
    value: list = []
    for _ in range(1_000_000):
        value = [value]
    result = registry.call("find_city", {"name": value})
    assert (
        result.content == f"arguments for find_city hold more than {MAX_ARGUMENT_CHARS} characters of text, the limit"
    )


def test_mapping_whose_items_raise(registry):
    class Broken(dict):
        def items(self):
            raise RuntimeError("unreadable")

    result = registry.call("find_city", Broken(name="Lyon"))
    assert result.content == "arguments for find_city could not be read: RuntimeError: unreadable"


# --- the time limit ---------------------------------------------------------------------------------------------

RELEASE = threading.Event()  # set at the end of a test, so hung worker threads can finish


@pytest.fixture
def release_hung_tools():
    RELEASE.clear()
    yield
    RELEASE.set()


def spin() -> None:
    while True:
        pass


HANGS = {"spin": spin, "sleep": lambda: time.sleep(10**6), "wait": lambda: RELEASE.wait()}


@tool
def hang(kind: str) -> str:
    """Never return.

    Args:
        kind: spin, sleep or wait.
    """
    HANGS[kind]()
    return "finished"


@pytest.mark.parametrize("kind", sorted(HANGS))
def test_hung_tool_in_the_main_thread_times_out(kind, release_hung_tools):
    registry = ToolRegistry([hang, find_city], timeout_s=0.2)
    start = time.perf_counter()
    result = registry.call("hang", {"kind": kind})
    assert result == ToolResult(name="hang", ok=False, content="hang did not finish within 0.2 s")
    assert time.perf_counter() - start < 2
    assert registry.call("find_city", {"name": "Lyon"}).content == "France"
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def call_in_thread(registry: ToolRegistry, name: str, arguments: dict) -> ToolResult:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(registry.call, name, arguments).result(timeout=10)


def test_hung_tool_in_another_thread_does_not_block_later_calls(release_hung_tools):
    registry = ToolRegistry([hang, find_city], timeout_s=0.2)
    result = call_in_thread(registry, "hang", {"kind": "wait"})
    assert result.content == "hang did not finish within 0.2 s"
    start = time.perf_counter()
    assert call_in_thread(registry, "find_city", {"name": "Lyon"}).content == "France"  # the hung call still waits
    assert time.perf_counter() - start < 0.2


def test_spinning_tool_in_another_thread_is_stopped():
    def workers() -> int:
        return sum(t.name == "itl-tool-worker" and t.is_alive() for t in threading.enumerate())

    registry = ToolRegistry([hang], timeout_s=0.2)
    before = workers()
    assert call_in_thread(registry, "hang", {"kind": "spin"}).content == "hang did not finish within 0.2 s"
    deadline = time.monotonic() + 5
    while workers() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert workers() <= before


def test_results_from_another_thread_match_the_main_thread(registry):
    for name, arguments in [("divide", {"a": 1, "b": 0}), ("convert", {"degrees": 100, "unit": "fahrenheit"})]:
        assert call_in_thread(registry, name, arguments) == registry.call(name, arguments)


def test_earlier_handler_and_later_timer_are_put_back(registry):
    def earlier(signum, frame):
        raise AssertionError("the earlier timer fired during the test")

    previous = signal.signal(signal.SIGALRM, earlier)
    try:
        signal.setitimer(signal.ITIMER_REAL, 30)
        assert registry.call("find_city", {"name": "Lyon"}).content == "France"
        assert signal.getsignal(signal.SIGALRM) is earlier
        assert 29 < signal.getitimer(signal.ITIMER_REAL)[0] <= 30
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def delegating(inner: ToolRegistry, outer_timeout_s: float) -> ToolRegistry:
    @tool
    def delegate() -> str:
        """Call a tool of another registry."""
        return inner.call("hang", {"kind": "spin"}).content

    return ToolRegistry([delegate], timeout_s=outer_timeout_s)


def test_nested_call_with_the_sooner_limit_times_out_alone():
    outer = delegating(ToolRegistry([hang], timeout_s=0.2), outer_timeout_s=5)
    result = outer.call("delegate", {})
    assert result == ToolResult(name="delegate", ok=True, content="hang did not finish within 0.2 s")
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_outer_call_with_the_sooner_limit_times_out():
    outer = delegating(ToolRegistry([hang], timeout_s=5), outer_timeout_s=0.2)
    start = time.perf_counter()
    assert outer.call("delegate", {}).content == "delegate did not finish within 0.2 s"
    assert time.perf_counter() - start < 2


def test_no_time_limit_arms_no_timer():
    @tool
    def timer() -> str:
        """The real-time interval timer, as seen inside the tool."""
        return str(signal.getitimer(signal.ITIMER_REAL))

    assert ToolRegistry([timer], timeout_s=None).call("timer", {}).content == "(0.0, 0.0)"
    assert ToolRegistry([timer], timeout_s=10).call("timer", {}).content != "(0.0, 0.0)"


@pytest.mark.parametrize("timeout_s", [0, -1.0, float("nan"), 1e9])
def test_bad_timeout_is_refused(timeout_s):
    with pytest.raises(ValueError, match="timeout_s must be in"):
        ToolRegistry([convert], timeout_s=timeout_s)


def test_tiny_result_limit_is_refused():
    with pytest.raises(ValueError, match="max_result_chars must be at least"):
        ToolRegistry([convert], max_result_chars=10)


# --- capped result and error text -------------------------------------------------------------------------------

CUT_NOTE = "\n[cut: 10,000,000 characters; the first 8,136 are shown]"


def test_long_result_is_cut_with_a_note():
    result = returning("x" * 10_000_000).call("produce", {})
    assert result.ok and result.content == "x" * 8136 + CUT_NOTE and len(result.content) == 8192


def test_result_limit_is_configurable():
    registry = ToolRegistry([returning("x" * 1000)["produce"]], max_result_chars=200)
    content = registry.call("produce", {}).content
    assert content == "x" * 151 + "\n[cut: 1,000 characters; the first 151 are shown]" and len(content) == 200


def test_long_tool_error_is_cut():
    @tool
    def verbose() -> str:
        """Fail at length."""
        raise ToolError("e" * 10_000_000)

    result = single(verbose).call("verbose", {})
    assert not result.ok and result.content == "e" * 8136 + CUT_NOTE


def test_long_exception_text_is_cut():
    @tool
    def crash() -> str:
        """Crash at length."""
        raise ValueError("v" * 10_000_000)

    content = single(crash).call("crash", {}).content
    assert content.startswith("crash failed: ValueError: vvv") and content.endswith("are shown]")
    assert len(content) == 8192


def test_tool_run_cuts_by_default():
    assert len(returning("x" * 100_000)["produce"].run({}).content) == 8192


def test_long_unknown_tool_name_is_not_echoed(registry):
    result = registry.call("w" * 1_000_000, {})
    assert result == ToolResult(
        name="w" * 64, ok=False, content=f"unknown tool {'w' * 64!r}; valid tools: convert, divide, find_city"
    )


def test_non_string_tool_name_message(registry):
    assert (
        registry.call(10**5000, {}).content
        == "a tool name is a string, not int; valid tools: convert, divide, find_city"
    )


def test_tools_and_registries_pickle(shared_world):
    """Module-level tools by name, tools over a world's methods rebuilt: spawned workers and Ray get a working copy."""
    import pickle

    from itl_env.fact_tools import fact_registry

    registry = ToolRegistry([*fact_registry(shared_world), module_level_tool], timeout_s=3.0)
    copy = pickle.loads(pickle.dumps(registry))
    fact = shared_world.facts("train")[0]
    arguments = {"name": fact.person, "attribute": fact.attribute.value}
    assert copy.call("lookup", arguments) == registry.call("lookup", arguments)
    assert copy["module_level_tool"] is module_level_tool and copy.timeout_s == 3.0
    assert copy.schemas() == registry.schemas()


@tool
def module_level_tool(text: str) -> str:
    """Echo.

    Args:
        text: What to echo.
    """
    return text
