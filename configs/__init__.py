"""YAML presets and the one config resolver every entry point uses (``configs.resolve``)."""

from pathlib import Path

from configs.resolve import (
    ConfigError,
    as_mapping,
    claim_output,
    load_yaml,
    peek,
    positive,
    record,
    resolve,
    resolve_preset,
    usage_error,
)

PRESETS = Path(__file__).resolve().parent  # the YAML presets live beside this file


def preset(name: str) -> Path:
    """The path of a shipped preset, e.g. ``preset("study/cpu.yaml")``."""
    return PRESETS / name


__all__ = [
    "PRESETS",
    "ConfigError",
    "as_mapping",
    "claim_output",
    "load_yaml",
    "peek",
    "positive",
    "preset",
    "record",
    "resolve",
    "resolve_preset",
    "usage_error",
]
