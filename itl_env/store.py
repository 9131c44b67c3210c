"""The fact store: the people schema and the engines. The only module that knows which database is underneath.

A world is a ``people`` table (one row per person: name, split and one column per ``Attribute``)
plus a ``world_meta`` table (the generating spec, a content hash and the schema version). A
*target* is a filesystem path (a SQLite file) or, only when it starts with a scheme such as
``postgresql+psycopg://``, a SQLAlchemy URL: a path is never parsed as a URL, so file names with
``?``, ``#``, ``%`` or spaces name exactly that file. SQLite files are written to a temporary
file and renamed into place (removed on every exit path, SIGTERM included), so an interrupted
write never leaves a half-written world; other databases are written in one transaction. Nothing
is replaced unless ``force=True``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    create_engine,
    inspect,
    pool,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DatabaseError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)

from configs.cli import one_line, redact

SERVER_TIMEOUT_S = 5  # a server world's connect and statement timeouts: a lookup never waits longer (tools' is 10 s)
PEOPLE_TABLE = "people"
META_TABLE = "world_meta"


class Attribute(StrEnum):
    """The facts every person has: identifiers of the people table's columns (whitelisted, never user text)."""

    birth_date = "birth_date"
    birth_place = "birth_place"
    current_address = "current_address"
    occupation = "occupation"


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
    META_TABLE, metadata, Column("key", String(64), primary_key=True), Column("value", Text, nullable=False)
)


class NotAWorldError(ValueError):
    """The target holds no (valid) ITL world, or cannot hold one."""


class WorldExistsError(FileExistsError):
    """Something is already at the target and replacing it was not asked for."""


class StoreUnavailableError(ConnectionError):
    """The database server cannot be reached (down, restarting, refusing connections); a later call may succeed."""


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def is_url(target: str | os.PathLike[str]) -> bool:
    """Whether ``target`` is a database URL (it starts with a scheme); anything else is a file path."""
    return isinstance(target, str) and bool(_SCHEME.match(target))


def canonical(target: str | os.PathLike[str]) -> str:
    """``target`` as given for a URL, as an absolute path for a file (so it means the same from any directory)."""
    return target if is_url(target) else str(Path(target).expanduser().resolve())


def shown(target: str | os.PathLike[str]) -> str:
    """``target`` as it may be printed or logged: a URL's password replaced by ``***`` (``configs.redact``)."""
    return redact(str(target))


def stored(target: str | os.PathLike[str]) -> str:
    """``target`` as it may be written to a file (run.json, config.yaml): a URL without its password. Opened
    again, the password comes from the standard PG* environment variables or ``~/.pgpass``.
    """
    return redact(str(target), mask=None)


def sqlite_file(target: str | os.PathLike[str]) -> Path | None:
    """The SQLite file behind ``target``: the path itself, the file of a ``sqlite:///`` URL, or None."""
    if not is_url(target):
        return Path(canonical(target))
    url = _url(str(target))
    if url.get_backend_name() != "sqlite":
        return None
    if not url.database or url.database == ":memory:":
        raise NotAWorldError(
            f"{target!r} is an in-memory SQLite database, gone when this process ends: give a file path or a "
            "database server URL"
        )
    return Path(url.database).expanduser().resolve()


def _url(text: str) -> Any:
    try:
        return make_url(text)
    except ArgumentError as err:
        raise NotAWorldError(f"{text!r} is not a valid database URL: {err}") from err


def _sqlite_engine(path: Path, *, read_only: bool) -> Engine:
    # The file is opened through sqlite3 itself: a URI built with every special character percent-encoded
    # (a SQLAlchemy URL or a bare ``file:`` URI would read ``?``/``#``/``%`` in the name as URI syntax).
    uri = "file:" + urllib.parse.quote(str(path)) + ("?mode=ro" if read_only else "")

    def connect() -> sqlite3.Connection:
        # check_same_thread off: read-only connections are safe to share, and the writer uses one thread
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=SERVER_TIMEOUT_S)  # busy wait bound
        if read_only:  # pages read through a memory map, not a read() call each: a tenth off an indexed lookup
            conn.execute("PRAGMA mmap_size = 1073741824")
        return conn

    return create_engine("sqlite://", creator=connect, poolclass=pool.QueuePool)


