"""The fact world: seeded generation, the unseen split, dependence on last names, the SQLite store, the CLI."""

from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from itl_env import store
from itl_env.store import Attribute
from itl_env.world import (
    ATTRIBUTE_ATOMS,
    World,
    WorldSpec,
    _from_last_name,
    atoms,
    build_world,
    ensure_world,
    generate_people,
)
from itl_env.world import content_hash as rows_hash

REPO = Path(__file__).resolve().parents[1]


def first_name(row: dict) -> str:
    return row["name"].split(" ", 1)[0]


def last_name(row: dict) -> str:
    return row["name"].split(" ", 1)[1]


def facts_of(row: dict) -> tuple[str, ...]:
    return tuple(row[a.value] for a in Attribute)


# --- atom lists -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "minimum"),
    [("first_names", 400), ("last_names", 380), ("cities", 200), ("occupations", 100), ("unseen_first_names", 400)],
)
def test_atom_list_sizes(kind, minimum):
    values = atoms(kind)
    assert len(values) >= minimum
    assert len(set(values)) == len(values), f"{kind} has duplicates"


def test_unseen_first_names_disjoint_from_training_first_names():
    assert set(atoms("first_names")).isdisjoint(atoms("unseen_first_names"))


def test_atoms_are_single_tokens_of_a_name():
    for kind in ("first_names", "last_names", "unseen_first_names"):
        assert all(v == v.strip() and " " not in v for v in atoms(kind)), kind


# --- generation -----------------------------------------------------------------------------------


def test_same_spec_gives_same_content_hash(tmp_path):
    spec = WorldSpec(seed=5, people=50, unseen_people=10)
    first = build_world(spec, tmp_path / "a.db")
    second = build_world(spec, tmp_path / "b.db")
    assert first.content_hash == second.content_hash
    assert first.rows == second.rows


def test_different_seed_gives_different_world():
    spec_a, spec_b = WorldSpec(seed=0, people=50, unseen_people=10), WorldSpec(seed=1, people=50, unseen_people=10)
    a, b = generate_people(spec_a), generate_people(spec_b)
    assert rows_hash(spec_a, a) != rows_hash(spec_b, b)
    assert [r["name"] for r in a] != [r["name"] for r in b]


def test_stored_hash_matches_content(world):
    assert world.content_hash == rows_hash(world.spec, world.rows)


def test_four_facts_per_person(world, world_spec):
    train, unseen = world.facts("train"), world.facts("unseen")
    assert len(train) == 4 * world_spec.people and len(unseen) == 4 * world_spec.unseen_people
    per_person = defaultdict(set)
    for fact in train + unseen:
        per_person[fact.person].add(fact.attribute)
    assert all(attributes == set(Attribute) for attributes in per_person.values())
    assert len({f.id for f in train + unseen}) == len(train) + len(unseen)


def test_fact_values_come_from_the_row(world):
    for fact in world.facts("unseen"):
        assert world.by_name[fact.person][fact.attribute.value] == fact.value
        assert fact.split == "unseen"


def test_names_are_unique():
    rows = generate_people(WorldSpec(seed=0, people=5000, unseen_people=2000))
    names = [r["name"] for r in rows]
    assert len(set(names)) == len(names)


def test_splits_and_ids():
    rows = generate_people(WorldSpec(seed=0, people=30, unseen_people=7))
    assert [r["id"] for r in rows] == list(range(37))
    assert [r["split"] for r in rows] == ["train"] * 30 + ["unseen"] * 7


def test_unseen_first_names_never_used_for_training_people():
    rows = generate_people(WorldSpec(seed=0, people=3000, unseen_people=3000))
    train_first = {first_name(r) for r in rows if r["split"] == "train"}
    unseen_first = {first_name(r) for r in rows if r["split"] == "unseen"}
    assert train_first <= set(atoms("first_names"))
    assert unseen_first <= set(atoms("unseen_first_names"))
    assert train_first.isdisjoint(unseen_first)


def test_unseen_draws_independent_of_training_draws():
    """Unseen person i must not mirror training person i (the reference implementation reused the stream)."""
    n = 3000
    rows = generate_people(WorldSpec(seed=0, people=n, unseen_people=n))
    train, unseen = rows[:n], rows[n:]
    equal = sum(t[a.value] == u[a.value] for t, u in zip(train, unseen, strict=True) for a in Attribute)
    # chance agreement of independent draws, from the two splits' own value frequencies
    expected = 0.0
    for a in Attribute:
        left, right = Counter(r[a.value] for r in train), Counter(r[a.value] for r in unseen)
        expected += n * sum(left[v] * right[v] for v in left) / (n * n)
    assert abs(equal - expected) < 5 * math.sqrt(expected) + 1, (equal, expected)
    assert not any(facts_of(t) == facts_of(u) for t, u in zip(train, unseen, strict=True))
    assert sum(last_name(t) == last_name(u) for t, u in zip(train, unseen, strict=True)) < 0.02 * n


