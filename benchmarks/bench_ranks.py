"""Training and evaluation samples/s of one SFT run on 1 process vs N ranks (torchrun), same global batch.

    python benchmarks/bench_ranks.py [--ranks 2 --people 500 --steps 30 --batch 32 --eval_facts 200]

Both runs are ``trainers/sft.py`` on the embedded default model and the same world: one process with
``--per_device_train_batch_size B``, and N gloo (CPU) or NCCL (GPU) ranks with ``B / N`` each, so every step
sees the same global batch. Training samples/s is TRL's ``train_samples_per_second``; evaluation is the final
evaluation (``--final_eval_facts`` per split, sharded over the ranks), timed from its log lines. On a 2-core
CPU two ranks share the cores a single process already uses, so expect little; the point here is that the
multi-process path is correct, the speed-up is a GPU matter. Prints both, ratio (N ranks / 1) last.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(ranks: int, args: argparse.Namespace, world: Path, out: Path) -> dict[str, float]:
    launcher = [sys.executable]
    if ranks > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
    command = [
        *launcher, "trainers/sft.py", "--world", str(world), "--people", str(args.people), "--unseen_people", "50",
        "--max_steps", str(args.steps), "--per_device_train_batch_size", str(args.batch // ranks),
        "--eval_every", "0", "--final_eval_facts", str(args.eval_facts), "--eval_batch_size", "64",
        "--save_strategy", "no", "--logging_steps", str(args.steps), "--output_dir", str(out),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    trained = next(r for r in rows if "train_samples_per_second" in r)
    final = next(r for r in rows if "final/train_recall" in r)
    summary = json.loads((out / "summary.json").read_text())
    evaluated = 2 * args.eval_facts
    eval_seconds = final["time"] - trained["time"]  # from the end of training to the final evaluation's log line
    return {
        "train_samples_per_s": trained["train_samples_per_second"],
        "eval_facts_per_s": evaluated / eval_seconds,
        "wall_s": wall,
        "train_recall": summary["train_recall"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--people", type=int, default=500)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32, help="global batch (dialogs per step, all ranks)")
    parser.add_argument("--eval_facts", type=int, default=200, help="facts per split in the final evaluation")
    args = parser.parse_args()
    if args.batch % args.ranks:
        parser.error("--batch must be a multiple of --ranks")
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "world.db"
        results = {n: run(n, args, world, Path(tmp) / f"ranks{n}") for n in (1, args.ranks)}
    cores = os.cpu_count()
    print(f"SFT, default model, {args.people} people, {args.steps} steps of {args.batch} dialogs, {cores} CPU cores")
    for n, r in results.items():
        print(
            f"{n} rank(s): train {r['train_samples_per_s']:.1f} samples/s, eval {r['eval_facts_per_s']:.1f} facts/s, "
            f"wall {r['wall_s']:.1f} s, recall {r['train_recall']:.3f}"
        )
    one, many = results[1], results[args.ranks]
    print(f"eval ratio ({args.ranks} ranks / 1): {many['eval_facts_per_s'] / one['eval_facts_per_s']:.2f}")
    print(f"train ratio ({args.ranks} ranks / 1): {many['train_samples_per_s'] / one['train_samples_per_s']:.2f}")


if __name__ == "__main__":
    main()
