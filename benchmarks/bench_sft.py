"""Time per SFT step: TRL's padding-free / packing options vs plain TRL defaults, same data, same model.

    python benchmarks/bench_sft.py [--people 500 --steps 8 --batch 32]

Every variant trains the embedded default model (same seed) on the same in_tool oracle dialogs
with ``assistant_only_loss``. Reported per variant: seconds per step, dialogs/s and non-padding
tokens/s, and whether attention stays inside each dialog (checked, not assumed: logits of a
dialog alone must equal its logits inside the variant's batch layout). The ratio printed last is
the best *correct* variant's dialogs/s over plain TRL defaults (dynamic padding, activation
checkpointing on). Dialogs per step are counted from the batches (rows, or position restarts).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def variants() -> dict[str, dict]:
    """TRL's defaults and ours (what trainers/sft.py changes in them for step time), plus TRL's packing options."""
    from trainers.options import no_activation_checkpointing

    ours = no_activation_checkpointing()
    return {
        "trl defaults (padding)": {},
        "ours (padding)": ours,
        "ours + padding_free": ours | {"padding_free": True, "max_length": None},
        "ours + packing bfd": ours | {"packing": True, "packing_strategy": "bfd", "max_length": 1024},
    }


def time_variant(name: str, options: dict, dataset, args) -> dict:
    import torch
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from evals.default_model import build

    model, tokenizer = build()
    stamps: list[float] = []
    tokens: list[int] = []
    dialogs: list[int] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            stamps.append(time.perf_counter())

    config = SFTConfig(
        output_dir=tempfile.mkdtemp(),
        max_steps=args.steps + 2,
        per_device_train_batch_size=args.batch,
        learning_rate=1e-3,
        assistant_only_loss=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1000,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
        seed=0,
        **({"max_length": 1024} | options),
    )
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[Clock()]
    )
    for batch in trainer.get_train_dataloader():  # the same batches train() will draw (seeded sampler)
        tokens.append(_real_tokens(batch))
        dialogs.append(_dialogs(batch))
        if len(tokens) >= args.steps + 2:
            break
    start = time.perf_counter()
    trainer.train()
    stamps.append(time.perf_counter())
    per_step = [b - a for a, b in zip(stamps[2:-1], stamps[3:], strict=True)] or [time.perf_counter() - start]
    seconds = sum(per_step) / len(per_step)
    real = sum(tokens[2:]) / max(len(tokens[2:]), 1)
    per_batch = sum(dialogs[2:]) / max(len(dialogs[2:]), 1)
    return {"name": name, "s_per_step": seconds, "tokens_per_s": real / seconds, "dialogs_per_s": per_batch / seconds}


def _real_tokens(batch) -> int:
    """Non-padding tokens of a batch (padding-free batches have no mask: every token is real)."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())


def _dialogs(batch) -> int:
    """Dialogs in a batch: its rows, or where positions restart in a padding-free/packed row."""
    if "position_ids" in batch and "attention_mask" not in batch:
        return int((batch["position_ids"] == 0).sum())
    return int(batch["input_ids"].shape[0])


def attention_stays_in_dialog(options: dict, dataset) -> bool:
    """Logits of dialog B are the same alone and placed after dialog A in the variant's layout."""
    import torch

    from evals.default_model import build

    model, tokenizer = build()
    model.eval()
    a, b = (
        tokenizer.apply_chat_template(dataset[i]["messages"], tools=json.loads(dataset[i]["tools"]), return_dict=False)
        for i in (0, 1)
    )
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([b])).logits[0]
        if options.get("padding_free") or options.get("packing"):
            ids = torch.tensor([a + b])
            positions = torch.tensor([list(range(len(a))) + list(range(len(b)))])
            packed = model(input_ids=ids, position_ids=positions).logits[0, len(a) :]
        else:
            pad = tokenizer.pad_token_id
            width = max(len(a), len(b))
            ids = torch.tensor([a + [pad] * (width - len(a)), b + [pad] * (width - len(b))])
            mask = (ids != pad).long()
            packed = model(input_ids=ids, attention_mask=mask).logits[1, : len(b)]
    return bool(torch.allclose(alone, packed, atol=1e-4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=500)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant (after 2 warm-up steps)")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()

    import torch

    from itl_env.trajectories import sft_dataset
    from itl_env.world import WorldSpec, build_world

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        world = build_world(WorldSpec(people=args.people, unseen_people=0), Path(tmp) / "world.db")
        dataset = sft_dataset(world, world.facts("train"), "in_tool")
        rows = []
        for name, options in variants().items():
            row = time_variant(name, options, dataset, args)
            row["correct"] = attention_stays_in_dialog(options, dataset)
            rows.append(row)
            print(
                f"{name:<24} {row['s_per_step']:7.3f} s/step  {row['dialogs_per_s']:7.1f} dialogs/s  "
                f"{row['tokens_per_s']:8.0f} tokens/s  attention within dialog: {row['correct']}",
                flush=True,
            )
        world.close()
    base = rows[0]
    best = max((r for r in rows if r["correct"]), key=lambda r: r["dialogs_per_s"])
    print(
        f"best correct variant: {best['name']} {best['dialogs_per_s']:.1f} dialogs/s; TRL defaults: {base['dialogs_per_s']:.1f} dialogs/s"
    )
    print(f"ratio (best correct / TRL defaults, dialogs/s): {best['dialogs_per_s'] / base['dialogs_per_s']:.2f}")


if __name__ == "__main__":
    main()
