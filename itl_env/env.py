"""``ToolUseEnv``: a multi-turn Gymnasium environment between a model and its tools.

An episode asks one question about one person. Each ``step`` takes the assistant's text: tool
calls in it are parsed and executed for real and their results are the next observation; a
message without a tool call is the final answer and ends the episode (``terminated``) with
reward 1.0 or 0.0 by exact scoring; ``max_turns`` assistant messages without an answer end it
as ``truncated``. With ``reprompt=True`` (STE's trial protocol) a message that is neither a readable call nor
an answer (empty, code, or a call of an offered tool written in some other syntax) is not taken as the
answer: it gets an error observation saying so, and another turn. ``info["messages"]`` is the conversation in OpenAI format (a snapshot: it does
not change when the episode goes on).

    >>> import gymnasium, itl_env
    >>> env = gymnasium.make("itl/FactRecall-v0", max_turns=4)
    >>> question, info = env.reset(seed=0)

The environment pickles (its world pickles as its path and is reopened), so it runs in spawned
workers: ``gymnasium.make_vec("itl/FactRecall-v0", 4, vectorization_mode="async", world=path)``.
"""

from __future__ import annotations

import os
import re
import tempfile
import weakref
from functools import cache
from pathlib import Path
from typing import Any

import gymnasium as gym

from itl_env import dialogs
from itl_env.fact_tools import fact_registry
from itl_env.formats import ToolCallFormat, get_format
from itl_env.scoring import AnswerScorer
from itl_env.tasks import Task, TaskScorer
from itl_env.text_space import AnyText
from itl_env.world import SPLITS, Fact, World, WorldSpec, domain_vocabulary, ensure_world
from tools.registry import ToolRegistry
from tools.text import valid_text

MAX_TEXT = 1 << 16
RESET_OPTIONS = ("fact", "task", "split", "variant")


def default_world() -> World:
    """A small world generated once into the temp directory (``ITL_WORLD`` overrides the path)."""
    spec = WorldSpec()
    path = (
        os.environ.get("ITL_WORLD")
        or Path(tempfile.gettempdir()) / "itl" / f"default-{spec.seed}-{spec.people}-{spec.unseen_people}.db"
    )
    return ensure_world(spec, path)


_CODE = re.compile(r"```|^\s*(?:def|import|from|print)\b|^\s*\{", re.M)


def not_an_answer(text: str, tool_names: list[str]) -> str | None:
    """Why a message without a readable tool call is no answer either (None when it is one): empty, code, or a call
    of one of ``tool_names`` written in another syntax (``count_people(...)``, ``"name": "count_people"``).
    """
    if not text.strip():
        return "the reply is empty"
    if _CODE.search(text):
        return "the reply is code, not a tool call or an answer"
    for name in tool_names:
        if re.search(rf"\b{re.escape(name)}\s*\(|\"name\"\s*:\s*\"{re.escape(name)}\"", text):
            return f"the reply writes a call of {name} the environment cannot read"
    return None


_TASK_SCORERS: weakref.WeakKeyDictionary[World, TaskScorer] = weakref.WeakKeyDictionary()


def task_scorer(world: World) -> TaskScorer:
    """The tool-task scorer over ``world``'s people (a list answer must name no one else)."""
    if world not in _TASK_SCORERS:
        _TASK_SCORERS[world] = TaskScorer(world.by_name)
    return _TASK_SCORERS[world]


@cache
def domain_scorer() -> AnswerScorer:
    """The exact scorer over every attribute's whole domain (one compiled regex, shared by all environments)."""
    return AnswerScorer(domain_vocabulary())


