"""What the TRL trainers (SFT, GRPO) share: LoRA, graceful stop on signals, periodic recall, the run's tail.

A run is evaluated by ``evals.evaluator.RecallEvaluator`` every ``eval_every`` steps on fixed samples, at the end
on ``final_eval_facts`` per split: with the model being trained as an HF policy, or (``--eval_backend vllm``) by a
vLLM engine in vLLM's own interpreter that reloads each checkpoint's weights (``CheckpointEngine``).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from evals.backends.hf import HFPolicy
from evals.evaluator import RecallEvaluator
from trainers import run_dir
from trainers.options import RunOptions

logger = logging.getLogger(__name__)

FINAL_KEYS = ("train_recall", "unseen_recall", "tool_call_rate", "parse_error_rate")


def lora_config(cfg: RunOptions, tokenizer: Any) -> Any:
    """PEFT's LoRA config for ``cfg`` (None without ``--lora``).

    The template's tokens (``<tool_call>``, ``</tool_call>`` and the turn markers) get trainable embedding rows:
    a model given the project's template has just had them added, and under plain LoRA the embeddings are
    frozen, so the tokens of every tool call would keep their random initial vectors.
    """
    if not cfg.lora:
        return None
    from peft import LoraConfig

    from itl_env.chat_template import template_token_ids

    targets: Any = (
        cfg.lora_target_modules if cfg.lora_target_modules == "all-linear" else cfg.lora_target_modules.split(",")
    )
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        target_modules=targets,
        task_type="CAUSAL_LM",
        trainable_token_indices={"embed_tokens": template_token_ids(tokenizer)},
    )


class GracefulStop:
    """First SIGINT/SIGTERM: save a checkpoint and stop after the current step. Second: stop now."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("signal %d: saving a checkpoint and stopping after this step (again to stop at once)", signum)


def eval_backend(choice: str, *, lora: bool, processes: int) -> str:
    """``hf`` or ``vllm``: what the ``choice`` of evaluation backend (hf, vllm, auto) comes to for a run that trains
    a LoRA adapter or not, on ``processes`` processes (``auto``: vllm where it can be used).
    """
    from evals.backends.vllm_process import vllm_python

    if choice == "hf":
        return "hf"
    obstacles = [
        reason
        for reason, present in (
            ("vLLM is not installed (`make vllm-env`, or ITL_VLLM_PYTHON)", vllm_python() is None),
            ("the run trains a LoRA adapter (the engine reloads whole weights)", lora),
            (f"the run has {processes} processes (one engine serves one process)", processes > 1),
        )
        if present
    ]
    if choice == "vllm" and obstacles:
        raise ValueError(f"--eval_backend vllm: {'; '.join(obstacles)}")
    return "vllm" if choice == "vllm" or (choice == "auto" and not obstacles) else "hf"


class CheckpointEngine:
    """vLLM over the model being trained: at each evaluation its weights are saved to ``folder`` and reloaded in
    place by one engine (started at the first), so the engine's start-up is paid once per run.
    """

    def __init__(self, tokenizer: Any, tools: list[dict[str, Any]], cfg: RunOptions, folder: Path):
        self.tokenizer, self.tools, self.cfg, self.folder = tokenizer, tools, cfg, folder
        self.engine: Any = None

    def __call__(self, model: Any) -> Any:
        import shutil

        from evals.backends.vllm_process import VLLMProcess

        shutil.rmtree(self.folder, ignore_errors=True)
        model.save_pretrained(self.folder, safe_serialization=True)
        self.tokenizer.save_pretrained(self.folder)
        if self.engine is not None:
            self.engine.reload(self.folder)
            return self.engine
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")  # the precision HF would evaluate in
        self.engine = VLLMProcess(
            self.folder,
            self.tools,
            max_new_tokens=self.cfg.max_new_tokens,
            dtype=dtype,
            log=self.folder.parent / "vllm-engine.log",
            cache_dir=self.folder.parent,
        )
        return self.engine

    def close(self) -> None:
        import shutil

        if self.engine is not None:
            self.engine.close()
            self.engine = None
        shutil.rmtree(self.folder, ignore_errors=True)


