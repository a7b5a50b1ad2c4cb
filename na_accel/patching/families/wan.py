"""Wan 2.1 / 2.2 (``WanTransformer3DModel``): video-only self-attention.

``blocks.{i}.attn1`` is self-attention over the video tokens (raster order of (T, H, W), patch size from the
config); ``attn2`` (cross-attention, text and, for I2V, image tokens) has the same processor class and is never
patched. Wan 2.2 A14B pipelines hold two transformers (``transformer`` for high noise, ``transformer_2`` for low
noise): patching the pipeline patches both, sharing one step counter. Wan 2.2 TI2V passes a per-token timestep
``[B, S]``; its maximum identifies the step.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import VideoSelfAttentionAdapter, random_tensor


class WanAdapter(VideoSelfAttentionAdapter):
    family = "wan"
    display_name = "Wan"
    variants = "Wan 2.1, Wan 2.2"
    model_class = "WanTransformer3DModel"
    default_preset = "wan_fast"
    processor_classes = ("WanAttnProcessor",)
    layer_regex = r"blocks\.\d+\.attn1"
    grid_ndim = 3
    grid_axes = "(T, H, W)"
    default_fps = 16
    # Wan-AI/Wan2.1-T2V-14B-Diffusers, 14.3B
    real_config = dict(
        patch_size=(1, 2, 2),
        num_attention_heads=40,
        attention_head_dim=128,
        in_channels=16,
        out_channels=16,
        text_dim=4096,
        freq_dim=256,
        ffn_dim=13824,
        num_layers=40,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        image_dim=None,
        added_kv_proj_dim=None,
        rope_max_seq_len=1024,
    )
    real_size = dict(height=720, width=1280, frames=81, vae_spatial=8, vae_temporal=4, text_tokens=512)

    def example_inputs(self, transformer, latent_shape, text_tokens, device, dtype, seed=0) -> dict[str, Any]:
        cfg = transformer.config
        g = torch.Generator(device="cpu").manual_seed(seed)
        return dict(
            hidden_states=random_tensor(g, (1, *latent_shape), device, dtype),
            timestep=torch.tensor([500.0], device=device),
            encoder_hidden_states=random_tensor(g, (1, text_tokens, cfg.text_dim), device, dtype),
            return_dict=False,
        )