class ToolUseEnv(gym.Env[str, str]):
    """One multi-turn episode about one fact or task of a world: ``reset`` asks the question; ``step(text)`` runs
    the tool calls the text makes (an observation is the tools' results) or, without a call, scores the text as
    the final answer (reward 1.0 if exactly right). ``info["messages"]`` is the conversation in OpenAI format.
    """

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
        reprompt: bool = False,
        render_mode: str | None = None,
    ):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        if max_turns < 1 or max_calls_per_turn < 1 or max_action_chars < 1:
            raise ValueError("max_turns, max_calls_per_turn and max_action_chars must be at least 1")
        if render_mode not in (None, "ansi"):
            raise ValueError(f"unsupported render_mode {render_mode!r}; valid: ansi")
        self._owns_world = not isinstance(world, World)  # close() closes only a world this env opened
        self.world = world if isinstance(world, World) else default_world() if world is None else World.open(world)
        self.split = split
        self.format = get_format(tool_format) if isinstance(tool_format, str) else tool_format
        self.registry = registry if registry is not None else fact_registry(self.world)
        self.offer_tools = offer_tools
        self.max_turns = max_turns
        self.max_calls_per_turn = max_calls_per_turn
        self.max_action_chars = max_action_chars
        self.reprompt = reprompt
        self.render_mode = render_mode
        self.scorer = domain_scorer()
        self._facts: dict[str, list[Fact]] = {}
        self.observation_space = AnyText(min_length=0, max_length=MAX_TEXT)  # the final step observes ""
        self.action_space = AnyText(max_length=MAX_TEXT)
        # the episode's state: set by reset, empty until then
        self.fact: Fact | None = None
        self.task: Task | None = None
        self.turn = 0
        self.done = True
        self.messages: list[dict[str, Any]] = []
        self.tool_calls: list[dict[str, Any]] = []
        self.tool_results: list[dict[str, Any]] = []
        self.parse_errors: list[str] = []

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
        """Start an episode. ``options``: ``fact`` (a ``Fact``), ``task`` (a tool ``Task``) or ``split``;
        ``variant`` picks a fact question's phrasing.
        """
        super().reset(seed=seed)
        options = options or {}
        task = options.get("task") if isinstance(options, dict) else None
        if task is not None:
            if not isinstance(task, Task):
                raise TypeError(
                    f"reset option task must be a Task (itl_env.tasks.make_tasks), got {type(task).__name__}"
                )
            if set(options) - {"task"}:
                raise ValueError("reset option task comes alone (a task fixes its own question)")
            self.fact, self.task, question = None, task, task.question
        else:
            fact, variant = self._episode(options)
            self.fact, self.task, question = fact, None, dialogs.question(fact.person, fact.attribute, variant)
        self.turn = 0
        self.done = False
        self.tool_calls, self.tool_results, self.parse_errors = [], [], []
        self.messages = [{"role": "user", "content": question}]
        return question, self._info()

    def _episode(self, options: Any) -> tuple[Fact, int]:
        """(fact, phrasing) asked for by reset ``options``; a bad option is a ValueError/TypeError that says why."""
        if not isinstance(options, dict):
            raise TypeError(f"reset options must be a dict, got {type(options).__name__}")
        unknown = sorted(set(map(str, options)) - set(RESET_OPTIONS))
        if unknown:
            raise ValueError(
                f"unknown reset option(s) {', '.join(map(repr, unknown))}; valid: {', '.join(RESET_OPTIONS)}"
            )
        fact = options.get("fact")
        if fact is None:
            split = options.get("split") or self.split
            if split not in SPLITS:
                raise ValueError(f"reset option split={split!r} is not a split; valid: {', '.join(SPLITS)}")
            facts = self.facts(split)
            if not facts:
                raise ValueError(f"the world has no {split} people")
            fact = facts[int(self.np_random.integers(len(facts)))]
        elif not isinstance(fact, Fact):
            raise TypeError(f"reset option fact must be a Fact (world.facts(...)), got {type(fact).__name__}")
        variant = options.get("variant")
        phrasings = len(dialogs.QUESTIONS[fact.attribute])
        if variant is None:
            variant = int(self.np_random.integers(phrasings))
        elif isinstance(variant, bool) or not isinstance(variant, int) or not 0 <= variant < phrasings:
            raise ValueError(f"reset option variant must be an int in 0..{phrasings - 1}, got {variant!r}")
        return fact, variant

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if (self.fact is None and self.task is None) or self.done:
            raise RuntimeError("call reset() before step() (the episode is over or never started)")
        if not isinstance(action, str):
            raise TypeError(f"an action is the assistant's text, got {type(action).__name__}")
        action = valid_text(action)
        self.turn += 1
        if len(action) > self.max_action_chars:
            self.messages.append({"role": "assistant", "content": action[: self.max_action_chars]})
            error = f"message of {len(action)} characters exceeds the limit of {self.max_action_chars}; nothing was run"
            return self._observe([self._error(error)])
        parsed = self.format.parse(action)
        self.parse_errors.extend(parsed.errors)
        if not parsed.calls and not parsed.errors:
            problem = not_an_answer(action, self.registry.names) if self.reprompt else None
            if problem is None:
                return self._finish(action)
            self.messages.append({"role": "assistant", "content": action})
            return self._observe([self._error(f"{problem}: {self._how_to_reply()}")])
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
                result["content"] = valid_text(result["content"])  # a tool may return any str
            self.tool_calls.append({"name": call.name, "arguments": call.arguments})
            self.tool_results.append(result)
            replies.append(
                {"role": "tool", "tool_call_id": calls[i]["id"], "name": result["name"], "content": result["content"]}
            )
        return self._observe(replies)

    def _how_to_reply(self) -> str:
        shape = getattr(self.format, "shape", f"the {self.format.name} format")
        return f"call a tool as {shape}, or answer the question in words"

    def _error(self, text: str) -> dict[str, Any]:
        return {"role": "tool", "name": "error", "content": text}

    def _observe(self, replies: list[dict[str, Any]]) -> tuple[str, float, bool, bool, dict[str, Any]]:
        self.messages.extend(replies)
        truncated = self.turn >= self.max_turns
        self.done = truncated
        observation = "\n".join(r["content"] for r in replies)[:MAX_TEXT]
        return observation, 0.0, False, truncated, self._info()

    def _finish(self, answer: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        self.messages.append({"role": "assistant", "content": answer})
        self.done = True
        if self.task is not None:
            correct = task_scorer(self.world).is_correct(answer, self.task.gold)
        else:
            correct = self.scorer.is_correct(answer, self.fact.attribute, self.fact.value)
        return "", float(correct), True, False, self._info(answer=answer, correct=correct)

    def _info(self, **extra: Any) -> dict[str, Any]:
        # copies: an info kept by the caller must not change when the episode goes on (messages are never mutated)
        return {
            "fact": self.fact,
            "task": self.task,
            "messages": list(self.messages),
            "tools": self.tools,
            "turn": self.turn,
            "tool_calls": list(self.tool_calls),
            "tool_results": list(self.tool_results),
            "parse_errors": list(self.parse_errors),
            **extra,
        }

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        return "\n".join(f"[{m['role']}] {m.get('content') or m.get('tool_calls')}" for m in self.messages)

    def close(self) -> None:
        """Release the world's database connections if this environment opened the world itself."""
        if self._owns_world and self.world is not None:
            self.world.close()
        super().close()
