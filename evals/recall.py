"""Recall evaluation: a model plays ``ToolUseEnv`` (multi-turn, tools executed for real) on every fact of a split.

    python -m evals.recall --model runs/sft/model --backend hf --world data/world.db --split train --limit 1000
    python -m evals.recall --model runs/sft/model --backend vllm --world data/world.db --split unseen --out results/
    python -m evals.recall --backend openai --base-url http://127.0.0.1:8000/v1 --world data/world.db --resume
    python evals/recall.py --config configs/recall.yaml --split unseen

Writes ``OUT/records-SPLIT.jsonl`` (one ``FactRecord`` per fact, appended as episodes finish;
``--resume`` skips the facts already there), ``OUT/summary-SPLIT.json`` (``RecallSummary``:
recall, tool-call rate, parse-error rate, turns, generated tokens/s, engine start-up) and
``OUT/config-SPLIT.json`` (the resolved config). Decoding is greedy, so the hf, vllm and openai
backends give the same records for the same model.

``--model default`` is the embedded untrained default model (saved to ``OUT/default-model`` for
the vllm backend); for the openai backend ``--model`` is the served model name (default: the
server's first).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError

if __package__ in (None, ""):  # `python evals/recall.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

logger = logging.getLogger("evals.recall")

Backend = Literal["hf", "vllm", "openai"]


class RecallConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        "default", description="model directory, hub id or 'default'; for openai the served name (none: the first)"
    )
    backend: Backend = Field("hf", description="hf (transformers), vllm (offline engine) or openai (a server)")
    world: str | None = Field(None, description="world SQLite path or SQLAlchemy URL (none: a small generated world)")
    split: Literal["train", "unseen"] = Field("train", description="people asked about")
    mode: Literal["in_tool", "in_weight"] = Field("in_tool", description="offer the lookup tool or not")
    tool_format: Literal["hermes", "find"] = Field("hermes", description="tool-call text format the env parses")
    limit: int | None = Field(None, ge=1, description="evaluate the first N facts of the split (none: all)")
    out: str = Field("results", description="output directory")
    resume: bool = Field(False, description="keep the records already in OUT and play only the missing facts")
    max_turns: int = Field(4, ge=1, description="assistant messages per episode")
    max_new_tokens: int = Field(128, ge=1, description="token limit per assistant message")
    batch_size: int = Field(256, ge=1, description="episodes played in lockstep (one generate call per turn)")
    seed: int = Field(0, description="phrasing seed of the questions")
    dtype: str = Field("float32", description="weights dtype for hf and vllm: float32, bfloat16, float16 or auto")
    progress: bool = Field(True, description="show a progress bar")
    # hf
    hf_batch_size: int = Field(64, ge=1, description="hf: sequences per generate call")
    device: str = Field("cpu", description="hf: torch device (cpu, cuda, cuda:1)")
    threads: int | None = Field(None, ge=1, description="hf: torch CPU threads (none: torch's choice)")
    # vllm
    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs per model replica (tensor parallel)")
    pipeline_parallel_size: int = Field(1, ge=1, description="vllm: pipeline stages per replica")
    data_parallel_size: int = Field(1, ge=1, description="vllm: model replicas, each in its own process")
    max_model_len: int | None = Field(None, ge=1, description="vllm: context length (none: the model's)")
    enforce_eager: bool = Field(False, description="vllm: skip torch.compile (faster start, slower decode)")
    engine_args: dict[str, Any] = Field(default_factory=dict, description="vllm: more vllm.LLM arguments (YAML only)")
    # openai
    base_url: str = Field("http://127.0.0.1:8000/v1", description="openai: the server's /v1 URL")
    api_key: str | None = Field(None, description="openai: API key (none: $OPENAI_API_KEY or 'EMPTY')")
    concurrency: int = Field(64, ge=1, description="openai: requests in flight")
    timeout: float = Field(120.0, gt=0, description="openai: seconds per request")

    @property
    def out_dir(self) -> Path:
        return Path(self.out)


class RecallSummary(BaseModel):
    """The numbers of one evaluation; throughput counts only the episodes played in this run."""

    model_config = ConfigDict(extra="forbid")

    model: str
    backend: str
    split: str
    mode: str
    episodes: int
    recall: float
    tool_call_rate: float
    parse_error_rate: float
    truncation_rate: float
    mean_turns: float
    tokens_generated: int | None
    played: int = Field(description="episodes played in this run (the rest came from --resume)")
    seconds: float = Field(description="wall time of the episodes played, engine start-up excluded")
    facts_per_s: float
    tokens_per_s: float | None
    startup_s: float = Field(description="time to load the model or start the engine")


def build_policy(cfg: RecallConfig, tools: list[dict[str, Any]]) -> Any:
    """The backend's policy for ``cfg`` (``tools``: the schemas the environment offers)."""
    if cfg.backend == "hf":
        import torch

        from evals.backends.hf import HFPolicy
        from evals.models import load

        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        dtype = None if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
        model, tokenizer = load(cfg.model or "default", for_training=False, dtype=dtype)
        if cfg.model == "default" and dtype is not None:
            model = model.to(dtype)
        model.to(cfg.device)
        return HFPolicy(model, tokenizer, tools, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.hf_batch_size)
    if cfg.backend == "vllm":
        from evals.backends.vllm import VLLMPolicy

        path = cfg.model or "default"
        if path == "default":
            from evals import default_model

            path = str(cfg.out_dir / "default-model")
            if not (Path(path) / "config.json").exists():
                default_model.save(path)
        return VLLMPolicy(
            path,
            tools,
            max_new_tokens=cfg.max_new_tokens,
            dtype=cfg.dtype,
            max_model_len=cfg.max_model_len,
            tensor_parallel_size=cfg.tensor_parallel_size,
            pipeline_parallel_size=cfg.pipeline_parallel_size,
            data_parallel_size=cfg.data_parallel_size,
            enforce_eager=cfg.enforce_eager,
            seed=cfg.seed,
            cache_dir=cfg.out_dir / ".cache",
            engine_args=cfg.engine_args,
        )
    from evals.backends.openai import OpenAIPolicy

    model = None if cfg.model == "default" else cfg.model
    return OpenAIPolicy(
        cfg.base_url,
        tools,
        model=model,
        api_key=cfg.api_key,
        max_new_tokens=cfg.max_new_tokens,
        concurrency=cfg.concurrency,
        timeout=cfg.timeout,
    )


