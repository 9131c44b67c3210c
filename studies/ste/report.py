"""STE's written results: the tables (exploration yield, correctness per tool, continual rounds) and CSVs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from studies.memory.report import write_csv


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "-")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


YIELD = ["explorer", "tool", "episodes", "distinct_questions", "trials", "valid_call", "grounded_answer",
         "judged_satisfied", "kept", "seconds"]  # fmt: skip


def markdown(result: Any) -> str:
    parts = ["Exploration (per explorer and tool; trials with a valid call: every call ran without error):",
             _table(result.exploration, YIELD)]  # fmt: skip
    for explorer, reasons in result.dropped.items():
        dropped = ", ".join(f"{k}: {v}" for k, v in reasons.items()) or "none"
        parts.append(f"Dropped ({explorer} explorer): {dropped}.")
    for explorer, samples in result.samples.items():
        if samples:
            lines = [f"Kept dialogs ({explorer} explorer), a sample:"]
            lines += [f"- {s['tool']}: {s['question']!r} -> {json.dumps(s['calls'], ensure_ascii=False)} -> "
                      f"{[r[:120] for r in s['results']]} -> {s['answer']!r}" for s in samples]  # fmt: skip
            parts.append("\n".join(lines))
    if result.correctness:
        tools = [k for k in result.correctness[0] if k not in ("setting", "mean")]
        parts.append(_table(result.correctness, ["setting", *tools, "mean"]))
    if result.continual:
        tools = list(
            dict.fromkeys(k for r in result.continual for k in r if k not in ("replay", "round", "trained_on"))
        )
        parts.append(_table(result.continual, ["replay", "round", "trained_on", *tools]))
    return "\n\n".join(parts)


def write_report(out: Path, result: Any, results: str | None, explorers: list[str]) -> None:
    """Tables and CSVs into ``out``; with ``results``, copies named after the run (``ste-<out's name>-*``): runs of one
    preset with different ``--out`` folders do not overwrite each other's copies.
    """
    tables = {"exploration.csv": result.exploration, "correctness.csv": result.correctness,
              "continual.csv": result.continual}  # fmt: skip
    for name, rows in tables.items():
        if rows:
            write_csv(out / name, rows)
    (out / "tables.md").write_text(markdown(result) + "\n", encoding="utf-8")
    if results:
        Path(results).mkdir(parents=True, exist_ok=True)
        copies = {name: out / name for name in (*tables, "tables.md")}
        copies |= {f"distill-{e}.json": out / "explorers" / e / "distill.json" for e in explorers}
        for name, source in copies.items():
            if source.exists():
                shutil.copyfile(source, Path(results) / f"ste-{out.name}-{name}")
