"""Stacked training: K models trained at once train exactly as each would alone."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from itl_env.world import WorldSpec, build_world
from trainers.nanollama.data import PackedStream, encode_dialogs, every_phrasing
from trainers.nanollama.model import Llama, LlamaConfig
from trainers.nanollama.stacked import StackedLlama, StackedTrainer
from trainers.nanollama.tokenizer import ByteTokenizer
from trainers.nanollama.train import TrainConfig, Trainer


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny tensors: one thread is fastest, and two stall when another process holds the other core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dialogs(tmp_path_factory):
    world = build_world(WorldSpec(seed=3, people=2, unseen_people=1), tmp_path_factory.mktemp("w") / "world.db")
    encoded = encode_dialogs(every_phrasing(world, "in_tool", "find"), ByteTokenizer("find"))
    world.close()
    return encoded


def _streams(dialogs, seeds):
    return [PackedStream(dialogs, seq_len=256, batch_rows=2, seed=seed) for seed in seeds]


def _models(seeds, d=8):
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(Llama(LlamaConfig(vocab_size=262, emb_dim=d)))
    return models


def test_stacked_losses_and_logits_equal_each_models_own(dialogs):
    models = _models([0, 1, 2])
    batches = [stream.batch(0) for stream in _streams(dialogs, [0, 1, 2])]  # three data orders
    losses, logits = StackedLlama(models)(batches)
    for model, batch, loss, scored_logits in zip(models, batches, losses, logits, strict=True):
        own_logits, own_loss = model(batch.tokens, batch.positions, batch.documents, batch.targets)
        torch.testing.assert_close(loss, own_loss, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(scored_logits, own_logits, atol=1e-5, rtol=1e-5)
    shared, _ = StackedLlama(models)(batches[0])  # one batch for all
    torch.testing.assert_close(shared[0], losses[0])


def _reach_on(evaluation: int):
    """An ``evaluate`` that reports the target reached on its ``evaluation``-th call (0 = never)."""
    calls = []

    def evaluate(model, final):
        calls.append(final)
        return 1.0 if len(calls) == evaluation else 0.5

    return evaluate


def test_a_stack_trains_each_model_as_trainer_would_alone_early_stopping_included(dialogs, tmp_path):
    seeds, reach = [0, 1, 2], [2, 0, 3]  # model 0 stops at step 4, model 2 at step 6, model 1 runs all 8
    cfg = TrainConfig(steps=8, batch_rows=2, lr=1e-2, warmup_steps=1, grad_clip=0.5, eval_every=2, proxy_gate=0)
    trainer = StackedTrainer(
        _models(seeds),
        cfg,
        _streams(dialogs, seeds),
        [_reach_on(r) for r in reach],
        [tmp_path / f"stack-{s}" for s in seeds],
        progress=False,
    )
    trained, results = trainer.train()
    assert [r.steps for r in results] == [4, 8, 6]
    assert [r.reached_target for r in results] == [True, False, True]
    for seed, r, model, stacked_result in zip(seeds, reach, _models(seeds), results, strict=True):
        alone = Trainer(
            model, cfg, _streams(dialogs, [seed])[0], tmp_path / f"alone-{seed}", _reach_on(r), progress=False
        )
        result = alone.train(resume=False)
        assert (stacked_result.steps, stacked_result.reached_target) == (result.steps, result.reached_target)
        assert [e.step for e in stacked_result.evals] == [e.step for e in result.evals]
        torch.testing.assert_close(
            torch.tensor(stacked_result.losses), torch.tensor(result.losses), atol=1e-5, rtol=1e-5
        )
        for (name, a), b in zip(trained[seed].named_parameters(), model.parameters(), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
        # the stacked run directory holds the checkpoint Trainer would have written, optimizer moments included
        mine = torch.load(tmp_path / f"stack-{seed}" / "checkpoint.pt", weights_only=False)
        theirs = torch.load(tmp_path / f"alone-{seed}" / "checkpoint.pt", weights_only=False)
        assert (
            mine["step"] == theirs["step"] and mine["optimizer"]["param_groups"] == theirs["optimizer"]["param_groups"]
        )
        for key, state in theirs["optimizer"]["state"].items():
            torch.testing.assert_close(mine["optimizer"]["state"][key], state, atol=1e-5, rtol=1e-4)
        assert (tmp_path / f"stack-{seed}" / "metrics.jsonl").read_text() != ""


def test_a_stack_needs_models_of_one_shape():
    with pytest.raises(ValueError, match="same config"):
        StackedLlama(_models([0], d=8) + _models([1], d=16))
