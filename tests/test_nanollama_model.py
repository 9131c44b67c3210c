"""nanoLlama model: parameter count, packed attention isolation, equality with HF Llama, KV-cache decoding."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from trainers.nanollama.model import Llama, LlamaConfig, count_parameters
from trainers.nanollama.policy import NanoLlamaPolicy
from trainers.nanollama.tokenizer import ByteTokenizer


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny tensors: one thread is fastest, and two stall when another process holds the other core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("emb_dim", "n_layers", "n_heads", "vocab"), [(8, 2, 2, 262), (16, 2, 2, 260), (24, 3, 4, 300), (32, 1, 2, 262)]
)
def test_count_parameters_matches_the_model(emb_dim, n_layers, n_heads, vocab):
    cfg = LlamaConfig(vocab_size=vocab, emb_dim=emb_dim, n_layers=n_layers, n_heads=n_heads)
    assert count_parameters(cfg) == sum(p.numel() for p in Llama(cfg).parameters())


@pytest.mark.parametrize("d", [4, 16, 32, 128])
def test_parameter_count_is_the_papers_formula_for_its_vocabulary(d):
    assert count_parameters(LlamaConfig(vocab_size=260, emb_dim=d)) == 32 * d * d + 525 * d


def test_config_rejects_odd_head_dim():
    with pytest.raises(ValueError, match="even for RoPE"):
        LlamaConfig(emb_dim=6, n_heads=2)


def _model(d: int = 16, seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    model = Llama(LlamaConfig(vocab_size=262, emb_dim=d, init_std=0.2))  # large init: sharp, input-dependent logits
    return model.eval()


def test_a_dialog_packed_after_another_gives_the_same_logits_as_alone():
    model = _model()
    g = torch.Generator().manual_seed(1)
    first, second = torch.randint(0, 256, (1, 23), generator=g), torch.randint(0, 256, (1, 17), generator=g)
    alone, _ = model(second)
    packed = torch.cat([first, second], dim=1)
    positions = torch.cat([torch.arange(23), torch.arange(17)])[None]
    documents = torch.tensor([[0] * 23 + [1] * 17])
    together, _ = model(packed, positions, documents)
    torch.testing.assert_close(together[:, 23:], alone, atol=1e-5, rtol=1e-5)
    # without the document mask the second dialog does see the first: the test can tell the difference
    leaked, _ = model(packed, positions)
    assert (leaked[:, 23:] - alone).abs().max() > 1e-3


def test_loss_is_taken_only_on_targeted_tokens():
    model = _model()
    tokens = torch.randint(0, 256, (2, 10))
    targets = torch.full((2, 10), -1)
    targets[0, 3], targets[1, 7] = 5, 9
    logits, loss = model(tokens, targets=targets)
    full, _ = model(tokens)
    assert logits.shape == (2, 262)
    expected = torch.nn.functional.cross_entropy(torch.stack([full[0, 3], full[1, 7]]), torch.tensor([5, 9]))
    torch.testing.assert_close(loss, expected)


def test_scored_only_last_layer_gives_the_full_models_loss_on_packed_rows():
    model = _model()
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, 256, (3, 40), generator=g)
    documents = torch.tensor([[0] * 15 + [1] * 25, [0] * 40, [0] * 9 + [1] * 20 + [2] * 11])
    positions = torch.cat([torch.arange(n) for n in (15, 25, 40, 9, 20, 11)]).view(3, 40)
    targets = torch.where(torch.rand(3, 40, generator=g) < 0.4, torch.randint(0, 262, (3, 40), generator=g), -1)
    logits, loss = model(tokens, positions, documents, targets)
    full, _ = model(tokens, positions, documents)
    scored = targets >= 0
    torch.testing.assert_close(logits, full[scored], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(full[scored], targets[scored]))


def test_same_logits_as_hugging_face_llama_with_the_same_weights():
    from trainers.nanollama.export import to_hf

    model = _model(d=16)
    hf = to_hf(model)
    tokens = torch.randint(0, 262, (2, 30))
    ours, _ = model(tokens)
    theirs = hf(input_ids=tokens).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def _stopping_model(tokenizer: ByteTokenizer, seed: int) -> Llama:
    """A random model that ends its turn wherever it would have written byte ``b``: replies of varied lengths."""
    model = _model(d=16, seed=seed)
    with torch.no_grad():
        b = int(model.lm_head.weight.norm(dim=1)[:256].argmax())
        model.lm_head.weight[tokenizer.end_id] = 1.05 * model.lm_head.weight[b]
    return model


def _prompts(tokenizer: ByteTokenizer, lengths: tuple[int, ...]) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (n,), generator=g).tolist() + [tokenizer.role_id["assistant"]] for n in lengths]


def test_cached_batched_decoding_equals_decoding_without_cache():
    tokenizer = ByteTokenizer("find")
    model = _stopping_model(tokenizer, seed=3)
    # prompts of different lengths: the batch is left padded, so padding and per-sequence positions are exercised
    prompts = _prompts(tokenizer, (5, 19, 11, 2, 30, 7, 1, 13))
    cached = NanoLlamaPolicy(model, tokenizer, max_new_tokens=40, batch_size=8).generate_ids(prompts)
    uncached = NanoLlamaPolicy(model, tokenizer, max_new_tokens=40, use_cache=False).generate_ids(prompts)
    assert cached == uncached
    assert len({len(r) for r in cached}) > 2  # rows stopped at different steps


def test_rows_that_stop_leave_the_batch_without_changing_the_others():
    tokenizer = ByteTokenizer("find")
    model = _stopping_model(tokenizer, seed=4)
    prompts = _prompts(tokenizer, (3, 8, 21, 4, 4, 17))
    batched = NanoLlamaPolicy(model, tokenizer, max_new_tokens=40, batch_size=6).generate_ids(prompts)
    alone = [NanoLlamaPolicy(model, tokenizer, max_new_tokens=40, batch_size=1).generate_ids([p])[0] for p in prompts]
    assert batched == alone
    assert all(r[-1] == tokenizer.end_id or len(r) == 40 for r in batched)
    assert len({len(r) for r in batched}) > 2
