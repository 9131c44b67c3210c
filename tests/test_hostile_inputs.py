"""Bad input to plug-ins, datasets, run folders, appended files and tool arguments: one clear error, nothing lost."""

from __future__ import annotations

import json
import logging
import re
import sys
import types

import pytest

from configs import jsonl
from itl_env.fact_tools import fact_tools, registry_for
from itl_env.formats import get_format
from itl_env.tasks import BUILT_IN, task_kinds
from tools.plugins import PluginError

# ---------------------------------------------------------------------------------------------- plug-ins


@pytest.fixture
def plugin_module(monkeypatch):
    """A module ``hostile_plugins`` whose factories misbehave in every way a user's can."""
    module = types.ModuleType("hostile_plugins")

    def raises(*_args):
        raise RuntimeError("the factory broke")

    module.raises = raises
    module.none = lambda *_a: None
    module.a_dict = lambda *_a: {"lookup": 1}
    module.empty = lambda *_a: []
    module.not_tools = lambda *_a: [1, 2]
    module.twice = lambda *_a: [BUILT_IN[0], BUILT_IN[0]]
    module.not_kinds = lambda *_a: ["age_on"]
    monkeypatch.setitem(sys.modules, "hostile_plugins", module)
    return module


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("raises", "--tools hostile_plugins:raises raised RuntimeError: the factory broke"),
        ("none", "returned NoneType, not a ToolRegistry or a list of tools"),
        ("a_dict", "returned dict, not a ToolRegistry or a list of tools"),
        ("empty", "returned no tools"),
        ("not_tools", "--tools hostile_plugins:not_tools:"),
    ],
)
def test_a_bad_tools_plugin_is_one_error_naming_it(plugin_module, shared_world, factory, message):
    with pytest.raises(PluginError) as raised:
        registry_for(shared_world, f"hostile_plugins:{factory}")
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("raises", "--tasks hostile_plugins:raises raised RuntimeError"),
        ("none", "returned NoneType, not a TaskKind"),
        ("empty", "returned an empty list"),
        ("not_kinds", "returned a list of str"),
        ("twice", "more than once"),
    ],
)
def test_a_bad_tasks_plugin_is_one_error_naming_it(plugin_module, factory, message):
    with pytest.raises(PluginError, match=message):
        task_kinds([f"hostile_plugins:{factory}"])


def test_the_same_task_kind_twice_is_refused_not_merged():
    with pytest.raises(PluginError, match="more than once"):
        task_kinds([BUILT_IN[0].name, BUILT_IN[0].name])


# ---------------------------------------------------------------------------------------------- datasets


def good_row() -> dict:
    call = {
        "type": "function",
        "function": {"name": "lookup", "arguments": '{"name": "A B", "attribute": "occupation"}'},
    }
    return {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [call]},
                         {"role": "tool", "content": "x"}, {"role": "assistant", "content": "x"}]}  # fmt: skip


def bad_rows() -> dict[str, tuple[str, str]]:
    unknown_tool = good_row()
    unknown_tool["messages"][1]["tool_calls"][0]["function"]["name"] = "rm_rf"
    not_json = good_row()
    not_json["messages"][1]["tool_calls"][0]["function"]["arguments"] = "{name: A B"
    odd_role = good_row()
    odd_role["messages"][0]["role"] = "narrator"
    return {
        "not json": ("this is not json\n", "could not be read"),
        "empty": ("", "could not be read|has no rows"),
        "columns": (json.dumps({"text": "hello"}) + "\n", "expected messages"),
        "unknown tool": (json.dumps(unknown_tool) + "\n", "row 0: message 1: a call of 'rm_rf'"),
        "arguments": (json.dumps(not_json) + "\n", "row 0: message 1: the arguments of lookup are not JSON"),
        "role": (json.dumps(odd_role) + "\n", "row 0: message 0: role 'narrator'"),
    }


@pytest.mark.parametrize("case", sorted(bad_rows()))
def test_a_bad_dataset_is_refused_with_its_file_and_row(case, tmp_path):
    from trainers.fine_tune import load_dataset

    text, message = bad_rows()[case]
    path = tmp_path / "data.jsonl"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as raised:
        load_dataset(str(path), {"lookup"})
    assert str(path) in str(raised.value)
    assert path.read_text() == text  # the user's file is untouched


def test_a_dataset_dict_folder_is_refused(tmp_path):
    import datasets

    from trainers.fine_tune import load_dataset

    datasets.DatasetDict({"train": datasets.Dataset.from_list([good_row()])}).save_to_disk(tmp_path / "dd")
    with pytest.raises(ValueError, match="holds the splits"):
        load_dataset(str(tmp_path / "dd"), {"lookup"})
    assert len(load_dataset(_jsonl(tmp_path, [good_row()]), {"lookup"})) == 1


