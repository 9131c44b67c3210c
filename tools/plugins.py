"""``module:callable`` references, as the ``--tools`` option of every entry point gives them."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


class PluginError(ValueError):
    """A ``module:callable`` reference that cannot be loaded; the message says why."""


def call_plugin(reference: str, option: str, *args: Any) -> Any:
    """What the plug-in ``reference`` (given as ``option``) returns when called with ``args``; its failure to
    load or any exception it raises is a ``PluginError`` naming it.
    """
    factory = load_callable(reference)
    try:
        return factory(*args)
    except Exception as err:
        raise PluginError(
            f"{option} {reference} raised {type(err).__name__}: {' '.join(str(err).split())[:300]}"
        ) from err


def load_callable(reference: str) -> Callable[..., Any]:
    """The callable named by ``"package.module:name"`` (``name`` may be dotted: ``module:Class.method``)."""
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise PluginError(f"{reference!r} is not a 'module:callable' reference (e.g. itl_env.people_tools:registry)")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise PluginError(f"cannot import {module_name!r} (from {reference!r}): {err}") from err
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise PluginError(f"{module_name!r} has no attribute {attribute!r} (from {reference!r})")
        target = getattr(target, part)
    if not callable(target):
        raise PluginError(f"{reference!r} is a {type(target).__name__}, not a callable")
    return target
