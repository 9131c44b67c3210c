"""Tool tasks: what an episode asks when the answer needs a tool other than ``lookup``, and its exact gold.

A ``TaskKind`` says how to ask (disjoint train and test phrasings), how to draw the particulars from
a world, which reference calls answer it (a plan: each call may use the results of the earlier ones,
so tools compose) and how the answer is stated. ``make_tasks`` draws tasks and executes their
reference calls on the world through the registry, for real: the gold is what the tools returned.
Fact recall (``Fact``) is the other kind of episode; ``ToolUseEnv`` runs both.

A new tool becomes trainable by writing a ``TaskKind`` for it (``--tasks module:callable``) or by
letting STE explore it (``studies.ste``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from itl_env.formats import ToolCall
from itl_env.scoring import _trie_pattern, normalise
from itl_env.store import Attribute
from itl_env.world import World, format_date
from tools.plugins import PluginError, call_plugin
from tools.registry import ToolRegistry

Gold = int | str | list[str]
Phrasing = str  # "train" or "test"


class Task(BaseModel):
    """One episode of a tool task: its question, the reference calls and results, the gold, the oracle's answer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    kind: str
    split: str
    question: str
    calls: list[ToolCall]
    results: list[str]
    gold: Gold
    answer: str


@dataclass(frozen=True)
class TaskKind:
    """How one kind of tool task is asked, answered and checked (see the module docstring)."""

    name: str
    tools: tuple[str, ...]
    train_questions: tuple[str, ...]
    test_questions: tuple[str, ...]
    answer: str  # a template over the particulars and {result}: the gold written out
    draw: Callable[[World, np.random.Generator], dict[str, Any]]
    plan: Callable[[dict[str, Any], list[Any]], dict[str, Any] | None]  # next call {name, arguments}, or None
    gold: Callable[[dict[str, Any], list[Any]], Gold] = lambda slots, results: results[-1]
    usable: Callable[[Gold], bool] = lambda gold: True  # e.g. a list short enough to name in one answer

    def questions(self, phrasing: Phrasing) -> tuple[str, ...]:
        if phrasing not in ("train", "test"):
            raise ValueError(f"phrasing must be train or test, not {phrasing!r}")
        return self.train_questions if phrasing == "train" else self.test_questions


def show(gold: Gold) -> str:
    """The gold as the answer states it: a list as "A, B and C"."""
    if isinstance(gold, list):
        return gold[0] if len(gold) == 1 else ", ".join(gold[:-1]) + " and " + gold[-1]
    return str(gold)


def make_tasks(
    kind: TaskKind,
    world: World,
    registry: ToolRegistry,
    n: int,
    *,
    seed: int = 0,
    phrasing: Phrasing = "train",
    attempts: int = 20,
) -> list[Task]:
    """``n`` distinct tasks of ``kind``, their reference calls executed on ``world`` through ``registry``."""
    missing = [t for t in kind.tools if t not in registry]
    if missing:
        raise ValueError(f"task {kind.name!r} needs the tools {missing}; the registry has {registry.names}")
    rng = np.random.default_rng([seed, 7])
    questions = kind.questions(phrasing)
    tasks: dict[str, Task] = {}
    last_failure = ""
    for _ in range(n * attempts):
        if len(tasks) == n:
            break
        slots = _user(kind, "draw", kind.draw, world, rng)
        calls, results = _execute(kind, registry, slots)
        if calls is None:
            last_failure = results[-1]
            continue
        values = [json.loads(r) if r[:1] in "[{" else _number(r) for r in results]
        gold = _user(kind, "gold", kind.gold, slots, values)
        if not kind.usable(gold):
            last_failure = f"its gold {gold!r} is not usable"
            continue
        template = questions[int(rng.integers(len(questions)))]
        question = _user(kind, f"question {template!r}", template.format, **slots)
        if question in tasks:
            continue
        tasks[question] = Task(
            id=f"{kind.name}:{phrasing}:{len(tasks)}:{seed}",
            kind=kind.name,
            split=phrasing,
            question=question,
            calls=calls,
            results=results,
            gold=gold,
            answer=kind.answer.format(**slots, result=show(gold)),
        )
    if len(tasks) < n:
        why = f"; the last failed draw: {last_failure[:200]}" if last_failure else " (the draws repeat one another)"
        raise ValueError(f"could draw only {len(tasks)} distinct {kind.name!r} tasks of {n} from {world!r}{why}")
    return list(tasks.values())


