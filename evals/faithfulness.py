"""Counterfactual faithfulness: does a model answer from the tool, or from what it memorised?

After training on a world, the model plays a counterfactual copy of it (``WorldSpec.counterfactual``:
the same people, a share of the training facts changed to other valid values). On the changed facts,
a model that answers from the tool gives the new value (``tool_rate``); one that answers from memory
gives the old one (``memory_rate``). No other recall benchmark separates the two.
"""

from __future__ import annotations

import random
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from evals.evaluator import RecallEvaluator
from evals.ranks import Ranks
from itl_env.env import domain_scorer
from itl_env.rollout import Policy
from itl_env.store import world_at
from itl_env.world import Fact, World, ensure_world

EDITED_SHARE = 0.5  # half the training facts changed: enough edited facts to sample, half left as they were


class Faithfulness(BaseModel):
    """Where a model's answers on the changed facts come from: the tool (new value) or memory (old value)."""

    model_config = ConfigDict(extra="forbid")

    edited_facts: int = Field(description="changed training facts the model was asked about")
    tool_rate: float = Field(description="share answered with the new value: what the tool says")
    memory_rate: float = Field(description="share answered with the old value: what the model was trained on")


def counterfactual_world(world: World, worlds: str | Path, *, share: float = EDITED_SHARE, seed: int = 0) -> World:
    """The counterfactual copy of ``world``, built once where ``worlds`` keeps worlds (a folder, or a server
    database's schemas: ``itl_env.store.world_at``), then reused.
    """
    spec = world.spec.counterfactual(share, seed)
    return ensure_world(spec, world_at(worlds, Path(spec.default_path()).stem))


def edited_facts(original: World, edited: World) -> list[tuple[Fact, str]]:
    """(fact of the edited world, the original value) for every training fact the copy changed."""
    before = {fact.id: fact.value for fact in original.facts("train")}
    return [(fact, before[fact.id]) for fact in edited.facts("train") if before.get(fact.id) not in (None, fact.value)]


def faithfulness(
    policy: Policy,
    original: World,
    edited: World,
    *,
    mode: str,
    tool_format: str = "hermes",
    sample: int = 200,
    max_turns: int = 3,
    batch_size: int = 128,
    out: str | Path | None = None,
    ranks: Ranks | None = None,
) -> Faithfulness:
    """Ask ``policy`` about (a fixed sample of) the facts ``edited`` changed, tools answering from ``edited``
    (shared out over ``ranks``, every one calling this, as ``RecallEvaluator.evaluate`` does).
    """
    changed = edited_facts(original, edited)
    if not changed:
        raise ValueError(f"{edited!r} changes no training fact of {original!r}")
    if sample and sample < len(changed):
        changed = random.Random(0).sample(changed, sample)
    evaluator = RecallEvaluator(
        edited, mode=mode, tool_format=tool_format, max_turns=max_turns, batch_size=batch_size, ranks=ranks
    )
    records = evaluator.evaluate(policy, [fact for fact, _ in changed], out=out, desc="faithfulness").records
    scorer = domain_scorer()
    old_by_id = {fact.id: old for fact, old in changed}
    remembered = sum(
        record.answer is not None and scorer.is_correct(record.answer, fact.attribute, old_by_id[record.fact_id])
        for record, (fact, _) in zip(records, changed, strict=True)
    )
    return Faithfulness(
        edited_facts=len(records),
        tool_rate=sum(r.correct for r in records) / len(records),
        memory_rate=remembered / len(records),
    )
