"""The STE pipeline: explore -> distill -> evaluate (base, in-context, STE fine-tuned, oracle fine-tuned) -> continual.

Each tool is learnt and tested on its own: its dialogs show only its schema, its held-out test
queries are the test phrasings of its ``TaskKind`` (phrased unlike any training query), scored
exactly through ``ToolUseEnv`` with the tool executed for real. Exploration runs once per explorer
(``explorers``): ``leave_one_out``, the explorer fine-tuned on the oracle's dialogs of every tool but
the one it explores and on their imagination (it can call tools and ask about them, and meets this one
for the first time: the explorer STE presumes), and ``base``, the explorer as given. Each imagines and
plays its own trials (imagination sampled, seeded per batch); reflection is the given explorer's. The
first explorer's data is the one STE fine-tunes on and continual learning trains on. Every step
writes its outputs under ``out`` and is skipped when they are there (delete them to redo a step).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

import configs
from configs import jsonl
from itl_env.trajectories import call_arguments

logger = logging.getLogger("studies.ste")

TEST_TASKS = {
    "find_people": "who_was_born_in",
    "count_people": "how_many_live_in",
    "age_on": "age_on",
    "born_between": "born_between",
}


class SteConfig(BaseModel):
    """One STE study: the explorer and learner models, the tools to learn, and the settings of every step."""

    model_config = ConfigDict(extra="forbid")

    preset: str = Field("cpu", description="preset name (configs/ste/<preset>.yaml) and default output folder")
    explorer: str = Field("smollm2-135m", description="the model that imagines, tries and reflects")
    learner: str = Field("smollm2-135m", description="the model fine-tuned on what was explored")
    tools_factory: str = Field("itl_env.people_tools:registry", description="registry factory 'module:callable'")
    tools: list[str] = Field(default_factory=lambda: list(TEST_TASKS), description="tools to learn")
    test_tasks: dict[str, str] = Field(
        default_factory=lambda: dict(TEST_TASKS), description="tool -> TaskKind of its test queries"
    )
    people: int = Field(500, ge=1)
    unseen_people: int = Field(50, ge=0)
    world_seed: int = 0
    episodes: int = Field(24, ge=1, description="exploration episodes per tool")
    trials: int = Field(2, ge=1, description="trials per episode (short-term memory between them)")
    batch: int = Field(12, ge=1, description="episodes explored in lockstep")
    max_turns: int = Field(3, ge=2)
    recent: int = Field(8, ge=0, description="queries of the long-term memory shown to the next proposal")
    cap: int = Field(20, ge=1, description="distilled dialogs per tool at most")
    temperature: float = Field(
        0.8, ge=0, description="sampling temperature of the imagination step (0: greedy); judging is greedy"
    )
    retry_temperature: float = Field(
        0.8,
        ge=0,
        description="sampling temperature of a trial after the first (the first is greedy; 0: every trial greedy, "
        "which repeats the first trial)",
    )
    first_turn: Literal["required", "auto"] = Field(
        "required",
        description="a trial's first turn: required (a call of the explored tool, constrained to its schema) or "
        "auto (the model's choice: the zero-shot protocol, an ablation)",
    )
    example: list[Literal["leave_one_out", "base"]] = Field(
        default_factory=lambda: ["base"],
        description="the explorers shown a worked exchange with another tool (lookup) above each question: the "
        "base, which has never seen a call; the leave-one-out explorer knows the format and copied the example's "
        "values into its calls (2026-12-05)",
    )
    judge: bool = Field(False, description="also ask the explorer STE's three judging criteria")
    paraphrase: bool = Field(False, description="add one paraphrased query per kept dialog")
    reprompt: bool = Field(
        True, description="a trial's reply that is neither a call nor an answer gets an error observation and a turn"
    )
    explorers: list[Literal["leave_one_out", "base"]] = Field(
        default_factory=lambda: ["leave_one_out", "base"],
        min_length=1,
        description="who plays the trials: leave_one_out (the explorer fine-tuned on the oracle's dialogs of lookup "
        "and the other tools, never the one explored) and/or base (the explorer as given); the first one's data is "
        "what STE fine-tunes on and continual learning trains on",
    )
    explorer_dialogs: int = Field(16, ge=1, description="leave_one_out: the oracle's dialogs per other tool")
    test_queries: int = Field(20, ge=1, description="held-out test queries per tool")
    demos: int = Field(3, ge=1, description="in-context: retrieved demonstrations per test query")
    learning_rate: float = Field(1e-4, gt=0)
    epochs: float = Field(2, gt=0)
    batch_size: int = Field(8, ge=1)
    bf16: bool = False
    rounds: list[list[str]] = Field(
        default_factory=lambda: [["find_people", "count_people"], ["age_on", "born_between"]],
        description="continual learning: the tools of each round",
    )
    replay_share: float = Field(0.5, ge=0, le=1, description="share of earlier rounds' dialogs replayed")
    continual_data: Literal["ste", "oracle"] = Field(
        "ste", description="what each round trains on: the distilled STE dialogs or the oracle's (cap per tool)"
    )
    general: int = Field(16, ge=0, description="general non-tool dialogs (the base's own answers) replayed")
    max_new_tokens: int = Field(64, ge=1)
    eval_batch_size: int = Field(32, ge=1)
    threads: int | None = Field(None, ge=1)
    out: str | None = Field(None, description="output folder (default: runs/ste/<preset>)")
    worlds: str | None = Field(
        None,
        description="where the worlds live: a folder or a PostgreSQL URL, each world a schema (default: OUT/worlds)",
    )
    results: str | None = Field(
        None, description="also copy the tables to this folder (e.g. results/) as ste-<output folder's name>-*"
    )

    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs/ste") / self.preset

    @model_validator(mode="after")
    def _tools_agree(self) -> SteConfig:
        """Every tool has its test tasks, and every round names only tools being learned (checked before work)."""
        if not self.tools:
            raise ValueError("tools must name at least one tool to learn")
        untested = [t for t in self.tools if t not in self.test_tasks]
        if untested:
            raise ValueError(f"tools {untested} have no test_tasks entry (tool -> TaskKind); known: {self.test_tasks}")
        if len(set(self.explorers)) < len(self.explorers):
            raise ValueError(f"explorers names an explorer twice: {self.explorers}")
        strays = sorted({t for round_ in self.rounds for t in round_} - set(self.tools))
        if strays:
            raise ValueError(f"rounds name {strays}, which are not among the tools learned ({self.tools})")
        return self


# -------------------------------------------------------------------------------------------- context


class Context:
    """The world, its tool registry, the explorer and the test queries of every tool, opened once."""

    def __init__(self, cfg: SteConfig):
        from itl_env.fact_tools import registry_for
        from itl_env.store import world_at
        from itl_env.tasks import make_tasks, task_kinds
        from itl_env.world import open_or_build

        self.cfg, self.out = cfg, cfg.out_dir()
        world_path = world_at(
            cfg.worlds or self.out / "world", f"world-{cfg.people}-{cfg.unseen_people}-{cfg.world_seed}"
        )
        self.world = open_or_build(world_path, people=cfg.people, unseen_people=cfg.unseen_people, seed=cfg.world_seed)
        self.registry = registry_for(self.world, cfg.tools_factory)
        missing = [t for t in cfg.tools if t not in self.registry]
        if missing:
            raise ValueError(f"{cfg.tools_factory} has no tools {missing}; it has {self.registry.names}")
        self.tests = {
            tool: make_tasks(
                task_kinds([cfg.test_tasks[tool]])[0],
                self.world,
                self.registry,
                cfg.test_queries,
                seed=1000,
                phrasing="test",
            )  # fmt: skip
            for tool in cfg.tools
        }
        self._models: dict[str, tuple[Any, Any]] = {}

    def explored(self, explorer: str) -> Path:
        """Where ``explorer``'s exploration and distillation are written."""
        return self.out / "explorers" / explorer

    def single(self, tool: str) -> Any:
        from tools.registry import ToolRegistry

        return ToolRegistry([self.registry[tool]], timeout_s=self.registry.timeout_s)

    def model(self, name: str) -> tuple[Any, Any]:
        from evals.models import load

        if name not in self._models:
            self._models[name] = load(name, for_training=False)
            self._models[name][0].eval()
        return self._models[name]

    def policy(self, name: str, schemas: list[dict[str, Any]] | None, temperature: float = 0.0) -> Any:
        from evals.backends.hf import HFPolicy

        model, tokenizer = self.model(name)
        return HFPolicy(model, tokenizer, schemas, max_new_tokens=self.cfg.max_new_tokens,
                        batch_size=self.cfg.eval_batch_size, temperature=temperature)  # fmt: skip

    def close(self) -> None:
        self.world.close()


