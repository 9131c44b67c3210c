"""``ToolUseEnv``: Gymnasium API, tool execution, OpenAI-format messages, rewards and truncation."""

from __future__ import annotations

import gymnasium
import pytest
from gymnasium.utils.env_checker import check_env

import itl_env
from itl_env import dialogs
from itl_env.env import ToolUseEnv
from itl_env.formats import ToolCall, get_format
from itl_env.world import World, WorldSpec
from tools import tool


def call_text(fmt: str, name: str, attribute: str) -> str:
    return get_format(fmt).render([ToolCall(name="lookup", arguments={"name": name, "attribute": attribute})])


@pytest.fixture
def env(shared_world: World) -> ToolUseEnv:
    return ToolUseEnv(shared_world, max_turns=3)


def test_env_id_is_registered():
    assert itl_env.ENV_ID == "itl/FactRecall-v0"
    assert itl_env.ENV_ID in gymnasium.registry


def test_gymnasium_make_with_a_path(shared_world):
    env = gymnasium.make("itl/FactRecall-v0", world=shared_world.url.removeprefix("sqlite:///"), max_turns=2)
    question, info = env.reset(seed=0)
    assert dialogs.parse_question(question) == (info["fact"].person, info["fact"].attribute)
    assert env.unwrapped.world.content_hash == shared_world.content_hash


def test_gymnasium_make_with_a_world_passes_check_env(shared_world):
    env = gymnasium.make("itl/FactRecall-v0", world=shared_world)
    check_env(env.unwrapped, skip_render_check=True)


def test_check_env_passes(shared_world):
    check_env(ToolUseEnv(shared_world), skip_render_check=True)


def test_default_world_lives_at_itl_world(tmp_path, monkeypatch):
    monkeypatch.setenv("ITL_WORLD", str(tmp_path / "default.db"))
    env = gymnasium.make("itl/FactRecall-v0")
    assert (tmp_path / "default.db").is_file()
    assert env.unwrapped.world.spec == WorldSpec()
    question, _ = env.reset(seed=1)
    assert dialogs.parse_question(question) is not None


def test_reset_is_deterministic(env, shared_world):
    first = env.reset(seed=7)
    other = ToolUseEnv(shared_world)
    assert other.reset(seed=7)[0] == first[0]
    assert other.reset(seed=7)[1]["fact"] == first[1]["fact"]
    questions = {env.reset(seed=s)[0] for s in range(20)}
    assert len(questions) > 10


def test_reset_asks_about_the_given_fact(env, shared_world):
    fact = shared_world.facts("unseen")[5]
    question, info = env.reset(seed=0, options={"fact": fact, "variant": 1})
    assert question == dialogs.question(fact.person, fact.attribute, 1)
    assert info["fact"] == fact
    assert env.messages == [{"role": "user", "content": question}]


def test_reset_split_option(env):
    for seed in range(10):
        _, info = env.reset(seed=seed, options={"split": "unseen"})
        assert info["fact"].split == "unseen"


def test_tool_call_returns_the_tool_result(env, shared_world):
    fact = shared_world.facts("train")[2]
    env.reset(seed=0, options={"fact": fact})
    observation, reward, terminated, truncated, info = env.step(call_text("hermes", fact.person, fact.attribute.value))
    assert observation == fact.value
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert info["messages"][1:] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1_0",
                    "type": "function",
                    "function": {
                        "name": "lookup",
                        "arguments": {"name": fact.person, "attribute": fact.attribute.value},
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1_0", "name": "lookup", "content": fact.value},
    ]
    assert info["tool_results"] == [{"name": "lookup", "ok": True, "content": fact.value}]


def test_find_format_tool_call(shared_world):
    env = ToolUseEnv(shared_world, tool_format="find")
    fact = shared_world.facts("unseen")[0]
    env.reset(seed=0, options={"fact": fact})
    observation, *_ = env.step(f"Checking.\n{call_text('find', fact.person, fact.attribute.value)}")
    assert observation == fact.value
    assert env.messages[1]["content"] == "Checking."
    assert env.messages[1]["tool_calls"][0]["function"]["arguments"] == {
        "name": fact.person,
        "attribute": fact.attribute.value,
    }


