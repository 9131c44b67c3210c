"""Configs from defaults < YAML file < command-line flags, for pydantic models (unknown keys are an error).

``add_flags`` gives every field of a model (nested models flattened) a ``--kebab-case`` flag whose
help is the field's description; ``resolve`` merges ``--config file.yaml`` and the flags the user
actually passed over the model's defaults and validates the result.
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _nested(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _scalar(annotation: Any) -> tuple[Any, dict[str, Any]]:
    """argparse ``type`` and extra kwargs for a field annotation."""
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        inner, extra = _scalar(args[0]) if len(args) == 1 else (str, {})
        if inner is not None and inner is not bool:
            return (lambda text, t=inner: None if text.lower() == "none" else t(text)), extra
        return inner, extra
    if origin is Literal:
        return str, {"choices": list(get_args(annotation))}
    if origin in (list, tuple):
        inner, extra = _scalar(get_args(annotation)[0])
        return inner, {**extra, "nargs": "+"}
    return annotation, {}


def add_flags(parser: argparse.ArgumentParser, model: type[BaseModel], skip: set[str] = frozenset()) -> None:
    """One flag per field of ``model`` (and of its nested models), defaulting to 'not given'."""
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        nested = _nested(field.annotation)
        if nested is not None:
            add_flags(parser, nested, skip)
            continue
        kind, extra = _scalar(field.annotation)
        default = field.default if field.default is not None else "none"
        help_text = f"{field.description or name} (default: {default})".replace("%", "%%")
        if kind is bool:
            parser.add_argument(
                _flag(name), action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        else:
            parser.add_argument(_flag(name), type=kind, default=argparse.SUPPRESS, help=help_text, **extra)


def nest_flags(model: type[BaseModel], flat: dict[str, Any]) -> dict[str, Any]:
    """Nest flat flag values where ``model``'s fields are."""
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        nested = _nested(field.annotation)
        if nested is not None:
            inner = nest_flags(nested, flat)
            if inner:
                out[name] = inner
        elif name in flat:
            out[name] = flat[name]
    return out


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        merged[key] = (
            merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file; a missing, unreadable or malformed file is a ``ValueError`` naming it."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as err:
        raise ValueError(f"{path}: cannot read the config file ({err.strerror or err})") from err
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a valid YAML file: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must be a mapping of option: value")
    return data


def resolve(
    model: type[BaseModel],
    args: argparse.Namespace,
    parser: argparse.ArgumentParser | None = None,
    *,
    default_file: str | Path | None = None,
    base: dict[str, Any] | None = None,
) -> BaseModel:
    """``model`` from defaults < ``base`` < ``args.config`` (else ``default_file``; YAML) < the flags given; errors
    name the bad file or keys (through ``parser.error`` when given)."""
    flags = {k: v for k, v in vars(args).items() if k != "config"}
    path = getattr(args, "config", None) or default_file
    try:
        data = merge(base or {}, load_yaml(path) if path else {})
        return model.model_validate(merge(data, nest_flags(model, flags)))
    except ValueError as err:  # includes pydantic's ValidationError
        if parser is None:
            raise
        parser.error(str(err))
        raise  # unreachable: parser.error exits
