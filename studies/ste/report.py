"""STE's written results: the tables (exploration yield, correctness per tool, continual rounds) and CSVs."""

from __future__ import annotations

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


def markdown(result: Any) -> str:
    parts = []
    e = result.exploration
    dropped = ", ".join(f"{k}: {v}" for k, v in e.get("dropped", {}).items()) or "none"
    parts.append(
        f"Exploration: {e['episodes']} episodes, {e['with_a_query']} with a usable query, {e['distinct_queries']} "
        f"distinct, {e['duplicates_of_memory']} repeating the long-term memory, {e['judged_satisfied']} judged satisfied "
        f"by the explorer; {e['kept']} dialogs kept ({e['kept_per_tool']}); dropped: {dropped}; "
        f"{e['explore_seconds']:.0f} s."
    )
    if result.correctness:
        tools = [k for k in result.correctness[0] if k not in ("setting", "mean")]
        parts.append(_table(result.correctness, ["setting", *tools, "mean"]))
    if result.continual:
        tools = list(
            dict.fromkeys(k for r in result.continual for k in r if k not in ("replay", "round", "trained_on"))
        )
        parts.append(_table(result.continual, ["replay", "round", "trained_on", *tools]))
    return "\n\n".join(parts)


def write_report(out: Path, result: Any, results: str | None) -> None:
    """Tables and CSVs into ``out``; with ``results``, copies named after the run (``ste-<out's name>-*``): runs of one
    preset with different ``--out`` folders do not overwrite each other's copies.
    """
    if result.correctness:
        write_csv(out / "correctness.csv", result.correctness)
    if result.continual:
        write_csv(out / "continual.csv", result.continual)
    (out / "tables.md").write_text(markdown(result) + "\n", encoding="utf-8")
    if results:
        Path(results).mkdir(parents=True, exist_ok=True)
        for name in ("correctness.csv", "continual.csv", "tables.md", "distill.json"):
            if (out / name).exists():
                shutil.copyfile(out / name, Path(results) / f"ste-{out.name}-{name}")
