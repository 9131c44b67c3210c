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
from itl_env.store import Attribute

logger = logging.getLogger(__name__)

Split = Literal["train", "unseen"]
SPLITS: tuple[Split, ...] = ("train", "unseen")
_FIRST_BIRTH_DAY = date(1940, 1, 1)
BIRTH_DAYS = (date(2005, 12, 31) - _FIRST_BIRTH_DAY).days + 1  # birth dates are drawn uniformly from these days


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
    edited_share: float = Field(
        0.0, ge=0.0, le=1.0, description="a counterfactual copy: this share of training facts has another valid value"
    )
    edit_seed: int = Field(0, description="which facts a counterfactual copy changes, and to what")

    def default_path(self) -> str:
        """Where the trainers keep this world unless told otherwise: one file per spec, so specs never collide."""
        alpha = "" if self.alpha == 1.0 else f"-a{self.alpha:g}"
        edited = "" if not self.edited_share else f"-e{self.edited_share:g}s{self.edit_seed}"
        return f"data/world-{self.people}-{self.unseen_people}-{self.seed}{alpha}{edited}.db"

    def counterfactual(self, share: float, seed: int = 0) -> WorldSpec:
        """The same people with ``share`` of the training facts changed to other valid values (a model that answers
        from the tool gives the new values; one that answers from memory, the old).
        """
        return self.model_copy(update={"edited_share": share, "edit_seed": seed})

    @property
    def original(self) -> WorldSpec:
        """The world this spec is a counterfactual copy of (itself when nothing is edited)."""
        return self.model_copy(update={"edited_share": 0.0, "edit_seed": 0})


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
    if spec.edited_share:
        _edit(rows[: spec.people], spec)
    return rows


