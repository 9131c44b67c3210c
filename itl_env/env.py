"""``ToolUseEnv``: a multi-turn Gymnasium environment between a model and its tools.

An episode asks one question about one person. Each ``step`` takes the assistant's text: tool
calls in it are parsed and executed for real and their results are the next observation; a
message without a tool call is the final answer and ends the episode (``terminated``) with
reward 1.0 or 0.0 by exact scoring; ``max_turns`` assistant messages without an answer end it
as ``truncated``. ``info["messages"]`` is the conversation in OpenAI format.

    >>> import gymnasium, itl_env
    >>> env = gymnasium.make("itl/FactRecall-v0", max_turns=4)
    >>> question, info = env.reset(seed=0)
"""

from __future__ import annotations

import os
import tempfile
import weakref
from pathlib import Path
from typing import Any

import gymnasium as gym
from gymnasium import spaces

from itl_env import dialogs
from itl_env.formats import ToolCallFormat, get_format
from itl_env.scoring import AnswerScorer
from itl_env.world import SPLITS, Fact, World, WorldSpec, ensure_world
from tools.facts import lookup_tool
from tools.registry import Tool, ToolRegistry

MAX_TEXT = 1 << 16


class AnyText(spaces.Text):
    """A text space holding any Unicode string up to ``max_length`` (gymnasium's ``Text`` restricts the charset)."""

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length


def default_world() -> World:
    """A small world generated once into the temp directory (``ITL_WORLD`` overrides the path)."""
    spec = WorldSpec()
    path = (
        os.environ.get("ITL_WORLD")
        or Path(tempfile.gettempdir()) / "itl" / f"default-{spec.seed}-{spec.people}-{spec.unseen_people}.db"
    )
    return ensure_world(spec, path)


# Building the lookup tool (pydantic models, schema) and the scorer (one big regex) takes ~5 ms; both are
# immutable, so a world's environments share them (a rollout makes batch_size environments).
_LOOKUP_TOOLS: weakref.WeakKeyDictionary[World, Tool] = weakref.WeakKeyDictionary()
_SCORERS: weakref.WeakKeyDictionary[World, AnswerScorer] = weakref.WeakKeyDictionary()


def fact_registry(world: World) -> ToolRegistry:
    """The registry of fact tools over ``world``'s read-only engine (a new registry; the tool is shared)."""
    if world not in _LOOKUP_TOOLS:
        _LOOKUP_TOOLS[world] = lookup_tool(world.index)
    return ToolRegistry([_LOOKUP_TOOLS[world]])


def world_scorer(world: World) -> AnswerScorer:
    """The exact scorer over ``world``'s candidate values, shared by the world's environments."""
    if world not in _SCORERS:
        _SCORERS[world] = AnswerScorer(world.vocabulary)
    return _SCORERS[world]


