"""Every reference in the docs resolves: config files, make targets, modules run with -m, console commands."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [
    REPO / "README.md",
    *sorted(REPO.glob("*/README.md")),
    REPO / "Makefile",
    *sorted(REPO.glob("[a-z]*/**/*.py")),
    *sorted(REPO.glob("configs/**/*.yaml")),
]
DOCS = [p for p in DOCS if ".venv" not in p.parts and "tests" not in p.parts]


def mentions(pattern: str) -> set[str]:
    return {m for path in DOCS for m in re.findall(pattern, path.read_text(encoding="utf-8"))}


def test_every_config_file_mentioned_exists():
    named = mentions(r"configs/[\w/.-]+\.(?:yaml|jinja)")
    assert named and sorted(n for n in named if not (REPO / n).is_file()) == []


READMES = [REPO / "README.md", *sorted(REPO.glob("*/README.md")), *sorted(REPO.glob("studies/*/README.md"))]


def test_every_result_a_readme_cites_is_in_the_repository():
    """A README number must be auditable: each `results/...` file it names (globs: at least one) is committed."""
    named = {n for p in READMES for n in re.findall(r"`(results/[^`\s<]+)`", p.read_text(encoding="utf-8"))}
    assert named and sorted(n for n in named if not list(REPO.glob(n))) == []


def test_every_link_in_a_readme_resolves():
    for readme in READMES:
        links = re.findall(r"\]\(([^)#\s]+)\)", readme.read_text(encoding="utf-8"))
        local = [link for link in links if "://" not in link]
        assert sorted(link for link in local if not (readme.parent / link).exists()) == [], readme


def test_every_make_target_mentioned_exists():
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))
    named = {t for pair in (re.findall(r"\bmake ([a-z][\w-]*)", p.read_text()) for p in DOCS) for t in pair}
    assert sorted(named - targets) == []


def test_every_module_run_with_dash_m_exists():
    import importlib.util

    named = mentions(r"python -m ((?:itl_env|evals|trainers|tools|configs)(?:\.\w+)+)")
    assert named and sorted(m for m in named if importlib.util.find_spec(m) is None) == []


def test_no_machine_paths_in_the_code():
    assert sorted(str(p) for p in DOCS if re.search(r"/work/|/root/|/home/\w", p.read_text())) == []


def test_every_console_command_points_at_a_function():
    import importlib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"itl-sft", "itl-recall", "itl-world", "itl-mcp"} <= set(scripts)
    for target in scripts.values():
        module, _, name = target.partition(":")
        assert callable(getattr(importlib.import_module(module), name)), target


@pytest.mark.parametrize("name", ["itl-sft", "itl-recall", "itl-world", "itl-study", "itl-pretrain", "itl-retention"])
def test_console_commands_are_installed_and_explain_themselves(name):
    command = Path(sys.executable).with_name(name)
    done = subprocess.run([str(command), "--help"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0 and "--config" in done.stdout


@pytest.mark.parametrize("path", sorted(p.relative_to(REPO) for p in REPO.glob("configs/*.yaml")), ids=str)
def test_every_shipped_config_is_valid_for_its_command(path):
    """A shipped preset parses with its command's resolver (a broken preset is caught here, not by a user)."""
    text = path.read_text() if path.is_absolute() else (REPO / path).read_text()
    command = re.search(rf"(trainers/\w+\.py|python -m evals\.\w+) --config {re.escape(str(path))}", text)
    assert command, f"{path} names no command in its header"
    module = command.group(1).replace("python -m ", "").replace("/", ".").removesuffix(".py")
    parse = __import__(module, fromlist=["parse"]).parse
    extra = ["--model", "m"] if module == "evals.retention" else []
    parse(["--config", str(REPO / path), *extra])


def python_snippets(readme: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", readme.read_text(encoding="utf-8"), re.S)


@pytest.mark.parametrize("readme", [p for p in READMES if python_snippets(p)], ids=lambda p: str(p.relative_to(REPO)))
def test_every_python_snippet_of_a_readme_runs_as_written(readme, tmp_path, monkeypatch):
    """In a folder holding the world the READMEs build (python -m itl_env.world --people 1000 --out data/world.db)."""
    from itl_env.world import WorldSpec, build_world

    build_world(WorldSpec(people=1000), tmp_path / "data" / "world.db").close()
    monkeypatch.chdir(tmp_path)
    for snippet in python_snippets(readme):
        namespace: dict = {}
        exec(compile(snippet, f"{readme.name} snippet", "exec"), namespace)
        if "env" in namespace and "reward" in namespace:  # what the comments say the episode gives
            assert "Soyeon Testa" in namespace["question"]
            assert namespace["reward"] == 1.0 and namespace["terminated"]
        for name in ("env", "world"):
            if hasattr(namespace.get(name), "close"):
                namespace[name].close()


@pytest.mark.slow
def test_the_gpu_script_runs_both_studies_in_its_dry_run(tmp_path):
    """scripts/gpu_studies.sh --dry-run: the GPU machine's one call, on CPU with the tiny presets."""
    import os

    env = {**os.environ, "ITL_PYTHON": sys.executable}
    done = subprocess.run(["bash", "scripts/gpu_studies.sh", "--dry-run", str(tmp_path / "gpu")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200)  # fmt: skip
    log = (tmp_path / "gpu" / "gpu_studies.log").read_text(encoding="utf-8")
    assert done.returncode == 0, done.stdout + done.stderr + log[-3000:]
    assert "finetune: exit 0" in done.stdout and "memory: exit 0" in done.stdout
    results = {p.name for p in (tmp_path / "gpu" / "results").iterdir()}
    assert {"finetune-tiny-results.csv", "study-results.csv", "study-thresholds.md", "study-exposures.csv"} <= results
    # one study per call (a lent machine's calls are short), under its own time limit: then Ctrl-C, exit 124 logged
    one = subprocess.run(["bash", "scripts/gpu_studies.sh", "--dry-run", "--only", "memory", str(tmp_path / "one")],
                         cwd=REPO, env={**env, "ITL_MEMORY_SECONDS": "1"}, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert one.returncode == 1 and "memory: exit 124" in one.stdout and "finetune" not in one.stdout
    for bad_args in ([], ["--only", "both", "out"], ["--fast", "out"], ["a", "b"]):
        bad = subprocess.run(["bash", "scripts/gpu_studies.sh", *bad_args], cwd=REPO, capture_output=True, text=True)
        assert bad.returncode == 2 and "usage" in bad.stderr
    for bad_env in (
        {"ITL_FINETUNE_SECONDS": "ten"},
        {"ITL_MEMORY_SECONDS": "0"},
        {"ITL_PUBLISHED": str(tmp_path / "no")},
    ):
        bad = subprocess.run(["bash", "scripts/gpu_studies.sh", "--dry-run", str(tmp_path / "bad")], cwd=REPO,
                             env={**env, **bad_env}, capture_output=True, text=True)  # fmt: skip
        assert bad.returncode == 2 and next(iter(bad_env)) in bad.stderr and not (tmp_path / "bad").exists()