def main(cfg: RecallConfig) -> RecallSummary:
    from itl_env.env import ToolUseEnv
    from itl_env.rollout import read_records, rollout
    from itl_env.world import World

    world = World.open(cfg.world) if cfg.world else ToolUseEnv().world
    policy = None
    try:
        facts = world.facts(cfg.split)[: cfg.limit]
        if not facts:
            raise ValueError(f"the world at {world.url} has no {cfg.split} facts")
        out = cfg.out_dir
        out.mkdir(parents=True, exist_ok=True)
        records_path = out / f"records-{cfg.split}.jsonl"
        (out / f"config-{cfg.split}.json").write_text(cfg.model_dump_json(indent=2) + "\n", encoding="utf-8")
        offer = cfg.mode == "in_tool"

        def env_factory() -> ToolUseEnv:
            return ToolUseEnv(world, tool_format=cfg.tool_format, offer_tools=offer, max_turns=cfg.max_turns)

        previous = len(read_records(records_path)) if cfg.resume and records_path.exists() else 0
        start = time.perf_counter()
        policy = build_policy(cfg, env_factory().tools)
        startup = getattr(policy, "startup_s", None) or time.perf_counter() - start
        result = rollout(
            policy,
            env_factory,
            facts,
            mode=cfg.mode,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            out=records_path,
            resume=cfg.resume,
            progress=cfg.progress,
            desc=f"recall {cfg.backend} {cfg.split}",
        )
    finally:
        if policy is not None and hasattr(policy, "close"):
            policy.close()
        world.close()
    wanted = {f.id for f in facts}
    records = [r for r in result.records if r.fact_id in wanted]
    summary = summarise(cfg, records, played=result.records[previous:], seconds=result.summary.seconds)
    summary = summary.model_copy(update={"startup_s": round(startup, 3)})
    (out / f"summary-{cfg.split}.json").write_text(summary.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return summary


def summarise(cfg: RecallConfig, records: list[Any], *, played: list[Any], seconds: float) -> RecallSummary:
    """Recall and rates over ``records``; throughput over the ``played`` ones in ``seconds``."""
    n = max(len(records), 1)
    tokens = [r.tokens_generated for r in records]
    played_tokens = [r.tokens_generated for r in played]
    known = None not in played_tokens
    return RecallSummary(
        model=cfg.model or "",
        backend=cfg.backend,
        split=cfg.split,
        mode=cfg.mode,
        episodes=len(records),
        recall=sum(r.correct for r in records) / n,
        tool_call_rate=sum(r.tool_called for r in records) / n,
        parse_error_rate=sum(r.parse_error is not None for r in records) / n,
        truncation_rate=sum(r.truncated for r in records) / n,
        mean_turns=sum(r.turns for r in records) / n,
        tokens_generated=None if None in tokens else sum(tokens),
        played=len(played),
        seconds=round(seconds, 3),
        facts_per_s=round(len(played) / seconds, 3) if seconds > 0 else 0.0,
        tokens_per_s=round(sum(played_tokens) / seconds, 1) if known and played and seconds > 0 else None,
        startup_s=0.0,
    )


def _flag_type(annotation: Any) -> tuple[Any, dict[str, Any]]:
    """argparse ``type`` and extra kwargs for a field's annotation (optional values accept 'none')."""
    if get_origin(annotation) in (typing.Union, types.UnionType):
        inner = next(a for a in get_args(annotation) if a is not type(None))
        kind, extra = _flag_type(inner)
        return (lambda text, t=kind: None if text.lower() == "none" else t(text)), extra
    if get_origin(annotation) is Literal:
        return str, {"choices": list(get_args(annotation))}
    return annotation, {}


def parse(argv: list[str] | None = None) -> RecallConfig:
    """``RecallConfig`` from defaults < ``--config`` YAML < the flags given; unknown keys are an error."""
    import yaml

    parser = argparse.ArgumentParser(
        prog="python -m evals.recall",
        description="Play ToolUseEnv with a model on every fact of a split; write per-fact records and a summary.",
    )
    parser.add_argument("--config", help="YAML file of options (the flags' names with underscores); flags override it")
    for name, field in RecallConfig.model_fields.items():
        if get_origin(field.annotation) is dict:
            continue  # engine_args: a mapping, YAML only
        default = field.default if field.default is not None else "none"
        help_text = f"{field.description} (default: {default})".replace("%", "%%")
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            kind, extra = _flag_type(field.annotation)
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=help_text, **extra)
    args = vars(parser.parse_args(argv))
    data: dict[str, Any] = {}
    if args.get("config"):
        data = yaml.safe_load(Path(args.pop("config")).read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            parser.error(f"{args.get('config')}: a config file must be a mapping of option: value")
    args.pop("config", None)
    try:
        return RecallConfig.model_validate({**data, **args})
    except ValidationError as err:
        parser.error(str(err))
        raise  # unreachable: parser.error exits


def cli(argv: list[str] | None = None) -> RecallSummary:
    cfg = parse(argv)
    try:
        summary = main(cfg)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"evals.recall: {err}")
    print(json.dumps(summary.model_dump(), indent=2))
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cli()
