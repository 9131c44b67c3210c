"""STE: long- and short-term memory reach the explorer, the distillation filters, replay mixing, the pipeline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from itl_env.people_tools import registry
from studies.ste.distill import distill, exploration_yield, is_grounded, kept_samples, verdict
from studies.ste.explore import Episode, explore, parse_query, read_episodes
from studies.ste.memory import LongTermMemory, Trial
from studies.ste.pipeline import round_data


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    from itl_env.world import WorldSpec, build_world

    world = build_world(WorldSpec(seed=1, people=30, unseen_people=2), tmp_path_factory.mktemp("ste") / "w.db")
    yield world, registry(world)
    world.close()


class Proposer:
    """An explorer that proposes a question naming how many explored queries its prompt showed it."""

    def __init__(self, world):
        self.world, self.prompts = world, []

    def generate(self, conversations):
        replies = []
        for conversation in conversations:
            text = conversation[-1]["content"]
            self.prompts.append(text)
            if text.startswith("Question:"):  # a reflection: judge every answer unsatisfying
                replies.append("no")
                continue
            shown = len(re.findall(r"^- ", text, re.M))
            city = self.world.rows[shown]["current_address"]
            replies.append(f"How many people live in {city}?")
        return replies


class Player:
    """Plays trials: says it does not know the first time, calls count_people once it sees earlier attempts."""

    def __init__(self):
        self.questions = []

    def generate(self, conversations):
        replies = []
        for conversation in conversations:
            question = conversation[0]["content"]
            self.questions.append(question)
            if conversation[-1]["role"] == "tool":
                replies.append(f"There are {conversation[-1]['content']}.")
            elif "Earlier attempts" in question:
                city = question.rsplit(" in ", 1)[1].rstrip("?")
                call = {"name": "count_people", "arguments": {"attribute": "current_address", "value": city}}
                replies.append(f"<tool_call>\n{json.dumps(call)}\n</tool_call>")
            else:
                replies.append("I do not know.")
        return replies


def test_long_term_memory_changes_what_is_proposed(people, tmp_path):
    world, tools = people
    proposer = Proposer(world)
    episodes = explore(world, tools, ["count_people"], imagine=lambda t: proposer, judge=proposer, trial_policy=lambda t, s, temperature: Player(), out=tmp_path,
                       episodes=3, trials=1, batch=1, recent=8, progress=False, first_turn="auto")  # fmt: skip
    first, second = [p for p in proposer.prompts if not p.startswith("Question:")][:2]
    assert "already explored" not in first and f"- {episodes[0].query}" in second
    assert len({e.query for e in episodes}) == 3  # each proposal saw one more explored query
    again = LongTermMemory(tmp_path / "memory.jsonl")  # a resumed exploration remembers them
    assert [q for q, _ in again.recent("count_people", 8)] == [e.query for e in episodes]


def test_short_term_memory_reaches_the_next_trial(people, tmp_path):
    world, tools = people
    player = Player()
    (episode,) = explore(world, tools, ["count_people"], imagine=lambda t: Proposer(world), judge=Proposer(world), trial_policy=lambda t, s, temperature: player,
                         out=tmp_path, episodes=1, trials=2, batch=1, progress=False, first_turn="auto")  # fmt: skip
    assert len(episode.trials) == 2 and not episode.trials[0].calls and episode.trials[1].calls
    second_trial = [q for q in player.questions if "Earlier attempts" in q]
    assert second_trial and "no tool call; answer: I do not know.; judged not satisfied" in second_trial[0]
    assert episode.messages[0]["content"] == episode.query  # the kept dialog asks the plain query
    assert verdict(episode) == "kept"


def test_retries_are_played_at_the_retry_temperature(people, tmp_path):
    world, tools = people
    players = {}

    def trial_policy(tool, schemas, temperature):
        return players.setdefault(temperature, Player())

    (episode,) = explore(world, tools, ["count_people"], imagine=lambda t: Proposer(world), judge=Proposer(world),
                         trial_policy=trial_policy, out=tmp_path, episodes=1, trials=3, batch=1, progress=False,
                         first_turn="auto", retry_temperature=0.7)  # fmt: skip
    assert sorted(players) == [0.0, 0.7]
    assert len(players[0.0].questions) == 1  # the first trial, greedy
    assert all("Earlier attempts" in q for q in players[0.7].questions)  # every retry sampled
    assert [t.messages[0]["content"] for t in episode.trials] == [episode.query] * len(episode.trials)
    assert episode.trials[-1].messages == episode.messages


def test_an_episode_is_kept_with_its_first_trial_that_passes(people):
    _, tools = people
    call = {"name": "count_people", "arguments": {"attribute": "current_address", "value": "Lisbon"}}
    ok = {"name": "count_people", "ok": True, "content": "3"}
    good = episode("count_people", "How many live in Lisbon?", [call], [ok], "3 people live in Lisbon.")
    bad = episode("count_people", "How many live in Lisbon?", [call], [ok], "Nobody knows.")
    trials = [t.model_copy(update={"messages": e.messages}) for e in (bad, good, bad) for t in e.trials]
    mixed = bad.model_copy(update={"trials": trials})  # the episode's own dialog is its last trial's, a bad one
    assert verdict(mixed) == "kept"
    rows, stats = distill([mixed], tools, cap=10)
    assert stats["reasons"] == {"kept": 1} and rows[0]["messages"] == good.messages
    last_only = bad.model_copy(update={"trials": [t.model_copy(update={"messages": []}) for t in trials]})
    assert verdict(last_only) == "answer not grounded in the results"  # rows without trial dialogs: the last trial


def episode(tool, query, calls, results, answer):
    messages = [{"role": "user", "content": query}]
    if calls:
        messages.append(
            {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": c} for c in calls]}
        )
        messages += [{"role": "tool", "name": r["name"], "content": r["content"]} for r in results]
    messages.append({"role": "assistant", "content": answer})
    trial = Trial(calls=calls, results=results, answer=answer, satisfied=True)
    return Episode(
        tool=tool,
        index=0,
        query=query,
        proposal=query,
        trials=[trial],
        satisfied=True,
        messages=messages,
        duplicate=False,
    )


def test_distillation_drops_failed_ungrounded_and_off_question_trajectories(people):
    _, tools = people
    call = {"name": "count_people", "arguments": {"attribute": "current_address", "value": "Lisbon"}}
    ok = {"name": "count_people", "ok": True, "content": "3"}
    failed = {"name": "count_people", "ok": False, "content": "invalid arguments"}
    faro = {"name": "count_people", "arguments": {"attribute": "current_address", "value": "Faro"}}
    episodes = [
        episode("count_people", "How many live in Lisbon?", [call], [ok], "3 people live in Lisbon."),
        episode("count_people", "How many live in Lisbon?", [call], [ok], "Three, I think: 3."),  # a duplicate
        episode("count_people", "How many live in Porto?", [call], [failed], "3 people."),
        episode("count_people", "How many live in Faro?", [faro], [ok], "Nobody knows."),
        episode("count_people", "How many live in Braga?", [], [], "5 people."),
        episode("count_people", "How many live in Evora?", [call], [ok], "3 people live there."),  # asks Lisbon
    ]
    rows, stats = distill(episodes, tools, cap=10)
    assert [r["messages"][0]["content"] for r in rows] == ["How many live in Lisbon?"]
    assert stats["reasons"] == {"kept": 1, "duplicate query": 1, "a call failed": 1,
                                "answer not grounded in the results": 1, "no tool call": 1,
                                "call not grounded in the question": 1}  # fmt: skip
    assert rows[0]["tools"] == [tools["count_people"].json_schema]
    assert is_grounded("Ana Silva and Rui Costa.", [{"content": '["Ana Silva", "Rui Costa"]'}])
    assert not is_grounded("Ana Silva.", [{"content": '["Ana Silva", "Rui Costa"]'}])
    rows, stats = distill(episodes[:1] * 3, tools, cap=1)
    assert len(rows) == 1 and stats["reasons"]["duplicate query"] == 2


def test_the_yield_counts_each_stage_per_tool_and_samples_show_kept_dialogs(people):
    _, tools = people
    call = {"name": "count_people", "arguments": {"attribute": "current_address", "value": "Lisbon"}}
    ok = {"name": "count_people", "ok": True, "content": "3"}
    failed = {"name": "count_people", "ok": False, "content": "invalid arguments"}
    episodes = [
        episode("count_people", "How many live in Lisbon?", [call], [ok], "3 people live in Lisbon."),
        episode("count_people", "how many live in lisbon?", [call], [ok], "Nobody."),  # same question, ungrounded
        episode("count_people", "How many live in Porto?", [call], [failed], "3 people."),
        episode("count_people", "How many live in Braga?", [], [], "5 people."),
    ]
    rows, _ = distill(episodes, tools, cap=10)
    (row,) = exploration_yield(episodes, rows, ["count_people"])
    assert {k: row[k] for k in ("episodes", "distinct_questions", "trials", "valid_call", "grounded_answer", "kept")} == {
        "episodes": 4, "distinct_questions": 3, "trials": 4, "valid_call": 2, "grounded_answer": 1, "kept": 1,
    }  # fmt: skip
    (sample,) = kept_samples(rows * 3, per_tool=1)
    assert sample == {"tool": "count_people", "question": "How many live in Lisbon?", "calls": [call],
                      "results": ["3"], "answer": "3 people live in Lisbon."}  # fmt: skip


def test_a_leave_one_out_explorer_never_sees_its_tool(tmp_path):
    """The explorer of tool T learns from the oracle's dialogs of lookup and every other tool: none offers T."""
    from studies.ste.__main__ import parse
    from studies.ste.pipeline import Context, explorer_rows

    _, cfg = parse(["explore", "--preset", "tiny", "--out", str(tmp_path / "ste")])
    ctx = Context(cfg)
    try:
        for tool in cfg.tools:
            rows = explorer_rows(ctx, tool)
            dialogs, imagined = [r for r in rows if r["tools"]], [r for r in rows if not r["tools"]]
            offered = {t["function"]["name"] for r in dialogs for t in r["tools"]}
            called = {c["function"]["name"] for r in dialogs for m in r["messages"] for c in m.get("tool_calls", [])}
            assert tool not in offered | called and {"lookup"} < offered == called
            assert all(len(r["tools"]) == 1 for r in dialogs)  # each dialog offers its own tool alone, as trials do
            assert len(dialogs) == cfg.explorer_dialogs * len(offered)
            # one imagination per dialog: its tool's prompt, the person asked about shown, its question the answer
            assert [r["messages"][1]["content"] for r in imagined] == [r["messages"][0]["content"] for r in dialogs]
            for ask, dialog in zip(imagined, dialogs, strict=True):
                prompt = ask["messages"][0]["content"]
                assert dialog["tools"][0]["function"]["name"] in prompt and tool not in prompt
            named = [r for r in imagined if any(p["name"] in r["messages"][1]["content"] for p in ctx.world.rows)]
            assert named and all(
                next(p["name"] for p in ctx.world.rows if p["name"] in r["messages"][1]["content"])
                in r["messages"][0]["content"]
                for r in named
            )
    finally:
        ctx.close()


