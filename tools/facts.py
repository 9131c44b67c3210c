"""Fact-lookup tools over a read-only SQLAlchemy engine.

The people table has a ``name`` column and one column per ``Attribute``. Identifiers come from
the ``Attribute`` enum (whitelisted), values are bound. Each attribute's SELECT is compiled once
for the engine's dialect and run on one DB-API connection: the SQLAlchemy statement stays the
single source of the SQL while the per-call cost stays that of a prepared query.
"""

from __future__ import annotations

import threading
from enum import StrEnum
from typing import Any

from sqlalchemy import Engine, MetaData, Table, bindparam, select

from tools.registry import Tool, ToolError, tool

PEOPLE_TABLE = "people"


class Attribute(StrEnum):
    birth_date = "birth_date"
    birth_place = "birth_place"
    current_address = "current_address"
    occupation = "occupation"


class PeopleIndex:
    """Compiled per-attribute lookups by full name, on a lazily opened DB-API connection."""

    def __init__(self, engine: Engine, table: str = PEOPLE_TABLE):
        self.engine = engine
        people = Table(table, MetaData(), autoload_with=engine)
        missing = {"name", *(a.value for a in Attribute)} - set(people.c.keys())
        if missing:
            raise ValueError(f"table {table!r} lacks the columns {sorted(missing)}")
        self._sql: dict[Attribute, str] = {}
        for attribute in Attribute:  # names are unique, so at most one row comes back
            statement = select(people.c[attribute.value]).where(people.c.name == bindparam("name"))
            self._sql[attribute] = str(statement.compile(dialect=engine.dialect))
        self._positional = engine.dialect.positional
        self._local = threading.local()

    def value(self, name: str, attribute: Attribute) -> str | None:
        params: Any = (name,) if self._positional else {"name": name}
        cursor = self._cursor()
        cursor.execute(self._sql[attribute], params)
        row = cursor.fetchone()
        return None if row is None else row[0]

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


def lookup_tool(index: PeopleIndex) -> Tool:
    """The ``lookup(name, attribute)`` tool over ``index``."""

    @tool
    def lookup(name: str, attribute: Attribute) -> str:
        """Look up one attribute of a person in the facts database.

        Args:
            name: The person's full name, e.g. "Kyler Ellison".
            attribute: Which fact to return.
        """
        value = index.value(name.strip(), attribute)
        if value is None:
            shown = name if len(name) <= 80 else name[:77] + "..."
            raise ToolError(f"no person named {shown!r} in the database; give the full name as written in the question")
        return value

    return lookup