def test_correct_final_answer_rewards_one(env, shared_world):
    fact = shared_world.facts("train")[0]
    env.reset(seed=0, options={"fact": fact})
    answer = dialogs.answer(fact.person, fact.attribute, fact.value)
    observation, reward, terminated, truncated, info = env.step(answer)
    assert (observation, reward, terminated, truncated) == ("", 1.0, True, False)
    assert info["correct"] is True and info["answer"] == answer
    assert env.messages[-1] == {"role": "assistant", "content": answer}


def test_wrong_final_answer_rewards_zero(env, shared_world):
    fact = next(f for f in shared_world.facts("train") if f.attribute.value == "birth_date")
    env.reset(seed=0, options={"fact": fact})
    _, reward, terminated, truncated, info = env.step(f"{fact.person} was born on 13/13/1313.")
    assert (reward, terminated, truncated, info["correct"]) == (0.0, True, False, False)


def test_max_turns_truncates(shared_world):
    env = ToolUseEnv(shared_world, max_turns=2)
    fact = shared_world.facts("train")[0]
    env.reset(seed=0, options={"fact": fact})
    text = call_text("hermes", fact.person, fact.attribute.value)
    assert env.step(text)[2:4] == (False, False)
    _, reward, terminated, truncated, info = env.step(text)
    assert (reward, terminated, truncated, info["turn"]) == (0.0, False, True, 2)
    with pytest.raises(RuntimeError, match="call reset"):
        env.step("more")


def test_step_before_reset_raises(shared_world):
    with pytest.raises(RuntimeError, match="call reset"):
        ToolUseEnv(shared_world).step("hello")


def test_offer_tools_false_shows_no_tools(shared_world):
    env = ToolUseEnv(shared_world, offer_tools=False)
    _, info = env.reset(seed=0)
    assert env.tools == [] and info["tools"] == []


def test_offered_tools_are_the_registry_schemas(env):
    _, info = env.reset(seed=0)
    assert [t["function"]["name"] for t in info["tools"]] == ["lookup"]
    assert info["tools"][0]["function"]["parameters"]["properties"]["attribute"]["enum"] == [
        "birth_date",
        "birth_place",
        "current_address",
        "occupation",
    ]


def test_unreadable_call_is_an_error_observation(env):
    env.reset(seed=0)
    observation, reward, terminated, truncated, info = env.step("<tool_call>{not json}</tool_call>")
    assert observation.startswith("could not read tool call: tool call is not valid JSON")
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert info["messages"][-1]["name"] == "error" and len(info["parse_errors"]) == 1


def test_calls_beyond_the_per_turn_limit_are_not_run(shared_world):
    env = ToolUseEnv(shared_world, max_calls_per_turn=2)
    fact = shared_world.facts("train")[0]
    env.reset(seed=0, options={"fact": fact})
    call = ToolCall(name="lookup", arguments={"name": fact.person, "attribute": fact.attribute.value})
    observation, *_ = env.step(get_format("hermes").render([call] * 3))
    assert observation.split("\n") == [fact.value, fact.value, "too many tool calls in one message (limit 2)"]


def test_oversized_action_is_an_error_observation(env):
    env.reset(seed=0)
    observation, _, terminated, truncated, _ = env.step("x" * 20_000)
    assert observation == "message of 20000 characters exceeds the limit of 8192; nothing was run"
    assert (terminated, truncated) == (False, False)
    assert len(env.messages[-2]["content"]) == 8192


def test_non_text_action_raises(env):
    env.reset(seed=0)
    with pytest.raises(TypeError, match="assistant's text"):
        env.step(42)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"split": "test"}, "unknown split"), ({"max_turns": 0}, "max_turns"), ({"tool_format": "xml"}, "format")],
)
def test_bad_constructor_arguments(shared_world, kwargs, error):
    with pytest.raises(ValueError, match=error):
        ToolUseEnv(shared_world, **kwargs)


