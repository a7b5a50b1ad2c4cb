"""Cosmos 1.0 and Cosmos-Predict2 (``CosmosTransformer3DModel``): video-only self-attention.

``transformer_blocks.{i}.attn1`` is self-attention over the video tokens (raster order of (T, H, W), patch size
from the config); ``attn2`` is cross-attention with the same processor class and is never patched. The timestep may
be ``[B]`` or per-frame ``[B, 1, T, 1, 1]`` (video2world conditioning); its maximum identifies the step.
"""

from __future__ import annotations

from .runtime import VideoSelfAttentionAdapter


class CosmosAdapter(VideoSelfAttentionAdapter):
    family = "cosmos"
    model_class = "CosmosTransformer3DModel"
    default_preset = "cosmos_fast"
    processor_classes = ("CosmosAttnProcessor2_0",)
    layer_regex = r"transformer_blocks\.\d+\.attn1"
    grid_ndim = 3
    grid_axes = "(T, H, W)"
