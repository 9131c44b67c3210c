"""Tool tasks: the people tool suite, tasks with executed gold, exact scoring of numbers and lists, the oracle."""

from __future__ import annotations

import pytest

from itl_env.env import ToolUseEnv
from itl_env.oracle import OraclePolicy
from itl_env.people_tools import registry
from itl_env.rollout import rollout
from itl_env.tasks import BUILT_IN, TaskScorer, make_tasks, show, task_kinds


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    from itl_env.world import WorldSpec, build_world

    world = build_world(WorldSpec(seed=2, people=150, unseen_people=10), tmp_path_factory.mktemp("tasks") / "w.db")
    yield world, registry(world)
    world.close()


def test_people_tools_query_the_database(suite):
    world, tools = suite
    person = world.rows[5]
    same_country = sorted(r["name"] for r in world.rows if r["birth_place"] == person["birth_place"])
    found = tools.call("find_people", {"attribute": "birth_place", "value": person["birth_place"], "limit": 20})
    assert found.ok and found.content == str(same_country[:20]).replace("'", '"')
    count = tools.call("count_people", {"attribute": "occupation", "value": person["occupation"]})
    assert int(count.content) == sum(r["occupation"] == person["occupation"] for r in world.rows)
    month, day, year = map(int, person["birth_date"].split("/"))
    assert tools.call("age_on", {"name": person["name"], "on": f"{month}/{day}/{year + 30}"}).content == "30"
    assert (
        tools.call(
            "age_on",
            {"name": person["name"], "on": f"{month}/{day}/{year + 30}".replace(str(year + 30), str(year + 29))},
        ).content
        == "29"
    )


@pytest.mark.parametrize(
    ("name", "arguments", "message"),
    [
        ("age_on", {"name": "Nobody Here", "on": "1/1/2000"}, "no person named 'Nobody Here'"),
        ("age_on", {"name": "x", "on": "2000-01-01"}, "is not a date written M/D/YYYY"),
        ("born_between", {"start": "1/1/2000", "end": "1/1/1990"}, "the end 1/1/1990 comes before the start 1/1/2000"),
        (
            "find_people",
            {"attribute": "birth_place", "value": "Japan", "limit": 500},
            "limit: Input should be less than or equal to 20",
        ),
        ("count_people", {"attribute": "salary", "value": "x"}, "attribute: Input should be"),
    ],
)
def test_people_tools_refuse_bad_arguments_readably(suite, name, arguments, message):
    _, tools = suite
    result = tools.call(name, arguments)
    assert not result.ok and message in result.content


@pytest.mark.parametrize("kind", BUILT_IN, ids=lambda k: k.name)
def test_the_oracle_solves_every_task_through_the_environment(suite, kind):
    world, tools = suite
    tasks = make_tasks(kind, world, tools, 6, seed=3)
    result = rollout(
        OraclePolicy(world, "in_tool", tasks=tasks),
        lambda: ToolUseEnv(world, registry=tools, max_turns=4),
        tasks,
        mode="in_tool",
        progress=False,
        keep_conversations=True,
    )
    assert all(r.correct and r.task == kind.name for r in result.records)
    calls = [m for m in result.conversations[0] if m.get("tool_calls")]
    assert [c["tool_calls"][0]["function"]["name"] for c in calls] == [call.name for call in tasks[0].calls]


@pytest.mark.parametrize("kind", BUILT_IN, ids=lambda k: k.name)
def test_gold_is_what_the_tools_return_and_phrasings_are_disjoint(suite, kind):
    world, tools = suite
    task = make_tasks(kind, world, tools, 1, seed=4)[0]
    replayed = [tools.call(c.name, c.arguments).content for c in task.calls]
    assert replayed == task.results
    assert set(kind.train_questions).isdisjoint(kind.test_questions)
    test = make_tasks(kind, world, tools, 3, seed=5, phrasing="test")
    assert not any(
        t.question.startswith(q.split("{")[0]) for t in test for q in kind.train_questions if q.split("{")[0]
    )


def test_scoring_numbers_lists_and_texts(suite):
    world, _ = suite
    names = [r["name"] for r in world.rows]
    scorer = TaskScorer(names)
    assert scorer.is_correct("There are 12 of them.", 12)
    assert not scorer.is_correct("There are 12 or 13 of them.", 12)
    assert not scorer.is_correct("There are 112 of them.", 12)
    assert scorer.is_correct("On 7/26/1995 she was 3.", 3)  # a date's numbers are not answers
    assert scorer.is_correct(f"{names[0]} and {names[1]}.", [names[1], names[0]])
    assert not scorer.is_correct(f"{names[0]}.", [names[0], names[1]])
    assert not scorer.is_correct(f"{names[0]}, {names[1]} and {names[2]}.", [names[0], names[1]])
    assert not scorer.is_correct("Nobody.", [])
    assert scorer.is_correct("It is Lisbon.", "Lisbon") and not scorer.is_correct("It is Lisbonne.", "Lisbon")
    assert show([names[0], names[1], names[2]]) == f"{names[0]}, {names[1]} and {names[2]}"


def test_task_kinds_by_name_or_reference_and_errors(suite):
    world, tools = suite
    assert [k.name for k in task_kinds(["age_on", "neighbours"])] == ["age_on", "neighbours"]
    with pytest.raises(ValueError, match="unknown task 'ages'"):
        task_kinds(["ages"])
    from tools.registry import ToolRegistry

    with pytest.raises(ValueError, match=r"needs the tools \['age_on'\]"):
        make_tasks(task_kinds(["age_on"])[0], world, ToolRegistry(), 1)


def test_a_task_episode_rewards_the_exact_answer(suite):
    world, tools = suite
    task = make_tasks(task_kinds(["how_many_live_in"])[0], world, tools, 1, seed=6)[0]
    env = ToolUseEnv(world, registry=tools)
    question, info = env.reset(options={"task": task})
    assert question == task.question and info["task"] == task
    obs, *_ = env.step(OraclePolicy(world, tasks=[task]).reply(env.messages))
    assert obs == task.results[0]
    _, reward, terminated, _, _ = env.step(f"It is {int(task.gold) + 1}.")
    assert terminated and reward == 0.0
    with pytest.raises(ValueError, match="comes alone"):
        env.reset(options={"task": task, "variant": 1})
