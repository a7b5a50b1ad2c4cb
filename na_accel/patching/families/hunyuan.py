"""HunyuanVideo (``HunyuanVideoTransformer3DModel``): joint attention, video tokens then text tokens.

Both the 20 dual-stream blocks (``transformer_blocks.{i}.attn``) and the 40 single-stream blocks
(``single_transformer_blocks.{i}.attn``) attend over ``[video (raster order of (T, H, W)), text]``. diffusers builds a
``[B, 1, 1, S]`` boolean key-padding mask whose valid text keys are the first ``encoder_attention_mask.sum()`` ones;
the per-batch text lengths are read from that mask. The token refiner's attention (text only) is never patched.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Adapter, Layout, SizeFactors, random_tensor, video_grid


class HunyuanVideoAdapter(Adapter):
    family = "hunyuan"
    display_name = "HunyuanVideo"
    variants = "HunyuanVideo"
    model_class = "HunyuanVideoTransformer3DModel"
    default_preset = "hunyuan_fast"
    processor_classes = ("HunyuanVideoAttnProcessor2_0",)
    layer_regex = r"(transformer_blocks|single_transformer_blocks)\.\d+\.attn"
    grid_ndim = 3
    grid_axes = "(T, H, W)"
    default_fps = 24
    # hunyuanvideo-community/HunyuanVideo, 12.8B
    real_config = dict(
        in_channels=16,
        out_channels=16,
        num_attention_heads=24,
        attention_head_dim=128,
        num_layers=20,
        num_single_layers=40,
        num_refiner_layers=2,
        mlp_ratio=4.0,
        patch_size=2,
        patch_size_t=1,
        qk_norm="rms_norm",
        guidance_embeds=True,
        text_embed_dim=4096,
        pooled_projection_dim=768,
        rope_theta=256.0,
        rope_axes_dim=(16, 56, 56),
    )
    real_size = dict(height=720, width=1280, frames=129, vae_spatial=8, vae_temporal=4, text_tokens=256)

    def size_factors(self, pipe):
        cfg = pipe.transformer.config
        vs = int(getattr(pipe, "vae_scale_factor_spatial", 8))
        vt = int(getattr(pipe, "vae_scale_factor_temporal", 4))
        return SizeFactors(True, vs * int(cfg.patch_size), vt, int(getattr(cfg, "patch_size_t", 1) or 1))

    def example_inputs(self, transformer, latent_shape, text_tokens, device, dtype, seed=0) -> dict[str, Any]:
        cfg = transformer.config
        g = torch.Generator(device="cpu").manual_seed(seed)
        return dict(
            hidden_states=random_tensor(g, (1, *latent_shape), device, dtype),
            timestep=torch.tensor([500.0], device=device).to(dtype),
            encoder_hidden_states=random_tensor(g, (1, text_tokens, cfg.text_embed_dim), device, dtype),
            encoder_attention_mask=torch.ones(1, text_tokens, device=device, dtype=torch.bool),
            pooled_projections=random_tensor(g, (1, cfg.pooled_projection_dim), device, dtype),
            guidance=torch.tensor([6000.0], device=device, dtype=dtype),
            return_dict=False,
        )

    def layout(self, model, args):
        cfg = model.config
        p, p_t = int(cfg.patch_size), int(cfg.patch_size_t)
        grid = video_grid(args.get("hidden_states"), (p_t, p, p))
        if isinstance(grid, str):
            return grid
        text = args.get("encoder_hidden_states")
        if not hasattr(text, "dim") or text.dim() != 3:
            return "encoder_hidden_states is not a (B, T, C) tensor"
        return Layout(grid, int(text.shape[1]), text_first=False)
