"""``module:callable`` references, as the ``--tools`` option of every entry point gives them."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


class PluginError(ValueError):
    """A ``module:callable`` reference that cannot be loaded; the message says why."""


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
