"""``ToolUseEnv`` as a TRL ``GRPOTrainer(environment_factory=...)`` environment.

TRL's contract (trl 1.16): the environment's public methods are the tools the model may call
(their schemas come from ``transformers.utils.get_json_schema`` on the bound methods),
``reset(**row)`` starts a rollout from a dataset row and returns text appended to the row's last
user message, and ``get_reward()`` scores the finished rollout. One instance per rollout, reused
across batches after ``reset``.

Here the methods are generated from the registry, one per tool, with the signature and
docstring that reproduce the tool's JSON schema, so a newly registered tool appears without code
changes. A method runs the call through the environment's registry (the code path
``ToolUseEnv.step`` uses), so the model reads exactly the text the environment shows it in
evaluation, errors included. ``reset`` puts the environment on the row's fact and returns its
question (the row's prompt is an empty user message the question fills); every generation of a
group gets the same row, hence the same question.

TRL never shows the environment the model's final message, so the reward function ``answered``
(weight 0: it only hands the answer over and reports whether there was one) gives each rollout's
final assistant message to its environment's ``step``; ``get_reward`` then returns the
environment's exact-scoring reward. A rollout that ends on a tool call (the tool-iteration bound
or the completion length cut it off) has no answer and scores 0, as a truncated episode does.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal, Union

import numpy as np

from itl_env import dialogs
from itl_env.env import ToolUseEnv, fact_registry
from itl_env.world import SPLITS, Fact, World
from tools.registry import Tool, ToolRegistry

logger = logging.getLogger(__name__)

RESERVED = ("reset", "get_reward")  # TRL's own methods: a tool may not take these names


class EpisodeError(RuntimeError):
    """The adapter was used out of order (a tool call before ``reset``, a reward before the answer)."""


class FactRecallEnvironment:
    """One rollout's view of a ``ToolUseEnv``. Tool methods are added per registry by ``adapter_class``.

    Everything that is not a tool is private or a property: TRL exposes every public method.
    """

    def __init__(self, env: ToolUseEnv, fact_by_id: dict[str, Fact]):
        self._env = env
        self._fact_by_id = fact_by_id
        self._started = False
        self._submitted = False
        self._reward = 0.0
        self._results: list[dict[str, Any]] = []

    def reset(self, *, fact_id: str, variant: int = 0, prompt: Any = None, split: str | None = None) -> str:
        """Start the episode on fact ``fact_id`` asked with phrasing ``variant``; returns the question.

        ``prompt`` is the row's conversation: TRL appends the returned question to its last user
        message, which must therefore be empty. ``split`` is informative only (the fact knows it).
        """
        if prompt:
            last = prompt[-1]
            if last.get("role") != "user" or last.get("content"):
                raise ValueError(
                    "the row's prompt must end with an empty user message: the environment writes the question into it"
                )
        fact = self._fact_by_id.get(fact_id)
        if fact is None:
            raise ValueError(f"no fact {fact_id!r} in {self._env.world!r}")
        if split is not None and split != fact.split:
            raise ValueError(f"fact {fact_id!r} belongs to the {fact.split} split, the row says {split!r}")
        question, _ = self._env.reset(options={"fact": fact, "variant": int(variant)})
        self._started, self._submitted, self._reward, self._results = True, False, 0.0, []
        return question

    def get_reward(self) -> float:
        """The environment's exact-scoring reward for this episode's final answer (0.0 without one)."""
        if not self._submitted:
            raise EpisodeError(
                "no final answer was handed to the environment: pass itl_env.trl_adapter.answered among the "
                "reward functions (weight 0), or call _submit(completion) yourself"
            )
        return self._reward

    def _call(self, name: str, arguments: dict[str, Any]) -> str:
        if not self._started or self._submitted:
            raise EpisodeError(f"tool {name!r} called outside an episode (call reset first)")
        result = self._env.registry.call(name, arguments)
        self._results.append(result.model_dump())
        return result.content

    def _submit(self, completion: Sequence[dict[str, Any]]) -> bool:
        """Give the rollout's final assistant message to the environment; True if it was an answer."""
        if not self._started:
            raise EpisodeError("_submit before reset")
        if self._submitted:
            raise EpisodeError("this episode's answer was already submitted")
        self._submitted = True
        last = completion[-1] if completion else {}
        if last.get("role") != "assistant" or last.get("tool_calls"):
            return False  # cut off while calling tools: truncated, reward 0
        _, reward, terminated, _, _ = self._env.step(last.get("content") or "")
        self._reward = float(reward)
        return terminated  # False when the text holds a tool call TRL could not read: no answer, reward 0

    @property
    def fact(self) -> Fact | None:
        return self._env.fact

    @property
    def question(self) -> str | None:
        return self._env.messages[0]["content"] if self._env.messages else None

    @property
    def tool_results(self) -> list[dict[str, Any]]:
        """This episode's tool results (``ToolResult`` dicts: name, ok, content), in call order."""
        return list(self._results)


