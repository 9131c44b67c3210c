"""The fine-tuning study's written results: CSVs, the markdown table, plots, the published SmolLM-135M rows."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

from studies.memory.report import write_csv

PUBLISHED_MODEL = {"in_weight": "Smol135M-weight", "in_tool": "Smol135M-tool"}


def published_rows(path: str | Path) -> list[dict[str, Any]]:
    """The last checkpoint of each published SmolLM-135M run (mode, facts, steps, recall, KL, TV, HellaSwag %)."""
    last: dict[tuple[str, str], dict[str, Any]] = {}
    with Path(path).open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            mode = next((m for m, name in PUBLISHED_MODEL.items() if row["model"] == name), None)
            if mode is None or row["dataset_size"] == "0":
                continue
            key = (mode, row["dataset_size"])
            if key not in last or int(row["checkpoint_nbr"]) > int(last[key]["checkpoint_nbr"]):
                last[key] = row
    out = []
    for (mode, size), row in sorted(last.items()):
        out.append(
            {
                "mode": mode,
                "facts": _facts(size),
                "steps": int(row["checkpoint_nbr"]),
                "recall": float(row["recall"]),
                "kl": float(row["kl"]),
                "tv": float(row["tv"]),
                "hellaswag_relative": float(row["hellaswag_relative"]),
            }
        )
    return out


def _facts(size: str) -> int | None:
    """'500', '1k', '50k' -> facts; the in-tool runs say 'all' (their own number of facts, 1,000 by the run name)."""
    if size == "all":
        return 1000
    return int(float(size[:-1]) * 1000) if size.endswith("k") else int(size)


def markdown_table(rows: list[Any], published: list[dict[str, Any]] | None = None) -> str:
    header = ["mode", "facts", "precision", "steps to 0.99", "recall train", "recall unseen", "KL", "KL, first tokens",
              "TV", "HellaSwag acc %", "acc_norm %", "faithful: tool", "faithful: memory"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        reached = str(r.steps_to_target) if r.steps_to_target is not None else f"not in {r.step_budget}"
        cells = [r.mode, f"{r.facts:,}", r.regime or r.precision, reached, f"{r.train_recall:.3f}",
                 f"{r.unseen_recall:.3f}", f"{r.kl:.4f}", _number(r.kl_first, "{:.4f}"), f"{r.tv:.3f}",
                 _number(r.hellaswag_relative, "{:.1f}"), _number(r.hellaswag_relative_norm, "{:.1f}"),
                 f"{r.faithful_tool:.3f}", f"{r.faithful_memory:.3f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    notes = sorted({f"KL on {r.prompts_rendered}" for r in rows if r.prompts_rendered})
    notes += sorted({f"HellaSwag: {r.hellaswag_source}; one item is {r.hellaswag_item_points:.1f} relative points"
                     for r in rows if r.hellaswag_source and r.hellaswag_item_points})  # fmt: skip
    lines += ["", *notes] if notes else []
    if published:
        lines += ["", "Published SmolLM-135M (last checkpoint; batch 128):", "",
                  "| mode | facts | steps | recall | KL | TV | HellaSwag % |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        lines += [
            f"| {p['mode']} | {p['facts']:,} | {p['steps']} | {p['recall']:.3f} | {p['kl']:.3f} | {p['tv']:.3f} | "
            f"{p['hellaswag_relative']:.1f} |"
            for p in published
        ]
    return "\n".join(lines)


def _number(value: float | None, form: str) -> str:
    return "-" if value is None else form.format(value)


def write_report(
    out: Path, rows: list[Any], checkpoints: list[Any], published: str | None, results: str | None, preset: str
) -> None:
    """results.csv, checkpoints.csv, table.md and the plots into ``out``; the CSVs also into ``results``."""
    write_csv(out / "results.csv", [r.model_dump() for r in rows])
    write_csv(out / "checkpoints.csv", [r.model_dump() for r in checkpoints])
    pub = published_rows(published) if published else None
    (out / "table.md").write_text(markdown_table(rows, pub) + "\n", encoding="utf-8")
    try:
        plot_recall_vs_steps(checkpoints, out / "recall_vs_steps.png")
        plot_kl_vs_facts(rows, pub, out / "kl_vs_facts.png")
    except ImportError:  # matplotlib is optional: the tables are the result
        pass
    if results:
        folder = Path(results)
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("results.csv", "checkpoints.csv", "table.md", "recall_vs_steps.png", "kl_vs_facts.png"):
            if (out / name).exists():
                shutil.copyfile(out / name, folder / f"finetune-{preset}-{name}")


COLOURS = {"in_weight": "tab:red", "in_tool": "tab:blue"}


def plot_recall_vs_steps(checkpoints: list[Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for mode, facts, precision in sorted({(c.mode, c.facts, c.precision) for c in checkpoints}):
        mine = [c for c in checkpoints if (c.mode, c.facts, c.precision) == (mode, facts, precision)]
        name = f"{mode}, {facts:,} facts, {precision}"
        ax.plot([c.step for c in mine], [c.train_recall for c in mine], "o-", color=COLOURS[mode],
                label=f"{name}: training")  # fmt: skip
        ax.plot([c.step for c in mine], [c.unseen_recall for c in mine], "x:", color=COLOURS[mode],
                label=f"{name}: unseen")  # fmt: skip
    ax.set_xlabel("fine-tuning steps")
    ax.set_ylabel("recall (through the environment)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_kl_vs_facts(rows: list[Any], published: list[dict[str, Any]] | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for mode in COLOURS:
        for precision in sorted({r.precision for r in rows}):
            mine = sorted((r.facts, r.kl) for r in rows if (r.mode, r.precision) == (mode, precision))
            if mine:
                ax.plot(*zip(*mine, strict=True), "o-", color=COLOURS[mode],
                        label=f"{mode}, {precision} (SmolLM2-135M, this study)")  # fmt: skip
        theirs = sorted((p["facts"], p["kl"]) for p in published or [] if p["mode"] == mode)
        if theirs:
            ax.plot(*zip(*theirs, strict=True), "s--", mfc="none", alpha=0.6, color=COLOURS[mode],
                    label=f"{mode} (SmolLM-135M, published)")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("facts fine-tuned on")
    ax.set_ylabel("KL(base || fine-tuned) per token, nats")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