# -------------------------------------------------------------------------------------------- steps


def explore_step(ctx: Context, explorer: str) -> list[Any]:
    from studies.ste.explore import explore

    cfg = ctx.cfg
    if explorer == "leave_one_out":  # each model trained before exploring: a fine-tune reseeds torch
        players = {tool: leave_one_out_explorer(ctx, tool) for tool in cfg.tools}
    else:
        players = dict.fromkeys(cfg.tools, cfg.explorer)
    return explore(
        ctx.world,
        ctx.registry,
        cfg.tools,
        imagine=lambda tool: ctx.policy(players[tool], None, cfg.temperature),
        judge=ctx.policy(cfg.explorer, None),
        trial_policy=lambda tool, schemas, temperature: ctx.policy(players[tool], schemas, temperature),
        out=ctx.explored(explorer),
        episodes=cfg.episodes,
        trials=cfg.trials,
        batch=cfg.batch,
        max_turns=cfg.max_turns,
        recent=cfg.recent,
        seed=cfg.world_seed,
        first_turn=cfg.first_turn,
        example=explorer in cfg.example,
        reprompt=cfg.reprompt,
        retry_temperature=cfg.retry_temperature,
    )


def leave_one_out_explorer(ctx: Context, tool: str) -> str:
    """The explorer that calls tools but never saw ``tool``: ``explorer`` fine-tuned on the oracle's dialogs of
    lookup and every other tool with test tasks (``explorer_dialogs`` each, each dialog offering its own tool).
    """
    return fine_tune_on(ctx, f"explorer-without-{tool}", explorer_rows(ctx, tool), ctx.cfg.explorer)


