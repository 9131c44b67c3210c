"""Time per generated token on the hf backend: a forced call (tool_choice, xgrammar-constrained) vs free generation.

    python benchmarks/bench_tool_choice.py                       # SmolLM2-135M-Instruct (49k vocabulary), offline
    python benchmarks/bench_tool_choice.py --model default       # the embedded model (1k vocabulary)

Both sides: the same questions about people, the people tools offered, greedy, batch ``--batch``. Ours: the reply
forced to be one call of any tool (``required``: the grammar is the union of every tool's schema); baseline: the
same model generating freely (``auto``) with the same token budget. Milliseconds per generated token, best of
``--repeats`` alternating passes; the ratio forced/free is printed last (the target: at most 1.5).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ratio import report


def main(args: argparse.Namespace) -> float:
    import torch

    from evals.backends.hf import HFPolicy
    from evals.models import load
    from itl_env.people_tools import registry
    from itl_env.world import WorldSpec, build_world

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        world = build_world(WorldSpec(people=64), Path(tmp) / "world.db")
        tools = registry(world).schemas()
        model, tokenizer = load(args.model, for_training=False)
        policy = HFPolicy(model, tokenizer, tools, max_new_tokens=args.tokens, batch_size=args.batch)
        questions = [[{"role": "user", "content": f"How old was {r['name']} on 1/1/2000?"}] for r in world.rows]
        questions = questions[: args.batch]
        best = {"forced": float("inf"), "free": float("inf")}
        choices = {"forced": ["required"] * len(questions), "free": None}
        policy.generate(questions, tool_choice=choices["forced"])  # warm-up: compiles the grammar once
        for _ in range(args.repeats):
            for side, choice in choices.items():
                start = time.perf_counter()
                policy.generate(questions, tool_choice=choice)
                tokens = sum(policy.last_token_counts)
                best[side] = min(best[side], (time.perf_counter() - start) / max(tokens, 1) * 1e3)
        world.close()
    return report(
        f"model {args.model}, batch {len(questions)}, best of {args.repeats}, {args.threads} threads",
        ("forced call (xgrammar, required)", best["forced"]),
        ("free generation", best["free"]),
        "ms per generated token",
        "forced/free",
    )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="smollm2-135m, default, or a model folder")
    parser.add_argument("--batch", type=int, default=8, help="questions per generate call (default: %(default)s)")
    parser.add_argument("--tokens", type=int, default=64, help="free generation's budget (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the best counts (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    args = parser.parse_args(argv)
    for name in ("batch", "tokens", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


if __name__ == "__main__":
    main(parse())