class ModelRecall:
    """Recall of the model being trained, played by the run's one evaluator: an HF policy over it, or a vLLM engine
    over its saved weights (``backend="vllm"``: ``CheckpointEngine``). ``close()`` after training.
    """

    def __init__(
        self,
        evaluator: RecallEvaluator,
        tokenizer: Any,
        cfg: RunOptions,
        out: Path,
        *,
        facts: bool = True,
        tasks: Sequence[Any] = (),
        backend: str = "hf",
    ):
        self.evaluator, self.tokenizer, self.cfg, self.records = evaluator, tokenizer, cfg, out / "records"
        self.facts, self.tasks = facts, list(tasks)
        self.engine = (
            CheckpointEngine(tokenizer, evaluator.tools, cfg, out / "eval-model") if backend == "vllm" else None
        )

    @classmethod
    def of_run(cls, run: Any, cfg: RunOptions, registry: Any, *, facts: bool = True, tasks: Sequence[Any] = ()) -> Any:
        """The recall of a started run (``trainers.run_start.RunStart``): its world, tools and ranks."""
        backend = eval_backend(cfg.eval_backend, lora=cfg.lora, processes=run.ranks.size)
        evaluator = RecallEvaluator(
            run.world,
            mode=cfg.mode,
            registry=registry,
            max_turns=cfg.max_turns,
            batch_size=cfg.eval_batch_size,
            ranks=run.ranks,
        )
        return cls(evaluator, run.tokenizer, cfg, run.out, facts=facts, tasks=tasks, backend=backend)

    def policy(self, model: Any) -> Any:
        """What plays ``model``'s episodes: the run's vLLM engine with its weights loaded, or an HF policy over it."""
        if self.engine is not None:
            return self.engine(model)
        return HFPolicy(
            model,
            self.tokenizer,
            self.evaluator.tools,
            max_new_tokens=self.cfg.max_new_tokens,
            batch_size=self.cfg.eval_batch_size,
        )

    def __call__(self, model: Any, *, sample: int, tag: str) -> dict[str, float]:
        self.records.mkdir(parents=True, exist_ok=True)
        policy = self.policy(model)
        summary = dict.fromkeys(FINAL_KEYS, 0.0)
        if self.facts:
            summary = self.evaluator.evaluate_splits(policy, sample=sample, tag=tag, records_dir=self.records)
        if self.tasks:
            accuracy = self.evaluator.evaluate_tasks(policy, self.tasks, out=self.records / f"{tag}-tasks.jsonl")
            summary |= {f"task/{kind}": value for kind, value in accuracy.items()}
        return summary

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


def progress_callback(
    cfg: RunOptions,
    stop: GracefulStop,
    recall: ModelRecall,
    *,
    on_eval: Callable[[int, dict[str, float]], bool] | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
) -> Any:
    """A ``TrainerCallback`` that evaluates recall every ``eval_every`` steps and at the end of training, stops on a
    signal or when ``on_eval(step, summary)`` says so (a checkpoint is saved first), and logs every number to
    metrics.jsonl and to the trackers of ``--report_to``. ``attach(trainer, metrics)`` before training.
    """
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def __init__(self) -> None:
            self.cfg, self.stop = cfg, stop
            self.trainer: Any = None
            self.metrics: run_dir.MetricsLog | None = None
            self.final: dict[str, float] | None = None
            self.waiting: list[dict[str, Any]] = []  # reported before training began: the trackers are not open yet
            self.waiting_done = False

        def attach(self, trainer: Any, metrics: run_dir.MetricsLog) -> None:
            """Report through ``trainer`` (to ``metrics`` on the main process); first in line, so that the final
            evaluation (at ``on_train_end``) reaches the trackers before they close their runs.
            """
            self.trainer, self.metrics = trainer, metrics
            handler = trainer.callback_handler
            handler.callbacks.insert(0, handler.pop_callback(self))

        def report(self, values: dict[str, Any]) -> None:
            """``values`` to every callback's ``on_log``: the trackers' and this one's (metrics.jsonl). Before the
            first step (GRPO's initial recall) they wait until the trackers have opened their runs.
            """
            trainer = self.trainer
            if trainer.state.global_step == 0 and not self.waiting_done:
                self.waiting.append(values)
                return
            trainer.state.log_history.append({**values, "step": trainer.state.global_step})
            trainer.control = trainer.callback_handler.on_log(trainer.args, trainer.state, trainer.control, values)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if state.is_world_process_zero and logs and self.metrics is not None:
                self.metrics.write(step=state.global_step, **logs)
            if logs and on_log is not None:
                on_log(logs)

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.flush_waiting()

        def flush_waiting(self) -> None:
            self.waiting_done = True
            for values in self.waiting:
                self.report(values)
            self.waiting = []

        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            if stop.requested:
                control.should_save = control.should_training_stop = True
                return
            if cfg.eval_every and state.global_step % cfg.eval_every == 0:
                # every rank plays its share of the facts and gets the same summary, so all stop together
                summary = recall(model, sample=cfg.eval_sample, tag=f"step{state.global_step}")
                self.report({f"eval/{k}": v for k, v in summary.items()})
                if on_eval is not None and on_eval(state.global_step, summary):
                    control.should_save = control.should_training_stop = True

        def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            self.flush_waiting()
            if not stop.requested:
                self.final = recall(model, sample=cfg.final_eval_facts, tag="final")
                self.report({f"final/{k}": v for k, v in self.final.items()})

    return Progress()