def test_ansi_render(shared_world):
    env = ToolUseEnv(shared_world, render_mode="ansi")
    question, _ = env.reset(seed=0)
    assert env.render() == f"[user] {question}"


def test_environments_of_a_world_share_tool_and_scorer_not_registry(shared_world):
    first, second = ToolUseEnv(shared_world), ToolUseEnv(shared_world)
    assert first.scorer is second.scorer
    assert first.registry["lookup"] is second.registry["lookup"]
    assert first.registry is not second.registry
    first.registry.register(takes_nothing)
    assert "takes_nothing" not in second.registry


@tool
def takes_nothing() -> str:
    """Return a constant."""
    return "constant"


# --- the Gymnasium contract: close, state before reset, snapshots, vector envs, pickling, sampling -------


def test_state_exists_before_reset_and_step_before_reset_is_refused(shared_world):
    env = ToolUseEnv(shared_world)
    assert (env.fact, env.turn, env.messages, env.tool_calls, env.tool_results, env.parse_errors) == (
        None,
        0,
        [],
        [],
        [],
        [],
    )
    with pytest.raises(RuntimeError, match="call reset"):
        env.step("hello")


def test_info_is_a_snapshot_that_does_not_grow(env, shared_world):
    fact = shared_world.facts("train")[0]
    _, first = env.reset(options={"fact": fact})
    _, _, _, _, second = env.step(call_text("hermes", fact.person, fact.attribute.value))
    assert len(first["messages"]) == 1 and first["tool_calls"] == []
    env.step("I think it is something.")
    assert len(second["messages"]) == 3 and len(second["tool_calls"]) == 1


def test_close_releases_a_world_the_env_opened_and_leaves_a_given_one(shared_world):
    opened = ToolUseEnv(shared_world.target)
    opened.reset(seed=0)
    opened.registry.call("lookup", {"name": "x", "attribute": "occupation"})
    opened.close()
    assert opened.world.engine.pool.checkedout() == 0
    given = ToolUseEnv(shared_world)
    given.close()
    assert shared_world.index.value(shared_world.rows[0]["name"], "occupation") == shared_world.rows[0]["occupation"]


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"facts": 1}, ValueError, "unknown reset option(s) 'facts'; valid: fact, task, split, variant"),
        ({"split": "test"}, ValueError, "reset option split='test' is not a split; valid: train, unseen"),
        ({"fact": "0:occupation"}, TypeError, "reset option fact must be a Fact"),
        ({"variant": 9}, ValueError, "reset option variant must be an int in 0..3, got 9"),
        ({"variant": "1"}, ValueError, "reset option variant must be an int in 0..3, got '1'"),
        ({"variant": True}, ValueError, "variant must be an int"),
        (["fact"], TypeError, "reset options must be a dict, got list"),
    ],
)
def test_odd_reset_options_are_clear_errors(env, options, error, message):
    import re

    with pytest.raises(error, match=re.escape(message)):
        env.reset(options=options)


def test_action_space_samples_short_printable_actions(env):
    env.action_space.seed(0)
    samples = [env.action_space.sample() for _ in range(200)]
    assert all(env.action_space.contains(s) and len(s) <= 64 for s in samples)
    assert len(set(samples)) > 150
    env.reset(seed=0)
    for sample in samples[:10]:
        env.reset(seed=0)
        env.step(sample)  # any sampled action is a valid step


def test_a_lone_surrogate_in_an_action_is_replaced(env, shared_world):
    fact = shared_world.facts("train")[0]
    env.reset(options={"fact": fact})
    _, reward, terminated, _, info = env.step(f"{fact.value} \ud800")
    assert terminated and info["answer"] == f"{fact.value} \ufffd"
    import json

    json.dumps(info["messages"], ensure_ascii=False).encode("utf-8")  # writable as UTF-8


