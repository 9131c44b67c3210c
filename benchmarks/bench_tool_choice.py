"""Time per generated token on the hf backend: a forced call (tool_choice, xgrammar-constrained) vs free generation.

    python benchmarks/bench_tool_choice.py                       # SmolLM2-135M-Instruct (49k vocabulary), offline
    python benchmarks/bench_tool_choice.py --model default       # the embedded model (1k vocabulary)

Both sides: the same questions about people, the people tools offered, greedy, batch ``--batch``. Ours: the reply
forced to be one call of any tool (``required``: the grammar is the union of every tool's schema); baseline: the
same model generating freely (``auto``) for as many decoding steps as the forced batch took (its longest call and
the end token), so both sides prefill the same prompts and decode the same number of positions: what differs is the
grammar's work per step. Milliseconds per decoded position (batch × steps), best of ``--repeats`` alternating passes;
the ratio forced/free is printed last (the target: at most 1.5). Per *counted* token (a reply's tokens up to its end)
is printed too: there the forced side also pays the steps a batch decodes after its shorter calls have ended, and
divides the prompts' prefill by fewer tokens.
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
        policy = HFPolicy(model, tokenizer, tools, batch_size=args.batch)
        questions = [[{"role": "user", "content": f"How old was {r['name']} on 1/1/2000?"}] for r in world.rows]
        questions = questions[: args.batch]
        choices = {"forced": ["required"] * len(questions), "free": None}
        policy.generate(questions, tool_choice=choices["forced"])  # warm-up: compiles the grammar once
        steps = max(policy.last_token_counts)  # greedy: every forced pass takes these many steps
        policy.max_new_tokens = steps  # the free side decodes as many (a forced turn's own budget is larger)
        per_position = {"forced": float("inf"), "free": float("inf")}
        per_counted = dict(per_position)
        for _ in range(args.repeats):
            for side, choice in choices.items():
                start = time.perf_counter()
                policy.generate(questions, tool_choice=choice)
                ms = (time.perf_counter() - start) * 1e3
                counts = policy.last_token_counts
                per_position[side] = min(per_position[side], ms / (len(questions) * max(counts)))
                per_counted[side] = min(per_counted[side], ms / max(sum(counts), 1))
        print(
            f"{steps} decoding steps a batch; per counted token: forced {per_counted['forced']:.2f} ms, "
            f"free {per_counted['free']:.2f} ms ({per_counted['forced'] / per_counted['free']:.2f}x)"
        )
        world.close()
    return report(
        f"model {args.model}, batch {len(questions)}, best of {args.repeats}, {args.threads} threads",
        ("forced call (xgrammar, required)", per_position["forced"]),
        ("free generation, as many steps", per_position["free"]),
        "ms per decoded position",
        "forced/free",
    )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="smollm2-135m, default, or a model folder")
    parser.add_argument("--batch", type=int, default=8, help="questions per generate call (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the best counts (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    args = parser.parse_args(argv)
    for name in ("batch", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


if __name__ == "__main__":
    main(parse())
