"""STE distillation: the explored trajectories worth learning from, as a dataset ``trainers/sft.py`` trains on.

Kept: an episode whose query was usable with the first of its trials that called the tool, every call of
which executed successfully and is grounded in the question (each free-text argument, e.g. a name or a date,
is written in it), and whose final answer is grounded in what the tool returned (it states the result, or for
a list every item of it). Optionally an LLM judge checks STE's three criteria
(the answer is informative, faithful to the execution results, the tool use appropriate) and an LLM
paraphrases each kept query into one more training dialog. Queries are deduplicated and capped per
tool. Written as a Hugging Face dataset of ``{messages, tools}`` rows (``save_to_disk``) and JSONL.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from itl_env.rollout import Policy
from itl_env.scoring import normalise
from itl_env.trajectories import call_arguments
from studies.ste.explore import Episode, parse_query, parse_verdict
from studies.ste.memory import Trial
from tools.registry import ToolRegistry

JUDGE_PROMPT = (
    "Question: {query}\nTool calls and results:\n{results}\nFinal answer: {answer}\n"
    "Is the final answer informative, faithful to the tool results, and was the tool used appropriately? "
    "Reply yes or no."
)
PARAPHRASE_PROMPT = (
    "Rewrite this question in other words, keeping every name, date and value: {query}\nReply with the question only."
)


def final_answer(messages: list[dict[str, Any]]) -> str | None:
    last = messages[-1] if messages else {}
    return last.get("content") if last.get("role") == "assistant" and not last.get("tool_calls") else None


def is_grounded(answer: str, results: list[dict[str, Any]]) -> bool:
    """Whether ``answer`` states what a successful call returned (every item, for a list result)."""
    text = normalise(answer)
    for result in results:
        content = result["content"]
        try:
            value = json.loads(content)
        except ValueError:
            value = content
        items = [str(v) for v in value] if isinstance(value, list) else [str(value)]
        if items and all(normalise(item) in text for item in items):
            return True
    return False


def call_is_grounded(calls: list[dict[str, Any]], query: str, schemas: dict[str, dict[str, Any]]) -> bool:
    """Whether every free-text argument of ``calls`` (a string the tool's schema does not enumerate) is written in
    ``query``: a call must ask what its question asks (a valid call about someone else answers nothing).
    """
    text = normalise(query)
    for call in calls:
        properties = schemas.get(call["name"], {}).get("function", {}).get("parameters", {}).get("properties", {})
        try:
            arguments = call_arguments(call["arguments"])
        except ValueError:
            return False
        for key, value in arguments.items():
            if isinstance(value, str) and "enum" not in properties.get(key, {}) and normalise(value) not in text:
                return False
    return True


def trial_dialogs(episode: Episode) -> list[tuple[Trial, list[dict[str, Any]]]]:
    """Each trial of ``episode`` with its dialog (explorations written before trials kept theirs: the last trial's is
    the episode's, the earlier ones have none and are skipped).
    """
    last = len(episode.trials) - 1
    pairs = [(t, t.messages or (episode.messages if i == last else [])) for i, t in enumerate(episode.trials)]
    return [(t, m) for t, m in pairs if m]


def trial_verdict(query: str, trial: Trial, messages: list[dict[str, Any]], schemas: dict[str, Any] | None) -> str:
    """Why one trial's dialog is worth learning from ("kept") or not (the first rule it breaks)."""
    if not trial.calls:
        return "no tool call"
    if not all(r["ok"] for r in trial.results):
        return "a call failed"
    if schemas is not None and not call_is_grounded(trial.calls, query, schemas):
        return "call not grounded in the question"
    answer = final_answer(messages)
    if answer is None:
        return "no final answer"
    if not is_grounded(answer, trial.results):
        return "answer not grounded in the results"
    return "kept"


def choose(
    episode: Episode, schemas: dict[str, dict[str, Any]] | None = None
) -> tuple[str, Trial | None, list[dict[str, Any]]]:
    """(verdict, trial, dialog): the episode's first trial that passes every rule, or why its last one does not.
    ``schemas`` (tool name -> JSON schema) tells enumerated arguments (an attribute name) from free text, which
    the question must contain.
    """
    if episode.query is None:
        return "no usable query", None, []
    why = "no tool call"
    for trial, messages in trial_dialogs(episode):
        why = trial_verdict(episode.query, trial, messages, schemas)
        if why == "kept":
            return why, trial, messages
    return why, None, []


def verdict(episode: Episode, schemas: dict[str, dict[str, Any]] | None = None) -> str:
    """Why an episode is kept ("kept": one of its trials passes every rule) or dropped (its last trial's reason)."""
    return choose(episode, schemas)[0]


def distill(
    episodes: list[Episode],
    registry: ToolRegistry,
    *,
    cap: int = 50,
    judge: Policy | None = None,
    paraphrase: Policy | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(dataset rows, statistics: why episodes were dropped, rows per tool)."""
    reasons: Counter[str] = Counter()
    kept: dict[str, list[tuple[Episode, Trial, list[dict[str, Any]]]]] = {}
    seen: set[tuple[str, str]] = set()
    schemas = {name: registry[name].json_schema for name in registry.names}
    for episode in episodes:
        why, trial, messages = choose(episode, schemas)
        key = (episode.tool, normalise(episode.query or ""))
        if why == "kept" and key in seen:
            why = "duplicate query"
        if why == "kept" and len(kept.get(episode.tool, [])) >= cap:
            why = "over the cap"
        reasons[why] += 1
        if why == "kept" and trial is not None:
            seen.add(key)
            kept.setdefault(episode.tool, []).append((episode, trial, messages))
    chosen = [k for group in kept.values() for k in group]
    if judge is not None and chosen:
        replies = judge.generate([[{"role": "user", "content": _judge_prompt(*k)}] for k in chosen])
        judged = [k for k, reply in zip(chosen, replies, strict=True) if parse_verdict(reply)]
        reasons["dropped by the judge"] += len(chosen) - len(judged)
        reasons["kept"] -= len(chosen) - len(judged)
        chosen = judged
    rows = [{"messages": messages, "tools": [registry[e.tool].json_schema]} for e, _, messages in chosen]
    if paraphrase is not None and chosen:
        replies = paraphrase.generate(
            [[{"role": "user", "content": PARAPHRASE_PROMPT.format(query=e.query)}] for e, _, _ in chosen]
        )
        for (episode, _, kept_messages), reply in zip(chosen, replies, strict=True):
            query = parse_query(reply)
            if query and normalise(query) != normalise(episode.query or ""):
                messages = [{"role": "user", "content": query}, *kept_messages[1:]]
                rows.append({"messages": messages, "tools": [registry[episode.tool].json_schema]})
    per_tool = Counter(row["tools"][0]["function"]["name"] for row in rows)
    return rows, {
        "episodes": len(episodes),
        "reasons": dict(reasons),
        "rows_per_tool": dict(per_tool),
        "rows": len(rows),
    }


def exploration_yield(episodes: list[Episode], rows: list[dict[str, Any]], tools: list[str]) -> list[dict[str, Any]]:
    """Per tool: episodes, distinct questions, trials, trials whose calls all ran (a valid call), trials whose
    answer is grounded in their results, episodes the explorer judged satisfied, dialogs kept, exploration seconds.
    """
    out = []
    for tool in tools:
        mine = [e for e in episodes if e.tool == tool]
        trials = [t for e in mine for t in e.trials]
        valid = [t for t in trials if t.calls and all(r["ok"] for r in t.results)]
        out.append({
            "tool": tool,
            "episodes": len(mine),
            "distinct_questions": len({normalise(e.query) for e in mine if e.query}),
            "trials": len(trials),
            "valid_call": len(valid),
            "grounded_answer": sum(t.answer is not None and is_grounded(t.answer, t.results) for t in valid),
            "judged_satisfied": sum(e.satisfied for e in mine),
            "kept": sum(r["tools"][0]["function"]["name"] == tool for r in rows),
            "seconds": round(sum(e.seconds for e in mine), 1),
        })  # fmt: skip
    return out


def kept_samples(rows: list[dict[str, Any]], per_tool: int) -> list[dict[str, Any]]:
    """The first ``per_tool`` kept dialogs of each tool as question, calls, results and answer (for a reader)."""
    shown: Counter[str] = Counter()
    samples = []
    for row in rows:
        tool = row["tools"][0]["function"]["name"]
        if shown[tool] >= per_tool:
            continue
        shown[tool] += 1
        messages = row["messages"]
        samples.append({
            "tool": tool,
            "question": messages[0]["content"],
            "calls": [c["function"] for m in messages if m.get("tool_calls") for c in m["tool_calls"]],
            "results": [m["content"] for m in messages if m["role"] == "tool"],
            "answer": messages[-1]["content"],
        })  # fmt: skip
    return samples


def _judge_prompt(episode: Episode, trial: Trial, messages: list[dict[str, Any]]) -> str:
    results = "\n".join(
        f"- {c['name']}({json.dumps(c['arguments'])}) -> {r['content'][:300]}"
        for c, r in zip(trial.calls, trial.results, strict=False)
    )
    return JUDGE_PROMPT.format(query=episode.query, results=results, answer=final_answer(messages))


def write_dataset(rows: list[dict[str, Any]], folder: Path) -> Path:
    """``folder`` (a ``save_to_disk`` dataset ``--dataset`` reads) and ``folder``.jsonl beside it."""
    from datasets import Dataset

    from itl_env.trajectories import training_row

    folder.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_list([training_row(r["messages"], r["tools"]) for r in rows]).save_to_disk(folder)
    folder.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder
