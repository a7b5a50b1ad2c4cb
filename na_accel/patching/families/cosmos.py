"""Cosmos 1.0 and Cosmos-Predict2 (``CosmosTransformer3DModel``): video-only self-attention.

``transformer_blocks.{i}.attn1`` is self-attention over the video tokens (raster order of (T, H, W), patch size
from the config); ``attn2`` is cross-attention with the same processor class and is never patched. The timestep may
be ``[B]`` or per-frame ``[B, 1, T, 1, 1]`` (video2world conditioning); its maximum identifies the step.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import SizeFactors, VideoSelfAttentionAdapter, random_tensor


class CosmosAdapter(VideoSelfAttentionAdapter):
    family = "cosmos"
    display_name = "Cosmos"
    variants = "Cosmos 1.0, Cosmos-Predict2"
    model_class = "CosmosTransformer3DModel"
    default_preset = "cosmos_fast"
    processor_classes = ("CosmosAttnProcessor2_0",)
    layer_regex = r"transformer_blocks\.\d+\.attn1"
    grid_ndim = 3
    grid_axes = "(T, H, W)"
    default_fps = 30
    # nvidia/Cosmos-1.0-Diffusion-7B-Text2World, 7.2B
    real_config = dict(
        in_channels=16,
        out_channels=16,
        num_attention_heads=32,
        attention_head_dim=128,
        num_layers=28,
        mlp_ratio=4.0,
        text_embed_dim=1024,
        adaln_lora_dim=256,
        max_size=(128, 240, 240),
        patch_size=(1, 2, 2),
        rope_scale=(2.0, 1.0, 1.0),
        concat_padding_mask=True,
        extra_pos_embed_type="learnable",
    )
    real_size = dict(height=704, width=1280, frames=121, vae_spatial=8, vae_temporal=8, text_tokens=512)

    def size_factors(self, pipe):
        factors = super().size_factors(pipe)
        if "Text2Image" in type(pipe).__name__:  # Cosmos-Predict2 text-to-image: one frame
            return SizeFactors(False, factors.spatial_multiple)
        return factors

    def example_inputs(self, transformer, latent_shape, text_tokens, device, dtype, seed=0) -> dict[str, Any]:
        cfg = transformer.config
        g = torch.Generator(device="cpu").manual_seed(seed)
        vs = self.real_size["vae_spatial"]
        return dict(
            hidden_states=random_tensor(g, (1, *latent_shape), device, dtype),
            timestep=torch.tensor([500.0], device=device).to(dtype),
            encoder_hidden_states=random_tensor(g, (1, text_tokens, cfg.text_embed_dim), device, dtype),
            fps=30,
            padding_mask=torch.zeros(1, 1, latent_shape[-2] * vs, latent_shape[-1] * vs, device=device, dtype=dtype),
            return_dict=False,
        )
