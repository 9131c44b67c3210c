"""nanoLlama benchmarks, each against its baseline in the same run.

1. Training throughput (non-padding tokens/s): nanoLlama vs Hugging Face ``LlamaForCausalLM`` of
   the same shape, same initial weights, on the same packed batches (block-diagonal mask and
   per-dialog positions for both), steps interleaved so load on the machine hits both alike.
2. Evaluation decoding: batched greedy decoding with the KV cache vs the same decoder one
   sequence at a time, on the same prompts (the replies must be identical).
3. Many small models (``--stack K``): K same-shape models trained at once with stacked weights
   (``trainers/nanollama/stacked.py``), each on its own data order as in ``StackedTrainer``, vs the same K
   models stepped one after another on the same batches: models x steps per second. Made for GPUs,
   where one tiny model leaves the device idle.

    python benchmarks/bench_nanollama.py                      # CPU, 1 thread
    python benchmarks/bench_nanollama.py --device cuda --emb-dim 64 --batch-rows 128
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from itl_env.world import WorldSpec, build_world
from trainers.nanollama.data import PackedBatch, PackedStream, encode_dialogs, every_phrasing
from trainers.nanollama.model import Llama, LlamaConfig, count_parameters, document_mask
from trainers.nanollama.policy import NanoLlamaPolicy
from trainers.nanollama.stacked import StackedLlama, build_stacked_optimizer
from trainers.nanollama.tokenizer import ByteTokenizer


def hf_twin(model: Llama):
    """``LlamaForCausalLM`` of the same shape holding the same weights."""
    from trainers.nanollama.export import to_hf

    return to_hf(model)


def ours_loss(model: Llama, b: PackedBatch) -> torch.Tensor:
    return model(b.tokens, b.positions, b.documents, b.targets)[1]


def hf_loss(hf, b: PackedBatch) -> torch.Tensor:
    labels = torch.full_like(b.targets, -100)  # HF shifts labels itself: label[i + 1] is predicted at i
    labels[:, 1:] = b.targets[:, :-1].masked_fill(b.targets[:, :-1] < 0, -100)
    mask = document_mask(b.documents)
    return hf(input_ids=b.tokens, position_ids=b.positions, attention_mask=mask, labels=labels).loss


def bench_training(args, stream: PackedStream, vocab: int, device: torch.device) -> float:
    torch.manual_seed(0)
    ours = Llama(LlamaConfig(vocab_size=vocab, emb_dim=args.emb_dim)).to(device)
    hf = hf_twin(ours)
    batches = [stream.batch(i).to(device) for i in range(args.steps + args.warmup)]
    tokens = sum(b.real_tokens for b in batches[args.warmup :])
    with torch.no_grad():
        a, b = ours_loss(ours, batches[0]), hf_loss(hf, batches[0])
    print(f"same weights, same batch: loss nanoLlama {float(a):.5f} vs HF {float(b):.5f}")
    runners = {"nanoLlama": (ours, ours_loss), "HF LlamaForCausalLM": (hf, hf_loss)}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-3) for name, (m, _) in runners.items()}
    seconds = {name: [] for name in runners}
    for step, batch in enumerate(batches):
        for name, (model, loss_fn) in runners.items():  # interleaved: machine load hits both alike
            _sync(device)
            start = time.perf_counter()
            loss_fn(model, batch).backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            _sync(device)
            if step >= args.warmup:
                seconds[name].append(time.perf_counter() - start)
    rates = {}
    for name, times in seconds.items():
        rates[name] = tokens / sum(times)
        print(
            f"{name:>20}: {rates[name]:>10,.0f} non-padding tokens/s  (median step {statistics.median(times) * 1e3:.1f} ms)"
        )
    per_step = [h / o for o, h in zip(seconds["nanoLlama"], seconds["HF LlamaForCausalLM"], strict=True)]
    print(f"median per-step ratio (HF time / nanoLlama time): {statistics.median(per_step):.2f}x")
    return rates["nanoLlama"] / rates["HF LlamaForCausalLM"]


def bench_decoding(args, conversations, tokenizer: ByteTokenizer, device: torch.device) -> float:
    torch.manual_seed(1)
    model = Llama(LlamaConfig(vocab_size=tokenizer.vocab_size, emb_dim=args.emb_dim)).to(device).eval()
    prompts = [tokenizer.encode_prompt(c[:1]) for c in conversations[: args.sequences]]  # the questions
    results = {}
    for name, batch_size in (("batched KV cache", args.sequences), ("one at a time (KV cache)", 1)):
        policy = NanoLlamaPolicy(model, tokenizer, max_new_tokens=args.new_tokens, batch_size=batch_size)
        policy.generate_ids(prompts[:2])  # warm-up
        _sync(device)
        start = time.perf_counter()
        replies = policy.generate_ids(prompts)
        _sync(device)
        seconds = time.perf_counter() - start
        generated = sum(len(r) for r in replies)
        results[name] = (replies, seconds)
        print(f"{name:>26}: {len(prompts) / seconds:>8.1f} sequences/s, {generated / seconds:>9,.0f} tokens/s")
    (batched, t_batched), (single, t_single) = results.values()
    if batched != single:
        raise SystemExit("batched and one-at-a-time decoding disagree")
    return t_single / t_batched


def bench_stacked(args, stream: PackedStream, vocab: int, device: torch.device) -> float:
    from trainers.nanollama.train import TrainConfig, build_optimizer

    cfg = TrainConfig(lr=1e-3)
    models = []
    for seed in range(args.stack):
        torch.manual_seed(seed)
        models.append(Llama(LlamaConfig(vocab_size=vocab, emb_dim=args.stack_dim)).to(device))
    stack = StackedLlama(models).to(device)
    streams = [PackedStream(stream.dialogs, stream.seq_len, stream.batch_rows, seed=k) for k in range(args.stack)]
    batches = [[s.batch(i).to(device) for s in streams] for i in range(args.stack_steps + 1)]  # each its own data
    optimizers = [build_optimizer(m, cfg) for m in models]
    stack_optimizer = build_stacked_optimizer(stack, cfg)

    def one_by_one(step_batches: list[PackedBatch]) -> None:
        for model, optimizer, batch in zip(models, optimizers, step_batches, strict=True):
            ours_loss(model, batch).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    def stacked(step_batches: list[PackedBatch]) -> None:
        stack(step_batches)[0].sum().backward()
        stack_optimizer.step()
        stack_optimizer.zero_grad(set_to_none=True)

    seconds = {"stacked": 0.0, "one at a time": 0.0}
    for step, batch in enumerate(batches):
        for name, run in (("stacked", stacked), ("one at a time", one_by_one)):  # interleaved, as above
            _sync(device)
            start = time.perf_counter()
            run(batch)
            _sync(device)
            if step:  # the first step is a warm-up
                seconds[name] += time.perf_counter() - start
    rates = {name: args.stack * args.stack_steps / t for name, t in seconds.items()}
    for name, rate in rates.items():
        print(f"{name:>14}: {rate:>8.1f} model-steps/s")
    return rates["stacked"] / rates["one at a time"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--emb-dim", type=int, default=32, help="model width (default: %(default)s)")
    parser.add_argument("--people", type=int, default=256, help="people in the world (default: %(default)s)")
    parser.add_argument(
        "--mode", default="in_tool", choices=["in_tool", "in_weight"], help="dialogs (default: %(default)s)"
    )
    parser.add_argument("--batch-rows", type=int, default=32, help="packed rows per batch (default: %(default)s)")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per row (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per model (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: %(default)s)")
    parser.add_argument("--sequences", type=int, default=256, help="prompts decoded (default: %(default)s)")
    parser.add_argument("--new-tokens", type=int, default=48, help="max new tokens per prompt (default: %(default)s)")
    parser.add_argument("--stack", type=int, default=0, help="also benchmark K stacked models (default: off)")
    parser.add_argument("--stack-dim", type=int, default=16, help="width of the stacked models (default: %(default)s)")
    parser.add_argument("--stack-steps", type=int, default=5, help="timed steps of the stack (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: %(default)s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu")
    )
    with tempfile.TemporaryDirectory() as tmp:
        world = build_world(WorldSpec(people=args.people, unseen_people=1), Path(tmp) / "world.db")
        tokenizer = ByteTokenizer("find")
        conversations = every_phrasing(world, args.mode, "find")
        stream = PackedStream(encode_dialogs(conversations, tokenizer), args.seq_len, args.batch_rows, seed=0)
        world.close()
    params = count_parameters(LlamaConfig(vocab_size=tokenizer.vocab_size, emb_dim=args.emb_dim))
    print(
        f"device {device}, threads {torch.get_num_threads()}, d={args.emb_dim} ({params:,} params), "
        f"{args.mode} dialogs, batch {args.batch_rows} x {args.seq_len}"
    )
    print("\n[1] training throughput, same packed batches")
    train_ratio = bench_training(args, stream, tokenizer.vocab_size, device)
    print(f"\n[2] greedy decoding of {args.sequences} prompts, up to {args.new_tokens} new tokens")
    decode_ratio = bench_decoding(args, conversations, tokenizer, device)
    stack_ratio = None
    if args.stack:
        print(f"\n[3] {args.stack} models of width {args.stack_dim}, stacked vs one at a time")
        stack_ratio = bench_stacked(args, stream, tokenizer.vocab_size, device)
    print(f"\ntraining: nanoLlama / HF tokens/s = {train_ratio:.2f}x (target >= 1.3x)")
    print(f"decoding: batched KV cache / one at a time = {decode_ratio:.1f}x (target >= 10x)")
    if stack_ratio is not None:
        print(f"many models: stacked / one at a time model-steps/s = {stack_ratio:.2f}x ({device})")


if __name__ == "__main__":
    main()