def people_by_last_name(rows: list[dict]) -> dict[str, list[tuple[str, ...]]]:
    groups = defaultdict(list)
    for row in rows:
        groups[last_name(row)].append(facts_of(row))
    return groups


def test_alpha_zero_makes_facts_a_function_of_the_last_name():
    rows = generate_people(WorldSpec(seed=0, people=3000, unseen_people=200, alpha=0.0))
    groups = people_by_last_name(rows)
    assert sum(len(g) >= 2 for g in groups.values()) > 100  # many people share a last name...
    assert all(len(set(g)) == 1 for g in groups.values())  # ...and then all their facts
    assert all(row[a.value] == _from_last_name(last_name(row), a) for row in rows for a in Attribute)


def test_alpha_one_facts_do_not_follow_the_last_name():
    rows = generate_people(WorldSpec(seed=0, people=3000, unseen_people=0, alpha=1.0))
    shared = [g for g in people_by_last_name(rows).values() if len(g) >= 2]
    assert len(shared) > 100
    assert all(len(set(g)) == len(g) for g in shared)
    dependent = sum(row[a.value] == _from_last_name(last_name(row), a) for row in rows for a in Attribute)
    assert dependent < 0.02 * 4 * len(rows)


def test_half_alpha_makes_about_half_the_facts_dependent():
    rows = generate_people(WorldSpec(seed=0, people=2000, unseen_people=0, alpha=0.5))
    dependent = sum(row[a.value] == _from_last_name(last_name(row), a) for row in rows for a in Attribute)
    assert 0.45 < dependent / (4 * len(rows)) < 0.55


def test_categorical_values_come_from_the_atom_lists():
    rows = generate_people(WorldSpec(seed=0, people=500, unseen_people=100, alpha=0.3))
    for attribute, kind in ATTRIBUTE_ATOMS.items():
        assert {r[attribute.value] for r in rows} <= set(atoms(kind))


def test_birth_dates_are_month_day_year_without_leading_zeros():
    rows = generate_people(WorldSpec(seed=0, people=500, unseen_people=0))
    for row in rows:
        month, day, year = row["birth_date"].split("/")
        assert not month.startswith("0") and not day.startswith("0")
        assert 1 <= int(month) <= 12 and 1 <= int(day) <= 31 and 1940 <= int(year) <= 2005


def test_too_many_people_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"10000000 train people requested but only \d+ distinct names exist"):
        build_world(WorldSpec(people=10_000_000, unseen_people=0), tmp_path / "big.db")
    assert not (tmp_path / "big.db").exists()


def test_invalid_spec_is_rejected():
    with pytest.raises(ValueError):
        WorldSpec(people=10, alpha=1.5)
    with pytest.raises(ValueError):
        WorldSpec(people=10, colour="red")


# --- store ----------------------------------------------------------------------------------------


class Interrupted(RuntimeError):
    pass


def rows_then_interrupt(rows: list[dict], after: int):
    for i, row in enumerate(rows):
        if i == after:
            raise Interrupted(f"interrupted after {after} rows")
        yield row


def test_interrupted_write_leaves_no_file(tmp_path):
    rows = generate_people(WorldSpec(people=30_000, unseen_people=0))
    with pytest.raises(Interrupted):
        store.write_world(tmp_path / "world.db", rows_then_interrupt(rows, 25_000), {"spec": {}})
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_keeps_the_existing_world(world, tmp_path, file_sha256):
    target = tmp_path / "world.db"
    before = file_sha256(target)
    rows = generate_people(WorldSpec(seed=9, people=30_000, unseen_people=0))
    with pytest.raises(Interrupted):
        store.write_world(target, rows_then_interrupt(rows, 25_000), {"spec": {}}, force=True)
    assert file_sha256(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world.db"]
    assert World.open(target).content_hash == world.content_hash


def test_rebuild_replaces_a_world_only_with_force(world, tmp_path, file_sha256):
    before = file_sha256(tmp_path / "world.db")
    with pytest.raises(store.WorldExistsError, match="already exists; pass --force"):
        build_world(WorldSpec(seed=3, people=10, unseen_people=2), tmp_path / "world.db")
    assert file_sha256(tmp_path / "world.db") == before
    rebuilt = build_world(WorldSpec(seed=3, people=10, unseen_people=2), tmp_path / "world.db", force=True)
    assert rebuilt.spec.seed == 3 and len(rebuilt.rows) == 12
    assert World.open(tmp_path / "world.db").content_hash == rebuilt.content_hash


def test_read_only_engine_refuses_insert(world, tmp_path, file_sha256):
    before = file_sha256(tmp_path / "world.db")
    with pytest.raises(OperationalError, match="readonly"), world.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO people (id, name, split, birth_date, birth_place, current_address, occupation) "
                "VALUES (9999, 'Eve Intruder', 'train', '1/1/1970', 'France', 'Lyon', 'spy')"
            )
        )
    with pytest.raises(OperationalError, match="readonly"), world.engine.begin() as conn:
        conn.execute(text("DROP TABLE people"))
    assert file_sha256(tmp_path / "world.db") == before


