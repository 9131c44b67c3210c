"""Worlds on a real PostgreSQL server (started by the suite): the same surfaces as SQLite, read-only tool sessions,
reconnect after a restart, credentials never printed or stored, several worlds as schemas of one database."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from itl_env import store
from itl_env.fact_tools import fact_registry
from itl_env.store import drop_world, stored, world_at
from itl_env.world import World, WorldSpec, build_world

REPO = Path(__file__).resolve().parents[1]
SPEC = WorldSpec(seed=0, people=40, unseen_people=12)


def some_fact(world: World):
    return world.facts("train")[3]


def lookup(world: World, fact) -> object:
    return fact_registry(world).call("lookup", {"name": fact.person, "attribute": fact.attribute.value})


def test_the_same_world_on_both_stores(store_target):
    """Spec, rows and content hash do not depend on the store; lookups answer the same."""
    world = build_world(SPEC, store_target)
    try:
        fact = some_fact(world)
        assert lookup(world, fact).content == fact.value
        assert World.open(store_target).content_hash == world.content_hash
    finally:
        world.close()


def test_the_content_hash_does_not_depend_on_the_store(postgres_url, tmp_path):
    on_server, on_file = build_world(SPEC, postgres_url), build_world(SPEC, tmp_path / "w.db")
    assert on_server.content_hash == on_file.content_hash and on_server.rows == on_file.rows
    on_server.close(), on_file.close()


def test_the_tools_session_is_read_only_on_the_server(postgres_url):
    world = build_world(SPEC, postgres_url)
    try:
        with pytest.raises(sa.exc.InternalError, match="read-only transaction"):
            with world.engine.begin() as conn:
                conn.execute(sa.text("UPDATE people SET occupation = 'pirate'"))
        with pytest.raises(sa.exc.InternalError, match="read-only transaction"):
            with world.engine.begin() as conn:  # not even after a rolled-back transaction (SET would be undone)
                conn.execute(sa.text("DELETE FROM world_meta"))
        raw = world.index.engine.raw_connection()  # the connection the lookups use
        try:
            cursor = raw.cursor()
            with pytest.raises(Exception, match="read-only transaction"):
                cursor.execute("DROP TABLE people")
        finally:
            raw.close()
        assert World.open(postgres_url).content_hash == world.content_hash
    finally:
        world.close()


def test_lookups_survive_a_server_restart_and_say_when_it_is_down(postgres_server, postgres_url):
    world = build_world(SPEC, postgres_url)
    registry, fact = fact_registry(world), some_fact(world)
    try:
        assert lookup(world, fact).content == fact.value  # the lookup connection is open now
        postgres_server.stop()
        try:
            down = registry.call("lookup", {"name": fact.person, "attribute": fact.attribute.value})
            assert not down.ok and "the database is unreachable" in down.content
            assert fact.value not in down.content
        finally:
            postgres_server.start()
        again = registry.call("lookup", {"name": fact.person, "attribute": fact.attribute.value})
        assert again.ok and again.content == fact.value
        postgres_server.stop()  # a restart between two calls: the dropped connection is replaced, no error at all
        postgres_server.start()
        assert lookup(world, fact).content == fact.value
    finally:
        world.close()


def test_credentials_come_from_the_url_or_the_pg_environment(postgres_server, postgres_url, monkeypatch):
    build_world(SPEC, postgres_url).close()
    without = stored(postgres_url)
    assert ":s3cret" not in without and without.startswith("postgresql+psycopg://itl@")
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", "/nonexistent")
    with pytest.raises(Exception, match="password"):
        World.open(without)
    monkeypatch.setenv("PGPASSWORD", "s3cret-pw")
    World.open(without).close()


def test_the_password_is_never_printed_or_stored(postgres_url, tmp_path, caplog):
    from configs import record
    from configs.cli import configure_logging
    from evals.provenance import write_provenance

    caplog.set_level(logging.INFO)
    configure_logging()
    world = build_world(SPEC, postgres_url)
    try:
        assert "s3cret" not in repr(world)
        logging.getLogger("itl.test").info("world at %s", world.target)  # a log line naming the URL itself
        write_provenance(tmp_path, kind="sft", model="default", world=world)
        from evals.recall import RecallConfig

        record(tmp_path / "config.yaml", RecallConfig(world=postgres_url))
    finally:
        world.close()
    handler_output = "\n".join(h.format(r) for r in caplog.records for h in logging.getLogger().handlers[:1])
    assert "s3cret" not in handler_output and "***" in handler_output
    for written in ("run.json", "config.yaml"):
        text = (tmp_path / written).read_text()
        assert "s3cret" not in text and "itl@127.0.0.1" in text, written


def test_a_bad_server_url_is_one_line_without_the_password(postgres_server):
    wrong = postgres_server.url().replace("s3cret-pw", "not-the-pw-xyz")
    done = subprocess.run([sys.executable, "-m", "evals.recall", "--world", wrong, "--limit", "2"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "not-the-pw-xyz" not in done.stderr + done.stdout
    assert done.stderr.strip().splitlines()[-1].startswith("python -m evals.recall: error: ")


def test_the_world_command_writes_to_a_server_and_masks_the_password(postgres_url):
    done = subprocess.run([sys.executable, "-m", "itl_env.world", "--people", "10", "--unseen-people", "2",
                           "--out", postgres_url], cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "s3cret" not in done.stderr + done.stdout
    assert World.open(postgres_url).spec.people == 10


def test_worlds_as_schemas_of_one_database(postgres_url):
    a, b = world_at(postgres_url, "world-a"), world_at(postgres_url, "World B")
    first = build_world(SPEC, a)
    second = build_world(WorldSpec(seed=1, people=5, unseen_people=1), b)
    try:
        assert len(World.open(a).rows) == 52 and len(World.open(b).rows) == 6
        assert first.content_hash != second.content_hash
        assert store.holds_anything(a)
    finally:
        first.close(), second.close()
    drop_world(b)
    assert not store.holds_anything(b) and store.holds_anything(a)


def test_a_world_folder_is_a_folder_and_not_sqlite_url(tmp_path):
    assert world_at(tmp_path, "w") == str(tmp_path / "w.db")
    with pytest.raises(store.NotAWorldError, match="folder or in a PostgreSQL"):
        world_at("sqlite:///x.db", "w")


def test_the_environment_and_recall_on_a_server_world(postgres_url, tmp_path):
    """The Gymnasium contract and the recall command on a server world, as on a file."""
    import gymnasium
    from gymnasium.utils.env_checker import check_env

    import itl_env  # noqa: F401 (registers the environment)
    from evals.recall import RecallConfig, main

    build_world(SPEC, postgres_url).close()
    env = gymnasium.make("itl/FactRecall-v0", world=postgres_url, max_turns=3)
    check_env(env.unwrapped)
    env.close()
    summary = main(RecallConfig(world=postgres_url, limit=8, out=str(tmp_path / "recall"), progress=False))
    records = [json.loads(line) for line in (tmp_path / "recall" / "records-train.jsonl").read_text().splitlines()]
    assert len(records) == 8 and summary.split == "train"
    assert all("s3cret" not in p.read_text() for p in (tmp_path / "recall").iterdir() if p.is_file())


def test_mcp_over_stdio_on_a_server_world(postgres_url):
    import anyio
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    world = build_world(SPEC, postgres_url)
    fact = some_fact(world)
    world.close()

    async def ask() -> str:
        params = StdioServerParameters(command=sys.executable, args=["-m", "itl_env.serve_mcp", "--world", postgres_url],
                                       cwd=str(REPO))  # fmt: skip
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            result = await session.call_tool("lookup", {"name": fact.person, "attribute": fact.attribute.value})
            return result.content[0].text

    assert anyio.run(ask) == fact.value


@pytest.mark.slow
def test_sft_on_a_server_world(postgres_url, tmp_path):
    """A short in-tool SFT run on a server world: the run records the world without its password."""
    from trainers import sft

    build_world(WorldSpec(seed=0, people=30, unseen_people=8), postgres_url).close()
    cfg, training = sft.parse(["--world", postgres_url, "--max_steps", "3", "--eval_every", "0", "--final_eval_facts",
                               "8", "--output_dir", str(tmp_path / "run")])  # fmt: skip
    result = sft.main(cfg, training)
    assert result.train_recall >= 0.0
    for name in ("run.json", "config.yaml", "summary.json"):
        assert "s3cret" not in (tmp_path / "run" / name).read_text(), name


def test_a_counterfactual_copy_is_a_schema_beside_its_world(postgres_url):
    from evals.faithfulness import counterfactual_world, edited_facts

    world = build_world(SPEC, world_at(postgres_url, "base"))
    edited = counterfactual_world(world, postgres_url)
    try:
        assert "search_path" in edited.target and edited_facts(world, edited)
        again = counterfactual_world(world, postgres_url)  # built once, then reused
        assert again.content_hash == edited.content_hash
        again.close()
    finally:
        world.close(), edited.close()


@pytest.mark.slow
def test_the_memory_study_keeps_its_worlds_on_a_server(postgres_url, tmp_path):
    from studies.memory.__main__ import main, parse

    result = main(parse(["--preset", "tiny", "--out", str(tmp_path / "study"), "--workers", "0",
                         "--worlds", postgres_url]))  # fmt: skip
    assert result.out == str(tmp_path / "study")
    assert not list((tmp_path / "study").glob("worlds/*.db"))  # the worlds are schemas of the server database
    assert "s3cret" not in (tmp_path / "study" / "config.yaml").read_text()
    with sa.create_engine(postgres_url).connect() as conn:
        schemas = {row[0] for row in conn.execute(sa.text("SELECT schema_name FROM information_schema.schemata"))}
    assert any(s.startswith("world_s0_p") for s in schemas)