def explorer_rows(ctx: Context, tool: str) -> list[dict[str, Any]]:
    """What the leave-one-out explorer of ``tool`` is trained on: every other tool's oracle dialogs, and for each
    one its imagination (the imagination prompt of that tool, with the person the question is about among the
    entities shown, answered by its question): it calls tools and asks about them, never ``tool``.
    """
    n = ctx.cfg.explorer_dialogs
    others = [t for t in ctx.cfg.test_tasks if t != tool and t in ctx.registry]
    dialogs = [r for other in others for r in oracle_rows(ctx, other, n)]
    if tool != "lookup" and "lookup" in ctx.registry:
        dialogs += lookup_rows(ctx, n)
    return dialogs + [imagination_row(ctx, row, seed) for seed, row in enumerate(dialogs)]


def imagination_row(ctx: Context, dialog: dict[str, Any], seed: int) -> dict[str, Any]:
    """The imagination step that would have proposed ``dialog``'s question: its tool's imagination prompt, the
    person the question names (or whose value its call asks about) shown first among the entities, the question.
    """
    import numpy as np

    from studies.ste.explore import entities, imagination_prompt

    question = dialog["messages"][0]["content"]
    calls = [c["function"] for m in dialog["messages"] for c in m.get("tool_calls") or []]
    values = {v for call in calls for v in call_arguments(call.get("arguments", {})).values() if isinstance(v, str)}
    fields = ("birth_place", "current_address", "occupation", "birth_date")
    person = next((r for r in ctx.world.rows if r["name"] in question), None) or next(
        (r for r in ctx.world.rows if any(r[f] in values for f in fields)), None
    )
    shown = entities(ctx.world, np.random.default_rng([ctx.cfg.world_seed, seed]), first=person)
    prompt = imagination_prompt(dialog["tools"][0], shown, [])
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": question}],
            "tools": None}  # fmt: skip