def _user(kind: TaskKind, part: str, run: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A task kind's own code (a plug-in's): whatever it raises is an error naming the kind and the part."""
    try:
        return run(*args, **kwargs)
    except Exception as err:
        detail = f"the slot {err} is not drawn" if isinstance(err, KeyError) else f"{type(err).__name__}: {err}"
        raise ValueError(f"task kind {kind.name!r}: its {part} failed ({detail})") from err


def _number(text: str) -> Any:
    return int(text) if re.fullmatch(r"-?\d+", text) else text


def _execute(kind: TaskKind, registry: ToolRegistry, slots: dict[str, Any]) -> tuple[list[ToolCall] | None, list[str]]:
    """Run the plan's calls in order; (None, ...) if one fails (that draw is not a task)."""
    calls: list[ToolCall] = []
    results: list[str] = []
    values: list[Any] = []
    while (step := _user(kind, "plan", kind.plan, slots, values)) is not None:
        call = ToolCall(name=step["name"], arguments=step["arguments"])
        result = registry.call(call.name, call.arguments)
        if not result.ok:
            return None, [*results, f"{call.name}({json.dumps(call.arguments)[:80]}) answered: {result.content}"]
        calls.append(call)
        results.append(result.content)
        values.append(json.loads(result.content) if result.content[:1] in "[{" else _number(result.content))
        if len(calls) > 8:
            raise ValueError(f"task {kind.name!r}: its plan does not end")
    return calls, results


# -------------------------------------------------------------------------------------------- scoring

_INTEGER = re.compile(r"(?<![\w/.])-?\d+(?![\w/]|\.\d)")
_DATE = re.compile(r"\d{1,2}/\d{1,2}/\d{1,4}")


class TaskScorer:
    """Exact scoring of tool tasks: a number must be the only number stated (dates aside); a list of names must
    name every gold person and no other person of the world; a text must stand alone.
    """

    def __init__(self, names: Iterable[str]):
        values = {normalise(n) for n in names} - {""}
        self._names = re.compile(rf"(?<!\w)(?:{_trie_pattern(values)})(?!\w)") if values else re.compile("(?!)")

    def is_correct(self, answer: str, gold: Gold) -> bool:
        text = normalise(answer)
        if isinstance(gold, bool) or isinstance(gold, int):
            return {int(m) for m in _INTEGER.findall(_DATE.sub(" ", text))} == {int(gold)}
        if isinstance(gold, list):
            return set(self._names.findall(text)) == {normalise(g) for g in gold} and bool(gold)
        want = normalise(str(gold))
        return bool(want) and re.search(rf"(?<!\w){re.escape(want)}(?!\w)", text) is not None


# -------------------------------------------------------------------------------------------- the suite


def _person(world: World, rng: np.random.Generator) -> dict[str, Any]:
    return dict(world.rows[int(rng.integers(len(world.rows)))])


def _who_has(world: World, rng: np.random.Generator) -> dict[str, Any]:
    return {"value": _person(world, rng)["birth_place"]}


def _lives_in(world: World, rng: np.random.Generator) -> dict[str, Any]:
    return {"value": _person(world, rng)["current_address"]}


def _age_on(world: World, rng: np.random.Generator) -> dict[str, Any]:
    person = _person(world, rng)
    year = 2006 + int(rng.integers(20))
    return {"name": person["name"], "on": f"{1 + int(rng.integers(12))}/{1 + int(rng.integers(28))}/{year}"}


def _born_between(world: World, rng: np.random.Generator) -> dict[str, Any]:
    from datetime import timedelta

    from itl_env.people_tools import parse_date

    start = parse_date(_person(world, rng)["birth_date"]) - timedelta(days=int(rng.integers(30)))
    return {"start": format_date(start), "end": format_date(start + timedelta(days=int(rng.integers(5, 60))))}


