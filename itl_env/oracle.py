"""The oracle policy: a perfect player of ``ToolUseEnv`` that writes the training dialogs.

It reads only the conversation text, like a model. ``in_tool``: ask -> call ``lookup`` ->
read the result -> answer with it. ``in_weight``: ask -> answer from the training people it
"memorised" (an unseen person gets "I don't know.", as from a model that never saw them).
For tool tasks (``tasks``: the ``Task`` behind each question) it makes the task's reference calls
one per turn and then states its answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from itl_env import dialogs
from itl_env.formats import ToolCall, ToolCallFormat, get_format
from itl_env.tasks import Task
from itl_env.world import World

Mode = Literal["in_tool", "in_weight"]
MODES: tuple[Mode, ...] = ("in_tool", "in_weight")


class OraclePolicy:
    """The perfect player of ``ToolUseEnv`` in one mode and tool-call format: the writer of the training dialogs."""

    def __init__(
        self,
        world: World,
        mode: Mode = "in_tool",
        tool_format: str | ToolCallFormat = "hermes",
        tasks: Iterable[Task] = (),
    ):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
        self.world = world
        self.mode = mode
        self.format = get_format(tool_format) if isinstance(tool_format, str) else tool_format
        self.tasks = {task.question: task for task in tasks}

    def generate(self, conversations: list[list[dict[str, Any]]]) -> list[str]:
        return [self.reply(messages) for messages in conversations]

    def reply(self, messages: list[dict[str, Any]]) -> str:
        question = next((m["content"] for m in messages if m["role"] == "user"), "")
        if question in self.tasks:
            return self._task_reply(self.tasks[question], messages)
        parsed = dialogs.parse_question(question)
        if parsed is None:
            return dialogs.UNKNOWN_ANSWER
        name, attribute = parsed
        last = messages[-1]
        if last["role"] == "tool":
            if last.get("name") == "error":
                return dialogs.UNKNOWN_ANSWER
            return dialogs.answer(name, attribute, last["content"])
        if self.mode == "in_tool":
            return self.format.render([ToolCall(name="lookup", arguments={"name": name, "attribute": attribute.value})])
        person = self.world.by_name.get(name)
        if person is None or person["split"] != "train":  # in_weight memorised the training people only
            return dialogs.UNKNOWN_ANSWER
        return dialogs.answer(name, attribute, person[attribute.value])

    def _task_reply(self, task: Task, messages: list[dict[str, Any]]) -> str:
        if messages[-1]["role"] == "tool" and messages[-1].get("name") == "error":
            return dialogs.UNKNOWN_ANSWER
        made = sum(m["role"] == "assistant" for m in messages)
        if self.mode == "in_tool" and made < len(task.calls):
            return self.format.render([task.calls[made]])
        return task.answer
