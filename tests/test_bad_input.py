"""Hostile and broken model output: every bad action becomes an error observation or a truncation,
the rest of the batch finishes correctly, and the world database is never modified."""

from __future__ import annotations

import json

import pytest

from itl_env import dialogs
from itl_env.env import ToolUseEnv, fact_registry
from itl_env.oracle import OraclePolicy
from itl_env.rollout import read_records, rollout
from itl_env.world import World, WorldSpec, build_world

MAX_TURNS = 3
INJECTIONS = ["x'; DROP TABLE people; --", "' OR '1'='1", 'Robert"); DELETE FROM people; --', "%", "*"]
FOREIGN_NAMES = ["Zoë Ærøskøbing", "李小龙", "Ελένη Παπαδοπούλου", "Đặng Thị Ngọc Hân", "😀 \u202e\u0000"]
ENUM_ERROR = "attribute: Input should be 'birth_date', 'birth_place', 'current_address' or 'occupation'"


def hermes_call(name: str, arguments: object) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + "</tool_call>"


def lookup_call(name: object, attribute: object = "birth_place", **extra: object) -> str:
    return hermes_call("lookup", {"name": name, "attribute": attribute, **extra})


# (bad assistant text, what every observation it gets contains: a fragment, or one of several)
HERMES_CASES: list[tuple[str, str | tuple[str, ...]]] = [
    (
        '<tool_call>{"name": "lookup", "arguments": {</tool_call>',
        "could not read tool call: tool call is not valid JSON",
    ),
    ("<tool_call>{'name': 'lookup'}</tool_call>", "could not read tool call: tool call is not valid JSON"),
    ('<tool_call>{"name": "lookup", "arguments": {"name": "Ana"}', "opened but never closed"),
    ('<tool_call>["lookup", "Ana"]</tool_call>', "must be a JSON object"),
    (hermes_call("drop_table", {"table": "people"}), "unknown tool 'drop_table'; valid tools: lookup"),
    (hermes_call("lookup", {"name": "Ana Silva"}), "attribute: Field required"),
    (hermes_call("lookup", {}), "name: Field required; attribute: Field required"),
    (lookup_call("Ana Silva", sql="DROP TABLE people"), "sql: Extra inputs are not permitted"),
    (lookup_call(12345), "name: Input should be a valid string"),
    (lookup_call(["Ana", "Silva"]), "name: Input should be a valid string"),
    (lookup_call("Ana Silva", "salary"), ENUM_ERROR),
    (lookup_call("Ana Silva", "name FROM people; DROP TABLE people; --"), ENUM_ERROR),
    (hermes_call("lookup", "not an object"), "arguments must be a JSON object, got str"),
    *[(lookup_call(name), "no person named") for name in INJECTIONS],
    *[(lookup_call(name), "no person named") for name in FOREIGN_NAMES],
    (lookup_call("x" * 100_000), "exceeds the limit of 8192; nothing was run"),
    ("A" * 1_000_000, "message of 1000000 characters exceeds the limit of 8192; nothing was run"),
    (lookup_call("Nobody Known") * 50, ("no person named 'Nobody Known'", "too many tool calls in one message")),
    ("<tool_call>" + "[" * 5000 + "</tool_call>", "too deeply nested"),
    ('<tool_call>{"name": "lookup", "arguments": {"name": ' + "9" * 5000 + "}}</tool_call>", "not valid JSON"),
]

FIND_CASES: list[tuple[str, str | tuple[str, ...]]] = [
    (f"```sql\nFIND birth_place FOR {INJECTIONS[0]}\n```", "no person named"),
    (f"```sql\nFIND birth_place FOR {INJECTIONS[1]}\n```", "no person named"),
    ("```sql\nFIND birth_place; DROP TABLE people; -- FOR Ana Silva\n```", "expected 'FIND <attribute> FOR"),
    ("```sql\nFIND sqlite_master FOR Ana Silva\n```", ENUM_ERROR),
    ("```sql\nSELECT * FROM people\n```", "expected 'FIND <attribute> FOR <full name>'"),
    ("```sql\nFIND birth_place FOR Ana", "never closed"),
    (f"```sql\nFIND occupation FOR {FOREIGN_NAMES[1]}\n```", "no person named"),
    ("```sql\nFIND occupation FOR " + "x" * 100_000 + "\n```", "exceeds the limit of 8192"),
]


