"""The architecture: one order of library layers (``lint-imports``), and no module imports an entry point."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("configs", "tools", "itl_env", "evals", "trainers", "studies")
ENTRY_POINTS = {
    "trainers.sft",
    "trainers.grpo",
    "trainers.pretrain",
    "evals.recall",
    "evals.retention",
    "evals.backends.vllm_server",
    "itl_env.serve_mcp",
    "studies.memory.__main__",
    "studies.finetune.__main__",
    "studies.ste.__main__",
}


def test_the_layers_contract_holds():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 1 kept, 0 broken." in done.stdout


def test_every_script_is_a_known_entry_point():
    """A module with a ``__main__`` block is an entry point (or the world CLI, which imports only its own layer)."""
    scripts = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            if re.search(r'^if __name__ == "__main__":', path.read_text(encoding="utf-8"), re.M):
                scripts.add(".".join(path.relative_to(REPO).with_suffix("").parts))
    assert scripts == ENTRY_POINTS | {"itl_env.world"}


def test_no_module_imports_an_entry_point():
    graph = grimp.build_graph(*PACKAGES)
    importers = {ep: graph.find_modules_that_directly_import(ep) for ep in ENTRY_POINTS}
    assert importers == {ep: set() for ep in ENTRY_POINTS}


def test_world_cli_imports_nothing_above_its_layer():
    graph = grimp.build_graph(*PACKAGES)
    above = {
        m for m in graph.find_upstream_modules("itl_env.world") if m.split(".")[0] in ("evals", "trainers", "studies")
    }
    assert above == set()
