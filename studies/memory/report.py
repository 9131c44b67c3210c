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
    sizes[Attribute.birth_date] = world.BIRTH_DAYS
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
    header = ["mode", "people", "facts", "threshold d", "params", "steps", "unseen recall*", "faithful tool/memory"]
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
            "-" if r.get("faithful_tool") is None else f"{r['faithful_tool']:.2f} / {r['faithful_memory']:.2f}",
        ]
        if has_published:
            values += [cell(r.get("published_params"), "{:,}"), cell(r.get("ratio_to_published"), "{:.2f}")]
        lines.append("| " + " | ".join(values) + " |")
    lines.append(
        "\n*in-tool recall on unseen people: of the threshold model, or (in brackets) of the best run when none reached"
        " the target. Faithful: in-tool threshold model on a counterfactual copy of its world (half the training facts"
        " changed): share answering the new value (the tool's) / the old one (memory)."
    )
    return "\n".join(lines)


PUBLISHED_BITS_PER_PERSON = 31.25  # the paper's world: its information per person (4 facts)
CAPACITY_ANCHOR = 2.0  # bits a parameter can store (the capacity-scaling anchor the paper compares with)


def published_seed_shares(path: str | Path, target: float = 0.99) -> dict[tuple[str, int, int], tuple[int, int]]:
    """(seeds reaching ``target``, seeds run) per (mode, people, width) of the paper's grid CSV."""
    modes = {"qa": "in_weight", "qatool": "in_tool"}
    shares: dict[tuple[str, int, int], tuple[int, int]] = {}
    with Path(path).open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            mode = modes.get(row["data.key"])
            if mode is None:
                continue
            key = (mode, int(row["data.nb_data"]), int(row["model.emb_dim"]))
            reached, seeds = shares.get(key, (0, 0))
            shares[key] = (reached + (float(row["accuracy_best"]) >= target), seeds + 1)
    return shares


def least_squares_slope(points: list[tuple[float, float]]) -> float | None:
    """The slope of the least-squares line through ``points`` (None for fewer than two distinct x)."""
    if len({x for x, _ in points}) < 2:
        return None
    n = len(points)
    mean_x, mean_y = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)


def capacity_report(rows: list[dict[str, Any]], published: str | Path | None, target: float) -> dict[str, Any]:
    """Bits per parameter as the paper means it: information per fact over the slope of in-weight threshold params
    vs facts (a least-squares fit), ours and published, beside the ~2 bits/param capacity anchor.
    """
    ours = [(r["facts"], r["threshold_params"]) for r in rows if r["mode"] == "in_weight" and r["threshold_params"]]
    slope = least_squares_slope(ours)
    report: dict[str, Any] = {
        "bits_per_person": round(4 * bits_per_fact(), 2),
        "points": ours,
        "params_per_fact": round(slope, 2) if slope else None,
        "bits_per_param": round(bits_per_fact() / slope, 3) if slope and slope > 0 else None,
        "published_bits_per_person": PUBLISHED_BITS_PER_PERSON,
        "capacity_anchor_bits_per_param": CAPACITY_ANCHOR,
    }
    if published:
        theirs = sorted(
            (4 * p, params) for (m, p), params in published_thresholds(published, target).items() if m == "in_weight"
        )
        pub_slope = least_squares_slope(theirs)
        report |= {
            "published_points": theirs,
            "published_params_per_fact": round(pub_slope, 2) if pub_slope else None,
            "published_bits_per_param": round(PUBLISHED_BITS_PER_PERSON / 4 / pub_slope, 3) if pub_slope else None,
        }
    return report


def capacity_text(report: dict[str, Any]) -> str:
    ours = (
        f"{report['params_per_fact']} params per fact (least-squares slope over {len(report['points'])} in-weight "
        f"thresholds) -> {report['bits_per_param']} bits/param with {report['bits_per_person']} bits per person"
        if report.get("params_per_fact")
        else "too few in-weight thresholds for a slope"
    )
    lines = [f"Capacity: ours {ours}."]
    if report.get("published_params_per_fact"):
        lines.append(
            f"Published: {report['published_params_per_fact']} params per fact over "
            f"{len(report['published_points'])} thresholds -> {report['published_bits_per_param']} bits/param "
            f"with {report['published_bits_per_person']} bits per person."
        )
    lines.append(f"Anchor: about {report['capacity_anchor_bits_per_param']:g} bits per parameter.")
    return " ".join(lines)


def seed_share_table(shares: list[dict[str, Any]]) -> str:
    lines = [
        "| mode | people | width | params | seeds reaching 0.99 | share | published share |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in shares:
        pub = (
            "-"
            if r["published_share"] is None
            else f"{r['published_reached']}/{r['published_seeds']} = {r['published_share']:.1f}"
        )
        lines.append(
            f"| {r['mode']} | {r['people']:,} | {r['emb_dim']} | {r['params']:,} | {r['reached']}/{r['seeds']} | "
            f"{r['share']:.2f} | {pub} |"
        )
    return "\n".join(lines)


PUBLISHED_STEPS, PUBLISHED_BATCH = 100_000, 128  # the paper's runs: one dialog per (padded) row of each step


def exposures(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (mode, people): dialogs seen in a run of the whole step budget and times each fact is seen, ours (packed
    rows: tokens / mean dialog tokens) beside the paper's (``PUBLISHED_STEPS`` x ``PUBLISHED_BATCH`` dialogs), and
    the ratio in dialogs: the data each side trains on, padding not counted.
    """
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for run in runs:
        if run.get("steps") and run.get("mean_dialog_tokens"):
            groups.setdefault((run["mode"], int(run["people"])), []).append(run)
    out = []
    for (mode, people), group in sorted(groups.items()):
        facts = int(group[0]["facts"])
        per_step = sum(float(r["tokens"]) / int(r["steps"]) for r in group) / len(group)  # tokens per step
        dialogs = per_step * int(group[0]["step_budget"]) / float(group[0]["mean_dialog_tokens"])
        theirs = PUBLISHED_STEPS * PUBLISHED_BATCH
        out.append({
            "mode": mode, "people": people, "facts": facts, "mean_dialog_tokens": float(group[0]["mean_dialog_tokens"]),
            "dialogs": round(dialogs), "exposures_per_fact": round(dialogs / facts, 1),
            "published_dialogs": theirs, "published_exposures_per_fact": round(theirs / facts, 1),
            "published_over_ours": round(theirs / dialogs, 1),
        })  # fmt: skip
    return out