def test_the_environment_pickles_mid_episode(env, shared_world):
    import pickle

    fact = shared_world.facts("unseen")[1]
    env.reset(options={"fact": fact})
    env.step(call_text("hermes", fact.person, fact.attribute.value))
    copy = pickle.loads(pickle.dumps(env))
    assert copy.messages == env.messages and copy.world.content_hash == shared_world.content_hash
    _, reward, terminated, _, _ = copy.step(dialogs.answer(fact.person, fact.attribute, fact.value))
    assert terminated and reward == 1.0
    copy.close()


def test_async_vector_env_with_spawned_workers(shared_world):
    envs = gymnasium.make_vec(
        "itl/FactRecall-v0",
        num_envs=2,
        vectorization_mode="async",
        vector_kwargs={"context": "spawn"},
        world=shared_world.target,
        max_turns=2,
    )
    try:
        questions, infos = envs.reset(seed=[0, 1])
        assert all(dialogs.parse_question(q) is not None for q in questions)
        people = [dialogs.parse_question(q)[0] for q in questions]
        attributes = [dialogs.parse_question(q)[1].value for q in questions]
        actions = tuple(call_text("hermes", p, a) for p, a in zip(people, attributes, strict=True))
        observations, rewards, terminated, truncated, _ = envs.step(actions)
        by_name = shared_world.by_name
        assert list(observations) == [by_name[p][a] for p, a in zip(people, attributes, strict=True)]
        answers = tuple(f"It is {o}, naïvely — 答え." for o in observations)
        _, rewards, terminated, _, _ = envs.step(answers)
        assert list(rewards) == [1.0, 1.0] and all(terminated)
    finally:
        envs.close()


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("```python\nprint(lookup('Ana', 'occupation'))\n```", "code"),
        ("import sqlite3\nsqlite3.connect('people.db')", "code"),
        ('{"name": "lookup", "arguments": {}}', "code"),
        ("I will call lookup(name='Ana Silva', attribute='occupation').", "call of lookup"),
        ('Calling {"name" : "lookup"} now', "call of lookup"),
    ],
)
@pytest.mark.parametrize("fmt", ["hermes", "find"])
def test_reprompt_answers_a_reply_that_is_neither_call_nor_answer_with_an_error_turn(shared_world, reply, why, fmt):
    """STE's trial protocol (reprompt=True): such a reply is told what is wrong and how to reply, and the episode
    goes on (until max_turns, then truncated); without reprompt it is the final answer, as before."""
    fact = shared_world.facts("train")[2]
    env = ToolUseEnv(shared_world, max_turns=2, reprompt=True, tool_format=fmt)
    env.reset(seed=0, options={"fact": fact})
    observation, reward, terminated, truncated, info = env.step(reply)
    assert why in observation and get_format(fmt).shape in observation
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert info["messages"][-1] == {"role": "tool", "name": "error", "content": observation}
    _, reward, terminated, _, info = env.step(call_text(fmt, fact.person, fact.attribute.value))  # a call: runs
    assert info["tool_results"] == [{"name": "lookup", "ok": True, "content": fact.value}]
    last = ToolUseEnv(shared_world, max_turns=1, reprompt=True)
    last.reset(seed=0, options={"fact": fact})
    assert last.step(reply)[2:4] == (False, True)  # no turn left: truncated, never scored
    plain = ToolUseEnv(shared_world, max_turns=2, tool_format=fmt)
    plain.reset(seed=0, options={"fact": fact})
    assert plain.step(reply)[2] is True  # without reprompt: the final answer


@pytest.mark.parametrize("answer", ["Ana Silva works as a chemist.", "From 1990 on she lived in Lima.", "No idea."])
def test_reprompt_takes_a_plain_answer_as_the_answer(shared_world, answer):
    env = ToolUseEnv(shared_world, reprompt=True)
    env.reset(seed=0)
    assert env.step(answer)[2] is True
