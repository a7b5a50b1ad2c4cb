"""Model adapters: one per diffusers transformer family. All model knowledge of na_accel lives here."""

from __future__ import annotations

import torch

from ...errors import UnsupportedModelError
from .base import Adapter, Layout, SizeFactors
from .cosmos import CosmosAdapter
from .flux import FluxAdapter
from .hunyuan import HunyuanVideoAdapter
from .wan import WanAdapter

ADAPTERS: tuple[Adapter, ...] = (HunyuanVideoAdapter(), FluxAdapter(), CosmosAdapter(), WanAdapter())
FAMILIES: dict[str, Adapter] = {a.family: a for a in ADAPTERS}
SUPPORTED_MODELS: tuple[str, ...] = tuple(a.model_class for a in ADAPTERS)

__all__ = [
    "ADAPTERS",
    "FAMILIES",
    "SUPPORTED_MODELS",
    "Adapter",
    "Layout",
    "SizeFactors",
    "adapter_for",
    "adapter_for_class",
    "family_adapter",
    "supported_models_text",
]


def supported_models_text() -> str:
    """The supported transformer classes with the model versions each covers, for messages."""
    return ", ".join(f"{a.model_class} ({a.variants})" for a in ADAPTERS)


def family_adapter(family: str) -> Adapter:
    """The adapter of a family name (``hunyuan``, ``flux``, ``cosmos``, ``wan``); ValueError naming them if unknown."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[family]


def adapter_for_class(class_name: str) -> Adapter | None:
    """The adapter whose transformer class is called ``class_name``, or None."""
    return next((a for a in ADAPTERS if a.model_class == class_name), None)


def adapter_for(model) -> Adapter:
    """The adapter for a diffusers transformer, or :class:`UnsupportedModelError` naming the supported models."""
    if isinstance(model, torch.nn.Module):
        for adapter in ADAPTERS:
            try:
                cls = adapter.model_type()
            except AttributeError:  # pragma: no cover - class missing from this diffusers
                continue
            if isinstance(model, cls):
                return adapter
    raise UnsupportedModelError(
        f"na_accel cannot patch {type(model).__name__}. Supported models: {supported_models_text()}, or a "
        "diffusers pipeline whose `transformer` (and `transformer_2`) is one of them."
    )
