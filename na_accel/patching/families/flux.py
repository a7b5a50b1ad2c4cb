"""FLUX.1 (``FluxTransformer2DModel``): joint attention, text tokens then image tokens.

The image grid is read from ``img_ids`` (rows ``(0, y, x)`` in raster order, as the Flux pipelines build them);
anything else (e.g. Kontext's extra reference-image tokens) is not a single raster grid and runs dense. Single-stream
blocks get no ``encoder_hidden_states``: their sequence is ``[text, image]`` with the text length of the forward's
``encoder_hidden_states``. Flux pipelines pass ``timestep / 1000``; only its order matters for step counting. The
pipelines pass no attention mask; one given through ``joint_attention_kwargs`` must be a text key-padding mask
(else the forward runs dense).

Context parallelism uses diffusers' own plan (``FluxTransformer2DModel._cp_plan``): ``hidden_states``,
``encoder_hidden_states``, ``img_ids`` and ``txt_ids`` are split into equal chunks at the forward's input, so each
rank's attention input is ``[text_r, image_r]`` and, after the Ulysses all-to-all, a rank sees
``[text_0, image_0, text_1, image_1, ...]``: GNA de-interleaves it into the text block and the raster-order image
grid (:meth:`FluxAdapter.ulysses_token_positions`). That plan does not split a ``joint_attention_kwargs`` mask,
which diffusers would then apply to the interleaved sequence: such a forward is refused under context parallelism.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import (
    Adapter,
    Layout,
    SizeFactors,
    chunked_positions,
    key_padding_lengths,
    mask_shape_reason,
    random_tensor,
)


class FluxAdapter(Adapter):
    family = "flux"
    display_name = "FLUX"
    variants = "FLUX.1"
    model_class = "FluxTransformer2DModel"
    default_preset = "flux_fast"
    processor_classes = ("FluxAttnProcessor",)
    layer_regex = r"(transformer_blocks|single_transformer_blocks)\.\d+\.attn"
    grid_ndim = 2
    grid_axes = "(H, W)"
    default_fps = 1
    # black-forest-labs/FLUX.1-dev, 11.9B
    real_config = dict(
        patch_size=1,
        in_channels=64,
        num_layers=19,
        num_single_layers=38,
        attention_head_dim=128,
        num_attention_heads=24,
        joint_attention_dim=4096,
        pooled_projection_dim=768,
        guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    )
    real_size = dict(height=1024, width=1024, frames=1, vae_spatial=8, vae_temporal=1, text_tokens=512)

    def size_factors(self, pipe):
        # latents are packed 2 x 2 into tokens
        return SizeFactors(False, int(getattr(pipe, "vae_scale_factor", 8)) * 2)

    def default_size_factors(self):
        return SizeFactors(False, self.real_size["vae_spatial"] * 2)

    def real_token_grid(self, height, width, frames=1):
        return self.default_size_factors().token_grid(height, width)

    def example_inputs(self, transformer, latent_shape, text_tokens, device, dtype, seed=0) -> dict[str, Any]:
        cfg = transformer.config
        g = torch.Generator(device="cpu").manual_seed(seed)
        _, h, w = latent_shape
        img_ids = torch.zeros(h // 2, w // 2, 3)
        img_ids[..., 1] += torch.arange(h // 2)[:, None]
        img_ids[..., 2] += torch.arange(w // 2)[None, :]
        return dict(
            hidden_states=random_tensor(g, (1, (h // 2) * (w // 2), cfg.in_channels), device, dtype),
            encoder_hidden_states=random_tensor(g, (1, text_tokens, cfg.joint_attention_dim), device, dtype),
            pooled_projections=random_tensor(g, (1, cfg.pooled_projection_dim), device, dtype),
            timestep=torch.tensor([0.5], device=device).to(dtype),
            img_ids=img_ids.reshape(-1, 3).to(device=device, dtype=dtype),
            txt_ids=torch.zeros(text_tokens, 3, device=device, dtype=dtype),
            guidance=torch.tensor([3.5], device=device, dtype=dtype) if cfg.guidance_embeds else None,
            return_dict=False,
        )

    def layout(self, model, args):
        hidden = args.get("hidden_states")
        text = args.get("encoder_hidden_states")
        ids = args.get("img_ids")
        if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
            return "hidden_states is not a (B, N, C) tensor"
        if not isinstance(text, torch.Tensor) or text.dim() != 3:
            return "encoder_hidden_states is not a (B, T, C) tensor"
        if not isinstance(ids, torch.Tensor) or ids.dim() not in (2, 3):
            return "img_ids is not an (N, 3) tensor"
        if ids.dim() == 3:
            ids = ids[0]
        n = ids.shape[0]
        if ids.shape[-1] != 3 or n != hidden.shape[1] or n == 0:
            return f"img_ids of shape {tuple(ids.shape)} does not describe the {hidden.shape[1]} image tokens"
        grid = raster_grid_2d(ids)
        if isinstance(grid, str):
            return grid
        return Layout(grid, int(text.shape[1]), text_first=True)

    def check_forward(self, model, args, layout):
        # diffusers' Flux pipelines pass no mask; a user may pass one through joint_attention_kwargs. It is verified
        # here, once per forward and outside torch.compile, so compiled blocks can trust it.
        mask = (args.get("joint_attention_kwargs") or {}).get("attention_mask")
        if mask is None:
            return layout
        batch = args["hidden_states"].shape[0]
        reason = mask_shape_reason(mask, layout, batch)
        if reason is None:
            lengths = key_padding_lengths(mask, layout)
            reason = lengths if isinstance(lengths, str) else None
        return layout if reason is None else f"joint_attention_kwargs: {reason}"

    def ulysses_token_positions(self, layout, world):
        # diffusers' plan splits text and image tokens separately: [text_0, image_0, text_1, image_1, ...]
        return chunked_positions(layout, world)

    def context_parallel_input_error(self, model, args, cp_config):
        if (args.get("joint_attention_kwargs") or {}).get("attention_mask") is not None:
            return (
                "FluxTransformer2DModel under context parallelism got joint_attention_kwargs['attention_mask']: "
                "diffusers' FLUX plan does not split it and would apply it to the wrong tokens; pass no mask (the "
                "FLUX pipelines pass none) or run on one process"
            )
        return super().context_parallel_input_error(model, args, cp_config)


def raster_grid_2d(ids: torch.Tensor) -> tuple[int, int] | str:
    """(H, W) if ``ids`` (N, 3) are ``(c, y0 + i // W, x0 + i % W)`` for i in range(N), else a reason."""
    ids = ids.detach()
    if not bool((ids == ids.round()).all()):
        return "img_ids are not integer positions"
    ids = ids.round().long()
    rows, cols = ids[:, 1], ids[:, 2]
    r0, r1, c0, c1 = (int(x) for x in torch.stack([rows.min(), rows.max(), cols.min(), cols.max()]).tolist())
    h, w = r1 - r0 + 1, c1 - c0 + 1
    n = ids.shape[0]
    if h * w != n:
        return f"img_ids span a {h} x {w} grid but hold {n} tokens (not one raster grid)"
    i = torch.arange(n, device=ids.device)
    expected = torch.stack([torch.full_like(i, int(ids[0, 0])), r0 + i // w, c0 + i % w], dim=1)
    if not torch.equal(ids, expected):
        return "img_ids are not one image grid in raster order"
    return (h, w)
