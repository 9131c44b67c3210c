"""Tool-call throughput of the full ITL path against a raw baseline, and the environment's own cost per step.

    python benchmarks/bench_tools.py                                    # 100k people, 20k calls
    python benchmarks/bench_tools.py --people 10000 --calls 2000 --work /tmp/itl-bench

Ours: hermes text -> ``itl_env.formats`` parse -> ``ToolRegistry.call`` (validation) -> SELECT
through the read-only engine -> ``ToolResult``. Raw: a regex pulls the name and attribute out of
the same texts and the stdlib ``sqlite3`` runs a parameterised SELECT on one connection. Both
must return the same values. Each side gets a warm-up, then the best of ``--repeats`` runs (the
two sides alternate, so load on a shared machine hits both alike).

The environment overhead is a batched oracle rollout's wall time minus the oracle's own
``generate`` time, per environment step. The ratio ours/raw is printed last.
"""

from __future__ import annotations

import argparse
import gc
import random
import re
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from itl_env.env import ToolUseEnv, fact_registry
from itl_env.formats import ToolCall, get_format
from itl_env.oracle import OraclePolicy
from itl_env.rollout import rollout
from itl_env.store import PEOPLE_TABLE, Attribute
from itl_env.world import SCHEMA, World, WorldSpec, ensure_world

RAW_CALL = re.compile(
    r'<tool_call>\s*\{"name": "lookup", "arguments": \{"name": "(?P<name>[^"]*)", "attribute": "(?P<attribute>\w+)"\}\}'
    r"\s*</tool_call>"
)


def call_texts(world: World, calls: int, seed: int) -> list[str]:
    """``calls`` hermes lookup calls for random people (both splits) and attributes of ``world``."""
    rng = random.Random(seed)
    hermes = get_format("hermes")
    attributes = [a.value for a in Attribute]
    people = [rng.choice(world.rows)["name"] for _ in range(calls)]
    return [
        hermes.render([ToolCall(name="lookup", arguments={"name": name, "attribute": rng.choice(attributes)})])
        for name in people
    ]


def ours(world: World) -> Callable[[list[str]], list[str]]:
    hermes, registry = get_format("hermes"), fact_registry(world)

    def run(texts: list[str]) -> list[str]:
        results = []
        for text in texts:
            for call in hermes.parse(text).calls:
                results.append(registry.call(call.name, call.arguments).content)
        return results

    return run


def raw(db: Path) -> Callable[[list[str]], list[str]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    selects = {a.value: f"SELECT {a.value} FROM {PEOPLE_TABLE} WHERE name = ?" for a in Attribute}  # whitelisted

    def run(texts: list[str]) -> list[str]:
        results = []
        for text in texts:
            for match in RAW_CALL.finditer(text):
                row = conn.execute(selects[match["attribute"]], (match["name"],)).fetchone()
                results.append(row[0])
        return results

    return run


def best_rates(runs: dict[str, Callable[[list[str]], list[str]]], texts: list[str], repeats: int) -> dict[str, float]:
    """Calls per second of each run: a warm-up, then the best of ``repeats`` timed passes.

    The runs take turns within each repeat, so a change in the machine's load hits both alike.
    """
    for run in runs.values():
        run(texts[: max(1, len(texts) // 10)])
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for label, run in runs.items():
            gc.collect()
            start = time.perf_counter()
            run(texts)
            best[label] = min(best[label], time.perf_counter() - start)
    return {label: len(texts) / seconds for label, seconds in best.items()}


class TimedPolicy:
    """The oracle, with the time spent inside its ``generate`` summed."""

    def __init__(self, policy: OraclePolicy):
        self.policy = policy
        self.seconds = 0.0

    def generate(self, conversations: list[list[dict[str, Any]]]) -> list[str]:
        start = time.perf_counter()
        replies = self.policy.generate(conversations)
        self.seconds += time.perf_counter() - start
        return replies


def env_overhead_us(world: World, facts: int, batch_size: int, seed: int, repeats: int) -> tuple[float, int]:
    """(best microseconds of environment work per step in a batched oracle rollout, steps per rollout)."""
    chosen = random.Random(seed).sample(world.facts("train"), min(facts, len(world.facts("train"))))
    best, steps = float("inf"), 0
    for _ in range(repeats):
        policy = TimedPolicy(OraclePolicy(world, "in_tool"))
        gc.collect()
        start = time.perf_counter()
        result = rollout(
            policy, lambda: ToolUseEnv(world), chosen, mode="in_tool", batch_size=batch_size, progress=False
        )
        elapsed = time.perf_counter() - start
        steps = sum(r.turns for r in result.records)
        if result.summary.recall != 1.0:
            raise RuntimeError(f"the oracle's recall is {result.summary.recall}, not 1.0: the world is inconsistent")
        best = min(best, (elapsed - policy.seconds) / steps * 1e6)
    return best, steps


def main(args: argparse.Namespace) -> float:
    work = Path(args.work) if args.work else Path(tempfile.gettempdir()) / "itl-bench"
    spec = WorldSpec(seed=args.seed, people=args.people, unseen_people=args.unseen_people)
    db = work / f"world-{spec.seed}-{spec.people}-{spec.unseen_people}-schema{SCHEMA}.db"  # a newer schema: a new file
    start = time.perf_counter()
    world = ensure_world(spec, db)
    print(f"world: {len(world.rows)} people at {db} ({time.perf_counter() - start:.1f} s to build or open)")

    texts = call_texts(world, args.calls, args.seed)
    ours_run, raw_run = ours(world), raw(db)
    if ours_run(texts) != raw_run(texts):
        raise RuntimeError("ours and raw disagree on the lookup results; the comparison would be meaningless")
    rates = best_rates({"ours": ours_run, "raw": raw_run}, texts, args.repeats)
    ours_rate, raw_rate = rates["ours"], rates["raw"]
    overhead, steps = env_overhead_us(world, args.rollout_facts, args.batch_size, args.seed, args.repeats)

    print(f"calls: {len(texts)}, best of {args.repeats}")
    print(f"env overhead per step (rollout - policy time, {steps} steps, batch {args.batch_size}): {overhead:.1f} us")
    print(f"ours (parse -> validate -> SQLAlchemy-compiled SELECT -> ToolResult): {ours_rate:,.0f} calls/s")
    print(f"raw (regex -> sqlite3 SELECT): {raw_rate:,.0f} calls/s")
    ratio = ours_rate / raw_rate
    print(f"ratio ours/raw: {ratio:.2f}")
    world.close()
    return ratio


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--people", type=int, default=100_000, help="training people in the world (default: %(default)s)"
    )
    parser.add_argument(
        "--unseen-people", type=int, default=1_000, help="unseen people in the world (default: %(default)s)"
    )
    parser.add_argument(
        "--calls", type=int, default=20_000, help="tool-call texts per timed pass (default: %(default)s)"
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed passes; the best counts (default: %(default)s)")
    parser.add_argument(
        "--rollout-facts", type=int, default=5_000, help="facts in the overhead rollout (default: %(default)s)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="rollout batch size (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="world seed and sampling seed (default: %(default)s)")
    parser.add_argument(
        "--work", default=None, help="directory for the world file, reused across runs (default: <tmp>/itl-bench)"
    )
    args = parser.parse_args(argv)
    for name in ("people", "calls", "repeats", "rollout_facts", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


if __name__ == "__main__":
    main(parse())
