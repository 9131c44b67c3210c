"""A tool the project does not ship goes registration -> oracle data -> SFT -> evaluation, with documented flags.

The tool and its task kind live in this module; the run finds them as ``--tools test_new_tool:registry``
and ``--tasks test_new_tool:kinds`` (tests/ is on sys.path under pytest), as a user's would.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from itl_env.fact_tools import fact_tools
from itl_env.tasks import TaskKind
from tools import ToolError, ToolRegistry, tool


def registry(world) -> ToolRegistry:
    """The fact tools plus ``initials``, over ``world``."""

    @tool
    def initials(name: str) -> str:
        """The initials of a person in the database, e.g. "K.E." for Kyler Ellison.

        Args:
            name: The person's full name.
        """
        if name.strip() not in world.by_name:
            raise ToolError(f"no person named {name!r}")
        return ".".join(part[0] for part in name.split()) + "."

    return ToolRegistry([*fact_tools(world), initials])


def kinds() -> list[TaskKind]:
    return [
        TaskKind(
            name="initials_of",
            tools=("initials",),
            train_questions=("What are the initials of {name}?",),
            test_questions=("Which initials does {name} have?",),
            answer="The initials of {name} are {result}",
            draw=lambda world, rng: {"name": world.rows[int(rng.integers(len(world.rows)))]["name"]},
            plan=lambda slots, results: None if results else {"name": "initials", "arguments": {"name": slots["name"]}},
            gold=lambda slots, results: results[0],
        )
    ]


def test_a_new_tool_is_trainable_end_to_end(tmp_path):
    from trainers import sft

    argv = ["--hidden_size", "32", "--layers", "1", "--people", "12", "--unseen_people", "4", "--max_steps", "3",
            "--per_device_train_batch_size", "4", "--eval_every", "0", "--max_new_tokens", "40", "--max_turns", "2",
            "--save_steps", "3", "--tools", "test_new_tool:registry", "--tasks", "fact_recall", "test_new_tool:kinds",
            "--task_examples", "8", "--task_eval", "4", "--final_eval_facts", "4",
            "--world", str(tmp_path / "w.db"), "--output_dir", str(tmp_path / "run")]  # fmt: skip
    cfg, training = sft.parse(argv)
    result = sft.main(cfg, training)
    assert set(result.task_accuracy) == {"initials_of"} and 0.0 <= result.task_accuracy["initials_of"] <= 1.0
    records = [
        json.loads(line) for line in (Path(result.run_dir) / "records" / "final-tasks.jsonl").read_text().splitlines()
    ]
    assert len(records) == 4 and {r["task"] for r in records} == {"initials_of"}
    assert all(r["gold"].endswith(".") for r in records)  # gold: what the tool returned when the task was made


def test_the_oracle_data_for_the_new_tool_offers_its_schema_and_scores_one(shared_world):
    from itl_env.tasks import make_tasks
    from itl_env.trajectories import oracle_conversations

    tools = registry(shared_world)
    tasks = make_tasks(kinds()[0], shared_world, tools, 5)
    conversations, offered = oracle_conversations(
        shared_world, tasks, "in_tool", registry=tools
    )  # raises if one is wrong
    assert [t["function"]["name"] for t in offered] == ["lookup", "initials"]
    assert conversations[0][1]["tool_calls"][0]["function"]["name"] == "initials"
    assert np.all([c[-1]["content"].startswith("The initials of") for c in conversations])