def _short_list(gold: Gold) -> bool:
    return isinstance(gold, list) and 1 <= len(gold) <= 3


BUILT_IN: tuple[TaskKind, ...] = (
    TaskKind(
        name="who_was_born_in",
        tools=("find_people",),
        train_questions=("Who was born in {value}?", "Which people were born in {value}?"),
        test_questions=("Name everyone whose country of birth is {value}.",),
        answer="Born in {value}: {result}.",
        draw=_who_has,
        plan=lambda s, r: (
            None if r else {"name": "find_people", "arguments": {"attribute": "birth_place", "value": s["value"]}}
        ),
        usable=_short_list,
    ),
    TaskKind(
        name="how_many_live_in",
        tools=("count_people",),
        train_questions=("How many people live in {value}?", "What is the number of people living in {value}?"),
        test_questions=("Count the residents of {value}.",),
        answer="Number of people living in {value}: {result}.",
        draw=_lives_in,
        plan=lambda s, r: (
            None if r else {"name": "count_people", "arguments": {"attribute": "current_address", "value": s["value"]}}
        ),
    ),
    TaskKind(
        name="age_on",
        tools=("age_on",),
        train_questions=("How old was {name} on {on}?", "What age did {name} have on {on}?"),
        test_questions=("On {on}, how many years old was {name}?",),
        answer="{name} was {result} on {on}.",
        draw=_age_on,
        plan=lambda s, r: None if r else {"name": "age_on", "arguments": {"name": s["name"], "on": s["on"]}},
    ),
    TaskKind(
        name="born_between",
        tools=("born_between",),
        train_questions=("Who was born between {start} and {end}?", "Which people were born from {start} to {end}?"),
        test_questions=("List the people with a birth date in {start} - {end}.",),
        answer="Born between {start} and {end}: {result}.",
        draw=_born_between,
        plan=lambda s, r: None if r else {"name": "born_between", "arguments": {"start": s["start"], "end": s["end"]}},
        usable=_short_list,
    ),
    TaskKind(
        name="neighbours",
        tools=("lookup", "count_people"),
        train_questions=("How many people live in the same city as {name}?", "How many people share {name}'s city?"),
        test_questions=("Counting {name}, how many residents does {name}'s city have?",),
        answer="Number of people living in the same city as {name}: {result}.",
        draw=lambda world, rng: {"name": _person(world, rng)["name"]},
        plan=lambda s, r: (
            {"name": "lookup", "arguments": {"name": s["name"], "attribute": Attribute.current_address.value}}
            if not r
            else {"name": "count_people", "arguments": {"attribute": "current_address", "value": r[0]}}
            if len(r) == 1
            else None
        ),
    ),
)


def task_kinds(references: Sequence[str]) -> list[TaskKind]:
    """Task kinds by name (the built-in ones) or ``module:callable`` (returning a ``TaskKind`` or a list of them)."""
    built_in = {kind.name: kind for kind in BUILT_IN}
    kinds: list[TaskKind] = []
    for reference in references:
        if reference in built_in:
            kinds.append(built_in[reference])
            continue
        if ":" not in reference:
            raise ValueError(f"unknown task {reference!r}; built in: {', '.join(built_in)}, or give module:callable")
        made = call_plugin(reference, "--tasks")
        if isinstance(made, TaskKind):
            made = [made]
        if not isinstance(made, list | tuple) or not made or not all(isinstance(k, TaskKind) for k in made):
            raise PluginError(
                f"--tasks {reference} returned {_shape(made)}, not a TaskKind or a non-empty list of TaskKinds"
            )
        kinds += made
    names = [kind.name for kind in kinds]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise PluginError(f"--tasks names the task kind(s) {', '.join(repeated)} more than once (from {references})")
    return kinds


def _shape(value: Any) -> str:
    if isinstance(value, list | tuple):
        inner = sorted({type(v).__name__ for v in value})
        return f"a {type(value).__name__} of {', '.join(inner)}" if inner else f"an empty {type(value).__name__}"
    return type(value).__name__
