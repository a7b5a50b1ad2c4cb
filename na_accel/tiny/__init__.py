"""The built-in models: tiny random-weight pipelines of the four families (for tests and code paths; their
outputs are noise) in :mod:`.random_weights`."""

from __future__ import annotations

from .random_weights import (
    FAMILIES,
    TINY_DEFAULT,
    TINY_LABEL,
    TinySafetyChecker,
    default_generation_kwargs,
    tiny_family,
    tiny_pipeline,
    tiny_transformer,
)

__all__ = [
    "FAMILIES",
    "TINY_DEFAULT",
    "TINY_LABEL",
    "TinySafetyChecker",
    "default_generation_kwargs",
    "tiny_family",
    "tiny_pipeline",
    "tiny_transformer",
]