def test_non_world_sqlite_file_is_not_a_world(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER)")
    with pytest.raises(store.NotAWorldError, match=r"not an ITL world \(tables found: \['orders'\]\)"):
        World.open(path)


def test_garbage_file_is_not_a_world(tmp_path):
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a database at all; " * 200)
    with pytest.raises(store.NotAWorldError, match="not a readable database"):
        World.open(path)


def test_missing_file_says_how_to_create_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m itl_env.world"):
        World.open(tmp_path / "missing.db")


def test_ensure_world_reuses_a_matching_world(world, world_spec, tmp_path, file_sha256):
    before = file_sha256(tmp_path / "world.db")
    again = ensure_world(world_spec, tmp_path / "world.db")
    assert again.content_hash == world.content_hash
    assert file_sha256(tmp_path / "world.db") == before


def test_ensure_world_builds_a_missing_world(tmp_path, world_spec):
    built = ensure_world(world_spec, tmp_path / "new" / "world.db")
    assert built.spec == world_spec and len(built.rows) == world_spec.people + world_spec.unseen_people


def test_ensure_world_refuses_a_world_of_another_spec(world, tmp_path, file_sha256):
    before = file_sha256(tmp_path / "world.db")
    with pytest.raises(ValueError, match="was generated from"):
        ensure_world(WorldSpec(seed=1, people=20, unseen_people=3), tmp_path / "world.db")
    assert file_sha256(tmp_path / "world.db") == before


def test_ensure_world_leaves_a_garbage_file_untouched(tmp_path, world_spec):
    path = tmp_path / "world.db"
    path.write_bytes(b"garbage" * 100)
    with pytest.raises(store.NotAWorldError, match="left untouched"):
        ensure_world(world_spec, path)
    assert path.read_bytes() == b"garbage" * 100


def test_to_dataset_round_trip(world):
    assert world.to_dataset().to_list() == world.rows
    unseen = world.to_dataset("unseen")
    assert unseen.to_list() == world.people("unseen")
    assert unseen.column_names == ["id", "name", "split", *(a.value for a in Attribute)]


def test_people_index_looks_up_values(world):
    row = world.people("unseen")[3]
    for attribute in Attribute:
        assert world.index.value(row["name"], attribute) == row[attribute.value]
    assert world.index.value("Nobody Atall", Attribute.occupation) is None


# --- CLI ------------------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "itl_env.world", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_cli_writes_a_world(tmp_path):
    out = tmp_path / "cli" / "world.db"
    done = run_cli("--people", "1000", "--unseen-people", "50", "--seed", "2", "--out", str(out))
    assert done.returncode == 0, done.stderr
    written = World.open(out)
    assert written.spec == WorldSpec(seed=2, people=1000, unseen_people=50)
    assert written.content_hash == rows_hash(written.spec, generate_people(written.spec))
    assert "1050 people (50 unseen), 4200 facts" in done.stderr


def test_cli_too_many_people_is_a_usage_error(tmp_path):
    done = run_cli("--people", "10000000", "--out", str(tmp_path / "w.db"))
    assert done.returncode == 2
    assert "distinct names exist" in done.stderr
    assert not (tmp_path / "w.db").exists()


@pytest.mark.parametrize("target", ["{tmp}/a-file/world.db", "nosuchdialect://host/db"])
def test_cli_unwritable_target_is_a_one_line_error(tmp_path, target):
    (tmp_path / "a-file").write_text("not a folder")
    done = run_cli("--people", "5", "--out", target.format(tmp=tmp_path))
    assert done.returncode == 1
    assert "cannot write a world to" in done.stderr and "Traceback" not in done.stderr


# --- hardening: every world file is verified, nothing is overwritten, a path is never a URI -------------


def tamper(path: Path, sql: str, *params: object) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(sql, params)


def test_a_tampered_row_is_refused_when_opened(world, tmp_path):
    target = tmp_path / "world.db"
    person = world.rows[3]
    tamper(target, "UPDATE people SET occupation = 'astronaut' WHERE id = ?", person["id"])
    with pytest.raises(store.NotAWorldError, match="was modified after it was generated"):
        World.open(target)