class ScriptedPolicy:
    """Says ``scripts[person]`` every turn to the people it has a script for; the oracle plays everyone else."""

    def __init__(self, world: World, scripts: dict[str, str], tool_format: str):
        self.oracle = OraclePolicy(world, "in_tool", tool_format)
        self.scripts = scripts

    def generate(self, conversations):
        replies = []
        for messages in conversations:
            name, _ = dialogs.parse_question(messages[0]["content"])
            replies.append(self.scripts.get(name) or self.oracle.reply(messages))
        return replies


def endless_calls(world: World, person: str, tool_format: str) -> str:
    """A valid lookup, sent again and again: the policy never answers."""
    oracle = OraclePolicy(world, "in_tool", tool_format)
    return oracle.reply([{"role": "user", "content": dialogs.question(person, next(iter(dialogs.QUESTIONS)))}])


@pytest.fixture
def crowd(tmp_path):
    """A world with enough training people to put a good person between every two bad ones."""
    built = build_world(WorldSpec(seed=1, people=2 * len(HERMES_CASES) + 4, unseen_people=2), tmp_path / "crowd.db")
    yield built
    built.close()


@pytest.mark.parametrize(("tool_format", "cases"), [("hermes", HERMES_CASES), ("find", FIND_CASES)])
def test_bad_actions_in_a_batch(crowd, tmp_path, file_sha256, tool_format, cases):
    world = crowd
    db = tmp_path / "crowd.db"
    before = file_sha256(db)
    people = [row["name"] for row in world.people("train")]
    assert len(people) >= 2 * (len(cases) + 1), "the world needs a good person between every two bad ones"
    bad_people = people[::2][: len(cases) + 1]  # interleaved with good people, so every batch mixes both
    scripts = {person: text for person, (text, _) in zip(bad_people, cases, strict=False)}
    endless = bad_people[len(cases)]
    scripts[endless] = endless_calls(world, endless, tool_format)
    expected = {person: fragment for person, (_, fragment) in zip(bad_people, cases, strict=False)}

    result = rollout(
        ScriptedPolicy(world, scripts, tool_format),
        lambda: ToolUseEnv(world, tool_format=tool_format, max_turns=MAX_TURNS),
        world.facts("train"),
        mode="in_tool",
        batch_size=16,
        keep_conversations=True,
        progress=False,
    )

    assert len(result.records) == len(world.facts("train"))
    for record, conversation in zip(result.records, result.conversations, strict=True):
        if record.person not in scripts:
            assert record.correct and not record.truncated, record
            continue
        assert not record.correct and record.truncated and record.turns == MAX_TURNS, record
        observations = [m["content"] for m in conversation if m["role"] == "tool"]
        assert observations, record
        if record.person == endless:
            assert set(observations) == {world.by_name[endless]["birth_date"]}
        else:
            fragments = expected[record.person]
            fragments = (fragments,) if isinstance(fragments, str) else fragments
            assert all(any(f in o for f in fragments) for o in observations), (record.person, observations[:2])
            assert all(len(o) < 2000 for o in observations)
    assert file_sha256(db) == before
    assert World.open(db).content_hash == world.content_hash


REGISTRY_CASES: list[tuple[object, object, str]] = [
    ("lookup", '{"name": "Ana", "attribute": ', "are not valid JSON"),
    ("lookup", "[" * 3000, "are not valid JSON"),
    ("drop_table", {"table": "people"}, "unknown tool 'drop_table'; valid tools: lookup"),
    ("lookup", {"name": "Ana Silva"}, "attribute: Field required"),
    ("lookup", {"name": "Ana Silva", "attribute": "occupation", "limit": 1}, "limit: Extra inputs are not permitted"),
    ("lookup", {"name": None, "attribute": "occupation"}, "name: Input should be a valid string"),
    ("lookup", {"name": "Ana Silva", "attribute": "id"}, ENUM_ERROR),
    ("lookup", {"name": "x" * 100_000, "attribute": "occupation"}, "more than 4096 characters"),
    ("lookup", json.dumps({"name": "x" * 100_000, "attribute": "occupation"}), "the limit is 4096"),
    ("lookup", ["Ana Silva", "occupation"], "must be a JSON object"),
    *[("lookup", {"name": name, "attribute": "occupation"}, "no person named") for name in INJECTIONS],
    *[("lookup", {"name": name, "attribute": "birth_date"}, "no person named") for name in FOREIGN_NAMES],
]


