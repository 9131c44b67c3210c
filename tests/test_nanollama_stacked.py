"""Stacked training: K models trained at once train exactly as each would alone."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from itl_env.world import WorldSpec, build_world
from trainers.nanollama.data import PackedStream, encode_dialogs, oracle_conversations
from trainers.nanollama.model import Llama, LlamaConfig
from trainers.nanollama.stacked import StackedLlama, train_stacked
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
def stream(tmp_path_factory):
    world = build_world(WorldSpec(seed=3, people=2, unseen_people=1), tmp_path_factory.mktemp("w") / "world.db")
    dialogs = encode_dialogs(oracle_conversations(world, "in_tool", "find"), ByteTokenizer("find"))
    world.close()
    return PackedStream(dialogs, seq_len=256, batch_rows=2, seed=0)


def _models(seeds, d=8):
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(Llama(LlamaConfig(vocab_size=262, emb_dim=d)))
    return models


def test_stacked_losses_equal_each_models_own_loss(stream):
    models = _models([0, 1, 2])
    batch = stream.batch(0)
    stacked = StackedLlama(models)(batch)
    alone = torch.stack([m(batch.tokens, batch.positions, batch.documents, batch.targets)[1] for m in models])
    torch.testing.assert_close(stacked, alone, atol=1e-5, rtol=1e-5)


def test_training_a_stack_equals_training_each_model_alone(stream, tmp_path):
    cfg = TrainConfig(steps=4, batch_rows=2, lr=1e-2, warmup_steps=1, grad_clip=0.5, eval_every=100)
    stack = StackedLlama(_models([0, 1, 2]))
    stacked_losses = train_stacked(stack, cfg, stream)
    for i, model in enumerate(_models([0, 1, 2])):
        result = Trainer(model, cfg, stream, tmp_path / str(i), progress=False).train(resume=False)
        torch.testing.assert_close(stacked_losses[:, i], torch.tensor(result.losses), atol=1e-5, rtol=1e-5)
        trained = stack.unstack(i)
        for (name, a), b in zip(trained.named_parameters(), model.parameters(), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


def test_a_stack_needs_models_of_one_shape():
    with pytest.raises(ValueError, match="same config"):
        StackedLlama(_models([0], d=8) + _models([1], d=16))
