"""Train one nanoLlama from scratch on the oracle's dialogs and measure its recall (the paper's Section 5 run).

    python trainers/pretrain.py --mode in_tool --people 256 --emb_dim 32
    python trainers/pretrain.py --mode in_weight --people 64 --emb_dim 16 --steps 1500 --out runs/pretrain/iw64
    python trainers/pretrain.py --config configs/study/run.yaml --lr 1e-3
    torchrun --nproc-per-node 2 trainers/pretrain.py --mode in_tool --people 4096 --emb_dim 32 --device cuda
    itl-pretrain --mode in_tool --people 256 --emb_dim 32                 # the same, installed command

Options are ``PretrainConfig``'s (the ``train:`` block of a YAML file is ``TrainConfig``); flags are
spelt as in YAML (``--emb_dim``; ``--emb-dim`` works too). The run directory and resuming are
described in ``trainers.nanollama.run``, the library path.
"""

from __future__ import annotations

from trainers.nanollama.run import PretrainConfig, RunSummary, pretrain

PROG = "trainers/pretrain.py"


def parse(argv: list[str] | None = None) -> PretrainConfig:
    from configs import resolve

    (cfg,) = resolve([PretrainConfig], argv, prog=PROG, description=__doc__)
    return cfg


def main(cfg: PretrainConfig) -> RunSummary:
    return pretrain(cfg)


def cli(argv: list[str] | None = None) -> None:
    from configs.cli import print_json, run_cli

    run_cli(PROG, lambda args: main(parse(args)), argv, show=print_json)


if __name__ == "__main__":
    cli()
