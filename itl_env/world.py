"""The fact world: seeded generation of people and their facts, and the loaded ``World``.

Usage:
    python -m itl_env.world --people 1000 --out data/world.db
    python -m itl_env.world --people 1000 --unseen-people 100 --alpha 0.5 --seed 3 --out data/dep.db

Each person has four facts (``Attribute``). Training people are drawn from ``first_names`` x
``last_names``; unseen people from the disjoint ``unseen_first_names`` x ``last_names`` with
their own random stream, so no unseen person shares a name, or a systematic draw, with a
training person. With ``alpha < 1`` each fact is, with probability ``1 - alpha``, a fixed
function of the last name (a compressible, "dependent" world).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import zlib
from dataclasses import dataclass
from datetime import date, timedelta
from functools import cache, cached_property
from importlib import resources
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from itl_env import store
from tools.facts import Attribute, PeopleIndex

logger = logging.getLogger(__name__)

Split = Literal["train", "unseen"]
SPLITS: tuple[Split, ...] = ("train", "unseen")
_FIRST_BIRTH_DAY = date(1940, 1, 1)
_BIRTH_DAYS = (date(2005, 12, 31) - _FIRST_BIRTH_DAY).days + 1


@cache
def atoms(kind: str) -> tuple[str, ...]:
    """One of the vocabulary lists shipped in ``itl_env/atoms/`` (first_names, cities, ...)."""
    text = resources.files("itl_env").joinpath("atoms", f"{kind}.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


# Which vocabulary each categorical attribute draws from; birth dates are generated.
ATTRIBUTE_ATOMS = {
    Attribute.birth_place: "countries",
    Attribute.current_address: "cities",
    Attribute.occupation: "occupations",
}


def format_date(day: date) -> str:
    """``M/D/YYYY`` without leading zeros, the format of the paper's facts (1/2/1970)."""
    return f"{day.month}/{day.day}/{day.year}"


class WorldSpec(BaseModel):
    """Everything that determines a world; the same spec always gives the same world."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    people: int = Field(256, ge=1, description="training people (4 facts each)")
    unseen_people: int = Field(64, ge=0, description="people never seen in training")
    alpha: float = Field(1.0, ge=0.0, le=1.0, description="share of facts drawn independently of the last name")

    def default_path(self) -> str:
        """Where the trainers keep this world unless told otherwise: one file per spec, so specs never collide."""
        alpha = "" if self.alpha == 1.0 else f"-a{self.alpha:g}"
        return f"data/world-{self.people}-{self.unseen_people}-{self.seed}{alpha}.db"


@dataclass(frozen=True, slots=True)
class Fact:
    """One question's worth of world: a person's attribute and its value."""

    person_id: int
    person: str
    attribute: Attribute
    split: Split
    value: str

    @property
    def id(self) -> str:
        return f"{self.person_id}:{self.attribute.value}"


def generate_people(spec: WorldSpec) -> list[dict[str, Any]]:
    """The rows of the world's people table, training people first."""
    rows = _draw(spec, "train", spec.people, atoms("first_names"), stream=0)
    rows += _draw(spec, "unseen", spec.unseen_people, atoms("unseen_first_names"), stream=1)
    for i, row in enumerate(rows):
        row["id"] = i
    return rows


def _draw(spec: WorldSpec, split: Split, n: int, firsts: tuple[str, ...], stream: int) -> list[dict[str, Any]]:
    lasts = atoms("last_names")
    capacity = len(firsts) * len(lasts)
    if n > capacity:
        raise ValueError(f"{n} {split} people requested but only {capacity} distinct names exist")
    rng = np.random.default_rng([spec.seed, stream])
    picks = rng.choice(capacity, size=n, replace=False)
    first_idx, last_idx = np.divmod(picks, len(lasts))
    columns: dict[str, list[str]] = {
        "birth_date": [format_date(_FIRST_BIRTH_DAY + timedelta(days=int(d))) for d in rng.integers(0, _BIRTH_DAYS, n)]
    }
    for attribute, kind in ATTRIBUTE_ATOMS.items():
        vocab = atoms(kind)
        columns[attribute.value] = [vocab[i] for i in rng.integers(0, len(vocab), n)]
    if spec.alpha < 1.0:
        dependent = rng.random((n, len(Attribute))) >= spec.alpha
        for row_i, col_j in zip(*np.nonzero(dependent), strict=True):
            attribute = list(Attribute)[col_j]
            columns[attribute.value][row_i] = _from_last_name(lasts[last_idx[row_i]], attribute)
    return [
        {"name": f"{firsts[f]} {lasts[la]}", "split": split, **{a.value: columns[a.value][i] for a in Attribute}}
        for i, (f, la) in enumerate(zip(first_idx.tolist(), last_idx.tolist(), strict=True))
    ]


def _from_last_name(last: str, attribute: Attribute) -> str:
    """The deterministic value of a dependent fact: a stable hash of (last name, attribute)."""
    h = zlib.crc32(f"{last}|{attribute.value}".encode())
    if attribute is Attribute.birth_date:
        return format_date(_FIRST_BIRTH_DAY + timedelta(days=h % _BIRTH_DAYS))
    vocab = atoms(ATTRIBUTE_ATOMS[attribute])
    return vocab[h % len(vocab)]


def content_hash(rows: list[dict[str, Any]]) -> str:
    """sha256 of the rows' content, independent of the database that stores them."""
    digest = hashlib.sha256()
    for row in rows:
        fields = [str(row["id"]), row["name"], row["split"], *(row[a.value] for a in Attribute)]
        digest.update(("\t".join(fields) + "\n").encode())
    return digest.hexdigest()


