"""Run directories: where a training run keeps its config, metrics, records and checkpoints.

A new run never writes into a directory that already holds files; ``resume=True`` is the only
way to continue one, and then metrics and records are appended, never rewritten.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import configs
from configs import jsonl


class RunDirError(ValueError):
    """The run directory cannot be used as asked (it exists and is not being resumed, or it is not a run)."""


# The trainers' --output_dir default. Not None: TRL's configs replace None by "trainer_output", a
# fixed directory that a second run would refuse to reuse.
AUTO = "runs/<kind>-<mode>-<time>"


def default_name(kind: str, mode: str) -> Path:
    return Path("runs") / f"{kind}-{mode}-{time.strftime('%Y%m%d-%H%M%S')}"


def resolve(output_dir: str | None, kind: str, mode: str) -> Path:
    """The run directory asked for, or a fresh timestamped one under runs/ when none was given."""
    return default_name(kind, mode) if output_dir in (None, AUTO) else Path(output_dir)


def check(path: str | Path, *, resume: bool, kind: str | None = None) -> Path:
    """Raise unless ``path`` can hold a new run (or, with ``resume``, is a run of ``kind``). Creates nothing."""
    path = Path(path)
    if resume:
        if not (path / "config.yaml").is_file():
            raise RunDirError(f"cannot resume {path}: it holds no config.yaml of an earlier run")
        recorded = _recorded_kind(path)
        if kind is not None and recorded is not None and recorded != kind:
            raise RunDirError(f"cannot resume {path} as a {kind} run: it is a {recorded} run (its run.json)")
    elif path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise RunDirError(f"{path} already exists and is not empty; choose another --output_dir or pass --resume")
    return path


def _recorded_kind(path: Path) -> str | None:
    try:
        return json.loads((path / "run.json").read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):  # no run.json (an older run), or one that is not ours
        return None


def prepare(path: str | Path, *, resume: bool) -> Path:
    """``check`` then create the directory."""
    path = check(path, resume=resume)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_config(path: Path, *sections: Any) -> Path:
    """The resolved config (``configs.record``: it can be passed back as ``--config``), as config.yaml; a
    resumed run keeps the first one and adds config.resumed-<time>.yaml.
    """
    target = path / "config.yaml"
    if target.exists():
        target = path / f"config.resumed-{time.strftime('%Y%m%d-%H%M%S')}.yaml"
    return configs.record(target, *sections)


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl``."""

    def __init__(self, path: Path):
        self.path = path / "metrics.jsonl"

    def write(self, **row: Any) -> None:
        jsonl.append(self.path, [{"time": round(time.time(), 3), **row}])

    def rows(self) -> list[dict[str, Any]]:
        return jsonl.read(self.path)
