"""Policies from a config: the hf, vllm and openai backends behind one ``PolicyConfig``.

A policy is anything with ``generate(conversations) -> list[str]``; ``build_policy`` makes the
backend's one for a model, given the tool schemas the environment offers (none for in-weight).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Backend = Literal["hf", "vllm", "openai"]


class PolicyConfig(BaseModel):
    """Which model answers, through which backend, and how it decodes (greedy)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        "default", description="model directory, hub id or 'default'; for openai the served name (none: the first)"
    )
    backend: Backend = Field("hf", description="hf (transformers), vllm (offline engine) or openai (a server)")
    max_new_tokens: int = Field(128, ge=1, description="token limit per assistant message")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="weights dtype for hf and vllm: float32, bfloat16, float16 or auto"
    )
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
    engine_args: dict[str, Any] = Field(default_factory=dict, description="vllm: more vllm.LLM arguments (a mapping)")
    # openai
    base_url: str = Field("http://127.0.0.1:8000/v1", description="openai: the server's /v1 URL")
    api_key: str | None = Field(None, description="openai: API key (none: $OPENAI_API_KEY or 'EMPTY')")
    concurrency: int = Field(64, ge=1, description="openai: requests in flight")
    timeout: float = Field(120.0, gt=0, description="openai: seconds per request")


def build_policy(cfg: PolicyConfig, tools: list[dict[str, Any]], *, cache_dir: Path, seed: int = 0) -> Any:
    """The backend's policy for ``cfg`` (``tools``: the schemas the environment offers; ``cache_dir``: where vLLM
    keeps its caches and ``default`` is saved for it).
    """
    if cfg.backend == "hf":
        import torch

        from evals.backends.hf import HFPolicy
        from evals.models import load

        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        dtype = None if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
        model, tokenizer = load(cfg.model or "default", for_training=False, dtype=dtype)
        model.to(cfg.device)
        return HFPolicy(model, tokenizer, tools, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.hf_batch_size)
    if cfg.backend == "vllm":
        import importlib.util

        from evals.backends.vllm import VLLMPolicy
        from evals.backends.vllm_process import VLLMProcess, vllm_python

        path = cfg.model or "default"
        if path == "default":
            from evals import default_model

            path = str(cache_dir / "default-model")
            if not (Path(path) / "config.json").exists():
                default_model.save(path)
        if importlib.util.find_spec("vllm") is None and vllm_python() is not None:
            if cfg.data_parallel_size > 1 or cfg.tensor_parallel_size > 1 or cfg.pipeline_parallel_size > 1:
                raise ValueError("vLLM runs in its own interpreter here: run parallel engines from .venv-vllm")
            return VLLMProcess(  # vLLM lives in another interpreter (.venv-vllm): its engine in a subprocess there
                path,
                tools,
                max_new_tokens=cfg.max_new_tokens,
                dtype=cfg.dtype,
                log=cache_dir / "vllm-engine.log",
                cache_dir=cache_dir / ".cache",
                engine_args={"seed": seed, "enforce_eager": cfg.enforce_eager, **cfg.engine_args}
                | ({"max_model_len": cfg.max_model_len} if cfg.max_model_len else {}),
            )
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
            seed=seed,
            cache_dir=cache_dir / ".cache",
            engine_args=cfg.engine_args,
        )
    from evals.backends.openai import OpenAIPolicy

    return OpenAIPolicy(
        cfg.base_url,
        tools,
        model=None if cfg.model == "default" else cfg.model,
        api_key=cfg.api_key,
        max_new_tokens=cfg.max_new_tokens,
        concurrency=cfg.concurrency,
        timeout=cfg.timeout,
    )