def _jsonl(tmp_path, rows) -> str:
    path = tmp_path / "good.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.slow
def test_sft_with_a_bad_dataset_leaves_no_run_directory(tmp_path, shared_world):
    from trainers import sft

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "x"}) + "\n")
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as raised:
        sft.cli(["--dataset", str(bad), "--world", shared_world.target, "--output_dir", str(out), "--max_steps", "2"])
    assert "expected messages" in str(raised.value.code) and not out.exists()


@pytest.mark.slow
def test_a_failure_after_the_run_directory_exists_removes_it(tmp_path, shared_world, monkeypatch):
    """A start that fails once the directory is made (here: the trainer cannot be built) leaves nothing behind,
    so the corrected command runs."""
    import trl

    from trainers import sft

    def broken(*_args, **_kwargs):
        raise RuntimeError("the trainer cannot be built")

    monkeypatch.setattr(trl, "SFTTrainer", broken)
    out = tmp_path / "run"
    args = ["--world", shared_world.target, "--output_dir", str(out), "--max_steps", "2", "--eval_every", "0",
            "--final_eval_facts", "4"]  # fmt: skip
    with pytest.raises(RuntimeError, match="cannot be built"):
        sft.main(*sft.parse(args))
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- appended files


def test_an_unfinished_last_line_is_cut_before_the_next_row(tmp_path, caplog):
    path = tmp_path / "rows.jsonl"
    jsonl.append(path, [{"a": 1}])
    with path.open("a") as f:
        f.write('{"a": 2, "b"')  # a process killed mid-write
    assert jsonl.read(path) == [{"a": 1}]  # read: skipped, and said
    with caplog.at_level(logging.WARNING):
        jsonl.append(path, [{"a": 3}])
    assert "unfinished" in caplog.text
    assert path.read_text() == '{"a": 1}\n{"a": 3}\n'  # never glued onto the cut line


def test_a_bad_line_in_the_middle_names_the_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 3}\n')
    with pytest.raises(ValueError, match=r"rows.jsonl, line 2: not a valid row"):
        jsonl.read(path)


def test_any_text_survives_a_jsonl_round_trip(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"text": "lone \ud800 surrogate", "name": "Zoë \\ud800 literal"}]
    jsonl.append(path, rows)
    path.read_text(encoding="utf-8")  # valid UTF-8
    assert jsonl.read(path) == rows


# ---------------------------------------------------------------------------------------------- tool arguments


def test_a_lone_surrogate_escape_in_call_arguments_is_made_valid():
    text = (
        '<tool_call>\n{"name": "lookup", "arguments": {"name": "A\\ud800B", "attribute": "occupation"}}\n</tool_call>'
    )
    (call,) = get_format("hermes").parse(text).calls
    assert call.arguments["name"] == "A\ufffdB"
    json.dumps(call.arguments, ensure_ascii=False).encode("utf-8")


def test_rollout_records_survive_a_model_writing_a_lone_surrogate(tmp_path, shared_world):
    from itl_env.env import ToolUseEnv
    from itl_env.rollout import read_records, rollout

    class Writer:
        def generate(self, conversations):
            return ['<tool_call>\n{"name": "lookup", "arguments": {"name": "\\udc00", "attribute": "occupation"}}\n'
                    "</tool_call>" if len(c) == 1 else "I answer \ud800." for c in conversations]  # fmt: skip

    facts = shared_world.facts("train")[:3]
    out = tmp_path / "records.jsonl"
    result = rollout(Writer(), lambda: ToolUseEnv(shared_world), facts, mode="in_tool", out=out, progress=False)
    assert len(result.records) == 3 and len(read_records(out)) == 3


@pytest.mark.parametrize("date", ["1/1/99999999999999999999", "13/1/2000", "1/1/\ud800"])
def test_dates_out_of_range_are_the_tools_own_message(shared_world, date):
    from itl_env.people_tools import registry

    result = registry(shared_world).call("age_on", {"name": shared_world.rows[0]["name"], "on": date})
    assert not result.ok and "is not a date written M/D/YYYY" in result.content


def test_the_lookup_tool_arms_no_timer_and_a_user_tool_does(shared_world):
    from tools import tool

    @tool
    def slow(name: str) -> str:
        """Sleep.

        Args:
            name: Anything.
        """
        return name

    assert [t.time_limited for t in fact_tools(shared_world)] == [False] and slow.time_limited


# ---------------------------------------------------------------------------------------------- run folders


def test_resume_refuses_a_folder_that_is_no_run_or_another_kind(tmp_path):
    from trainers.run_dir import RunDirError, check

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("my notes")
    with pytest.raises(RunDirError, match="holds no config.yaml"):
        check(tmp_path / "mine", resume=True, kind="sft")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("mode: in_tool\n")
    (run / "run.json").write_text(json.dumps({"kind": "grpo"}))
    with pytest.raises(RunDirError, match="it is a grpo run"):
        check(run, resume=True, kind="sft")
    assert check(run, resume=True, kind="grpo") == run
    with pytest.raises(RunDirError, match="already exists and is not empty"):
        check(tmp_path / "mine", resume=False)