@pytest.mark.slow
def test_a_model_is_trained_again_when_its_rows_change_and_reused_when_not(tmp_path):
    """A fine-tuned model (finished or half-trained) is reused only for the rows and settings it was made from."""
    from studies.ste.__main__ import parse
    from studies.ste.pipeline import Context, explorer_rows, fine_tune_on

    _, cfg = parse(["explore", "--preset", "tiny", "--out", str(tmp_path / "ste")])
    ctx = Context(cfg)
    try:
        rows = explorer_rows(ctx, "age_on")[:4]
        weights = Path(fine_tune_on(ctx, "m", rows, cfg.learner)) / "model.safetensors"
        first = weights.stat().st_mtime_ns
        assert Path(fine_tune_on(ctx, "m", rows, cfg.learner)) / "model.safetensors" == weights
        assert weights.stat().st_mtime_ns == first  # the same rows: reused, not trained again
        fine_tune_on(ctx, "m", rows[:3], cfg.learner)
        assert weights.stat().st_mtime_ns != first  # other rows: trained again (not the stale model)
    finally:
        ctx.close()


def test_replay_mixes_earlier_rounds_and_general_dialogs():
    fresh, earlier, general = [{"id": f"n{i}"} for i in range(4)], [{"id": f"e{i}"} for i in range(10)], [{"id": "g"}]
    mixed = round_data(fresh, earlier, general, share=0.5, seed=2)
    assert mixed[:4] == fresh and len([r for r in mixed if r["id"].startswith("e")]) == 5 and mixed[-1] == {"id": "g"}
    assert round_data(fresh, earlier, general, share=0.0, seed=2) == fresh
    assert round_data(fresh, [], general, share=0.5, seed=2) == fresh  # the first round has nothing to replay


