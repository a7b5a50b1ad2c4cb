"""HunyuanVideo (``HunyuanVideoTransformer3DModel``): joint attention, video tokens then text tokens.

Both the 20 dual-stream blocks (``transformer_blocks.{i}.attn``) and the 40 single-stream blocks
(``single_transformer_blocks.{i}.attn``) attend over ``[video (raster order of (T, H, W)), text]``. diffusers builds a
``[B, 1, 1, S]`` boolean key-padding mask whose valid text keys are the first ``encoder_attention_mask.sum()`` ones;
the per-batch text lengths are read from that mask. The token refiner's attention (text only) is never patched.

Context parallelism: diffusers ships no plan for this model; :data:`context_parallel_plan` gives one. It splits the
video tokens and the (refined) text tokens separately into equal chunks at the input of the first block (so the
forward still builds its ``[B, 1, 1, N + T]`` mask from the full lengths, and the token refiner runs on the whole
text on every rank), splits the RoPE tables on their token axis and gathers after ``proj_out``. Each rank's
attention input is then ``[video_r, text_r]``, and after the Ulysses all-to-all a rank sees
``[video_0, text_0, video_1, text_1, ...]`` (:meth:`HunyuanVideoAdapter.ulysses_token_positions`). The full key
mask the forward passes to every block is cut down to the rank's ``[video_r, text_r]`` keys by a forward pre-hook
on each block (:func:`localize_key_mask`); diffusers' Ulysses attention all-gathers those local masks in the same
interleaved order. Not covered: the image-to-video variant with ``image_condition_type="token_replace"`` (its
blocks treat the first frame's tokens apart), and text padding under ring attention (diffusers' ring attention
applies a rank's local key mask to every key chunk), which is refused with a message.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

import torch

from ...errors import UnsupportedModelError
from .base import (
    Adapter,
    Layout,
    SizeFactors,
    chunked_positions,
    context_parallel_config,
    random_tensor,
    video_grid,
)


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

    # ---- context parallelism -------------------------------------------------------------------------------------

    def context_parallel_plan(self, model):
        from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

        if getattr(model.config, "image_condition_type", None) == "token_replace":
            raise UnsupportedModelError(
                "HunyuanVideo with image_condition_type='token_replace' (image-to-video) is not supported under "
                "context parallelism: its blocks modulate the first frame's tokens apart, which a token split breaks"
            )
        first = "transformer_blocks.0" if len(model.transformer_blocks) else "single_transformer_blocks.0"
        table = ContextParallelInput(split_dim=0, expected_dims=2, split_output=True)  # RoPE cos / sin, (N, D)
        return {
            "rope": {0: table, 1: table},
            first: {
                "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3),
                "encoder_hidden_states": ContextParallelInput(split_dim=1, expected_dims=3),
            },
            "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
        }

    def install_context_parallel_hooks(self, model):
        hook = functools.partial(localize_key_mask, model_ref=weakref.ref(model))
        blocks = [*model.transformer_blocks, *model.single_transformer_blocks]
        return [block.register_forward_pre_hook(hook, with_kwargs=True) for block in blocks]

    def ulysses_token_positions(self, layout, world):
        # the plan splits video and text separately: [video_0, text_0, video_1, text_1, ...]
        return chunked_positions(layout, world)

    def context_parallel_input_error(self, model, args, cp_config):
        mask = args.get("encoder_attention_mask")
        if cp_config.ring_degree > 1 and isinstance(mask, torch.Tensor) and not bool(mask.bool().all()):
            return (
                f"HunyuanVideo with padded text (encoder_attention_mask) under ring_degree={cp_config.ring_degree}: "
                "diffusers' ring attention applies each rank's key mask to every key chunk, so padding would be "
                "masked wrongly; use ulysses_degree (ring_degree=1) instead"
            )
        return super().context_parallel_input_error(model, args, cp_config)


_BLOCK_ARGS = ("hidden_states", "encoder_hidden_states", "temb", "attention_mask")


def localize_key_mask(module: torch.nn.Module, args: tuple, kwargs: dict, model_ref: Any):
    """Forward pre-hook of every HunyuanVideo block under context parallelism: the forward's full ``[B, 1, 1, N + T]``
    key mask becomes this rank's ``[B, 1, 1, N/W + T/W]`` mask of its local ``[video_r, text_r]`` tokens (``W`` ranks
    of the flattened context-parallel mesh, ``r`` this rank, the chunks diffusers' equal split gives). Runs before
    diffusers' split hook of the first block (whose inputs are then still whole) and after the split for the others.
    A no-op without a context-parallel config, without a mask, or for a mask that is already local."""
    model = model_ref()
    cp = None if model is None else context_parallel_config(model)
    if cp is None or cp._flattened_mesh is None:
        return None
    values = dict(zip(_BLOCK_ARGS, args))
    values.update({k: v for k, v in kwargs.items() if k in _BLOCK_ARGS})
    mask, video, text = values.get("attention_mask"), values.get("hidden_states"), values.get("encoder_hidden_states")
    if not all(isinstance(t, torch.Tensor) for t in (mask, video, text)):
        return None
    mesh = cp._flattened_mesh
    world = mesh.size()
    full, local_len = mask.shape[-1], video.shape[1] + text.shape[1]
    blocks = model.transformer_blocks if len(model.transformer_blocks) else model.single_transformer_blocks
    if world == 1:
        return None
    if module is blocks[0] and local_len == full:  # the first block, before diffusers splits its inputs
        num_video = video.shape[1]
    elif module is not blocks[0] and local_len * world == full:  # inputs already split
        num_video = video.shape[1] * world
    else:  # a mask that is already local (or not the forward's): leave it
        return None
    rank = torch.distributed.get_rank(mesh.get_group())
    nv, nt = num_video // world, (full - num_video) // world
    video_keys = mask[..., rank * nv : (rank + 1) * nv]
    text_keys = mask[..., num_video + rank * nt : num_video + (rank + 1) * nt]
    local = torch.cat([video_keys, text_keys], dim=-1)
    if "attention_mask" in kwargs:
        return args, {**kwargs, "attention_mask": local}
    args = list(args)
    args[_BLOCK_ARGS.index("attention_mask")] = local
    return tuple(args), kwargs
