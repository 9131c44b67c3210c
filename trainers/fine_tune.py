"""In-tool vs in-weight supervised fine-tuning with TRL: the library path of ``trainers/sft.py``.

Both modes train on the oracle's trajectories in ``ToolUseEnv`` (in_tool: ask -> call -> read ->
answer; in_weight: ask -> answer), with the loss on assistant tokens only, and are evaluated by
playing the same environment with the tools executed for real: periodically on fixed samples, and
at the end on the training people and on unseen people.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from evals.ranks import Ranks
from trainers import run_dir
from trainers.hf_training import (
    GracefulStop,
    ModelRecall,
    lora_config,
    progress_callback,
    run_result,
    train_and_finish,
)
from trainers.options import RunOptions, RunResult, cuda_available, no_activation_checkpointing
from trainers.run_start import start_run

logger = logging.getLogger("trainers.sft")


FACT_RECALL = "fact_recall"


class SFTScriptConfig(RunOptions):
    """What to train and how to evaluate it (TRL's SFTConfig holds the optimisation settings)."""

    tasks: list[str] = Field(
        default_factory=lambda: [FACT_RECALL],
        description="what the episodes ask: fact_recall and/or tool tasks (built in: who_was_born_in, "
        "how_many_live_in, age_on, born_between, neighbours; or module:callable returning TaskKinds)",
    )
    task_examples: int = Field(200, ge=1, description="tool tasks: training dialogs per kind (train phrasings)")
    task_eval: int = Field(50, ge=1, description="tool tasks: held-out tasks per kind (test phrasings)")
    dataset: str | None = Field(
        None, description="train on this dataset of {messages, tools} rows instead (a saved HF Dataset or JSONL)"
    )

    phrasings: int = Field(4, ge=1, description="passes of oracle dialogs over the training facts, each phrased anew")
    stop_at_recall: float = Field(
        0.0, ge=0.0, le=1.0, description="stop once a periodic evaluation reaches this recall on both splits (0: never)"
    )


def training_defaults() -> dict[str, Any]:
    """TRL SFTConfig values that suit the embedded model on a CPU; every one can be overridden."""
    return {
        "output_dir": run_dir.AUTO,
        "max_steps": 1500,
        "per_device_train_batch_size": 32,
        "learning_rate": 3e-3,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 30,
        "weight_decay": 0.01,
        "logging_steps": 10,
        "save_strategy": "steps",
        "save_steps": 100,
        "save_total_limit": 2,
        "report_to": "none",
        "assistant_only_loss": True,
        "max_length": 512,
        "seed": 0,
        "dataloader_num_workers": 0,
        "ddp_find_unused_parameters": False,  # every parameter takes part: no extra pass over the graph under DDP
        "bf16": False,
        "use_cpu": not cuda_available(),  # TRL checks bf16 against the device when the config is built
        **no_activation_checkpointing(),
    }


def fine_tune(
    cfg: SFTScriptConfig,
    training: Any,
    *,
    callbacks: Sequence[Any] = (),
    on_eval: Callable[[int, dict[str, float]], bool] | None = None,
    then: Callable[[Any], None] | None = None,
) -> RunResult:
    """Train ``cfg.model`` on the oracle's dialogs of ``cfg.mode`` and evaluate it; writes the run directory.

    ``callbacks`` are more ``transformers.TrainerCallback``s; ``on_eval(step, summary)`` may stop the run after a
    periodic evaluation (return True), in addition to ``cfg.stop_at_recall``. ``then(policy)`` is called after a
    finished (not interrupted) run with what played its evaluations, over the final model: the run's vLLM engine,
    still open (no second start-up), or an HF policy. What it raises leaves the finished run directory in place.
    """
    from trl import SFTTrainer

    started = time.perf_counter()
    random.seed(training.seed)

    def prepare(world: Any) -> tuple[Any, list[Any], list[Any], Any]:
        registry = cfg.registry(world)
        return (
            registry,
            *tool_tasks(world, registry, cfg),
            load_dataset(cfg.dataset, set(registry.names)) if cfg.dataset else None,
        )

    run = start_run(cfg, training, kind="sft", prepare=prepare)
    out, world = run.out, run.world
    recall: Any = None
    try:
        registry, train_tasks, test_tasks, given = run.prepared
        rows = rows_consumed(training)

        def build() -> Any:
            return given if given is not None else sft_dataset(world, cfg, rows, registry, train_tasks)

        dataset = shared_dataset(run.ranks, build, out / "dataset")
        recall = ModelRecall.of_run(run, cfg, registry, facts=FACT_RECALL in cfg.tasks, tasks=test_tasks)
        stop = GracefulStop()

        def should_stop(step: int, summary: dict[str, float]) -> bool:
            threshold = cfg.stop_at_recall
            if threshold and summary["train_recall"] >= threshold and summary["unseen_recall"] >= threshold:
                logger.info(
                    "step %d: recall %.3f / %.3f reached %.2f",
                    step,
                    summary["train_recall"],
                    summary["unseen_recall"],
                    threshold,
                )
                return True
            return on_eval is not None and on_eval(step, summary)

        progress = progress_callback(cfg, stop, recall, on_eval=should_stop)
        trainer = SFTTrainer(
            model=run.model,
            args=training,
            train_dataset=dataset,
            processing_class=run.tokenizer,
            peft_config=lora_config(cfg, run.tokenizer),
            callbacks=[progress, *run.callbacks(), *callbacks],
        )
        progress.attach(trainer, run.metrics)
        trained, trainable, final, interrupted = train_and_finish(trainer, progress, run.tokenizer)
        result = run_result(RunResult, trainer, cfg, out, trained, trainable, final, interrupted, started)
    except BaseException:
        run.abandon()
        raise
    else:
        if then is not None and not result.interrupted:
            then(recall.policy(trainer.model))
        return result
    finally:
        if recall is not None:
            recall.close()  # its vLLM engine, if any
        world.close()


def tool_tasks(world: Any, registry: Any, cfg: SFTScriptConfig) -> tuple[list[Any], list[Any]]:
    """(training tasks in train phrasings, held-out tasks in test phrasings) of every tool-task kind asked for."""
    from itl_env.tasks import make_tasks, task_kinds

    kinds = task_kinds([t for t in cfg.tasks if t != FACT_RECALL])
    train = [t for i, k in enumerate(kinds) for t in make_tasks(k, world, registry, cfg.task_examples, seed=10 + i)]
    test = [
        t
        for i, k in enumerate(kinds)
        for t in make_tasks(k, world, registry, cfg.task_eval, seed=1000 + i, phrasing="test")
    ]
    return train, test


def shared_dataset(ranks: Ranks, build: Callable[[], Any], folder: Path) -> Any:
    """The training dataset, built once: in a multi-process job rank 0 builds it and saves it in the run directory
    (a resumed run reads it back), the other ranks load it; TRL then tokenises it once too (its cache sits beside
    the saved files).
    """
    import datasets

    if ranks.size == 1:
        return build()

    def make() -> Any:
        if not folder.exists():
            build().save_to_disk(str(folder))
        return datasets.load_from_disk(str(folder))

    return ranks.first(make, then=lambda: datasets.load_from_disk(str(folder)))


def load_dataset(path: str, tool_names: set[str]) -> Any:
    """A dataset of ``{messages, tools}`` rows: a ``save_to_disk`` folder (e.g. STE's distilled data) or JSONL.

    Checked whole before anything is created or trained (``row_problem``): a file that is not one, an empty
    one, other columns, unknown roles or tools, arguments that are not JSON are a ``ValueError`` naming the
    file and the row.
    """
    import datasets

    from itl_env.trajectories import row_problem

    expected = "a save_to_disk folder of one split, or a JSONL file of {messages, tools} rows"
    if not Path(path).exists():
        raise FileNotFoundError(f"no dataset at {path} ({expected})")
    try:
        if Path(path).is_dir():
            dataset = datasets.load_from_disk(path)
        else:
            dataset = datasets.load_dataset("json", data_files=path, split="train")
    except Exception as err:
        raise ValueError(
            f"--dataset {path} could not be read as {expected}: {' '.join(str(err).split())[:300]}"
        ) from err
    if isinstance(dataset, datasets.DatasetDict):
        raise ValueError(f"--dataset {path} holds the splits {sorted(dataset)}; pass one split's folder")
    if len(dataset) == 0:
        raise ValueError(f"--dataset {path} has no rows")
    if "messages" not in dataset.column_names or set(dataset.column_names) - {"messages", "tools"}:
        raise ValueError(f"--dataset {path} has the columns {dataset.column_names}; expected messages (and tools)")
    for i, row in enumerate(dataset):
        problem = row_problem(row, tool_names)
        if problem:
            raise ValueError(f"--dataset {path}, row {i}: {problem}")
    return dataset


def sft_dataset(
    world: Any, cfg: SFTScriptConfig, rows: int | None, registry: Any = None, tasks: Sequence[Any] = ()
) -> Any:
    """The oracle's dialogs over every training fact, ``cfg.phrasings`` times, and every training tool task,
    shuffled; cut to ``rows``.
    """
    from itl_env.trajectories import sft_dataset as oracle_dataset

    facts = world.facts("train") if FACT_RECALL in cfg.tasks else []
    dataset = oracle_dataset(
        world, facts, cfg.mode, epochs=cfg.phrasings, seed=1, registry=registry, tasks=tasks
    ).shuffle(seed=0)
    if rows is not None and rows < len(dataset):
        # SFTTrainer tokenises every row up front; rows the run never reaches only cost start-up time.
        logger.info("training on the first %d of %d shuffled dialogs (what max_steps consumes)", rows, len(dataset))
        dataset = dataset.select(range(rows))
    return dataset


def rows_consumed(training: Any) -> int | None:
    """Dialogs a run with max_steps reads (all ranks together); None when it runs by epochs."""
    if training.max_steps is None or training.max_steps <= 0:
        return None
    world_size = max(1, int(os.environ.get("WORLD_SIZE", "1")))
    return training.max_steps * training.per_device_train_batch_size * training.gradient_accumulation_steps * world_size
