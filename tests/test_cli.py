"""One exception policy for every entry point (configs.cli.run_cli): a user mistake is one line, never a traceback."""

from __future__ import annotations

import importlib
import logging
import sys
import tomllib
from pathlib import Path

import pytest

from configs.cli import ReportedElsewhere, run_cli

REPO = Path(__file__).resolve().parents[1]


def exit_of(call, *args, **kwargs) -> SystemExit:
    with pytest.raises(SystemExit) as raised:
        call(*args, **kwargs)
    return raised.value


def test_a_user_error_is_one_line_with_the_program_name():
    def run(_args):
        raise FileNotFoundError("no world file at /x.db;\n  create one with: python -m itl_env.world --out /x.db")

    done = exit_of(run_cli, "prog", run, [])
    assert done.code == "prog: error: no world file at /x.db; create one with: python -m itl_env.world --out /x.db"


@pytest.mark.parametrize("error", [OSError("disk full"), ValueError("bad"), LookupError("no such tool"),
                                   RuntimeError("server refused")])  # fmt: skip
def test_every_kind_of_user_error_is_caught(error):
    def run(_args):
        raise error

    assert str(exit_of(run_cli, "prog", run, []).code).startswith("prog: error: ")


def test_a_bug_keeps_its_traceback():
    def run(_args):
        raise TypeError("a bug of ours")

    with pytest.raises(TypeError):
        run_cli("prog", run, [])


def test_itl_debug_reraises_user_errors(monkeypatch):
    monkeypatch.setenv("ITL_DEBUG", "1")

    def run(_args):
        raise ValueError("bad")

    with pytest.raises(ValueError):
        run_cli("prog", run, [])


def test_an_error_reported_by_rank_zero_exits_quietly(capsys):
    def run(_args):
        raise ReportedElsewhere

    assert exit_of(run_cli, "prog", run, []).code == 1
    assert capsys.readouterr().err == ""


def test_ctrl_c_is_one_line_and_an_interrupted_outcome_exits_130(capsys):
    def interrupt(_args):
        raise KeyboardInterrupt

    assert "interrupted" in str(exit_of(run_cli, "prog", interrupt, []).code)

    class Stopped:
        interrupted = True

    shown = []
    assert exit_of(run_cli, "prog", lambda _a: Stopped(), [], show=shown.append).code == 130
    assert len(shown) == 1  # the summary of what was saved is still printed


def test_only_the_main_process_prints(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    shown = []
    assert run_cli("prog", lambda _a: "done", [], show=shown.append, first_line=lambda _a: "starting") == "done"
    assert shown == [] and capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    run_cli("prog", lambda _a: "done", [], show=shown.append, first_line=lambda _a: "starting")
    assert shown == ["done"] and capsys.readouterr().err == "prog: starting\n"


def test_the_first_line_is_skipped_for_help(capsys):
    run_cli("prog", lambda _a: None, ["--help"], first_line=lambda _a: "starting")
    assert capsys.readouterr().err == ""


def test_hub_access_is_off_unless_the_user_says_otherwise(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    run_cli("prog", lambda _a: None, [])
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    run_cli("prog", lambda _a: None, [])
    assert os.environ["HF_HUB_OFFLINE"] == "0"


# Every console command, given an output folder under a file (or a file that is no world): one line, exit 1.
BAD_INPUT = {
    "itl-sft": ["--output_dir", "{tmp}/a-file/run", "--world", "{tmp}/w.db"],
    "itl-grpo": ["--output_dir", "{tmp}/a-file/run", "--world", "{tmp}/w.db"],
    "itl-pretrain": ["--out", "{tmp}/a-file/run", "--people", "4", "--steps", "1"],
    "itl-recall": ["--world", "{tmp}/not-a-world.db"],
    "itl-retention": ["--model", "{tmp}/no-model"],
    "itl-study": ["--preset", "tiny", "--out", "{tmp}/a-file/study"],
    "itl-finetune-study": ["--preset", "tiny", "--out", "{tmp}/a-file/study"],
    "itl-ste": ["explore", "--preset", "tiny", "--out", "{tmp}/a-file/ste"],
    "itl-world": ["--people", "3", "--out", "{tmp}/a-file/w.db"],
    "itl-mcp": ["--world", "{tmp}/not-a-world.db"],
}


def console_scripts() -> dict[str, str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def test_every_console_command_is_covered_here():
    assert set(console_scripts()) == set(BAD_INPUT)


@pytest.mark.parametrize("command", sorted(BAD_INPUT))
def test_bad_input_to_every_command_is_one_line_and_leaves_nothing(command, tmp_path, monkeypatch, capsys):
    (tmp_path / "a-file").write_text("a file, not a folder")
    (tmp_path / "not-a-world.db").write_text("not a database")
    module, _, function = console_scripts()[command].partition(":")
    entry = getattr(importlib.import_module(module), function)
    argv = [arg.format(tmp=tmp_path) for arg in BAD_INPUT[command]]
    monkeypatch.setattr(sys, "argv", [command, *argv])
    before = sorted(p.name for p in tmp_path.iterdir())
    done = exit_of(entry, argv)
    logging.getLogger().handlers.clear()  # the entry point configured logging for this process; leave it as found
    message = str(done.code)
    assert ": error: " in message and "\n" not in message, message
    assert "Traceback" not in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "w.db") == [n for n in before if n != "w.db"]
    assert (tmp_path / "a-file").read_text() == "a file, not a folder"