def write_world(
    target: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]], meta: Mapping[str, Any], *, force: bool = False
) -> str:
    """Write ``rows`` and ``meta`` as a new world at ``target``; returns the canonical target.

    Refuses (``WorldExistsError``) when the target already holds a file or a world, unless ``force``.
    """
    path = sqlite_file(target)
    if path is None:
        return _write_server(str(target), rows, meta, force=force)
    if path.exists() and not force:
        raise WorldExistsError(f"{path} already exists; pass --force to replace it")
    if path.is_dir():
        raise WorldExistsError(f"{path} is a directory, not a world file")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with _terminate_as_exit():
        try:
            tmp.unlink(missing_ok=True)
            engine = _sqlite_engine(tmp, read_only=False)
            try:
                with engine.begin() as conn:
                    conn.exec_driver_sql("PRAGMA journal_mode=OFF")  # a temp file: durability comes from the rename
                    conn.exec_driver_sql("PRAGMA synchronous=OFF")
                    metadata.create_all(conn)
                    _insert(conn, rows, meta)
            finally:
                engine.dispose()
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return str(path)


def _write_server(url: str, rows: Iterable[Mapping[str, Any]], meta: Mapping[str, Any], *, force: bool) -> str:
    try:
        engine = create_engine(_url(url))
    except ModuleNotFoundError as err:
        raise NotAWorldError(f"cannot write to {shown(url)}: {_missing_driver(err)}") from err
    try:
        with engine.begin() as conn:
            schema = _search_path_schema(_url(url))
            if schema is not None:  # a world in its own schema (world_at): created on first write
                conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            present = set(inspect(conn).get_table_names()) & {PEOPLE_TABLE, META_TABLE}
            if present and not force:
                raise WorldExistsError(
                    f"{shown(url)} already holds tables {sorted(present)}; pass --force to replace them"
                )
            metadata.drop_all(conn)
            metadata.create_all(conn)
            _insert(conn, rows, meta)
    finally:
        engine.dispose()
    return url


@contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM raises SystemExit inside the block (its default action would kill the process before any cleanup)."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield  # a handler of the caller's (or no way to install one) stays in charge
        return

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


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


def holds_anything(target: str | os.PathLike[str]) -> bool:
    """Whether something is at ``target``: a file (of any kind) or a database with tables."""
    path = sqlite_file(target)
    if path is not None:
        return path.exists()
    engine = read_only_engine(target)
    schema = _search_path_schema(engine.url)
    try:
        inspector = inspect(engine)
        if schema is not None and not inspector.has_schema(schema):
            return False
        return bool(inspector.get_table_names(schema=schema))
    except SQLAlchemyError as err:
        raise StoreUnavailableError(f"cannot reach {shown(target)}: {one_line(err)}") from err
    finally:
        engine.dispose()


def read_only_engine(target: str | os.PathLike[str]) -> Engine:
    """An engine that cannot modify the world (SQLite ``mode=ro``; PostgreSQL read-only sessions)."""
    path = sqlite_file(target)
    if path is not None:
        if not path.is_file():
            raise FileNotFoundError(f"no world file at {path}; create one with: python -m itl_env.world --out {path}")
        return _sqlite_engine(path, read_only=True)
    url = _url(str(target))
    # PostgreSQL: every transaction of the session read-only from its start, set by the server at connection time
    # (a SET sent afterwards inside a transaction is undone by that transaction's rollback). pre-ping: a connection
    # a restarted server dropped is replaced at checkout instead of failing the next query.
    options = {}
    if _postgres(url):  # merged with the URL's own options (a world's schema: -csearch_path=...), not replacing them
        given = url.query.get("options", "")
        limits = f"-c default_transaction_read_only=on -c statement_timeout={SERVER_TIMEOUT_S * 1000}"
        options = {"connect_args": {"options": f"{given} {limits}".strip(), "connect_timeout": SERVER_TIMEOUT_S}}
    try:
        return create_engine(url, pool_pre_ping=True, **options)
    except SQLAlchemyError as err:  # an unknown dialect
        raise NotAWorldError(f"cannot open {shown(target)}: {err}") from err
    except ModuleNotFoundError as err:  # a dialect whose driver is not installed
        raise NotAWorldError(f"cannot open {shown(target)}: {_missing_driver(err)}") from err


def world_at(location: str | os.PathLike[str], name: str) -> str:
    """The target of the world called ``name`` under ``location``: ``<location>/<name>.db`` for a folder; for a
    PostgreSQL URL, the schema ``name`` of that database (``?options=-csearch_path=<name>``, created on write).
    """
    if not is_url(location):
        return str(Path(location) / f"{name}.db")
    url = _url(str(location))
    if not _postgres(url):
        raise NotAWorldError(f"{shown(location)}: worlds are kept in a folder or in a PostgreSQL database's schemas")
    schema = re.sub(r"[^a-z0-9_]", "_", name.lower())[:63]
    return url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)


