"""HellaSwag zero-shot accuracy of a model and its change relative to the base, through ``lm-eval``.

``lm-eval`` (the harness the paper used) scores every ending by its log-likelihood given the context:
``acc`` picks the most likely ending, ``acc_norm`` the most likely per byte. Where the items come from:

- ``hub``: lm-eval's own ``hellaswag`` task (``Rowan/hellaswag`` validation; needs the hub);
- a JSONL file in HellaSwag's schema, run as an equivalent local task (the same preprocessing);
- ``sample``: 24 items written for this project in HellaSwag's schema, run the same way and always
  labelled as such: they are not HellaSwag;
- ``auto``: the hub, else the project sample (with a warning); ``none``: skipped.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import re
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger(__name__)

HUB_DATASET = "Rowan/hellaswag"
SAMPLE_LABEL = "project sample (24 items in HellaSwag's schema, written for this project: not HellaSwag)"
LOCAL_TASK = "itl_hellaswag_local"


class HellaSwagItem(BaseModel):
    """One HellaSwag row (the hub dataset's schema; ``label`` is the right ending's index as text)."""

    model_config = ConfigDict(extra="forbid")

    ind: int
    activity_label: str
    ctx_a: str
    ctx_b: str
    ctx: str
    endings: list[str] = Field(min_length=2)
    source_id: str
    split: str
    split_type: str
    label: str


class HellaSwagResult(BaseModel):
    """HellaSwag accuracy of the base and of the fine-tuned model, and the change between them."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="what was scored: HellaSwag itself, or the project's sample (labelled)")
    items: int
    base_acc: float
    model_acc: float
    base_acc_norm: float
    model_acc_norm: float
    acc_change: float = Field(description="model_acc - base_acc")
    acc_norm_change: float = Field(description="model_acc_norm - base_acc_norm")
    relative: float | None = Field(
        description="model_acc as a % of base_acc (the paper's 'HellaSwag relative'); None when the base scores 0"
    )
    relative_norm: float | None = Field(description="model_acc_norm as a % of base_acc_norm; None when it is 0")
    item_points: float = Field(description="relative points one item is worth: 100 / items the base gets right (acc)")


def load_items(source: str, limit: int | None = None) -> list[HellaSwagItem]:
    """The items of ``sample`` or of a JSONL file in HellaSwag's schema."""
    if source == "sample":
        text = resources.files("evals").joinpath("data", "hellaswag_sample.jsonl").read_text(encoding="utf-8")
    else:
        text = Path(source).read_text(encoding="utf-8")
    items = [HellaSwagItem.model_validate_json(line) for line in text.splitlines() if line.strip()]
    return items[:limit] if limit else items


def _clean(text: str) -> str:
    """HellaSwag's WikiHow markup removed, as lm-eval's hellaswag task does."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def lm_eval_doc(item: HellaSwagItem) -> dict[str, Any]:
    """An item as lm-eval's hellaswag task preprocesses it: query, choices, gold."""
    context = f"{item.ctx_a} {item.ctx_b.capitalize()}"
    return {
        "query": _clean(f"{item.activity_label}: {context}"),
        "choices": [_clean(ending) for ending in item.endings],
        "gold": int(item.label),
    }


