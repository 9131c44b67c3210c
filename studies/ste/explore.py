"""STE exploration: for each tool, episodes of imagination, trial and error against the real tool, and reflection.

*Imagination*: the explorer model reads the tool's JSON schema, a few entities of the database (it
cannot know any names otherwise) and the long-term memory of queries explored before, and proposes a
new user query. *Trial and error*: it plays the query in ``ToolUseEnv`` (the tool executed for real,
up to ``max_turns`` messages; a reply that is neither a call nor an answer is told so and asked again), for up to
``trials`` trials; before each trial after the first, the short-term memory of the episode's earlier trials is
written above the query. *Reflection*: after a
trial it judges whether its answer satisfied the query; a satisfied trial ends the episode. Episodes
of a tool are explored in batches (one ``generate`` call per step for the whole batch); each ends up
as one JSONL row, so an interrupted exploration resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from configs import jsonl
from itl_env.env import ToolUseEnv
from itl_env.formats import ToolCall, get_format
from itl_env.rollout import Policy, rollout
from itl_env.tasks import Task
from itl_env.world import World
from studies.ste.memory import LongTermMemory, ShortTermMemory, Trial
from tools.registry import ToolRegistry

logger = logging.getLogger("studies.ste")


class Episode(BaseModel):
    """One explored query: its trials, whether the explorer judged it satisfied, and the last trial's dialog."""

    model_config = ConfigDict(extra="forbid")

    tool: str
    index: int
    query: str | None
    proposal: str
    trials: list[Trial]
    satisfied: bool
    messages: list[dict[str, Any]]
    duplicate: bool
    seconds: float = 0.0  # this episode's share of its batch's wall time (so a resumed run still reports it)


def imagination_prompt(schema: dict[str, Any], entities: dict[str, list[str]], explored: list[tuple[str, bool]]) -> str:
    lines = [
        "A database of people offers this tool (its JSON schema):",
        json.dumps(schema, ensure_ascii=False),
        "The database knows, among others: "
        + "; ".join(f"{kind} such as {', '.join(values)}" for kind, values in entities.items())
        + ".",
    ]
    if explored:
        lines.append("Questions already explored (ask something different):")
        lines += [f"- {query}" for query, _ in explored]
    lines.append("Write one new question a user could ask that this tool can answer. Reply with the question only.")
    return "\n".join(lines)


def reflection_prompt(query: str, results: list[dict[str, Any]], answer: str | None) -> str:
    shown = "\n".join(f"- {r['name']}: {r['content'][:300]}" for r in results) or "- (no tool was called)"
    return (
        f"Question: {query}\nTool results:\n{shown}\nAnswer: {answer or '(no answer)'}\n"
        "Does the answer satisfy the question, using what the tool returned? Reply yes or no."
    )


def parse_query(text: str) -> str | None:
    """The proposal's first question (a line, or a quoted span, ending in "?"), else its first line; unquoted and
    without a lead-in such as "The user asks:". None when there is nothing usable.

    Small explorers wrap the question ("A user could ask:\n\"Who ...?\"", "Here is one: \"How ...?\" ..."): the
    first line alone would be the wrapper.
    """
    lines = [_unwrap(line) for line in text.splitlines() if line.strip()]
    query = next((line for line in lines if line.endswith("?") and len(line) >= 8), lines[0] if lines else "")
    return query[:300] if len(query) >= 8 else None


def _unwrap(line: str) -> str:
    quoted = re.search(r'"([^"]{8,}\?)"', line)
    if quoted:
        return quoted.group(1).strip()
    line = re.sub(r"^[^:?\"]{0,40}:\s*(?=\S)", "", line.strip())  # "Question: ...", "The user asks: ..."
    return line.strip().strip('"').strip()


def parse_verdict(text: str) -> bool:
    return text.strip().lower().startswith("yes")


