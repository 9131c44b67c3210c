"""run.json: what a training run started from (the model, the world and its hash), kept in its run directory.

Written by the trainers when a run starts; read by whatever continues or measures the run: GRPO
(to train on the same world), retention (to compare with the model the run started from).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from itl_env.store import stored


def write_provenance(path: Path, *, kind: str, model: str, world: Any, precision: str | None = None) -> None:
    """run.json: what the run started from (the model, the world and its hash), kept from the run's first start."""
    target = path / "run.json"
    if target.exists():
        return
    info = {
        "kind": kind,
        "model": model,
        "world": {"target": stored(world.target), "spec": world.spec.model_dump(), "content_hash": world.content_hash},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **({"precision": precision} if precision else {}),
    }
    target.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def provenance(run_or_model: str | Path) -> dict[str, Any] | None:
    """The run.json of a run directory, or of the run a model directory (``<run>/model``, a checkpoint) belongs to."""
    for folder in (Path(run_or_model), Path(run_or_model).parent):
        info = folder / "run.json"
        if info.is_file():
            return json.loads(info.read_text(encoding="utf-8"))
    return None