@pytest.mark.parametrize(
    ("proposal", "query"),
    [
        ('Question: "How old is Ana Silva?"\nmore', "How old is Ana Silva?"),
        ("How many people live in Dhaka?", "How many people live in Dhaka?"),
        ('A user could ask:\n"Who lives in Lima?"\n\nThe answer would be:', "Who lives in Lima?"),
        ('Here is one:\n\nThe user asks: "Who was born in Chile?"\n\nThe answer is:', "Who was born in Chile?"),
        ("A user could ask:\n\nWhich engineers live in Oslo?\n\nThe answer is:", "Which engineers live in Oslo?"),
        ("List the people born in Peru", "List the people born in Peru"),
        ("Query: list the people born in Peru", "list the people born in Peru"),
        ("  \n ok", None),
        ("", None),
    ],
)
def test_parse_query_finds_the_question_inside_a_wrapper(proposal, query):
    assert parse_query(proposal) == query


@pytest.mark.slow
def test_the_pipeline_runs_end_to_end_on_the_tiny_preset(tmp_path):
    from studies.ste.__main__ import main, parse

    steps, cfg = parse(["all", "--preset", "tiny", "--out", str(tmp_path / "ste")])
    result = main(steps, cfg)
    assert [(r["explorer"], r["tool"], r["episodes"]) for r in result.exploration] == [
        (e, t, 3) for e in ("leave_one_out", "base") for t in ("count_people", "age_on")
    ]
    for explorer in cfg.explorers:
        assert len(read_episodes(tmp_path / "ste" / "explorers" / explorer / "explore.jsonl")) == 6
    for tool in cfg.tools:  # each leave-one-out explorer was trained without its tool
        assert (tmp_path / "ste" / "models" / f"explorer-without-{tool}" / "model" / "config.json").is_file()
    settings = [r["setting"] for r in result.correctness]
    kept = [e for e in cfg.explorers if any(r["explorer"] == e and r["kept"] for r in result.exploration)]
    ste = [f"STE {how} ({e})" for e in kept for how in ("in-context", "fine-tuned")]
    assert settings == ["base", *ste, "oracle fine-tuned"]
    assert {(r["replay"], r["round"]) for r in result.continual} == {(True, 1), (True, 2), (False, 1), (False, 2)}
    assert (tmp_path / "ste" / "tables.md").is_file() and (tmp_path / "ste" / "exploration.csv").is_file()
    again = main(steps, cfg)  # every step's outputs are reused
    assert again.exploration == result.exploration
    alone = main(("distill",), cfg)  # a step run alone keeps the other steps' last results in the report
    assert (alone.correctness, alone.continual) == (result.correctness, result.continual)
    assert "oracle fine-tuned" in (tmp_path / "ste" / "tables.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("text", ["", "not json", "[1, 2]", '{"exploration": {}, "correctness": 3}'])
def test_a_broken_last_report_is_ignored_not_fatal(tmp_path, text):
    from studies.ste.pipeline import _previous

    (tmp_path / "ste.json").write_text(text, encoding="utf-8")
    assert _previous(tmp_path) == {}
    assert _previous(tmp_path / "missing") == {}


def test_report_copies_are_named_after_the_run_folder(tmp_path):
    from studies.ste.pipeline import SteResult
    from studies.ste.report import write_report

    exploration = [{"explorer": "base", "tool": "t", "episodes": 1, "kept": 0}]
    result = SteResult(exploration=exploration, dropped={"base": {"no tool call": 1}}, samples={"base": []},
                       correctness=[{"setting": "base", "t": 0.5, "mean": 0.5}], continual=[],
                       wall_seconds=1.0)  # fmt: skip
    for run in ("cpu", "cpu-tool-explorer"):
        (tmp_path / run / "explorers" / "base").mkdir(parents=True)
        (tmp_path / run / "explorers" / "base" / "distill.json").write_text("{}", encoding="utf-8")
        write_report(tmp_path / run, result, str(tmp_path / "results"), ["base"])
    copies = sorted(p.name for p in (tmp_path / "results").iterdir())
    names = ("correctness.csv", "distill-base.json", "exploration.csv", "tables.md")
    assert copies == [f"ste-{run}-{name}" for run in ("cpu", "cpu-tool-explorer") for name in names]
    assert "no tool call: 1" in (tmp_path / "cpu" / "tables.md").read_text(encoding="utf-8")


def test_the_trial_protocol_forces_a_call_and_shows_another_tools_exchange(people, tmp_path):
    """first_turn=required: an untrained model's every trial calls the explored tool (schema-valid arguments); the
    question is shown under a worked exchange with lookup, which names no part of the explored tool."""
    from evals.backends.hf import HFPolicy
    from evals.models import load
    from studies.ste.explore import worked_example

    world, tools = people
    model, tokenizer = load("default", for_training=False)
    seen = []

    class Seeing(HFPolicy):
        def generate(self, conversations, tool_choice=None):
            seen.extend(c[0]["content"] for c in conversations)
            return super().generate(conversations, tool_choice=tool_choice)

    def explored(first_turn, out):
        return explore(world, tools, ["count_people"], imagine=lambda t: Proposer(world), judge=Proposer(world), out=out, episodes=2, trials=1,
                       trial_policy=lambda tool, schemas, temperature: Seeing(model, tokenizer, schemas, max_new_tokens=24),
                       batch=2, progress=False, first_turn=first_turn)  # fmt: skip

    forced = explored("required", tmp_path / "forced")
    assert all(e.trials[0].calls and e.trials[0].calls[0]["name"] == "count_people" for e in forced)
    assert all(set(e.trials[0].calls[0]["arguments"]) <= {"attribute", "value"} for e in forced)
    example = worked_example(world, tools, "count_people")
    person = world.rows[0]
    assert '"name": "lookup"' in example and person["occupation"] in example and "count_people(" not in example
    assert seen and all(q.startswith(example) for q in seen)
    free = explored("auto", tmp_path / "free")  # the zero-shot ablation: the untrained model calls nothing
    assert not any(e.trials[0].calls for e in free)
