"""The study's written results: CSV rows, the threshold table, bits per parameter, published thresholds."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def bits_per_fact() -> float:
    """Mean information of one fact of an independent world: log2 of its number of possible values."""
    from itl_env import world
    from itl_env.store import Attribute

    sizes = {a: len(world.atoms(kind)) for a, kind in world.ATTRIBUTE_ATOMS.items()}
    sizes[Attribute.birth_date] = world._BIRTH_DAYS  # birth dates are drawn uniformly from this many days
    return sum(math.log2(n) for n in sizes.values()) / len(sizes)


def published_thresholds(path: str | Path, target: float = 0.99) -> dict[tuple[str, int], int]:
    """Smallest ``nb_params`` reaching ``target`` accuracy (best seed) per (mode, people) in the paper's grid CSV."""
    modes = {"qa": "in_weight", "qatool": "in_tool"}
    best: dict[tuple[str, int], int] = {}
    with Path(path).open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            mode = modes.get(row["data.key"])
            if mode is None or float(row["accuracy_best"]) < target:
                continue
            key = (mode, int(row["data.nb_data"]))
            best[key] = min(best.get(key, math.inf), int(float(row["nb_params"])))
    return best


def markdown_table(rows: list[dict[str, Any]]) -> str:
    has_published = any("published_params" in r for r in rows)
    header = ["mode", "people", "facts", "threshold d", "params", "steps", "unseen recall*", "bits/param"]
    header += ["published params", "ours / published"] if has_published else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cell(v: Any, fmt: str = "{}") -> str:
        return "-" if v is None else fmt.format(v)

    for r in rows:
        params = cell(r["threshold_params"], "{:,}")
        if r["threshold_params"] is None and r["largest_failing_params"] is not None:
            params = (
                f"not reached up to {r['largest_failing_params']:,} "
                f"(best {cell(r['best_failing_recall'], '{:.3f}')} at {r['best_failing_params']:,})"
            )
        values = [
            r["mode"],
            str(r["people"]),
            f"{r['facts']:,}",
            cell(r["threshold_emb_dim"]),
            params,
            cell(r["steps_to_target"]),
            cell(r["unseen_recall"], "{:.3f}")
            if r["threshold_params"]
            else cell(r["best_failing_unseen_recall"], "({:.3f})"),
            cell(r["bits_per_param"], "{:.3f}"),
        ]
        if has_published:
            values += [cell(r.get("published_params"), "{:,}"), cell(r.get("ratio_to_published"), "{:.2f}")]
        lines.append("| " + " | ".join(values) + " |")
    lines.append(
        "\n*in-tool recall on unseen people: of the threshold model, or (in brackets) of the best run when none reached the target"
    )
    return "\n".join(lines)
