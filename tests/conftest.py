"""Shared fixtures: small real worlds in temporary SQLite files (no mocks, no network)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

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