def entities(
    world: World, rng: np.random.Generator, k: int = 3, first: dict[str, Any] | None = None
) -> dict[str, list[str]]:
    """A few names, countries, cities and occupations of the world, drawn anew for each proposal (``first``: a row
    of the world shown first among them).
    """
    rows = [world.rows[int(i)] for i in rng.choice(len(world.rows), size=min(k, len(world.rows)), replace=False)]
    if first is not None:
        rows = [first, *[r for r in rows if r is not first]][:k]
    return {
        "people": [r["name"] for r in rows],
        "countries of birth": [r["birth_place"] for r in rows],
        "cities": [r["current_address"] for r in rows],
        "occupations": [r["occupation"] for r in rows],
        "birth dates": [r["birth_date"] for r in rows],
    }


def free_query(tool: str, index: int, query: str, note: str) -> Task:
    """An exploration episode as an environment task: a question without gold (exploration has no answer key)."""
    question = f"{note}\n\nQuestion: {query}" if note else query
    return Task(id=f"ste:{tool}:{index}", kind=f"ste:{tool}", split="explore", question=question, calls=[], results=[],
                gold="", answer="")  # fmt: skip


def worked_example(world: World, registry: ToolRegistry, tool: str) -> str:
    """One whole exchange with a tool *other* than ``tool`` (``lookup`` on a real person): the call written as the
    trials write calls, its real result and an answer stating it; the format shown, nothing of ``tool`` to copy.
    """
    if tool == "lookup" or "lookup" not in registry:
        return ""
    person = world.rows[0]
    arguments = {"name": person["name"], "attribute": "occupation"}
    result = registry.call("lookup", arguments)
    call = get_format("hermes").render([ToolCall(name="lookup", arguments=arguments)])
    return (
        "An example with another tool, lookup:\n"
        f"Question: What is the occupation of {person['name']}?\nYou call the tool:\n{call}\n"
        f"The tool returns: {result.content}\nYou answer: {person['name']} works as {result.content}.\n"
        f"Now answer the next question the same way, with the tool {tool}."
    )


def read_episodes(path: Path) -> list[Episode]:
    if not path.exists():
        return []
    return jsonl.read(path, Episode.model_validate)


def explore(
    world: World,
    registry: ToolRegistry,
    tools: list[str],
    *,
    imagine: Callable[[str], Policy],
    trial_policy: Callable[[str, list[dict[str, Any]], float], Policy],
    judge: Policy,
    out: Path,
    episodes: int,
    trials: int = 2,
    batch: int = 8,
    max_turns: int = 3,
    recent: int = 8,
    seed: int = 0,
    progress: bool = True,
    first_turn: str = "required",
    example: bool = True,
    reprompt: bool = True,
    retry_temperature: float = 0.0,
) -> list[Episode]:
    """Explore each tool for ``episodes`` episodes (resuming from ``out/explore.jsonl``); returns every episode.

    ``imagine(tool)`` is the policy that proposes ``tool``'s questions (sampling), ``trial_policy(tool, schemas,
    temperature)`` the one that plays its trials with those tools offered (the explorer may differ per tool): the
    first trial greedy, the later ones at ``retry_temperature`` (a greedy retry mostly repeats the first trial
    word for word, the short-term memory notwithstanding); ``judge`` reflects on each trial. STE's trial protocol:
    the first turn of a trial is ``first_turn`` (``required``: a call of the tool, constrained to its schema;
    ``auto``: the model's choice, the zero-shot ablation), later turns are free; ``example`` writes a worked
    exchange with another tool above each question; ``reprompt`` answers a reply that is neither a call nor an
    answer with an error observation and another turn (``ToolUseEnv(reprompt=True)``).
    """
    from tqdm import tqdm

    path = out / "explore.jsonl"
    done = read_episodes(path)
    memory = LongTermMemory(out / "memory.jsonl")
    total = episodes * len(tools)
    with tqdm(
        total=total, initial=min(len(done), total), desc="STE explore", unit="episode", disable=not progress
    ) as bar:
        for tool in tools:
            single = ToolRegistry(
                [registry[tool]], timeout_s=registry.timeout_s, max_result_chars=registry.max_result_chars
            )
            proposer = imagine(tool)
            offered = single.schemas()
            players = (trial_policy(tool, offered, 0.0), trial_policy(tool, offered, retry_temperature))
            schema = registry[tool].json_schema
            while (start := sum(e.tool == tool for e in done)) < episodes:
                size = min(batch, episodes - start)
                batch_started = time.perf_counter()
                # seeded per (seed, tool, batch): every explorer is shown the same entities from the same sampling seed
                # (their models differ, so their questions do), and a resumed exploration imagines what it would have
                key = [seed, tools.index(tool), start]
                rng = np.random.default_rng(key)
                _seed_sampling(key)
                prompts = [
                    [
                        {
                            "role": "user",
                            "content": imagination_prompt(schema, entities(world, rng), memory.recent(tool, recent)),
                        }
                    ]
                    for _ in range(size)
                ]
                proposals = proposer.generate(prompts)
                fresh = [proposed(tool, start + i, proposal, memory) for i, proposal in enumerate(proposals)]
                shown = worked_example(world, registry, tool) if example else ""
                env = partial(ToolUseEnv, world, registry=single, max_turns=max_turns, reprompt=reprompt)
                _trials(fresh, players, judge, trials, (first_turn, "auto"), shown, env)
                for episode in fresh:
                    episode.seconds = round((time.perf_counter() - batch_started) / len(fresh), 3)
                for episode in fresh:
                    if episode.query:
                        memory.add(tool, episode.query, episode.satisfied)
                jsonl.append(path, fresh)
                done += fresh
                bar.update(len(fresh))
                bar.set_postfix_str(f"{tool}: {sum(e.satisfied for e in done if e.tool == tool)} satisfied")
    return done