def lm_eval_accuracy(
    model: Any, tokenizer: Any, source: str, *, limit: int | None = None, batch_size: int = 16
) -> tuple[float, float, int]:
    """(acc, acc_norm, items) of ``model`` with lm-eval: the hub task, or ``source``'s items as a local task."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
    task, manager = _task(source, limit)
    results = simple_evaluate(
        model=lm,
        tasks=[task],
        task_manager=manager,
        limit=limit,
        num_fewshot=0,
        log_samples=False,
        verbosity="ERROR",
    )
    scores = results["results"][task]
    items = results.get("n-samples", {}).get(task, {}).get("effective", limit or 0)
    return float(scores["acc,none"]), float(scores["acc_norm,none"]), int(items)


@functools.cache
def _task(source: str, limit: int | None) -> tuple[str, Any]:
    """(task name, lm-eval ``TaskManager``) for ``source``, built once per process: a manager indexes every task
    file it may load (about 20 s for lm-eval's own thousands), so a local task's indexes its folder alone.
    """
    from lm_eval.tasks import TaskManager

    if source == "hub":
        return "hellaswag", TaskManager()
    folder = Path(tempfile.mkdtemp(prefix="itl-hellaswag-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    task_folder = _local_task(folder, load_items(source, limit))
    return LOCAL_TASK, TaskManager(include_path=task_folder, include_defaults=False)


def _local_task(folder: Path, items: list[HellaSwagItem]) -> str:
    """A lm-eval task folder scoring ``items`` exactly as its hellaswag task scores HellaSwag's."""
    docs = folder / "docs.jsonl"
    docs.write_text("".join(json.dumps(lm_eval_doc(item)) + "\n" for item in items), encoding="utf-8")
    config = {
        "task": LOCAL_TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"validation": str(docs)}},
        "validation_split": "validation",
        "output_type": "multiple_choice",
        "doc_to_text": "{{query}}",
        "doc_to_target": "{{gold}}",
        "doc_to_choice": "choices",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
    }
    (folder / "task.yaml").write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    return str(folder)


class HellaSwagProbe:
    """The base's HellaSwag accuracy, scored once; ``measure(model)`` scores a fine-tuned model on the same items."""

    def __init__(
        self, base: Any, tokenizer: Any, source: str = "auto", *, limit: int | None = 200, batch_size: int = 16
    ):
        self.limit, self.batch_size, self.source = limit, batch_size, source
        self.base_acc, self.base_norm, self.items = self._score_base(base, tokenizer, source)  # may settle source

    def _score_base(self, base: Any, tokenizer: Any, source: str) -> tuple[float, float, int]:
        if source in ("hub", "auto"):
            try:
                scores = lm_eval_accuracy(base, tokenizer, "hub", limit=self.limit, batch_size=self.batch_size)
                self.source = "hub"
                return scores
            except Exception as err:  # offline, no such dataset: fall back (auto), or say why (hub)
                if source == "hub":
                    raise RuntimeError(
                        f"could not run lm-eval's hellaswag ({HUB_DATASET} from the hub): {err}"
                    ) from err
                logger.warning(
                    "HellaSwag from the hub unavailable (%s); scoring the project's sample", type(err).__name__
                )
                self.source = "sample"
        return lm_eval_accuracy(base, tokenizer, self.source, limit=self.limit, batch_size=self.batch_size)

    @property
    def item_points(self) -> float:
        """Relative points (``relative``) one item is worth: 100 / the items the base gets right."""
        return 100.0 / (self.base_acc * self.items) if self.base_acc and self.items else 0.0

    @property
    def label(self) -> str:
        if self.source == "hub":
            return f"HellaSwag validation ({HUB_DATASET}, lm-eval)"
        return SAMPLE_LABEL if self.source == "sample" else f"{self.source} (HellaSwag's schema, lm-eval)"

    def measure(self, model: Any, tokenizer: Any) -> HellaSwagResult:
        acc, norm, _ = lm_eval_accuracy(model, tokenizer, self.source, limit=self.limit, batch_size=self.batch_size)
        return HellaSwagResult(
            source=self.label,
            items=self.items,
            base_acc=self.base_acc,
            model_acc=acc,
            base_acc_norm=self.base_norm,
            model_acc_norm=norm,
            acc_change=acc - self.base_acc,
            acc_norm_change=norm - self.base_norm,
            relative=100.0 * acc / self.base_acc if self.base_acc else None,
            relative_norm=100.0 * norm / self.base_norm if self.base_norm else None,
            item_points=self.item_points,
        )
