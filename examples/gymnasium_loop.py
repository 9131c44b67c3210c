"""Drive ``itl/FactRecall-v0`` from a plain Gymnasium loop with any policy.

Usage:
    python examples/gymnasium_loop.py --world data/world.db --episodes 20
    python -m examples.gymnasium_loop --world data/world.db --split unseen      # in-tool recall of unseen people
    python examples/gymnasium_loop.py --oracle-mode in_weight                       # no tools offered

The environment's action is the assistant's text and its observation is the next question or
tool result; ``info["messages"]`` holds the whole conversation in OpenAI chat format. So a
policy is anything with ``generate(conversations: list[list[dict]]) -> list[str]``: the oracle
(the default here, no model needed), an HF or vLLM backend, or your own. From Python::

    from examples.gymnasium_loop import main
    result = main("data/world.db", policy=my_policy, episodes=100)

Without ``--world`` the environment generates its small default world in the temp directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import gymnasium
from pydantic import BaseModel, ConfigDict

import itl_env  # registers itl/FactRecall-v0
from itl_env.oracle import MODES, OraclePolicy
from itl_env.world import SPLITS


class LoopResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    episodes: int
    recall: float
    tool_call_rate: float
    truncation_rate: float


def play(env: gymnasium.Env, policy: Any, seed: int) -> tuple[float, dict[str, Any], bool]:
    """One episode: ask the policy for a reply until the episode ends; returns (reward, info, truncated)."""
    _, info = env.reset(seed=seed)
    while True:
        (action,) = policy.generate([info["messages"]])
        _, reward, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            return float(reward), info, truncated


def main(
    world: str | Path | None = None,
    *,
    policy: Any = None,
    episodes: int = 20,
    split: str = "train",
    oracle_mode: str = "in_tool",
    max_turns: int = 4,
    seed: int = 0,
) -> LoopResult:
    """Play ``episodes`` episodes of ``split``; ``policy`` defaults to the oracle in ``oracle_mode``."""
    if episodes < 1:
        raise ValueError("episodes must be at least 1")
    in_tool = policy is not None or oracle_mode == "in_tool"
    env = gymnasium.make(itl_env.ENV_ID, world=world, split=split, max_turns=max_turns, offer_tools=in_tool)
    try:
        if policy is None:
            policy = OraclePolicy(env.unwrapped.world, mode=oracle_mode)
        rewards, tool_calls, truncations = 0.0, 0, 0
        for episode in range(episodes):
            reward, info, truncated = play(env, policy, seed + episode)
            rewards += reward
            tool_calls += bool(info["tool_calls"])
            truncations += truncated
        return LoopResult(
            episodes=episodes,
            recall=rewards / episodes,
            tool_call_rate=tool_calls / episodes,
            truncation_rate=truncations / episodes,
        )
    finally:
        env.close()
        env.unwrapped.world.close()


def parse(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python examples/gymnasium_loop.py",
        description="Play itl/FactRecall-v0 episodes from a plain Gymnasium loop (oracle policy) and print recall.",
    )
    parser.add_argument("--world", help="world SQLite path or SQLAlchemy URL (default: a small generated world)")
    parser.add_argument("--episodes", type=int, default=20, help="episodes to play (default: %(default)s)")
    parser.add_argument("--split", choices=SPLITS, default="train", help="people to ask about (default: %(default)s)")
    parser.add_argument(
        "--oracle-mode",
        choices=MODES,
        default="in_tool",
        help="in_tool: call lookup then answer; in_weight: answer from memory, no tools offered (default: %(default)s)",
    )
    parser.add_argument(
        "--max-turns", type=int, default=4, help="assistant messages per episode (default: %(default)s)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="episode i is reset with seed SEED+i (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error("--episodes must be at least 1")
    return vars(args)


if __name__ == "__main__":
    try:
        result = main(**parse())
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"gymnasium_loop: {err}")
    print(result.model_dump_json())
