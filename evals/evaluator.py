"""``RecallEvaluator``: the one recall evaluation, called by every trainer and by ``python -m evals.recall``.

A policy (anything with ``generate(conversations) -> list[str]``: HF, vLLM, an OpenAI-compatible
server, nanoLlama, the oracle) plays ``ToolUseEnv`` on facts of a world, the tools executed for
real, one JSONL ``FactRecord`` per episode; the summary is ``itl_env.rollout.summarise``'s.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from pathlib import Path

from configs import jsonl
from evals.ranks import Ranks
from itl_env.env import ToolUseEnv
from itl_env.rollout import Policy, RolloutResult, rollout, summarise
from itl_env.tasks import Task
from itl_env.tool_choice import AUTO, check
from itl_env.world import SPLITS, Fact, World
from tools.registry import ToolRegistry

logger = logging.getLogger(__name__)

SAMPLE_SEED = 1234  # fixed: every evaluation of a run sees the same sampled facts


class RecallEvaluator:
    """Plays the environment with a policy on facts of ``world`` and summarises recall."""

    def __init__(
        self,
        world: World,
        *,
        mode: str,
        tool_format: str = "hermes",
        registry: ToolRegistry | None = None,
        max_turns: int = 3,
        batch_size: int = 128,
        seed: int = 0,
        ranks: Ranks | None = None,
        tool_choice: Sequence[str] = (AUTO,),
    ):
        if mode not in ("in_tool", "in_weight"):
            raise ValueError(f"unknown mode {mode!r}; valid: in_tool, in_weight")
        self.world, self.mode, self.tool_format, self.registry = world, mode, tool_format, registry
        self.max_turns, self.batch_size, self.seed = max_turns, batch_size, seed
        # the ranks that evaluate together (every one must call evaluate); by default this process alone
        self.ranks = ranks or Ranks()
        self.tools = self.env().tools
        names = [t["function"]["name"] for t in self.tools or []]
        self.tool_choice = check(tool_choice, names)  # per assistant turn, the last repeating (itl_env.tool_choice)

    def env(self) -> ToolUseEnv:
        """One environment of this evaluation (tools offered only in_tool)."""
        return ToolUseEnv(
            self.world,
            tool_format=self.tool_format,
            registry=self.registry,
            offer_tools=self.mode == "in_tool",
            max_turns=self.max_turns,
        )

    def sample(self, split: str, n: int) -> list[Fact]:
        """A fixed random sample of ``n`` facts of ``split`` (all of them for 0 or more than there are)."""
        facts = self.world.facts(split)
        return list(facts) if n == 0 or n >= len(facts) else random.Random(SAMPLE_SEED).sample(facts, n)

    def evaluate(
        self,
        policy: Policy,
        facts: Sequence[Fact | Task],
        *,
        out: str | Path | None = None,
        resume: bool = False,
        progress: bool = False,
        desc: str = "eval",
    ) -> RolloutResult:
        """Play every fact once (records appended to ``out`` as episodes end; ``resume`` keeps those there).

        Evaluated by several ``ranks`` (each must call this), every rank plays its share of the facts; the
        records are pooled on every rank (the same records, in the same order, as one process would write) and
        rank 0 writes ``out``.
        """
        ranks = self.ranks
        alone = ranks.size == 1
        if resume and not alone:
            raise ValueError("an evaluation resumes in one process only (run it without torchrun)")
        started = time.perf_counter()
        share = rollout(
            policy,
            self.env,
            facts,
            mode=self.mode,
            batch_size=self.batch_size,
            seed=self.seed,
            out=out if alone else None,
            resume=resume,
            progress=progress and ranks.main,
            desc=desc if alone else f"{desc} (rank 0 of {ranks.size})",
            shard=(ranks.rank, ranks.size),
            tool_choice=self.tool_choice,
        )
        if alone:
            return share
        records = ranks.interleave(ranks.gather(share.records))
        if out is not None and ranks.main:
            Path(out).unlink(missing_ok=True)
            jsonl.append(out, records)
        return RolloutResult(records=records, summary=summarise(records, time.perf_counter() - started))

    def evaluate_splits(
        self, policy: Policy, *, sample: int, tag: str, records_dir: Path | None = None, progress: bool = True
    ) -> dict[str, float]:
        """Recall on fixed samples of training and unseen facts (``records_dir/<tag>-<split>.jsonl``).

        Both samples are played as one batch (a batched backend fills its batch with both splits' episodes
        instead of playing two half-empty ones in turn), then summarised apart. Keys: ``<split>_recall``,
        ``<split>_tool_call_rate``, ``<split>_parse_error_rate`` per split, and ``tool_call_rate`` /
        ``parse_error_rate`` over every evaluated episode.
        """
        samples = {split: self.sample(split, sample) for split in SPLITS}
        facts = [fact for split in SPLITS for fact in samples[split]]
        started = time.perf_counter()
        records = self.evaluate(policy, facts, progress=progress, desc=f"eval {tag}").records if facts else []
        seconds = time.perf_counter() - started
        summary: dict[str, float] = {}
        first = 0
        for split in SPLITS:
            played, first = records[first : first + len(samples[split])], first + len(samples[split])
            if not played:
                continue
            if records_dir is not None and self.ranks.main:
                out = records_dir / f"{tag}-{split}.jsonl"
                out.parent.mkdir(parents=True, exist_ok=True)
                out.unlink(missing_ok=True)
                jsonl.append(out, played)
            result = summarise(played, seconds * len(played) / len(records))
            summary |= {
                f"{split}_recall": result.recall,
                f"{split}_tool_call_rate": result.tool_call_rate,
                f"{split}_parse_error_rate": result.parse_error_rate,
            }
            logger.info(
                "%s %s: recall %.3f, tool calls %.3f, parse errors %.3f (%d facts)",
                tag,
                split,
                result.recall,
                result.tool_call_rate,
                result.parse_error_rate,
                result.episodes,
            )
        summary.setdefault("unseen_recall", 0.0)
        pooled = summarise(records, seconds)
        return summary | {"tool_call_rate": pooled.tool_call_rate, "parse_error_rate": pooled.parse_error_rate}

    def evaluate_tasks(
        self, policy: Policy, tasks: Sequence[Task], *, out: Path | None = None, progress: bool = True
    ) -> dict[str, float]:
        """Accuracy per tool-task kind (exact scoring through the environment, tools executed for real)."""
        records = self.evaluate(policy, tasks, out=out, progress=progress, desc="tool tasks").records
        kinds: dict[str, list[bool]] = {}
        for record in records:
            kinds.setdefault(record.task, []).append(record.correct)
        for kind, results in kinds.items():
            logger.info("task %s: accuracy %.3f (%d tasks)", kind, sum(results) / len(results), len(results))
        return {kind: sum(results) / len(results) for kind, results in sorted(kinds.items())}
