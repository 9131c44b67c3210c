"""Policies that continue conversations with a real model: ``generate(conversations) -> list[str]``."""