@pytest.mark.parametrize(("tool_name", "arguments", "fragment"), REGISTRY_CASES)
def test_bad_calls_to_the_registry(world, tmp_path, file_sha256, tool_name, arguments, fragment):
    before = file_sha256(tmp_path / "world.db")
    result = fact_registry(world).call(tool_name, arguments)
    assert not result.ok
    assert fragment in result.content
    assert len(result.content) < 2000
    assert file_sha256(tmp_path / "world.db") == before


def test_injection_names_leave_every_row_readable(world, tmp_path, file_sha256):
    before = file_sha256(tmp_path / "world.db")
    registry = fact_registry(world)
    for name in INJECTIONS:
        registry.call("lookup", {"name": name, "attribute": "occupation"})
    for row in world.people("train"):
        assert registry.call("lookup", {"name": row["name"], "attribute": "occupation"}).content == row["occupation"]
    assert file_sha256(tmp_path / "world.db") == before


def test_oversized_argument_reaches_the_registry_limit(world):
    """With a generous action limit, a 100 kB argument is parsed and then refused by the registry."""
    env = ToolUseEnv(world, max_action_chars=2_000_000)
    env.reset(seed=0)
    observation, _, terminated, truncated, _ = env.step(lookup_call("x" * 100_000))
    assert observation == "arguments for lookup hold more than 4096 characters of text, the limit"
    assert (terminated, truncated) == (False, False)


def test_megabyte_action_is_parsed_without_harm(world):
    env = ToolUseEnv(world, max_action_chars=2_000_000)
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step("<tool_call>" * 100_000)
    assert "opened but never closed" in info["parse_errors"][0] and not terminated and reward == 0.0


def test_lone_surrogates_in_model_output_leave_records_and_the_batch_intact(crowd, tmp_path, file_sha256):
    """A model that writes "\\ud800" (in an answer, a tool call argument, a tool name) cannot break the records."""
    world = crowd
    before = file_sha256(tmp_path / "crowd.db")
    people = [row["name"] for row in world.people("train")]
    scripts = {
        people[0]: "The answer is \ud800.",
        people[2]: hermes_call("lookup", {"name": "Ana \udfff", "attribute": "occupation"}),
        people[4]: hermes_call("look\ud83dup", {}),
    }
    out = tmp_path / "records.jsonl"
    result = rollout(
        ScriptedPolicy(world, scripts, "hermes"),
        lambda: ToolUseEnv(world, max_turns=MAX_TURNS),
        world.facts("train"),
        mode="in_tool",
        batch_size=8,
        out=out,
        progress=False,
    )
    written = read_records(out)
    assert len(written) == len(world.facts("train")) == len(result.records)
    by_person = {r.person: r for r in written if r.person in scripts}
    assert by_person[people[0]].answer == "The answer is \ufffd." and not by_person[people[0]].correct
    assert by_person[people[2]].tool_result.startswith("no person named 'Ana \ufffd'")
    assert by_person[people[4]].tool_name == "look\ufffdup"
    assert all(r.correct for r in written if r.person not in scripts)
    assert file_sha256(tmp_path / "crowd.db") == before


class HangingTools:
    """A registry of tools that misbehave at run time: hang, return 10 MB, raise unprintable errors."""

    @staticmethod
    def registry():
        from tools import ToolRegistry, tool

        @tool
        def hang(seconds: float) -> str:
            """Sleep.

            Args:
                seconds: How long.
            """
            import time

            time.sleep(seconds)
            return "woke"

        @tool
        def flood() -> str:
            """Return ten million characters."""
            return "x" * 10_000_000

        return ToolRegistry([hang, flood], timeout_s=0.5)


def test_a_hanging_or_flooding_tool_ends_neither_the_episode_nor_the_batch(world):
    env = ToolUseEnv(world, registry=HangingTools.registry(), max_turns=3)
    env.reset(seed=0)
    observation, _, terminated, truncated, _ = env.step(hermes_call("hang", {"seconds": 60}))
    assert observation == "hang did not finish within 0.5 s" and not (terminated or truncated)
    observation, _, _, _, _ = env.step(hermes_call("flood", {}))
    assert len(observation) <= 8192 and observation.endswith("[cut: 10,000,000 characters; the first 8,136 are shown]")
    assert env.observation_space.contains(observation)