def adapter_class(registry: ToolRegistry) -> type[FactRecallEnvironment]:
    """A ``FactRecallEnvironment`` subclass with one public method per tool of ``registry``."""
    methods: dict[str, Any] = {}
    for tool in registry:
        if tool.name in RESERVED or tool.name.startswith("_") or hasattr(FactRecallEnvironment, tool.name):
            raise ValueError(f"a tool named {tool.name!r} would clash with the environment's own members")
        methods[tool.name] = tool_method(tool)
    cls = type("FactRecallEnvironment", (FactRecallEnvironment,), {"__module__": __name__, **methods})
    _warn_on_lossy_schemas(cls, registry)
    return cls


def tool_method(tool: Tool) -> Callable[..., str]:
    """A method ``(self, /, **arguments)`` whose signature, annotations and docstring describe ``tool``'s schema.

    It takes any keyword arguments, so a misspelt, missing or extra argument reaches the registry
    and comes back as the registry's error text rather than a Python ``TypeError``. The instance is
    positional-only, so an argument named ``self`` is one of ``arguments`` too.
    """
    function = tool.json_schema["function"]
    properties: dict[str, Any] = function["parameters"].get("properties", {})
    required = set(function["parameters"].get("required", ()))
    name = tool.name

    def method(environment: FactRecallEnvironment, /, **arguments: Any) -> str:
        return environment._call(name, arguments)

    annotations = {key: _hint(spec) for key, spec in properties.items()}
    # get_json_schema skips a first parameter named self or cls without annotation (the receiver)
    receiver = next((r for r in ("self", "cls") if r not in properties), None)
    if receiver is None:
        raise ValueError(f"tool {name!r} takes arguments named both self and cls: no method signature can show both")
    params = [inspect.Parameter(receiver, inspect.Parameter.POSITIONAL_ONLY)]
    params += [
        inspect.Parameter(
            key,
            inspect.Parameter.KEYWORD_ONLY,  # keyword-only: optional and required may come in any order
            annotation=annotations[key],
            default=inspect.Parameter.empty if key in required else None,
        )
        for key in properties
    ]
    if "return" in function:
        annotations["return"] = _hint(function["return"])
    method.__name__ = method.__qualname__ = name
    method.__doc__ = _docstring(function)
    method.__annotations__ = annotations
    # inspect.signature (hence get_json_schema) reads __signature__: the schema's parameters, not **arguments
    method.__signature__ = inspect.Signature(params, return_annotation=annotations.get("return", str))
    return method


_SCALARS: dict[str, Any] = {"string": str, "integer": int, "number": float, "boolean": bool, "null": type(None)}


def _hint(spec: dict[str, Any]) -> Any:
    """The Python type hint ``get_json_schema`` turns back into ``spec`` (constraints it cannot express are lost)."""
    if "enum" in spec:
        hint: Any = Literal[tuple(spec["enum"])]
    elif "anyOf" in spec:
        hint = Union[tuple(_hint(s) for s in spec["anyOf"])]  # noqa: UP007 - built from a runtime tuple
    else:
        kind = spec.get("type")
        if isinstance(kind, list):
            hint = Union[tuple(_hint({"type": k}) for k in kind)]  # noqa: UP007 - built from a runtime tuple
        elif kind == "array" and "prefixItems" in spec:
            hint = tuple[tuple(_hint(s) for s in spec["prefixItems"])]
        elif kind == "array":
            hint = list[_hint(spec["items"])] if "items" in spec else list
        elif kind == "object":
            extra = spec.get("additionalProperties")
            hint = dict[str, _hint(extra)] if isinstance(extra, dict) else dict
        else:
            hint = _SCALARS.get(kind, Any)
    return hint | None if spec.get("nullable") else hint