def drop_world(target: str | os.PathLike[str]) -> None:
    """Remove the world at ``target``: its file, or its schema (``world_at``) or tables on a server."""
    path = sqlite_file(target)
    if path is not None:
        path.unlink(missing_ok=True)
        return
    engine = create_engine(_url(str(target)))
    try:
        with engine.begin() as conn:
            schema = _search_path_schema(engine.url)
            if schema is not None:
                conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            else:
                metadata.drop_all(conn)
    finally:
        engine.dispose()


def _search_path_schema(url: Any) -> str | None:
    """The schema a ``-csearch_path=NAME`` (or ``-c search_path=NAME``) option of ``url`` names, if one."""
    match = re.search(r"-c\s*search_path\s*=\s*([a-z0-9_]+)", str(url.query.get("options", "")))
    return match.group(1) if match else None


def _postgres(url: Any) -> bool:
    return url.get_backend_name() == "postgresql"


def _missing_driver(err: ModuleNotFoundError) -> str:
    extra = " (pip install 'itl[postgres]')" if err.name and err.name.startswith("psycopg") else ""
    return f"its database driver {err.name!r} is not installed{extra}"


def read_world(engine: Engine, where: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(meta, people rows in id order) of the world behind ``engine``; anything else is a ``NotAWorldError``."""
    try:
        tables = set(inspect(engine).get_table_names())
        if not {PEOPLE_TABLE, META_TABLE} <= tables:
            raise NotAWorldError(f"{where} is not an ITL world (tables found: {sorted(tables) or 'none'})")
        columns = {c["name"] for c in inspect(engine).get_columns(PEOPLE_TABLE)}
        missing = {c.name for c in people.columns} - columns
        if missing:
            raise NotAWorldError(f"{where}: the people table lacks the columns {sorted(missing)}")
        with engine.connect() as conn:
            raw = {key: value for key, value in conn.execute(select(world_meta.c.key, world_meta.c.value))}
            rows = [dict(row._mapping) for row in conn.execute(select(people).order_by(people.c.id))]
    except DatabaseError as err:
        raise NotAWorldError(f"{where} is not a readable database: {err.orig}") from err
    meta: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            meta[key] = json.loads(value)
        except (TypeError, ValueError) as err:
            raise NotAWorldError(f"{where}: world metadata {key!r} is not valid JSON ({err})") from None
    return meta, rows


class PeopleIndex:
    """Compiled per-attribute lookups by full name, on a lazily opened DB-API connection per thread.

    Each attribute's SELECT is compiled once for the engine's dialect: the SQLAlchemy statement stays
    the single source of the SQL while a call costs what a prepared query costs.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        table = Table(PEOPLE_TABLE, MetaData(), autoload_with=engine)
        missing = {"name", *(a.value for a in Attribute)} - set(table.c.keys())
        if missing:
            raise NotAWorldError(f"table {PEOPLE_TABLE!r} lacks the columns {sorted(missing)}")
        self._sql: dict[Attribute, str] = {}
        for attribute in Attribute:  # names are unique, so at most one row comes back
            statement = select(table.c[attribute.value]).where(table.c.name == bindparam("name"))
            self._sql[attribute] = str(statement.compile(dialect=engine.dialect))
        self._positional = engine.dialect.positional
        self._local = threading.local()

    def value(self, name: str, attribute: Attribute) -> str | None:
        """The attribute's value for the person called ``name``, or None. A connection the server dropped (a
        restart) is replaced and the query tried once more; a server that stays away is ``StoreUnavailableError``.
        """
        params: Any = (name,) if self._positional else {"name": name}
        for attempt in (1, 2):
            try:
                cursor = self._cursor()
                cursor.execute(self._sql[attribute], params)
                row = cursor.fetchone()
                return None if row is None else row[0]
            except Exception as err:
                if not self._lost_connection(err):
                    raise
                self._discard()
                if attempt == 2:
                    raise StoreUnavailableError(f"the database is unreachable: {one_line(err)}") from err
        raise AssertionError("unreachable")

    def _lost_connection(self, err: Exception) -> bool:
        """Whether ``err`` says the server connection is gone (a file database has no connection to lose)."""
        if self.engine.dialect.name == "sqlite":
            return False
        dbapi = self.engine.dialect.loaded_dbapi
        connection = (
            dbapi.OperationalError,
            dbapi.InterfaceError,
            OperationalError,
            InterfaceError,
            DisconnectionError,
        )
        return isinstance(err, connection)

    def _discard(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.invalidate()  # a broken connection goes out of the pool instead of back into it
        self._local.conn = self._local.cursor = None

    def _cursor(self) -> Any:
        # one connection and one reused cursor per thread: opening a cursor per lookup costs as much as the query
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            self._local.conn = self.engine.raw_connection()
            cursor = self._local.cursor = self._local.conn.cursor()
        return cursor

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.cursor.close()
            conn.close()
            self._local.conn = self._local.cursor = None
