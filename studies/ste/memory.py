"""STE's two memories: what was explored before (long-term) and what was tried in this episode (short-term)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from configs import jsonl
from itl_env.scoring import normalise


class Trial(BaseModel):
    """One attempt at a query: the calls made, what the tool said, the answer, the explorer's own verdict, and the
    attempt's dialog (the plain query first; empty in explorations written before trials kept theirs).
    """

    model_config = ConfigDict(extra="forbid")

    calls: list[dict]
    results: list[dict]
    answer: str | None
    satisfied: bool
    messages: list[dict] = Field(default_factory=list)


class LongTermMemory:
    """The queries explored so far for each tool (a JSONL file, so a resumed exploration remembers them too)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self.queries: dict[str, list[tuple[str, bool]]] = {}
        if self.path is not None:
            for row in jsonl.read(self.path, lambda r: (r["tool"], str(r["query"]), bool(r["satisfied"]))):
                self.queries.setdefault(row[0], []).append(row[1:])

    def add(self, tool: str, query: str, satisfied: bool) -> None:
        self.queries.setdefault(tool, []).append((query, satisfied))
        if self.path is not None:
            jsonl.append(self.path, [{"tool": tool, "query": query, "satisfied": satisfied}])

    def recent(self, tool: str, k: int) -> list[tuple[str, bool]]:
        """The ``k`` latest queries of ``tool`` with whether they were satisfied (what the next proposal must avoid)."""
        return self.queries.get(tool, [])[-k:] if k else []

    def knows(self, tool: str, query: str) -> bool:
        return normalise(query) in {normalise(q) for q, _ in self.queries.get(tool, [])}


class ShortTermMemory:
    """The trials of one episode, written back to the explorer before its next trial."""

    def __init__(self) -> None:
        self.trials: list[Trial] = []

    def add(self, trial: Trial) -> None:
        self.trials.append(trial)

    def note(self) -> str:
        """The earlier trials as a note the next trial starts from (empty before the first)."""
        if not self.trials:
            return ""
        lines = ["Earlier attempts at this question (do better):"]
        for i, trial in enumerate(self.trials, 1):
            made = (
                "; ".join(
                    f"{c['name']}({json.dumps(c['arguments'])}) -> {r['content'][:200]}"
                    for c, r in zip(trial.calls, trial.results, strict=False)
                )
                or "no tool call"
            )
            verdict = "satisfied" if trial.satisfied else "not satisfied"
            lines.append(f"{i}. {made}; answer: {trial.answer or '(none)'}; judged {verdict}")
        return "\n".join(lines)