class ToolUseEnv(gym.Env[str, str]):
    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self,
        world: World | str | os.PathLike[str] | None = None,
        *,
        split: str = "train",
        tool_format: str | ToolCallFormat = "hermes",
        registry: ToolRegistry | None = None,
        offer_tools: bool = True,
        max_turns: int = 4,
        max_calls_per_turn: int = 4,
        max_action_chars: int = 8192,
        render_mode: str | None = None,
    ):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        if max_turns < 1:
            raise ValueError("max_turns must be at least 1")
        if render_mode not in (None, "ansi"):
            raise ValueError(f"unsupported render_mode {render_mode!r}; valid: ansi")
        self.world = world if isinstance(world, World) else default_world() if world is None else World.open(world)
        self.split = split
        self.format = get_format(tool_format) if isinstance(tool_format, str) else tool_format
        self.registry = registry if registry is not None else fact_registry(self.world)
        self.offer_tools = offer_tools
        self.max_turns = max_turns
        self.max_calls_per_turn = max_calls_per_turn
        self.max_action_chars = max_action_chars
        self.render_mode = render_mode
        self.scorer = world_scorer(self.world)
        self._facts: dict[str, list[Fact]] = {}
        self.observation_space = AnyText(min_length=0, max_length=MAX_TEXT)  # the final step observes ""
        self.action_space = AnyText(max_length=MAX_TEXT)
        self.fact: Fact | None = None
        self.messages: list[dict[str, Any]] = []

    @property
    def tools(self) -> list[dict[str, Any]]:
        """Tool schemas shown to the policy: empty for in-weight runs (``offer_tools=False``)."""
        return self.registry.schemas() if self.offer_tools else []

    def facts(self, split: str | None = None) -> list[Fact]:
        split = split or self.split
        if split not in self._facts:
            self._facts[split] = self.world.facts(split)
        return self._facts[split]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """Start an episode. ``options``: ``fact`` (a ``Fact``) or ``split``; ``variant`` picks the phrasing."""
        super().reset(seed=seed)
        options = options or {}
        fact = options.get("fact")
        if fact is None:
            facts = self.facts(options.get("split"))
            if not facts:
                raise ValueError(f"the world has no {options.get('split') or self.split} people")
            fact = facts[int(self.np_random.integers(len(facts)))]
        elif not isinstance(fact, Fact):
            raise TypeError(f"options['fact'] must be a Fact, got {type(fact).__name__}")
        variant = options.get("variant")
        if variant is None:
            variant = int(self.np_random.integers(len(dialogs.QUESTIONS[fact.attribute])))
        self.fact = fact
        self.turn = 0
        self.done = False
        self.tool_calls: list[dict[str, Any]] = []
        self.tool_results: list[dict[str, Any]] = []
        self.parse_errors: list[str] = []
        question = dialogs.question(fact.person, fact.attribute, variant)
        self.messages = [{"role": "user", "content": question}]
        return question, self._info()

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self.fact is None or self.done:
            raise RuntimeError("call reset() before step() (the episode is over or never started)")
        if not isinstance(action, str):
            raise TypeError(f"an action is the assistant's text, got {type(action).__name__}")
        self.turn += 1
        if len(action) > self.max_action_chars:
            self.messages.append({"role": "assistant", "content": action[: self.max_action_chars]})
            error = f"message of {len(action)} characters exceeds the limit of {self.max_action_chars}; nothing was run"
            return self._observe([self._error(error)])
        parsed = self.format.parse(action)
        self.parse_errors.extend(parsed.errors)
        if not parsed.calls and not parsed.errors:
            return self._finish(action)
        calls = [c.as_message_call(f"call_{self.turn}_{i}") for i, c in enumerate(parsed.calls)]
        self.messages.append(
            {"role": "assistant", "content": parsed.content, **({"tool_calls": calls} if calls else {})}
        )
        replies = [self._error(f"could not read tool call: {e}") for e in parsed.errors]
        for i, call in enumerate(parsed.calls):
            if i >= self.max_calls_per_turn:
                result = {
                    "name": call.name,
                    "ok": False,
                    "content": f"too many tool calls in one message (limit {self.max_calls_per_turn})",
                }
            else:
                result = self.registry.call(call.name, call.arguments).model_dump()
            self.tool_calls.append({"name": call.name, "arguments": call.arguments})
            self.tool_results.append(result)
            replies.append(
                {"role": "tool", "tool_call_id": calls[i]["id"], "name": result["name"], "content": result["content"]}
            )
        return self._observe(replies)

    def _error(self, text: str) -> dict[str, Any]:
        return {"role": "tool", "name": "error", "content": text}

    def _observe(self, replies: list[dict[str, Any]]) -> tuple[str, float, bool, bool, dict[str, Any]]:
        self.messages.extend(replies)
        truncated = self.turn >= self.max_turns
        self.done = truncated
        return "\n".join(r["content"] for r in replies), 0.0, False, truncated, self._info()

    def _finish(self, answer: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        self.messages.append({"role": "assistant", "content": answer})
        self.done = True
        fact = self.fact
        correct = self.scorer.is_correct(answer, fact.attribute, fact.value)
        return "", float(correct), True, False, self._info(answer=answer, correct=correct)

    def _info(self, **extra: Any) -> dict[str, Any]:
        return {
            "fact": self.fact,
            "messages": self.messages,
            "tools": self.tools,
            "turn": self.turn,
            "tool_calls": self.tool_calls,
            "tool_results": self.tool_results,
            "parse_errors": self.parse_errors,
            **extra,
        }

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        return "\n".join(f"[{m['role']}] {m.get('content') or m.get('tool_calls')}" for m in self.messages)
