"""In-tool vs in-weight supervised fine-tuning with TRL, evaluated through the environment.

    python trainers/sft.py --mode in_tool                      # embedded default model and world (= make sft)
    python trainers/sft.py --mode in_weight
    python trainers/sft.py --config configs/sft_smollm2.yaml   # SmolLM2-135M-Instruct, offline
    python trainers/sft.py --mode in_tool --model path/to/hf_model --lora true
    python trainers/sft.py --world data/world.db               # an existing world: its file gives its spec
    python trainers/sft.py --output_dir runs/my-run --resume true   # continue an interrupted run
    torchrun --nproc-per-node 2 trainers/sft.py --mode in_tool                         # one run, 2 processes
    accelerate launch --config_file configs/accelerate/cpu.yaml trainers/sft.py       # 2 CPU processes (gloo)
    accelerate launch --config_file configs/accelerate/ddp.yaml trainers/sft.py       # every GPU of the machine
    python trainers/sft.py --report_to tensorboard                                     # loss and recall in TensorBoard
    itl-sft --mode in_tool                                     # the same, installed command

Both modes train on the oracle's trajectories in ``ToolUseEnv`` (in_tool: ask -> call -> read ->
answer; in_weight: ask -> answer), with the loss on assistant tokens only, and are evaluated by
playing the same environment with the tools executed for real. The library path is
``trainers.fine_tune.fine_tune``.
"""

from __future__ import annotations

from typing import Any

from trainers.fine_tune import SFTScriptConfig, fine_tune, training_defaults
from trainers.options import RunResult, parse_args
from trainers.run_start import train_cli

PROG = "trainers/sft.py"


def parse(argv: list[str] | None = None) -> tuple[SFTScriptConfig, Any]:
    from trl import SFTConfig

    return parse_args(SFTScriptConfig, SFTConfig, prog=PROG, doc=__doc__, defaults=training_defaults(), argv=argv)


def main(cfg: SFTScriptConfig, training: Any) -> RunResult:
    return fine_tune(cfg, training)


def cli(argv: list[str] | None = None) -> None:
    train_cli(PROG, "sft", parse, main, argv)


if __name__ == "__main__":
    cli()
