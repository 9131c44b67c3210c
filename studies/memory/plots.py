"""Plots of the memory study: parameters needed vs number of facts, log-log, both modes.

from studies.memory.plots import plot_params_vs_facts
plot_params_vs_facts(threshold_rows, "runs/study/cpu/params_vs_facts.png", published="itl_grid4.csv")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLOURS = {"in_weight": "tab:red", "in_tool": "tab:blue"}
LABELS = {"in_weight": "in-weight", "in_tool": "in-tool"}


def plot_params_vs_facts(
    rows: list[dict[str, Any]],
    path: str | Path,
    published: str | Path | None = None,
    target: float = 0.99,
) -> Path:
    """Threshold params per facts (filled markers; an open triangle up = not reached up to that size),
    with the published thresholds (dashed, hollow) when ``published`` is the paper's grid CSV.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for mode in LABELS:
        mine = [r for r in rows if r["mode"] == mode]
        if not mine:
            continue
        reached = [(r["facts"], r["threshold_params"]) for r in mine if r["threshold_params"]]
        if reached:
            ax.plot(*zip(*reached, strict=True), "o-", color=COLOURS[mode], label=f"{LABELS[mode]} (this study)")
        missed = [(r["facts"], r["largest_failing_params"]) for r in mine if not r["threshold_params"]]
        missed = [(f, p) for f, p in missed if p]
        if missed:
            ax.plot(
                *zip(*missed, strict=True),
                "^",
                color=COLOURS[mode],
                mfc="none",
                ms=9,
                label=f"{LABELS[mode]}: not reached",
            )
    if published:
        from studies.memory.report import published_thresholds

        pub = published_thresholds(published, target)
        for mode in LABELS:
            points = sorted((4 * people, params) for (m, people), params in pub.items() if m == mode)
            if points:
                ax.plot(
                    *zip(*points, strict=True),
                    "s--",
                    color=COLOURS[mode],
                    mfc="none",
                    alpha=0.6,
                    label=f"{LABELS[mode]} (published)",
                )
    facts = sorted({r["facts"] for r in rows})
    if facts:
        ax.plot(facts, [8 * f for f in facts], ":", color="grey", label="8 params per fact")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("facts (4 per person)")
    ax.set_ylabel(f"smallest model with recall >= {target:g} (params)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