def test_resume_passes_over_odd_and_incomplete_checkpoints(tmp_path, caplog):
    from trainers.hf_training import last_checkpoint

    def checkpoint(name: str, *files: str) -> None:
        (tmp_path / name).mkdir()
        for file in files:
            (tmp_path / name / file).write_text("{}")

    checkpoint("checkpoint-10", "trainer_state.json", "model.safetensors")
    checkpoint("checkpoint-30", "trainer_state.json")  # killed while saving: no weights
    checkpoint("checkpoint-final", "trainer_state.json", "model.safetensors")
    (tmp_path / "checkpoint-40").write_text("a file")
    with caplog.at_level(logging.WARNING):
        assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert "checkpoint-30 is incomplete" in caplog.text and "checkpoint-final is not a checkpoint" in caplog.text
    assert last_checkpoint(tmp_path / "checkpoint-30") is None


def test_a_study_never_writes_into_a_users_folder(tmp_path):
    from configs import claim_output
    from studies.ste.pipeline import SteConfig

    cfg = SteConfig(preset="tiny")
    users = tmp_path / "mine"
    users.mkdir()
    (users / "config.yaml").write_text("my: own file\n")
    with pytest.raises(ValueError, match="is not a STE output folder"):
        claim_output(users, cfg, "STE")
    assert (users / "config.yaml").read_text() == "my: own file\n"
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        claim_output(tmp_path / "a-file", cfg, "STE")
    claim_output(tmp_path / "new", cfg, "STE")
    claim_output(tmp_path / "new", cfg.model_copy(update={"episodes": 3}), "STE")  # its own folder: resumed


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"tools": ["nope"]}, "have no test_tasks entry"),
        ({"rounds": [["find_people", "rm_rf"]]}, "rounds name"),
        ({"tools": []}, "at least one tool"),
    ],
)
def test_ste_values_are_checked_before_any_work(values, message):
    from studies.ste.pipeline import SteConfig

    with pytest.raises(ValueError, match=message):
        SteConfig(**values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"facts": [-8]}, "at least 4"),
        ({"facts": [0]}, "at least 4"),
        ({"batch_size": {"in_tool": 0, "in_weight": 8}}, "must be positive"),
        ({"learning_rate": {"in_tool": 1e-4}}, "no value for the mode"),
        ({"published": "/no/such.csv"}, "no such file"),
    ],
)
def test_finetune_study_values_are_checked_before_any_run(values, message):
    from studies.finetune.study import PretrainedStudyConfig

    with pytest.raises(ValueError, match=message):
        PretrainedStudyConfig(**values)


def test_a_prompts_file_with_a_bad_row_names_the_file_and_line(tmp_path):
    from evals.divergence import load_prompts

    path = tmp_path / "prompts.jsonl"
    path.write_text('{"id": "a", "category": "math", "prompt": "1+1"}\n{"id": "b", "category": "math", "x": 1}\n')
    with pytest.raises(ValueError, match=r"prompts.jsonl, line 2"):
        load_prompts(path)


# ---------------------------------------------------------------------------------------------- diagnoses


def kind_with(**changes):
    import dataclasses

    return dataclasses.replace(BUILT_IN[0], **changes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"draw": lambda world, rng: 1 / 0}, "its draw failed (ZeroDivisionError"),
        ({"plan": lambda slots, results: slots["nope"]}, "its plan failed"),
        ({"train_questions": ("Who is {nobody}?",)}, "the slot 'nobody' is not drawn"),
        ({"plan": lambda slots, results: None if results else {"name": "rm_rf", "arguments": {}}},
         "the last failed draw: rm_rf({}) answered: unknown tool 'rm_rf'"),
    ],
)  # fmt: skip
def test_a_broken_task_kind_says_what_is_wrong(shared_world, changes, message):
    from itl_env.people_tools import registry
    from itl_env.tasks import make_tasks

    with pytest.raises(ValueError, match=re.escape(message)):
        make_tasks(kind_with(**changes), shared_world, registry(shared_world), 4)


def test_fact_recall_without_lookup_says_so(shared_world):
    from itl_env.trajectories import oracle_conversations
    from tools import ToolRegistry

    age_on = people_tools_without_lookup(shared_world)
    with pytest.raises(ValueError, match="answered with the lookup tool, which the registry lacks"):
        oracle_conversations(shared_world, shared_world.facts("train")[:2], "in_tool", registry=ToolRegistry(age_on))


def people_tools_without_lookup(world):
    from itl_env.people_tools import registry

    full = registry(world)
    return [full._tools[name] for name in full.names if name != "lookup"]