def _edit(rows: list[dict[str, Any]], spec: WorldSpec) -> None:
    """Give ``spec.edited_share`` of these people's facts another value of the same domain, in place."""
    rng = np.random.default_rng([spec.seed, 2, spec.edit_seed])
    attributes = list(Attribute)
    chosen = rng.choice(
        len(rows) * len(attributes), size=round(spec.edited_share * len(rows) * len(attributes)), replace=False
    )
    for index in sorted(chosen.tolist()):
        row, attribute = rows[index // len(attributes)], attributes[index % len(attributes)]
        if attribute is Attribute.birth_date:
            current = row[attribute.value]
            while row[attribute.value] == current:
                row[attribute.value] = format_date(_FIRST_BIRTH_DAY + timedelta(days=int(rng.integers(BIRTH_DAYS))))
        else:
            vocab = atoms(ATTRIBUTE_ATOMS[attribute])
            position = vocab.index(row[attribute.value])
            row[attribute.value] = vocab[(position + int(rng.integers(1, len(vocab)))) % len(vocab)]


def _draw(spec: WorldSpec, split: Split, n: int, firsts: tuple[str, ...], stream: int) -> list[dict[str, Any]]:
    lasts = atoms("last_names")
    capacity = len(firsts) * len(lasts)
    if n > capacity:
        raise ValueError(f"{n} {split} people requested but only {capacity} distinct names exist")
    rng = np.random.default_rng([spec.seed, stream])
    picks = rng.choice(capacity, size=n, replace=False)
    first_idx, last_idx = np.divmod(picks, len(lasts))
    columns: dict[str, list[str]] = {
        "birth_date": [format_date(_FIRST_BIRTH_DAY + timedelta(days=int(d))) for d in rng.integers(0, BIRTH_DAYS, n)]
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
        return format_date(_FIRST_BIRTH_DAY + timedelta(days=h % BIRTH_DAYS))
    vocab = atoms(ATTRIBUTE_ATOMS[attribute])
    return vocab[h % len(vocab)]


SCHEMA = 2  # 2: the content hash covers the spec as well as the rows


def content_hash(spec: WorldSpec, rows: list[dict[str, Any]]) -> str:
    """sha256 of the spec and the rows' content, independent of the database that stores them."""
    # fields at their defaults are left out: a field added later does not change the hash of existing worlds
    digest = hashlib.sha256(spec.model_dump_json(exclude_defaults=True).encode() + b"\n")
    for row in rows:
        fields = [str(row["id"]), row["name"], row["split"], *(str(row[a.value]) for a in Attribute)]
        digest.update(("\t".join(fields) + "\n").encode())
    return digest.hexdigest()


def world_meta(spec: WorldSpec, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"spec": spec.model_dump(), "content_hash": content_hash(spec, rows), "schema": SCHEMA}


def build_world(spec: WorldSpec, target: str | os.PathLike[str], *, force: bool = False) -> World:
    """Generate ``spec`` and write it atomically to ``target`` (path or SQLAlchemy URL); never replaces unless ``force``."""
    rows = generate_people(spec)
    store.write_world(target, rows, world_meta(spec, rows), force=force)
    return World.open(target)


def ensure_world(spec: WorldSpec, target: str | os.PathLike[str]) -> World:
    """Open the world at ``target``, building it from ``spec`` if nothing is there.

    Never overwrites: a target holding something else, or a world of another spec, is an error.
    """
    if not store.holds_anything(target):
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


def open_or_build(
    target: str | os.PathLike[str] | None,
    *,
    people: int | None = None,
    unseen_people: int | None = None,
    seed: int | None = None,
) -> World:
    """The world at ``target`` if one is there (it records its own spec: options given must agree with it), else
    one built from the options (``WorldSpec`` defaults for those not given) at ``target`` or its default path.
    """
    given = {k: v for k, v in {"people": people, "unseen_people": unseen_people, "seed": seed}.items() if v is not None}
    fallback = WorldSpec(**{"people": 5000, "unseen_people": 250, **given})
    target = target if target is not None else fallback.default_path()
    if not store.holds_anything(target):
        return build_world(fallback, target)
    try:
        world = World.open(target)
    except store.NotAWorldError as err:
        raise store.NotAWorldError(f"{err}; it was left untouched, pass another --world") from err
    differs = {k: (v, getattr(world.spec, k)) for k, v in given.items() if getattr(world.spec, k) != v}
    if differs:
        world.close()
        said = ", ".join(f"{k}={v} (the world has {w})" for k, (v, w) in differs.items())
        raise ValueError(f"the world at {target} was generated from {world.spec.model_dump()}: {said}; drop the option")
    return world


class WorldIntegrityError(store.NotAWorldError):
    """The world's rows or spec were changed after it was generated (its content hash no longer matches)."""


class World:
    """A loaded world: its people and facts in memory, the database behind a read-only engine.

    Opening verifies it (schema version, spec, row counts, content hash): a tampered world is refused.
    A world pickles as its target and is opened (and verified) again where it is unpickled.
    """

    def __init__(self, target: str, spec: WorldSpec, content_hash: str, rows: list[dict[str, Any]], engine: Any):
        self.target = target
        self.spec = spec
        self.content_hash = content_hash
        self.rows = rows
        self.engine = engine

    @classmethod
    def open(cls, target: str | os.PathLike[str]) -> World:
        where = store.canonical(target)
        engine = store.read_only_engine(where)
        try:
            meta, rows = store.read_world(engine, where)
            spec, digest = _verified(meta, rows, where)
        except Exception:
            engine.dispose()
            raise
        return cls(where, spec, digest, rows, engine)

    @property
    def url(self) -> str:
        return self.target

    @cached_property
    def index(self) -> store.PeopleIndex:
        return store.PeopleIndex(self.engine)

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

    def to_dataset(self, split: Split | None = None) -> Any:
        """The people of ``split`` (or all) as a Hugging Face ``datasets.Dataset``."""
        from datasets import Dataset

        rows = self.rows if split is None else self.people(split)
        return Dataset.from_list(rows)

    def __deepcopy__(self, memo: dict[int, Any]) -> World:
        # read-only and backed by an engine: copies share it (gymnasium deep-copies env kwargs, e.g. in check_env)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (World.open, (self.target,))

    def close(self) -> None:
        if "index" in self.__dict__:
            self.index.close()
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"World({store.shown(self.target)!r}, people={self.spec.people}, unseen={self.spec.unseen_people}, hash={self.content_hash[:12]})"


def _verified(meta: dict[str, Any], rows: list[dict[str, Any]], where: str) -> tuple[WorldSpec, str]:
    """(spec, content hash) of a world read from ``where``, or a ``NotAWorldError`` saying what is wrong."""
    missing = [key for key in ("spec", "content_hash", "schema") if key not in meta]
    if missing:
        raise store.NotAWorldError(f"{where}: the world metadata lacks {', '.join(map(repr, missing))}")
    if meta["schema"] != SCHEMA:
        raise store.NotAWorldError(
            f"{where}: world schema {meta['schema']!r}, this version reads schema {SCHEMA}; generate it again "
            "(python -m itl_env.world --force ...)"
        )
    try:
        spec = WorldSpec.model_validate(meta["spec"])
    except ValueError as err:
        raise store.NotAWorldError(f"{where}: the stored spec is not valid ({_first_error(err)})") from None
    counts = {split: sum(row["split"] == split for row in rows) for split in SPLITS}
    expected = {"train": spec.people, "unseen": spec.unseen_people}
    if counts != expected or len(rows) != sum(expected.values()):
        raise WorldIntegrityError(
            f"{where}: the stored spec says {expected['train']} training and {expected['unseen']} unseen people, "
            f"the table holds {counts['train']} and {counts['unseen']} (of {len(rows)} rows): it was modified"
        )
    digest = content_hash(spec, rows)
    if digest != meta["content_hash"]:
        raise WorldIntegrityError(
            f"{where}: the world was modified after it was generated (content hash {digest[:12]}..., stored "
            f"{str(meta['content_hash'])[:12]}...); generate it again"
        )
    return spec, digest


def _first_error(err: ValueError) -> str:
    errors = getattr(err, "errors", None)
    if callable(errors):
        first = errors()[0]
        return f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
    return str(err)


@cache
def domain_vocabulary() -> dict[Attribute, frozenset[str]]:
    """Every value each categorical attribute can take (its whole domain, not only the values of one world):
    what counts as a candidate value when scoring, so a hedge naming any valid value is caught.
    """
    return {attribute: frozenset(atoms(kind)) for attribute, kind in ATTRIBUTE_ATOMS.items()}


class WorldOptions(BaseModel):
    """The ``python -m itl_env.world`` command line."""

    model_config = ConfigDict(extra="forbid")

    people: int = Field(WorldSpec().people, ge=1, description="training people, 4 facts each")
    unseen_people: int = Field(WorldSpec().unseen_people, ge=0, description="people held out of training")
    alpha: float = Field(1.0, ge=0.0, le=1.0, description="share of facts drawn independently of the last name")
    seed: int = Field(0, description="random seed")
    out: str = Field(description="SQLite file path or SQLAlchemy URL to write")
    force: bool = Field(False, description="replace what is at --out (a file or a world)")


def main(argv: list[str] | None = None) -> World:
    """``python -m itl_env.world`` / ``itl-world``: build a world and print where it went (``configs.run_cli``)."""
    from configs.cli import run_cli

    return run_cli(WORLD_PROG, write_world_cli, argv)


WORLD_PROG = "python -m itl_env.world"


def write_world_cli(argv: list[str] | None) -> World:
    from sqlalchemy.exc import SQLAlchemyError
    from tqdm import tqdm

    from configs import resolve, usage_error

    (opts,) = resolve(
        [WorldOptions], argv, prog=WORLD_PROG, description="Generate a fact world (SQLite file or SQLAlchemy URL)."
    )
    logger.info("building a world of %d people + %d unseen (seed %d) into %s", opts.people, opts.unseen_people,
                opts.seed, store.shown(opts.out))  # fmt: skip
    try:
        spec = WorldSpec(seed=opts.seed, people=opts.people, unseen_people=opts.unseen_people, alpha=opts.alpha)
        rows = generate_people(spec)
    except ValueError as err:
        usage_error(WORLD_PROG, str(err))
    try:
        with tqdm(total=2, desc="world", unit="step") as bar:
            bar.set_postfix_str("writing")
            store.write_world(opts.out, rows, world_meta(spec, rows), force=opts.force)
            bar.update()
            world = World.open(opts.out)
            bar.update()
    except (OSError, SQLAlchemyError) as err:  # an unwritable path, an unknown URL or driver, a refusing server
        raise OSError(f"cannot write a world to {store.shown(opts.out)}: {err}") from err
    logger.info(
        "%d people (%d unseen), %d facts -> %s (sha256 %s)",
        len(rows),
        spec.unseen_people,
        4 * len(rows),
        store.shown(world.target),
        world.content_hash[:16],
    )
    return world


if __name__ == "__main__":
    main()
