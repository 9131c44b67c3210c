"""A suite of typed tools over the people database, beyond ``lookup``: searches, counts, dates.

Varied on purpose: enum and free-text arguments, dates, integers with bounds, lists and numbers as
results, and tools that compose (``count_people`` on the city ``lookup`` returned). Every query binds
its values and takes its column from the ``Attribute`` enum; the tools read the world's read-only
engine. ``registry(world)`` (the ``--tools itl_env.people_tools:registry`` factory) is the fact
tools plus these.
"""

from __future__ import annotations

import weakref
from datetime import date
from typing import TYPE_CHECKING, Annotated

from pydantic import Field
from sqlalchemy import func, select

from itl_env.fact_tools import fact_tools
from itl_env.store import Attribute, people
from tools.registry import Tool, ToolError, ToolRegistry, tool

if TYPE_CHECKING:
    from itl_env.world import World

MAX_LISTED = 20


def parse_date(text: str) -> date:
    """A date written M/D/YYYY (the world's format, e.g. 7/26/1995), or a ToolError saying so."""
    try:
        month, day, year = (int(part) for part in text.strip().split("/"))
        return date(year, month, day)
    except (ValueError, OverflowError):  # not numbers, a month 13, a year past what the platform's dates hold
        raise ToolError(f"{text!r} is not a date written M/D/YYYY, e.g. 7/26/1995") from None


class PeopleTools:
    """The people tools of one world (they pickle as their world, like ``FactTools``)."""

    def __init__(self, world: World):
        self.world = world

    def find_people(
        self, attribute: Attribute, value: str, limit: Annotated[int, Field(ge=1, le=MAX_LISTED)] = 10
    ) -> list[str]:
        """Find the people whose attribute has a given value, in alphabetical order.

        Args:
            attribute: Which fact to match.
            value: The value it must have, e.g. "Japan" or "taxi driver".
            limit: At most this many names are returned.
        """
        statement = select(people.c.name).where(people.c[attribute.value] == value.strip()).order_by(people.c.name)
        with self.world.engine.connect() as conn:
            return list(conn.execute(statement.limit(limit)).scalars())

    def count_people(self, attribute: Attribute, value: str) -> int:
        """Count the people whose attribute has a given value.

        Args:
            attribute: Which fact to match.
            value: The value it must have, e.g. "Lisbon".
        """
        statement = select(func.count()).select_from(people).where(people.c[attribute.value] == value.strip())
        with self.world.engine.connect() as conn:
            return int(conn.execute(statement).scalar_one())

    def age_on(self, name: str, on: str) -> int:
        """How old a person was (or will be) on a given date, in whole years.

        Args:
            name: The person's full name, e.g. "Kyler Ellison".
            on: The date, written M/D/YYYY, e.g. 7/26/1995.
        """
        day = parse_date(on)
        statement = select(people.c.birth_date).where(people.c.name == name.strip())
        with self.world.engine.connect() as conn:
            born = conn.execute(statement).scalar_one_or_none()
        if born is None:
            raise ToolError(f"no person named {name[:80]!r} in the database")
        birth = parse_date(born)
        if day < birth:
            raise ToolError(f"{name} was born on {born}, after {on}")
        return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))

    def born_between(self, start: str, end: str, limit: Annotated[int, Field(ge=1, le=MAX_LISTED)] = 10) -> list[str]:
        """Find the people born between two dates (both included), in alphabetical order.

        Args:
            start: The first date, written M/D/YYYY.
            end: The last date, written M/D/YYYY.
            limit: At most this many names are returned.
        """
        first, last = parse_date(start), parse_date(end)
        if last < first:
            raise ToolError(f"the end {end} comes before the start {start}")
        with self.world.engine.connect() as conn:
            rows = conn.execute(select(people.c.name, people.c.birth_date).order_by(people.c.name)).all()
        return [name for name, born in rows if first <= parse_date(born) <= last][:limit]


_TOOLS: weakref.WeakKeyDictionary[World, list[Tool]] = weakref.WeakKeyDictionary()


def people_tools(world: World) -> list[Tool]:
    """The suite's tools over ``world`` (built once per world)."""
    if world not in _TOOLS:
        suite = PeopleTools(world)
        _TOOLS[world] = [
            tool(suite.find_people),
            tool(suite.count_people),
            tool(suite.age_on),
            tool(suite.born_between),
        ]
    return _TOOLS[world]


def registry(world: World) -> ToolRegistry:
    """The fact tools and the people suite over ``world``: ``--tools itl_env.people_tools:registry``."""
    return ToolRegistry([*fact_tools(world), *people_tools(world)])