def test_a_stored_spec_that_disagrees_with_the_rows_is_refused(world, tmp_path):
    target = tmp_path / "world.db"
    tamper(
        target,
        "UPDATE world_meta SET value = ? WHERE key = 'spec'",
        '{"seed": 0, "people": 41, "unseen_people": 12, "alpha": 1.0}',
    )
    with pytest.raises(
        store.NotAWorldError, match="the stored spec says 41 training and 12 unseen people, the table holds 40"
    ):
        World.open(target)
    tamper(
        target,
        "UPDATE world_meta SET value = ? WHERE key = 'spec'",
        '{"seed": 5, "people": 40, "unseen_people": 12, "alpha": 1.0}',
    )
    with pytest.raises(store.NotAWorldError, match="was modified after it was generated"):
        World.open(target)  # same counts, another spec: the hash covers the spec too


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("DELETE FROM world_meta WHERE key = 'content_hash'", "the world metadata lacks 'content_hash'"),
        ("DELETE FROM world_meta", "lacks 'spec', 'content_hash', 'schema'"),
        ("UPDATE world_meta SET value = '{not json' WHERE key = 'spec'", "world metadata 'spec' is not valid JSON"),
        ("UPDATE world_meta SET value = '[1, 2]' WHERE key = 'spec'", "the stored spec is not valid"),
        ("UPDATE world_meta SET value = '{\"people\": -4}' WHERE key = 'spec'", "the stored spec is not valid (people"),
        ("UPDATE world_meta SET value = '1' WHERE key = 'schema'", "world schema 1, this version reads schema 2"),
        ("DROP TABLE world_meta", "is not an ITL world"),
        ("ALTER TABLE people DROP COLUMN occupation", "the people table lacks the columns ['occupation']"),
    ],
)
def test_missing_or_malformed_metadata_is_one_clear_error(world, tmp_path, sql, message):
    target = tmp_path / "world.db"
    tamper(target, sql)
    with pytest.raises(store.NotAWorldError, match=re_escape(message)):
        World.open(target)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


@pytest.mark.parametrize("name", ["a?b.db", "a#b.db", "100%.db", "with space.db", "q?mode=rw.db", "%3F.db", "x:y.db"])
def test_file_names_with_uri_characters_name_exactly_that_file(tmp_path, name):
    spec = WorldSpec(seed=1, people=5, unseen_people=1)
    neighbour = tmp_path / "a"  # what a URI reading of "a?b.db" would open
    neighbour.write_text("unrelated")
    built = build_world(spec, tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a", name])
    assert neighbour.read_text() == "unrelated"
    assert World.open(tmp_path / name).content_hash == built.content_hash
    assert built.index.value(built.rows[0]["name"], Attribute.occupation) == built.rows[0]["occupation"]
    built.close()


def test_a_file_at_the_target_is_never_replaced_without_force(tmp_path, file_sha256):
    target = tmp_path / "notes.db"
    target.write_text("my notes")
    with pytest.raises(store.WorldExistsError, match="already exists; pass --force"):
        build_world(WorldSpec(people=3, unseen_people=0), target)
    assert target.read_text() == "my notes"
    done = run_cli("--people", "3", "--out", str(target))
    assert done.returncode == 1 and "already exists; pass --force" in done.stderr
    assert target.read_text() == "my notes"
    assert run_cli("--people", "3", "--out", str(target), "--force").returncode == 0
    assert World.open(target).spec.people == 3


@pytest.mark.parametrize("target", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_database_is_a_one_line_error(target):
    done = run_cli("--people", "3", "--out", target)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "in-memory SQLite database" in done.stderr


def test_sigterm_during_generation_leaves_no_temporary_file(tmp_path):
    import signal
    import time

    out = tmp_path / "big.db"
    process = subprocess.Popen(
        [sys.executable, "-m", "itl_env.world", "--people", "400000", "--unseen_people", "0", "--out", str(out)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".big.db.*.tmp")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    assert list(tmp_path.glob(".big.db.*.tmp")), "the writer never started"
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    assert process.returncode != 0
    assert list(tmp_path.iterdir()) == []


def test_a_world_pickles_as_its_path_and_is_verified_again(world, tmp_path):
    import pickle

    copy = pickle.loads(pickle.dumps(world))
    assert copy is not world and copy.target == world.target and copy.content_hash == world.content_hash
    tamper(tmp_path / "world.db", "UPDATE people SET name = 'Someone Else' WHERE id = 0")
    with pytest.raises(store.NotAWorldError, match="modified"):
        pickle.loads(pickle.dumps(world))
    copy.close()
