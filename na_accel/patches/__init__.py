"""Model adapters: one per diffusers transformer family. All model knowledge of na_accel lives here."""

from __future__ import annotations

import torch

from ..errors import UnsupportedModelError
from .cosmos import CosmosAdapter
from .flux import FluxAdapter
from .hunyuan import HunyuanVideoAdapter
from .runtime import Adapter, Layout, StepTracker, TransformerPatch
from .wan import WanAdapter

ADAPTERS: tuple[Adapter, ...] = (HunyuanVideoAdapter(), FluxAdapter(), CosmosAdapter(), WanAdapter())
SUPPORTED_MODELS: tuple[str, ...] = tuple(a.model_class for a in ADAPTERS)

__all__ = [
    "ADAPTERS",
    "SUPPORTED_MODELS",
    "Adapter",
    "Layout",
    "StepTracker",
    "TransformerPatch",
    "adapter_for",
    "supported_models_text",
]


def supported_models_text() -> str:
    return (
        "HunyuanVideoTransformer3DModel (HunyuanVideo), FluxTransformer2DModel (FLUX.1), CosmosTransformer3DModel "
        "(Cosmos 1.0, Cosmos-Predict2), WanTransformer3DModel (Wan 2.1, Wan 2.2)"
    )


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
