"""The fact store: schema and engines. The only module that knows which database is underneath.

A world is a ``people`` table (one row per person: name, split and one column per attribute)
plus a ``world_meta`` table (the generating spec and a content hash). A target is a filesystem
path (SQLite) or any SQLAlchemy URL. SQLite files are written to a temporary file and renamed
into place, so an interrupted write never leaves a half-written world; other databases are
written in one transaction.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, Text, create_engine, event, inspect, select
from sqlalchemy.exc import DatabaseError

from tools.facts import PEOPLE_TABLE, Attribute

metadata = MetaData()
people = Table(
    PEOPLE_TABLE,
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("split", String(16), nullable=False, index=True),
    *(Column(attribute.value, String(200), nullable=False) for attribute in Attribute),
)
world_meta = Table(
    "world_meta", metadata, Column("key", String(64), primary_key=True), Column("value", Text, nullable=False)
)


class NotAWorldError(ValueError):
    """The target exists but holds no ITL world."""


def to_url(target: str | os.PathLike[str]) -> str:
    """A SQLAlchemy URL for ``target``: URLs pass through, paths become SQLite files."""
    text = os.fspath(target)
    return text if "://" in text else f"sqlite:///{Path(text).resolve()}"


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL, or None for other databases and in-memory SQLite."""
    if not url.startswith("sqlite:///") or url in ("sqlite://", "sqlite:///:memory:"):
        return None
    return Path(url.removeprefix("sqlite:///").split("?", 1)[0])


def write_world(target: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]], meta: Mapping[str, Any]) -> str:
    """Write ``rows`` and ``meta`` as a new world at ``target`` (replacing any world there); returns its URL."""
    url = to_url(target)
    path = sqlite_path(url)
    if path is None:
        engine = create_engine(url)
        try:
            with engine.begin() as conn:
                metadata.drop_all(conn)
                metadata.create_all(conn)
                _insert(conn, rows, meta)
        finally:
            engine.dispose()
        return url
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    engine = create_engine(f"sqlite:///{tmp}")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=OFF")  # a temp file: durability comes from the rename
            conn.exec_driver_sql("PRAGMA synchronous=OFF")
            metadata.create_all(conn)
            _insert(conn, rows, meta)
        engine.dispose()
        os.replace(tmp, path)
    finally:
        engine.dispose()
        tmp.unlink(missing_ok=True)
    return url


def _insert(conn: Any, rows: Iterable[Mapping[str, Any]], meta: Mapping[str, Any]) -> None:
    batch: list[Mapping[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == 10_000:
            conn.execute(people.insert(), batch)
            batch = []
    if batch:
        conn.execute(people.insert(), batch)
    conn.execute(world_meta.insert(), [{"key": k, "value": json.dumps(v)} for k, v in meta.items()])


def read_only_engine(target: str | os.PathLike[str]) -> Engine:
    """An engine that cannot modify the world (SQLite ``mode=ro``; PostgreSQL read-only sessions)."""
    url = to_url(target)
    path = sqlite_path(url)
    if path is not None:
        if not path.is_file():
            raise FileNotFoundError(f"no world file at {path}; create one with: python -m itl_env.world --out {path}")
        # check_same_thread off: the connection is read-only, so sharing it across threads is safe
        return create_engine(f"sqlite:///file:{path}?mode=ro&uri=true", connect_args={"check_same_thread": False})
    engine = create_engine(url)
    if engine.dialect.name == "postgresql":

        @event.listens_for(engine, "connect")
        def _read_only(dbapi_conn: Any, _record: Any) -> None:
            with dbapi_conn.cursor() as cursor:
                cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")

    return engine


def read_world(engine: Engine) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(meta, people rows in id order) of the world behind ``engine``."""
    try:
        tables = set(inspect(engine).get_table_names())
    except DatabaseError as err:
        raise NotAWorldError(f"{engine.url!r} is not a readable database: {err.orig}") from err
    if not {PEOPLE_TABLE, "world_meta"} <= tables:
        raise NotAWorldError(f"{engine.url!r} is not an ITL world (tables found: {sorted(tables) or 'none'})")
    with engine.connect() as conn:
        meta = {key: json.loads(value) for key, value in conn.execute(select(world_meta.c.key, world_meta.c.value))}
        rows = [dict(row._mapping) for row in conn.execute(select(people).order_by(people.c.id))]
    return meta, rows
