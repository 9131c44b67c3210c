"""Shared fixtures: small real worlds in temporary SQLite files (no mocks, no network)."""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from itl_env.world import World, WorldSpec, build_world


@pytest.fixture
def world_spec() -> WorldSpec:
    """A small world: 40 training people and 12 unseen people (208 facts)."""
    return WorldSpec(seed=0, people=40, unseen_people=12)


@pytest.fixture
def world(world_spec: WorldSpec, tmp_path: Path) -> Iterator[World]:
    """``world_spec`` built into ``tmp_path / "world.db"``; each test gets its own file."""
    built = build_world(world_spec, tmp_path / "world.db")
    yield built
    built.close()


@pytest.fixture(scope="session")
def shared_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One read-only world for the whole session, for tests that only read (same spec as ``world``)."""
    built = build_world(WorldSpec(seed=0, people=40, unseen_people=12), tmp_path_factory.mktemp("shared") / "world.db")
    yield built
    built.close()


@pytest.fixture
def file_sha256() -> Callable[[str | os.PathLike[str]], str]:
    """sha256 of a file's bytes: proves a database file was not modified."""

    def digest(path: str | os.PathLike[str]) -> str:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()

    return digest


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """A real PostgreSQL server for the session (``tests/postgres_server.py``), stopped and removed at the end."""
    from postgres_server import PostgresServer

    server = PostgresServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
def postgres_url(postgres_server: Any, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database on the session's server, for one test (URL with its password)."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    return postgres_server.create_database(f"{name}_{os.getpid()}_{next(_DATABASES)}")


_DATABASES = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a test's world goes, once per store: a SQLite file, and a database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return str(tmp_path / "world.db")
    return request.getfixturevalue("postgres_url")
