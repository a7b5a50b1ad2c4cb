"""Wan 2.1 / 2.2 (``WanTransformer3DModel``): video-only self-attention.

``blocks.{i}.attn1`` is self-attention over the video tokens (raster order of (T, H, W), patch size from the
config); ``attn2`` (cross-attention, text and, for I2V, image tokens) has the same processor class and is never
patched. Wan 2.2 A14B pipelines hold two transformers (``transformer`` for high noise, ``transformer_2`` for low
noise): patching the pipeline patches both, sharing one step counter. Wan 2.2 TI2V passes a per-token timestep
``[B, S]``; its maximum identifies the step.
"""

from __future__ import annotations

from .runtime import VideoSelfAttentionAdapter


class WanAdapter(VideoSelfAttentionAdapter):
    family = "wan"
    model_class = "WanTransformer3DModel"
    default_preset = "wan_fast"
    processor_classes = ("WanAttnProcessor",)
    layer_regex = r"blocks\.\d+\.attn1"
    grid_ndim = 3
    grid_axes = "(T, H, W)"
