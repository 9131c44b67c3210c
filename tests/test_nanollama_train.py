"""nanoLlama training loop: schedule, determinism, checkpoint/resume, DDP at world size 1, early stopping."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import torch

from itl_env.world import WorldSpec, build_world
from trainers.nanollama.data import PackedStream, encode_dialogs, every_phrasing
from trainers.nanollama.model import Llama, LlamaConfig
from trainers.nanollama.tokenizer import ByteTokenizer
from trainers.nanollama.train import DistInfo, TrainConfig, Trainer, lr_at


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny tensors: one thread is fastest, and two stall when another process holds the other core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dialogs(tmp_path_factory):
    world = build_world(WorldSpec(seed=2, people=2, unseen_people=1), tmp_path_factory.mktemp("w") / "world.db")
    yield encode_dialogs(every_phrasing(world, "in_weight", "find"), ByteTokenizer("find"))
    world.close()


def _trainer(dialogs, run_dir, steps=6, evaluate=None, **overrides) -> Trainer:
    cfg = TrainConfig(steps=steps, batch_rows=2, seq_len=256, lr=1e-2, warmup_steps=2, eval_every=3, **overrides)
    torch.manual_seed(cfg.seed)
    model = Llama(LlamaConfig(vocab_size=262, emb_dim=8))
    return Trainer(
        model, cfg, PackedStream(dialogs, cfg.seq_len, cfg.batch_rows, cfg.seed), run_dir, evaluate, progress=False
    )


def test_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.55)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 100))


def test_training_lowers_the_loss_and_is_deterministic(dialogs, tmp_path):
    a = _trainer(dialogs, tmp_path / "a", steps=30).train()
    b = _trainer(dialogs, tmp_path / "b", steps=30).train()
    assert a.losses == b.losses
    assert a.losses[-1] < 0.7 * a.losses[0]
    assert (tmp_path / "a" / "metrics.jsonl").read_text().count('"loss"') >= 1


def test_resume_from_checkpoint_gives_the_uninterrupted_loss_curve(dialogs, tmp_path):
    straight = _trainer(dialogs, tmp_path / "straight", steps=8).train(resume=False)
    first = _trainer(dialogs, tmp_path / "split", steps=8)
    for _ in range(5):  # stop after 5 steps, as if the process were killed after a checkpoint
        first.log.losses.append(first.train_step(first.stream.batch(first.step)))
        first.step += 1
    first.save()
    resumed = _trainer(dialogs, tmp_path / "split", steps=8)
    result = resumed.train(resume=True)
    assert result.losses == straight.losses
    assert torch.equal(resumed.model.lm_head.weight, _load_head(tmp_path / "straight"))


def test_resume_refuses_a_checkpoint_of_other_settings(dialogs, tmp_path):
    _trainer(dialogs, tmp_path / "run", steps=4).train(resume=False)
    with pytest.raises(ValueError, match=r"other settings \(steps\)"):
        _trainer(dialogs, tmp_path / "run", steps=8).train(resume=True)
    assert _trainer(dialogs, tmp_path / "run", steps=4, log_every=1).train(resume=True).steps == 4  # logging only


def _load_head(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]["lm_head.weight"]


def test_early_stopping_stops_when_the_evaluation_reaches_the_target(dialogs, tmp_path):
    calls = []

    def evaluate(model, final):
        calls.append(1)
        return 1.0 if len(calls) >= 2 else 0.5

    result = _trainer(dialogs, tmp_path, steps=50, evaluate=evaluate, proxy_gate=0.0).train()
    assert result.reached_target and result.stopped_early
    assert result.steps == 6 and [e.step for e in result.evals] == [3, 6]


def test_proxy_gate_skips_the_rollout_until_teacher_forced_answers_are_right(dialogs, tmp_path):
    calls = []
    trainer = _trainer(dialogs, tmp_path, steps=9, evaluate=lambda m, final: calls.append(final) or 0.0)
    result = trainer.train()
    assert trainer.proxy() < trainer.cfg.proxy_gate  # 9 steps of a d=8 model: nothing memorised yet
    assert calls == [True] and result.evals[0].step == 9  # only the final evaluation ran


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_at_world_size_one_matches_plain_training(dialogs, tmp_path, monkeypatch):
    import torch.distributed as dist

    plain = _trainer(dialogs, tmp_path / "plain", steps=4).train()
    for key, value in {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "RANK": "0",
        "WORLD_SIZE": "1",
    }.items():
        monkeypatch.setenv(key, value)
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        cfg = TrainConfig(steps=4, batch_rows=2, seq_len=256, lr=1e-2, warmup_steps=2, eval_every=3)
        torch.manual_seed(cfg.seed)
        model = Llama(LlamaConfig(vocab_size=262, emb_dim=8))
        info = DistInfo.from_env()
        stream = PackedStream(dialogs, cfg.seq_len, cfg.batch_rows, cfg.seed, info.rank, info.world_size)
        trainer = Trainer(model, cfg, stream, tmp_path / "ddp", dist_info=info, progress=False)
        assert type(trainer.module).__name__ == "DistributedDataParallel"
        ddp = trainer.train()
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(torch.tensor(ddp.losses), torch.tensor(plain.losses))


@pytest.mark.slow
def test_torchrun_with_two_ranks_gives_the_single_process_loss_curve(tmp_path):
    """Two gloo ranks, each on half of every global batch: same gradients, so the same losses as one process."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    common = ["--mode", "in_weight", "--people", "2", "--unseen-people", "1", "--emb-dim", "8", "--steps", "5"]
    common += ["--batch-rows", "4", "--eval-every", "5", "--threads", "1", "--no-progress", "--no-resume"]
    common += ["--world-dir", str(tmp_path / "worlds")]
    subprocess.run(
        [sys.executable, "trainers/pretrain.py", *common, "--out", str(tmp_path / "one")], cwd=repo, check=True
    )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    subprocess.run([*torchrun, "trainers/pretrain.py", *common, "--out", str(tmp_path / "two")], cwd=repo, check=True)
    one, two = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=False)["losses"] for d in ("one", "two"))
    assert len(one) == len(two) == 5
    torch.testing.assert_close(torch.tensor(two), torch.tensor(one), rtol=1e-5, atol=1e-6)
