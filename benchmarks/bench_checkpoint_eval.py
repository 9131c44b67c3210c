"""A checkpoint's recall measurement, the fine-tuning study's way: the HF backend against one vLLM engine that
reloads each checkpoint's weights (``--eval_backend vllm``, the engine in .venv-vllm).

    python benchmarks/bench_checkpoint_eval.py                                  # SmolLM2-135M, the cpu preset's sizes
    python benchmarks/bench_checkpoint_eval.py --models runs/a/model runs/b/model   # checkpoints that call the tool

Run from the main environment (.venv): the HF side evaluates the model in this process, as a training run does;
the vLLM side is ``trainers.hf_training.CheckpointEngine`` (save the weights, reload them in the engine, play).
Each round measures every model given as a checkpoint on both sides: the study's recall on ``--sample`` training
and ``--sample`` unseen facts of a world of the cpu preset's size (125 people + 100 unseen), ``--max-new-tokens``
per turn, ``--batch`` episodes in lockstep. The engine's start-up is paid once per run and reported apart; the
facts per second of a checkpoint's measurement (best of the rounds) come last, vLLM / HF, after how many records agree.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from ratio import report


def main(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from evals.backends.hf import HFPolicy
    from evals.evaluator import RecallEvaluator
    from evals.models import load_as_is
    from itl_env.fact_tools import fact_registry
    from itl_env.rollout import read_records
    from itl_env.world import open_or_build
    from trainers.hf_training import CheckpointEngine
    from trainers.options import RunOptions

    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="itl-bench-checkpoint-"))
    world = open_or_build(work / "world.db", people=125, unseen_people=100, seed=0)
    registry = fact_registry(world)
    evaluator = RecallEvaluator(world, mode="in_tool", registry=registry, max_turns=3, batch_size=args.batch)
    options = RunOptions(max_new_tokens=args.max_new_tokens, eval_batch_size=args.batch)
    models = [load_as_is(m) for m in args.models]
    engine = CheckpointEngine(models[0][1], evaluator.tools, options, work / "eval-model")
    seconds: dict[str, list[float]] = {"hf": [], "vllm": []}
    agree = total = 0
    try:
        start = time.perf_counter()
        engine(models[0][0])
        startup = time.perf_counter() - start
        print(f"vLLM engine started (and the first weights saved) in {startup:.1f} s, once per run")
        for round_ in range(args.rounds):
            for k, (model, tokenizer) in enumerate(models):
                model.eval()
                for side in ("hf", "vllm"):
                    folder = work / f"records-{side}"
                    start = time.perf_counter()
                    policy = (
                        engine(model)
                        if side == "vllm"
                        else HFPolicy(
                            model, tokenizer, evaluator.tools, max_new_tokens=args.max_new_tokens, batch_size=args.batch
                        )
                    )
                    evaluator.evaluate_splits(
                        policy, sample=args.sample, tag=f"m{k}", records_dir=folder, progress=False
                    )
                    seconds[side].append(time.perf_counter() - start)
                    print(f"round {round_ + 1}, checkpoint {k + 1}, {side}: {seconds[side][-1]:.1f} s", flush=True)
                for split in ("train", "unseen"):
                    hf, vllm = (read_records(work / f"records-{s}" / f"m{k}-{split}.jsonl") for s in ("hf", "vllm"))
                    agree += sum(a == b for a, b in zip(hf, vllm, strict=True))
                    total += len(hf)
    finally:
        engine.close()
        world.close()
    hf_s, vllm_s = min(seconds["hf"]), min(seconds["vllm"])
    print(f"records the same on both sides: {agree} of {total}")
    facts = 2 * args.sample
    ratio = report(
        f"recall of one checkpoint ({args.sample} + {args.sample} facts; {len(models)} checkpoint(s) x {args.rounds} "
        f"rounds, best): HF {hf_s:.1f} s, vLLM {vllm_s:.1f} s per checkpoint",
        ("vLLM engine, weights reloaded", facts / vllm_s),
        ("HF backend", facts / hf_s),
        "facts/s",
        "vLLM / HF (measurement per checkpoint that much cheaper)",
    )
    return {"hf_s": hf_s, "vllm_s": vllm_s, "startup_s": startup, "agree": agree, "total": total, "ratio": ratio}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m"], help="checkpoints (model directories)")
    parser.add_argument("--sample", type=int, default=60, help="facts per split (the cpu preset: 60)")
    parser.add_argument("--batch", type=int, default=64, help="episodes in lockstep (the cpu preset: 64)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="tokens per turn (the cpu preset: 48)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the HF side")
    parser.add_argument("--work", default=None, help="folder for the world and records (default: a temporary one)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse())