def _docstring(function: dict[str, Any]) -> str:
    lines = [function.get("description") or function["name"]]
    properties = function["parameters"].get("properties", {})
    if properties:
        lines += ["", "Args:"]
        lines += [f"    {key}: {spec.get('description') or key}" for key, spec in properties.items()]
    returns = function.get("return", {}).get("description")
    if returns:
        lines += ["", "Returns:", f"    {returns}"]
    return "\n".join(lines)


def _warn_on_lossy_schemas(cls: type, registry: ToolRegistry) -> None:
    """Warn when the schema TRL will derive from a method differs from the registry's (what evaluation shows)."""
    from transformers.utils import get_json_schema

    for tool in registry:
        derived = get_json_schema(getattr(cls, tool.name))
        if derived != tool.json_schema:
            logger.warning(
                "tool %s: its schema cannot be written exactly as Python type hints; GRPO prompts show %s instead of %s",
                tool.name,
                derived["function"]["parameters"],
                tool.json_schema["function"]["parameters"],
            )


def environment_factory(
    world: World, *, registry: ToolRegistry | None = None, offer_tools: bool = True, max_turns: int = 3
) -> Callable[[], FactRecallEnvironment]:
    """A zero-argument factory of isolated environments for ``GRPOTrainer(environment_factory=...)``.

    ``offer_tools=False`` (in-weight) gives an environment without tool methods. ``max_turns``
    is the environment's bound; give TRL ``max_tool_calling_iterations = max_turns - 1``.
    """
    registry = registry if registry is not None else fact_registry(world)
    cls = adapter_class(registry if offer_tools else ToolRegistry())
    fact_by_id = {fact.id: fact for split in SPLITS for fact in world.facts(split)}  # shared, read-only

    def make() -> FactRecallEnvironment:
        env = ToolUseEnv(world, registry=registry, offer_tools=offer_tools, max_turns=max_turns)
        return cls(env, fact_by_id)

    return make


def answered(completions: list[list[dict[str, Any]]], environments: list[Any], **kwargs: Any) -> list[float]:
    """Reward function (give it weight 0): hands each rollout's final message to its environment.

    Returns 1.0 where the rollout ended with an answer (rather than being cut off in a tool
    call), so its logged mean is the answer rate. Also logs ``tools/error_frequency``: the share
    of executed tool calls the environment answered with an error (TRL's own
    ``tools/failure_frequency`` counts only calls it could not route, e.g. unknown tool names).
    """
    if len(completions) != len(environments):
        raise ValueError(f"{len(completions)} completions for {len(environments)} environments")
    results = [float(env._submit(completion)) for completion, env in zip(completions, environments, strict=True)]
    log_metric = kwargs.get("log_metric")
    if log_metric is not None:
        calls = [r for env in environments for r in env.tool_results]
        log_metric("tools/error_frequency", sum(not r["ok"] for r in calls) / len(calls) if calls else 0.0)
    return results


def grpo_dataset(facts: Sequence[Fact], *, repeats: int = 1, seed: int = 0) -> Any:
    """A ``datasets.Dataset`` of GRPO prompts: every fact ``repeats`` times, each with a seeded phrasing.

    Columns: ``prompt`` (an empty user message the environment fills with the question),
    ``fact_id``, ``variant`` and ``split`` (what ``reset`` takes).
    """
    from datasets import Dataset

    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    rng = np.random.default_rng(seed)
    rows = [
        {
            "prompt": [{"role": "user", "content": ""}],
            "fact_id": fact.id,
            "variant": int(rng.integers(len(dialogs.QUESTIONS[fact.attribute]))),
            "split": fact.split,
        }
        for _ in range(repeats)
        for fact in facts
    ]
    return Dataset.from_list(rows)
