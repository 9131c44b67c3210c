"""In-tool vs in-weight supervised fine-tuning with TRL, evaluated through the environment.

    python trainers/sft.py --mode in_tool                      # embedded default model and world (= make sft)
    python trainers/sft.py --mode in_weight
    python trainers/sft.py --config configs/sft_smollm2.yaml   # SmolLM2-135M-Instruct, offline
    python trainers/sft.py --mode in_tool --model path/to/hf_model --lora true
    python trainers/sft.py --world data/world.db               # an existing world: its file gives its spec
    python trainers/sft.py --output_dir runs/my-run --resume true   # continue an interrupted run
    accelerate launch --config_file configs/accelerate/ddp.yaml trainers/sft.py --mode in_tool
    itl-sft --mode in_tool                                     # the same, installed command

Both modes train on the oracle's trajectories in ``ToolUseEnv`` (in_tool: ask -> call -> read ->
answer; in_weight: ask -> answer), with the loss on assistant tokens only, and are evaluated by
playing the same environment with the tools executed for real. The library path is
``trainers.fine_tune.fine_tune``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from trainers.fine_tune import SFTScriptConfig, fine_tune, training_defaults
from trainers.options import RunResult, parse_args

PROG = "trainers/sft.py"


def parse(argv: list[str] | None = None) -> tuple[SFTScriptConfig, Any]:
    from trl import SFTConfig

    return parse_args(SFTScriptConfig, SFTConfig, prog=PROG, doc=__doc__, defaults=training_defaults(), argv=argv)


def main(cfg: SFTScriptConfig, training: Any) -> RunResult:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return fine_tune(cfg, training)


def cli(argv: list[str] | None = None) -> None:
    from trainers.run_dir import RunDirError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg, training = parse(argv)
    try:
        outcome = main(cfg, training)
    except (RunDirError, ValueError, FileNotFoundError) as err:
        sys.exit(f"{PROG}: error: {err}")
    outcome.print(PROG)
    sys.exit(130 if outcome.interrupted else 0)


if __name__ == "__main__":
    cli()