def distill_step(ctx: Context, explorer: str, episodes: list[Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from studies.ste.distill import distill, write_dataset

    cfg, folder = ctx.cfg, ctx.explored(explorer)
    done = folder / "distilled.jsonl"
    if done.exists():
        rows = jsonl.read(done)
        return rows, json.loads((folder / "distill.json").read_text(encoding="utf-8"))
    judge = ctx.policy(cfg.explorer, None) if cfg.judge else None
    paraphrase = ctx.policy(cfg.explorer, None) if cfg.paraphrase else None
    rows, stats = distill(episodes, ctx.registry, cap=cfg.cap, judge=judge, paraphrase=paraphrase)
    write_dataset(rows, folder / "distilled")
    (folder / "distill.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    return rows, stats


def lookup_rows(ctx: Context, n: int) -> list[dict[str, Any]]:
    """``n`` of the oracle's fact-recall dialogs (train people, drawn with a fixed seed), lookup alone offered."""
    import random

    from itl_env.trajectories import oracle_conversations

    facts = ctx.world.facts("train")
    picked = random.Random(10).sample(facts, min(n, len(facts)))
    conversations, tools = oracle_conversations(ctx.world, picked, "in_tool", registry=ctx.single("lookup"))
    return [{"messages": c, "tools": tools} for c in conversations]


def oracle_rows(ctx: Context, tool: str, n: int) -> list[dict[str, Any]]:
    """``n`` of the oracle's templated dialogs for ``tool`` (train phrasings), its schema alone offered."""
    from itl_env.tasks import make_tasks, task_kinds
    from itl_env.trajectories import oracle_conversations

    kind = task_kinds([ctx.cfg.test_tasks[tool]])[0]
    single = ctx.single(tool)
    tasks = make_tasks(kind, ctx.world, single, n, seed=10)
    conversations, tools = oracle_conversations(ctx.world, tasks, "in_tool", registry=single)
    return [{"messages": c, "tools": tools} for c in conversations]


def general_rows(ctx: Context) -> list[dict[str, Any]]:
    """Non-tool dialogs to replay: the base learner's own greedy answers to the retention prompts."""
    from evals.divergence import load_prompts

    prompts = load_prompts()[: ctx.cfg.general]
    replies = ctx.policy(ctx.cfg.learner, None).generate([[{"role": "user", "content": p.prompt}] for p in prompts])
    return [
        {"messages": [{"role": "user", "content": p.prompt}, {"role": "assistant", "content": r}], "tools": None}
        for p, r in zip(prompts, replies, strict=True)
        if r.strip()
    ]


def fine_tune_on(ctx: Context, name: str, rows: list[dict[str, Any]], base: str) -> str:
    """Fine-tune ``base`` on ``rows`` into ``out/models/<name>`` (skipped when it is there); its model directory."""
    from trl import SFTConfig

    from studies.ste.distill import write_dataset
    from trainers.fine_tune import SFTScriptConfig, fine_tune
    from trainers.options import no_activation_checkpointing

    cfg = ctx.cfg
    out = ctx.out / "models" / name
    steps = max(1, math.ceil(cfg.epochs * len(rows) / cfg.batch_size))
    # what the model is trained from: a model (finished or half-trained) made from other rows or settings is stale
    inputs = hashlib.sha256(
        json.dumps([base, steps, cfg.batch_size, cfg.learning_rate, cfg.bf16, rows], sort_keys=True).encode()
    ).hexdigest()
    stamp = out.with_name(f"{name}.inputs.sha256")  # beside the run folder, which fine_tune creates itself
    if out.exists() and (not stamp.exists() or stamp.read_text(encoding="utf-8").strip() != inputs):
        logger.warning("%s was trained from other data or settings: training it again", out)
        shutil.rmtree(out)
    if (out / "model" / "config.json").exists():
        return str(out / "model")
    data = write_dataset(rows, ctx.out / "data" / name)
    script = SFTScriptConfig(
        model=base, world=ctx.world.target, tools=cfg.tools_factory, tasks=[], dataset=str(data), eval_every=0,
        resume=(out / "config.yaml").exists(), max_new_tokens=cfg.max_new_tokens,
    )  # fmt: skip
    training = SFTConfig(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate, lr_scheduler_type="constant_with_warmup", warmup_steps=2, logging_steps=5,
        save_strategy="steps", save_steps=max(5, steps // 2), save_total_limit=1, report_to="none",
        assistant_only_loss=True, max_length=2048, seed=0, bf16=cfg.bf16, use_cpu=True, **no_activation_checkpointing(),
    )  # fmt: skip
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(inputs + "\n", encoding="utf-8")
    fine_tune(script, training)
    return str(out / "model")


class DemonstrationPolicy:
    """In-context STE: each conversation is preceded by the explored dialogs most like its question."""

    def __init__(self, inner: Any, demos: list[list[dict[str, Any]]], k: int):
        self.inner, self.demos, self.k = inner, demos, k
        self.last_token_counts: list[int] = []

    def _closest(self, question: str) -> list[dict[str, Any]]:
        words = set(re.findall(r"\w+", question.lower()))
        ranked = sorted(self.demos, key=lambda d: -len(words & set(re.findall(r"\w+", d[0]["content"].lower()))))
        return [m for demo in ranked[: self.k] for m in demo]

    def generate(self, conversations: list[list[dict[str, Any]]]) -> list[str]:
        replies = self.inner.generate([self._closest(c[0]["content"]) + c for c in conversations])
        self.last_token_counts = getattr(self.inner, "last_token_counts", [])
        return replies


def accuracy(ctx: Context, model: str, tools: list[str], demos: dict[str, list] | None = None) -> dict[str, float]:
    """Test-query accuracy of ``model`` per tool (in-context when ``demos`` are given)."""
    from evals.evaluator import RecallEvaluator

    scores = {}
    for tool in tools:
        single = ctx.single(tool)
        policy = ctx.policy(model, single.schemas())
        if demos is not None:
            policy = DemonstrationPolicy(policy, demos.get(tool, []), ctx.cfg.demos)
        evaluator = RecallEvaluator(ctx.world, mode="in_tool", registry=single, max_turns=ctx.cfg.max_turns,
                                    batch_size=ctx.cfg.eval_batch_size)  # fmt: skip
        scores[tool] = next(iter(evaluator.evaluate_tasks(policy, ctx.tests[tool], progress=False).values()))
    return scores


class SteResult(BaseModel):
    """What the STE pipeline measured: exploration per explorer and tool, test correctness per model, continual rounds."""

    model_config = ConfigDict(extra="forbid")

    exploration: list[dict[str, Any]]  # one row per (explorer, tool): episodes, trials, valid calls, kept ...
    dropped: dict[str, dict[str, int]]  # explorer -> why episodes were dropped -> how many
    samples: dict[str, list[dict[str, Any]]]  # explorer -> a few kept dialogs (question, calls, results, answer)
    correctness: list[dict[str, Any]]
    continual: list[dict[str, Any]]
    wall_seconds: float


def run_pipeline(cfg: SteConfig, steps: tuple[str, ...] = ("explore", "distill", "evaluate", "continual")) -> SteResult:
    """The steps asked for, in order; each one's outputs are reused when they exist (see the module docstring)."""
    logger.info(
        "STE %s: %s of tools %s, explorers %s (from %s), learner %s, writing to %s", cfg.preset, " -> ".join(steps),
        ", ".join(cfg.tools), ", ".join(cfg.explorers), cfg.explorer, cfg.learner, cfg.out_dir(),
    )  # fmt: skip
    import torch

    from studies.ste.distill import exploration_yield, kept_samples
    from studies.ste.explore import read_episodes
    from studies.ste.report import write_report

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    configs.claim_output(cfg.out_dir(), cfg, "STE")  # before the world is built into it
    ctx = Context(cfg)
    try:
        distilled, exploration, dropped, samples = {}, [], {}, {}
        for explorer in cfg.explorers:
            if "explore" in steps:
                episodes = explore_step(ctx, explorer)
            else:
                episodes = read_episodes(ctx.explored(explorer) / "explore.jsonl")
            if {"distill", "evaluate", "continual"} & set(steps):
                rows, stats = distill_step(ctx, explorer, episodes)
            else:
                rows, stats = [], {}
            distilled[explorer] = rows
            exploration += [{"explorer": explorer, **row} for row in exploration_yield(episodes, rows, cfg.tools)]
            dropped[explorer] = {k: v for k, v in stats.get("reasons", {}).items() if k != "kept"}
            samples[explorer] = kept_samples(rows, per_tool=2)
        previous = _previous(ctx.out)  # a step not run this time keeps its last results in the report
        correctness = _correctness(ctx, distilled) if "evaluate" in steps else previous.get("correctness", [])
        main = _by_tool(distilled[cfg.explorers[0]], cfg.tools)
        continual = _continual(ctx, main) if "continual" in steps else previous.get("continual", [])
    finally:
        ctx.close()
    result = SteResult(exploration=exploration, dropped=dropped, samples=samples, correctness=correctness,
                       continual=continual, wall_seconds=round(time.perf_counter() - started, 1))  # fmt: skip
    (ctx.out / "ste.json").write_text(result.model_dump_json(indent=2) + "\n", encoding="utf-8")
    write_report(ctx.out, result, cfg.results, cfg.explorers)
    return result


def _by_tool(rows: list[dict[str, Any]], tools: list[str]) -> dict[str, list[dict[str, Any]]]:
    return {tool: [r for r in rows if r["tools"][0]["function"]["name"] == tool] for tool in tools}


def _previous(out: Path) -> dict[str, Any]:
    """The last run's ``ste.json`` (empty when there is none, or it cannot be read: the steps run now still write)."""
    try:
        return SteResult.model_validate_json((out / "ste.json").read_text(encoding="utf-8")).model_dump()
    except (OSError, ValueError):  # pydantic's ValidationError is a ValueError
        return {}


def _correctness(ctx: Context, distilled: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Held-out correctness of the base, and per explorer of the base with its dialogs in context and fine-tuned on
    them; then of the base fine-tuned on as many oracle dialogs per tool as the first explorer kept.
    """
    cfg = ctx.cfg
    settings: dict[str, dict[str, float]] = {"base": accuracy(ctx, cfg.learner, cfg.tools)}
    for explorer, rows in distilled.items():
        by_tool = _by_tool(rows, cfg.tools)
        if rows:  # with nothing explored either would be the base model again
            demos = {tool: [r["messages"] for r in found] for tool, found in by_tool.items()}
            settings[f"STE in-context ({explorer})"] = accuracy(ctx, cfg.learner, cfg.tools, demos)
            model = fine_tune_on(ctx, f"ste-{explorer}", rows, cfg.learner)
            settings[f"STE fine-tuned ({explorer})"] = accuracy(ctx, model, cfg.tools)
    sizes = {tool: len(found) for tool, found in _by_tool(distilled[cfg.explorers[0]], cfg.tools).items()}
    oracle = [r for tool in cfg.tools for r in oracle_rows(ctx, tool, sizes[tool] or cfg.cap)]
    settings["oracle fine-tuned"] = accuracy(ctx, fine_tune_on(ctx, "oracle", oracle, cfg.learner), cfg.tools)
    return [
        {"setting": name, **scores, "mean": sum(scores.values()) / len(scores)} for name, scores in settings.items()
    ]


def round_data(
    fresh: list[dict[str, Any]],
    earlier: list[dict[str, Any]],
    general: list[dict[str, Any]],
    *,
    share: float,
    seed: int,
) -> list[dict[str, Any]]:
    """A round's training dialogs: its own, plus (``share`` > 0) that share of the earlier rounds' dialogs and the
    general non-tool dialogs; without replay, its own only.
    """
    import random

    if share <= 0 or not earlier:
        return list(fresh)
    return [*fresh, *random.Random(seed).sample(earlier, round(share * len(earlier))), *general]


def _continual(ctx: Context, by_tool: dict[str, list]) -> list[dict[str, Any]]:
    """Round by round, each round fine-tuned from the last, with replay of earlier rounds (and general dialogs) or
    without; after every round every tool seen so far is tested.
    """
    cfg = ctx.cfg
    general = general_rows(ctx) if cfg.general else []
    rows_out = []
    if cfg.continual_data == "oracle":
        by_tool = {tool: oracle_rows(ctx, tool, cfg.cap) for tool in cfg.tools}
    rows_per_tool = {tool: len(found) for tool, found in by_tool.items()}
    logger.info("continual rounds on %s dialogs per tool: %s", cfg.continual_data, rows_per_tool)
    measured: dict[tuple[str, tuple[str, ...]], dict[str, float]] = {}  # round 1 is one model for both passes
    for replay in (True, False):
        model, seen, earlier = cfg.learner, [], []
        for number, tools in enumerate(cfg.rounds, 1):
            fresh = [r for tool in tools for r in by_tool.get(tool, [])]
            mixed = round_data(fresh, earlier, general, share=cfg.replay_share if replay else 0.0, seed=number)
            name = f"round{number}" + ("" if number == 1 else "-replay" if replay else "-no-replay")
            model = fine_tune_on(ctx, name, mixed, model) if mixed else model
            seen += tools
            earlier += fresh
            key = (model, tuple(seen))
            scores = measured[key] = measured.get(key) or accuracy(ctx, model, seen)
            rows_out.append({"replay": replay, "round": number, "trained_on": len(mixed), **scores})
    return rows_out