def _seed_sampling(key: list[int]) -> None:
    import torch

    torch.manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))


def proposed(tool: str, index: int, proposal: str, memory: LongTermMemory) -> Episode:
    """A new episode from the explorer's proposal (no query when the proposal is unusable)."""
    query = parse_query(proposal)
    duplicate = query is not None and memory.knows(tool, query)
    return Episode(tool=tool, index=index, query=query, proposal=proposal, trials=[], satisfied=False, messages=[],
                   duplicate=duplicate)  # fmt: skip


def _trials(
    batch: list[Episode],
    players: tuple[Policy, Policy],
    judge: Policy,
    trials: int,
    tool_choice: tuple[str, ...],
    example: str,
    env_factory: Callable[[], ToolUseEnv],
) -> None:
    """Up to ``trials`` trials of every episode that has a query, in lockstep; short-term memory between trials.
    ``players``: (the first trial's policy, the retries').
    """
    memories = {e.index: ShortTermMemory() for e in batch}
    for attempt in range(trials):
        open_ = [e for e in batch if e.query and not e.satisfied]
        if not open_:
            break
        notes = ["\n\n".join(n for n in (example, memories[e.index].note()) if n) for e in open_]
        tasks = [free_query(e.tool, e.index, e.query, note) for e, note in zip(open_, notes, strict=True)]
        started = time.perf_counter()
        played = rollout(
            players[min(attempt, 1)],
            env_factory,
            tasks,
            mode="in_tool",
            batch_size=len(tasks),
            keep_conversations=True,
            progress=False,
            tool_choice=tool_choice,
        )
        verdicts = judge.generate(
            [
                [{"role": "user", "content": reflection_prompt(e.query, results, record.answer)}]
                for e, record, results in zip(open_, played.records, played.tool_results, strict=True)
            ]
        )
        logger.debug("trial of %d episodes in %.1f s", len(open_), time.perf_counter() - started)
        for episode, record, messages, results, verdict in zip(
            open_, played.records, played.conversations, played.tool_results, verdicts, strict=True
        ):
            calls = [c["function"] for m in messages if m.get("tool_calls") for c in m["tool_calls"]]
            dialog = [{"role": "user", "content": episode.query}, *messages[1:]]  # the plain query
            trial = Trial(calls=calls, results=results, answer=record.answer, satisfied=parse_verdict(verdict),
                          messages=dialog)  # fmt: skip
            memories[episode.index].add(trial)
            episode.trials.append(trial)
            episode.satisfied = trial.satisfied
            episode.messages = dialog