def precision_of(out: Path) -> str:
    """The regime recorded in the run's run.json (empty for a run started before regimes were recorded)."""
    import json

    try:
        return str(json.loads((out / "run.json").read_text(encoding="utf-8")).get("precision", ""))
    except (OSError, ValueError):
        return ""


def run_result(
    result_type: type,
    trainer: Any,
    cfg: RunOptions,
    out: Path,
    trained: Any,
    trainable: int,
    final: dict[str, float],
    interrupted: bool,
    started: float,
    **extra: Any,
) -> Any:
    """The run's ``RunResult`` (or subclass), written to ``summary.json`` by the main process."""
    import time

    result = result_type(
        run_dir=str(out),
        mode=cfg.mode,
        model=cfg.model,
        parameters=sum(p.numel() for p in trained.parameters()),
        trainable_parameters=trainable,
        steps=trainer.state.global_step,
        wall_seconds=round(time.perf_counter() - started, 1),
        interrupted=interrupted,
        precision=precision_of(out),
        task_accuracy={k.removeprefix("task/"): v for k, v in final.items() if k.startswith("task/")},
        **{k: final[k] for k in FINAL_KEYS},
        **extra,
    )
    if trainer.is_world_process_zero():
        (out / "summary.json").write_text(result.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return result


WEIGHTS = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


def last_checkpoint(out: Path) -> str | None:
    """The latest complete ``checkpoint-<step>`` of ``out`` (trainer state and weights present), or None.

    A folder of another name, or a checkpoint cut short (a process killed while saving), is passed over with a
    warning naming it, and the run resumes from the checkpoint before.
    """
    complete = []
    for folder in out.glob("checkpoint-*"):
        step = folder.name.removeprefix("checkpoint-")
        if not (folder.is_dir() and step.isdigit()):
            logger.warning("%s is not a checkpoint-<step> folder: not resumed from", folder)
        elif not (folder / "trainer_state.json").is_file() or not any((folder / w).is_file() for w in WEIGHTS):
            logger.warning("%s is incomplete (no trainer_state.json or no weights): not resumed from", folder)
        else:
            complete.append((int(step), folder))
    if not complete:
        logger.warning("no complete checkpoint in %s: training starts from the beginning", out)
        return None
    return str(max(complete)[1])


def train_and_finish(trainer: Any, progress: Any, tokenizer: Any) -> tuple[Any, int, dict[str, float], bool]:
    """Train (resuming if asked) until done or stopped, evaluating at the end (``progress``); then merge LoRA and
    save the model.

    Returns (trained model, trainable parameters, final evaluation, interrupted). An interrupted run
    keeps its checkpoints and is neither saved nor evaluated.
    """
    cfg, stop, out = progress.cfg, progress.stop, Path(trainer.args.output_dir)
    interrupted = False
    stop.install()
    try:
        trainer.train(resume_from_checkpoint=last_checkpoint(out) if cfg.resume else None)
    except KeyboardInterrupt:
        interrupted = True
        logger.warning("interrupted: checkpoints in %s are kept; continue with --resume true", out)
    finally:
        stop.uninstall()
    interrupted = interrupted or stop.requested
    trained = trainer.model
    trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    if cfg.lora and cfg.merge_lora:
        trained = trained.merge_and_unload()
    final = progress.final if progress.final is not None and not interrupted else dict.fromkeys(FINAL_KEYS, 0.0)
    if trainer.is_world_process_zero() and not interrupted:
        trained.save_pretrained(out / "model")
        tokenizer.save_pretrained(out / "model")
        logger.info("model saved in %s", out / "model")
    return trained, trainable, final, interrupted
