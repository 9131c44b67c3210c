"""The batched rollout driver and its per-fact records.

``rollout`` keeps up to ``batch_size`` episodes live and steps them in lockstep: one
``policy.generate(conversations)`` call per turn for all live episodes; a finished episode's
slot is refilled from the queue at once. One ``FactRecord`` per episode goes to a JSONL file
as soon as the episode ends, so an interrupted run keeps what it finished (``resume=True``
skips those facts).
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from configs import jsonl
from itl_env.env import ToolUseEnv
from itl_env.tool_choice import AUTO, assistant_turns, for_turn
from itl_env.world import Fact

if TYPE_CHECKING:
    from itl_env.tasks import Task

logger = logging.getLogger(__name__)


class Policy(Protocol):
    """Anything that continues conversations. May set ``last_token_counts`` (one int per reply)."""

    def generate(self, conversations: list[list[dict[str, Any]]]) -> list[str]: ...


class FactRecord(BaseModel):
    """One episode: what was asked, what the policy did, and whether the answer was right."""

    model_config = ConfigDict(extra="forbid")

    fact_id: str = Field(description="the fact's id (person:attribute), or the tool task's id")
    task: str = Field("fact_recall", description="fact_recall, or the tool task's kind")
    person: str | None = None
    attribute: str | None = None
    split: str
    mode: str
    gold: str
    tool_called: bool
    tool_name: str | None = None
    tool_arguments: dict[str, Any] | None = None
    tool_result: str | None = None
    parse_error: str | None = None
    answer: str | None = None
    correct: bool
    truncated: bool
    turns: int
    tokens_generated: int | None = None


class RolloutSummary(BaseModel):
    """Recall and rates over every record; throughput over the episodes played in this run (not resumed ones)."""

    model_config = ConfigDict(extra="forbid")

    episodes: int
    recall: float
    tool_call_rate: float
    parse_error_rate: float
    truncation_rate: float
    mean_turns: float
    tokens_generated: int | None
    played: int = Field(description="episodes played in this run (the rest were read back with resume)")
    seconds: float = Field(description="wall time of the episodes played")
    episodes_per_s: float
    tokens_per_s: float | None


class RolloutResult(BaseModel):
    """What a rollout returns: one record per episode, their summary and, if kept, the conversations."""

    model_config = ConfigDict(extra="forbid")

    records: list[FactRecord]
    summary: RolloutSummary
    conversations: list[list[dict[str, Any]]] | None = None
    tool_results: list[list[dict[str, Any]]] | None = Field(
        None, description="with keep_conversations: each episode's tool results (name, ok, content), in call order"
    )


def summarise(
    records: Sequence[FactRecord], seconds: float, played: Sequence[FactRecord] | None = None
) -> RolloutSummary:
    """The one summary of a set of records (``played``: those of this run, by default all of them)."""
    played = records if played is None else played
    seconds = round(seconds, 3)  # the rates below are computed from the seconds reported
    n = max(len(records), 1)
    tokens = [r.tokens_generated for r in records]
    played_tokens = [r.tokens_generated for r in played]
    timed = seconds > 0 and bool(played)
    return RolloutSummary(
        episodes=len(records),
        recall=sum(r.correct for r in records) / n,
        tool_call_rate=sum(r.tool_called for r in records) / n,
        parse_error_rate=sum(r.parse_error is not None for r in records) / n,
        truncation_rate=sum(r.truncated for r in records) / n,
        mean_turns=sum(r.turns for r in records) / n,
        tokens_generated=None if not tokens or None in tokens else sum(t for t in tokens if t is not None),
        played=len(played),
        seconds=seconds,
        episodes_per_s=round(len(played) / seconds, 2) if timed else 0.0,
        tokens_per_s=round(sum(played_tokens) / seconds, 1) if timed and None not in played_tokens else None,
    )


def read_records(path: str | Path) -> list[FactRecord]:
    """The records of a JSONL file (``configs.jsonl``: an unfinished last line is skipped, a bad one named)."""
    return jsonl.read(path, FactRecord.model_validate)


def _takes_tool_choice(policy: Policy) -> bool:
    import inspect

    try:
        return "tool_choice" in inspect.signature(policy.generate).parameters
    except (TypeError, ValueError):  # a callable without a readable signature: let the call say
        return True


def rollout(
    policy: Policy,
    env_factory: Callable[[], ToolUseEnv],
    facts: Iterable[Fact | Task],
    *,
    mode: str,
    batch_size: int = 64,
    seed: int = 0,
    out: str | Path | None = None,
    resume: bool = False,
    keep_conversations: bool = False,
    progress: bool = True,
    desc: str = "rollout",
    variant: int | None = None,
    shard: tuple[int, int] = (0, 1),
    tool_choice: Sequence[str] = (AUTO,),
) -> RolloutResult:
    """Play every fact as one episode; see the module docstring. ``variant`` fixes the question phrasing
    (default: drawn per episode from ``seed``). ``shard=(k, n)`` plays only the facts at positions k, k + n,
    k + 2n, ... (one rank's share), each exactly as a run over all of them would (its seed is its position).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if any(choice != AUTO for choice in tool_choice) and not _takes_tool_choice(policy):
        raise ValueError(f"tool_choice {list(tool_choice)}: {type(policy).__name__}.generate takes no tool_choice")
    index, shards = shard
    if not 0 <= index < shards:
        raise ValueError(f"shard {index} of {shards} does not exist")
    facts = list(facts)
    previous: list[FactRecord] = []
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if resume and out.exists():
            previous = read_records(out)
            out.unlink()
            jsonl.append(out, previous)
        elif out.exists():
            out.unlink()
    done = {r.fact_id for r in previous}
    queue = deque((i, f) for i, f in enumerate(facts) if f.id not in done and i % shards == index)
    results: dict[int, tuple[FactRecord, list[dict[str, Any]], list[dict[str, Any]]]] = {}
    envs = [env_factory() for _ in range(min(batch_size, len(queue)))]
    live: list[tuple[ToolUseEnv, int, list[int]]] = []  # (env, fact position, tokens per turn)
    free = list(envs)
    start = time.perf_counter()
    from tqdm import tqdm

    try:
        with tqdm(total=len(queue), desc=desc, unit="fact", disable=not progress, leave=False) as bar:
            while queue or live:
                while queue and free:
                    position, fact = queue.popleft()
                    env = free.pop()
                    options: dict[str, Any] = {"fact": fact} if isinstance(fact, Fact) else {"task": fact}
                    if variant is not None and isinstance(fact, Fact):
                        options["variant"] = variant
                    env.reset(seed=seed * 1_000_003 + position, options=options)
                    live.append((env, position, []))
                conversations = [env.messages for env, _, _ in live]
                choices = [for_turn(tool_choice, assistant_turns(c)) for c in conversations]
                if all(choice == AUTO for choice in choices):  # any policy: tool_choice is an extension of ours
                    outputs = policy.generate(conversations)
                else:
                    outputs = policy.generate(conversations, tool_choice=choices)
                if len(outputs) != len(live):
                    raise ValueError(f"policy returned {len(outputs)} replies for {len(live)} conversations")
                counts = getattr(policy, "last_token_counts", None)
                still = []
                for k, ((env, position, tokens), text) in enumerate(zip(live, outputs, strict=True)):
                    tokens.append(counts[k] if counts is not None and len(counts) == len(outputs) else -1)
                    _, _, terminated, truncated, info = env.step(text)
                    if not (terminated or truncated):
                        still.append((env, position, tokens))
                        continue
                    record = _record(info, mode, truncated, tokens)
                    kept = (list(env.messages), list(env.tool_results)) if keep_conversations else ([], [])
                    results[position] = (record, *kept)
                    if out is not None:
                        jsonl.append(out, [record])
                    free.append(env)
                    bar.update()
                live = still
    finally:
        for env in envs:
            env.close()
    ordered = [results[i] for i in sorted(results)]
    played = [r for r, _, _ in ordered]
    records = previous + played
    return RolloutResult(
        records=records,
        summary=summarise(records, time.perf_counter() - start, played),
        conversations=[c for _, c, _ in ordered] if keep_conversations else None,
        tool_results=[t for _, _, t in ordered] if keep_conversations else None,
    )


def _record(info: dict[str, Any], mode: str, truncated: bool, tokens: list[int]) -> FactRecord:
    fact: Fact | None = info["fact"]
    task = info.get("task")
    if task is not None:
        from itl_env.tasks import show

        about: dict[str, Any] = {"fact_id": task.id, "task": task.kind, "split": task.split, "gold": show(task.gold)}
    else:
        about = {
            "fact_id": fact.id,
            "person": fact.person,
            "attribute": fact.attribute.value,
            "split": fact.split,
            "gold": fact.value,
        }
    first_call = info["tool_calls"][0] if info["tool_calls"] else None
    first_result = info["tool_results"][0] if info["tool_results"] else None
    return FactRecord(
        **about,
        mode=mode,
        tool_called=first_call is not None,
        tool_name=first_call["name"] if first_call else None,
        tool_arguments=first_call["arguments"] if first_call else None,
        tool_result=first_result["content"] if first_result else None,
        parse_error=info["parse_errors"][0] if info["parse_errors"] else None,
        answer=info.get("answer"),
        correct=bool(info.get("correct", False)),
        truncated=truncated,
        turns=info["turn"],
        tokens_generated=None if -1 in tokens else sum(tokens),
    )


def write_summary(summary: RolloutSummary, path: str | Path) -> None:
    Path(path).write_text(json.dumps(summary.model_dump(), indent=2) + "\n", encoding="utf-8")
