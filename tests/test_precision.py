"""Precision regimes: which regime a run gets, and emulated bf16 storage against real bf16 storage."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from trainers import precision


def training(bf16=False, use_cpu=True):
    return SimpleNamespace(bf16=bf16, use_cpu=use_cpu, mixed_precision="bf16" if bf16 else "no")


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize(
    ("asked", "bf16_flag", "name_native", "name_not"),
    [
        (None, False, "fp32", "fp32"),
        (None, True, "bf16", "fp32"),  # --bf16 true alone: mixed, fp32 where the CPU lacks bf16
        ("fp32", True, "fp32", "fp32"),  # the regime decides, the flag follows it
        ("bf16", False, "bf16", "fp32"),
        ("bf16_pure", False, "bf16_pure", "bf16_pure"),
    ],
)
def test_the_regime_a_run_gets(monkeypatch, native, asked, bf16_flag, name_native, name_not):
    monkeypatch.setattr(precision, "native_bf16", lambda on_cpu: native)
    monkeypatch.setattr(precision, "bf16_on_this_device", lambda requested, on_cpu: requested and native)
    args = training(bf16_flag)
    regime = precision.choose(asked, args)
    assert regime.name == (name_native if native else name_not)
    assert args.bf16 is (regime.name == "bf16")  # autocast only for mixed bf16
    assert args.mixed_precision == ("bf16" if args.bf16 else "no")
    assert regime.emulated is (regime.name == "bf16_pure" and not native)
    assert bool(precision.callbacks(regime)) is regime.emulated
    with pytest.raises(ValueError, match="not one of"):
        precision.choose("fp16", training())


def _train(storage: str, lr: float, steps: int = 6) -> list[torch.Tensor]:
    """A small MLP trained by AdamW: ``real`` (bf16 tensors), ``emulated`` (fp32 with Bf16Storage) or ``fp32``."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 8))
    data = torch.randn(16, 32), torch.randn(16, 8)
    if storage == "real":
        model = model.to(torch.bfloat16)
    callback = precision.bf16_storage()() if storage == "emulated" else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, foreach=False)
    if callback is not None:
        callback.on_train_begin(None, None, None, model=model)
    for _ in range(steps):
        x, y = (t.to(next(model.parameters()).dtype) for t in data)
        loss = torch.nn.functional.mse_loss(model(x).float(), y.float())
        loss.backward()
        if callback is not None:
            callback.on_pre_optimizer_step(None, None, None, model=model)
        optimizer.step()
        if callback is not None:
            callback.on_optimizer_step(None, None, None, model=model, optimizer=optimizer)
            for tensor in [*model.parameters(), *precision.optimizer_states(optimizer)]:  # all stored as bf16 values
                assert torch.equal(tensor.data, tensor.data.to(torch.bfloat16).float())
        optimizer.zero_grad()
    return [p.detach().float().clone() for p in model.parameters()]


@pytest.mark.parametrize("lr", [1e-4, 1e-3])
def test_emulated_bf16_storage_moves_the_weights_real_bf16_storage_moves(lr):
    """At lr 1e-4 most updates are under half a bf16 step and round away in real bf16 storage; the emulation
    (fp32 arithmetic, bf16 storage) rounds the same ones away, and lands on the same bf16 values (within a step
    where bf16 arithmetic rounded an intermediate differently); fp32 moves every weight."""
    start = _train("fp32", lr, steps=0)
    start_bf16 = [p.to(torch.bfloat16).float() for p in start]
    real, emulated, fp32 = _train("real", lr), _train("emulated", lr), _train("fp32", lr)

    def moved(params, origin):
        return torch.cat([(p != o).flatten() for p, o in zip(params, origin, strict=True)])

    moved_real, moved_emulated = moved(real, start_bf16), moved(emulated, start_bf16)
    agree = (moved_real == moved_emulated).float().mean().item()
    assert agree >= 0.97, agree
    assert moved(fp32, start).float().mean().item() > 0.99  # fp32 keeps every update
    if lr == 1e-4:
        assert moved_real.float().mean().item() < 0.6  # the regime's point: many updates round away
    step = torch.cat([(p.abs() * 2.0**-7).clamp_min(1e-30).flatten() for p in real])  # one bf16 step at |p|
    off = torch.cat([(r - e).abs().flatten() for r, e in zip(real, emulated, strict=True)])
    assert (off <= 1.01 * step).float().mean().item() >= 0.97


@pytest.mark.slow
def test_an_sft_run_records_and_keeps_its_bf16_pure_regime(tmp_path):
    from trainers.sft import main, parse

    cfg, args = parse(["--mode", "in_tool", "--people", "20", "--unseen_people", "2", "--max_steps", "3",
                       "--per_device_train_batch_size", "4", "--eval_every", "0", "--final_eval_facts", "8",
                       "--precision", "bf16_pure", "--output_dir", str(tmp_path / "run"),
                       "--world", str(tmp_path / "w.db")])  # fmt: skip
    result = main(cfg, args)
    recorded = json.loads((tmp_path / "run" / "run.json").read_text(encoding="utf-8"))["precision"]
    assert recorded == result.precision and recorded.startswith("bf16_pure")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    for p in model.parameters():  # the saved weights are bf16 values, however they are stored
        assert torch.equal(p.data.float(), p.data.to(torch.bfloat16).float())