def build_world(spec: WorldSpec, target: str | os.PathLike[str]) -> World:
    """Generate ``spec`` and write it atomically to ``target`` (path or SQLAlchemy URL)."""
    rows = generate_people(spec)
    store.write_world(target, rows, {"spec": spec.model_dump(), "content_hash": content_hash(rows), "schema": 1})
    return World.open(target)


def ensure_world(spec: WorldSpec, target: str | os.PathLike[str]) -> World:
    """Open the world at ``target``, building it from ``spec`` if nothing is there.

    Never overwrites: a target holding something else, or a world of another spec, is an error.
    """
    path = store.sqlite_path(store.to_url(target))
    if path is not None and not path.exists():
        return build_world(spec, target)
    try:
        world = World.open(target)
    except store.NotAWorldError as err:
        raise store.NotAWorldError(f"{err}; it was left untouched, pass another --world") from err
    if world.spec != spec:
        world.close()
        raise ValueError(
            f"the world at {target} was generated from {world.spec.model_dump()}, not {spec.model_dump()}; "
            "pass another --world path, or the matching world options"
        )
    return world


class World:
    """A loaded world: its people and facts in memory, the database behind a read-only engine."""

    def __init__(self, url: str, spec: WorldSpec, content_hash: str, rows: list[dict[str, Any]], engine: Any):
        self.url = url
        self.spec = spec
        self.content_hash = content_hash
        self.rows = rows
        self.engine = engine

    @classmethod
    def open(cls, target: str | os.PathLike[str]) -> World:
        url = store.to_url(target)
        engine = store.read_only_engine(url)
        try:
            meta, rows = store.read_world(engine)
            spec = WorldSpec.model_validate(meta["spec"])
        except Exception:
            engine.dispose()
            raise
        return cls(url, spec, meta["content_hash"], rows, engine)

    @cached_property
    def index(self) -> PeopleIndex:
        return PeopleIndex(self.engine)

    def people(self, split: str = "train") -> list[dict[str, Any]]:
        return [row for row in self.rows if row["split"] == split]

    def facts(self, split: str = "train") -> list[Fact]:
        """Every (person, attribute) fact of ``split``, in a fixed order."""
        return [
            Fact(row["id"], row["name"], attribute, row["split"], row[attribute.value])
            for row in self.people(split)
            for attribute in Attribute
        ]

    @cached_property
    def by_name(self) -> dict[str, dict[str, Any]]:
        return {row["name"]: row for row in self.rows}

    @cached_property
    def vocabulary(self) -> dict[Attribute, frozenset[str]]:
        """The distinct values of each categorical attribute: what counts as a 'candidate value'."""
        return {a: frozenset(row[a.value] for row in self.rows) for a in ATTRIBUTE_ATOMS}

    def to_dataset(self, split: Split | None = None) -> Any:
        """The people of ``split`` (or all) as a Hugging Face ``datasets.Dataset``."""
        from datasets import Dataset

        rows = self.rows if split is None else self.people(split)
        return Dataset.from_list(rows)

    def __deepcopy__(self, memo: dict[int, Any]) -> World:
        # read-only and backed by an engine: copies share it (gymnasium deep-copies env kwargs, e.g. in check_env)
        return self

    def close(self) -> None:
        if "index" in self.__dict__:
            self.index.close()
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"World({self.url!r}, people={self.spec.people}, unseen={self.spec.unseen_people}, hash={self.content_hash[:12]})"


def main(argv: list[str] | None = None) -> World:
    parser = argparse.ArgumentParser(
        prog="python -m itl_env.world", description="Generate a fact world (SQLite file or SQLAlchemy URL)."
    )
    parser.add_argument(
        "--people", type=int, default=WorldSpec().people, help="training people, 4 facts each (default: %(default)s)"
    )
    parser.add_argument(
        "--unseen-people",
        type=int,
        default=WorldSpec().unseen_people,
        help="people held out of training (default: %(default)s)",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=1.0,
        help="share of facts drawn independently of the last name; 1 = all independent (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--out", required=True, help="SQLite file path or SQLAlchemy URL to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from sqlalchemy.exc import SQLAlchemyError
    from tqdm import tqdm

    try:
        spec = WorldSpec(seed=args.seed, people=args.people, unseen_people=args.unseen_people, alpha=args.alpha)
    except ValueError as err:
        parser.error(str(err))
    with tqdm(total=3, desc="world", unit="step") as bar:
        bar.set_postfix_str("drawing people")
        try:
            rows = generate_people(spec)
        except ValueError as err:
            parser.error(str(err))
        bar.update()
        bar.set_postfix_str("writing")
        try:
            meta = {"spec": spec.model_dump(), "content_hash": content_hash(rows), "schema": 1}
            store.write_world(args.out, rows, meta)
            bar.update()
            world = World.open(args.out)
        except (OSError, SQLAlchemyError) as err:  # an unwritable path, an unknown database URL or driver
            bar.close()
            parser.exit(1, f"{parser.prog}: cannot write a world to {args.out}: {err}\n")
        bar.update()
    logger.info(
        "%d people (%d unseen), %d facts -> %s (sha256 %s)",
        len(rows),
        spec.unseen_people,
        4 * len(rows),
        args.out,
        world.content_hash[:16],
    )
    return world


if __name__ == "__main__":
    main()
