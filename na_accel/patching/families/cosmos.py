"""Cosmos 1.0 and Cosmos-Predict2 (``CosmosTransformer3DModel``): video-only self-attention.

``transformer_blocks.{i}.attn1`` is self-attention over the video tokens (raster order of (T, H, W), patch size
from the config); ``attn2`` is cross-attention with the same processor class and is never patched. The timestep may
be ``[B]`` or per-frame ``[B, 1, T, 1, 1]`` (video2world conditioning); its maximum identifies the step.

Context parallelism: diffusers ships no plan for this model; :meth:`CosmosAdapter.context_parallel_plan` gives one
(video tokens split at the first block, RoPE tables and the learnable position embedding on their token axis,
per-token modulation and ControlNet residuals where present, gathered after ``proj_out``). Each rank keeps the whole
text, so cross-attention (``attn2``) is exact on the rank's queries without communication. diffusers'
``CosmosAttnProcessor2_0`` passes no parallel config to its attention call, so the self-attention (``attn1``) gets
:func:`context_parallel_processor_class`, the same processor that passes it; the video tokens stay in raster order
after the Ulysses all-to-all.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from ...errors import AlreadyPatchedError
from ..intercept import NAProcessor
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

    # ---- context parallelism -------------------------------------------------------------------------------------

    def context_parallel_plan(self, model):
        from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

        tokens = ContextParallelInput(split_dim=1, expected_dims=3)  # [B, N, C]
        table = ContextParallelInput(split_dim=0, expected_dims=2, split_output=True)  # RoPE cos / sin, (N, D)
        # Per-token modulation (a per-frame timestep [B, 1, T, 1, 1] gives [B, N, C]) is passed unchanged to every
        # block and to norm_out; a [B] timestep gives [B, C], which is left whole (diffusers logs once that a
        # 2-D tensor is not split).
        modulation = {"embedded_timestep": tokens, "temb": tokens}
        plan: dict[str, Any] = {
            "rope": {0: table, 1: table},
            "transformer_blocks.0": {"hidden_states": tokens},
            "transformer_blocks.*": {**modulation, "controlnet_residual": tokens},
            "norm_out": dict(modulation),
            "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
        }
        if getattr(model, "learnable_pos_embed", None) is not None:  # extra_pos_embed_type="learnable": [B, N, C]
            plan["learnable_pos_embed"] = {0: ContextParallelInput(split_dim=1, expected_dims=3, split_output=True)}
        return plan

    def install_context_parallel_hooks(self, model):
        base = _diffusers_processor_class()
        cp_class = context_parallel_processor_class()
        swapped = []
        for block in model.transformer_blocks:
            attn = block.attn1
            processor = attn.processor
            if isinstance(processor, NAProcessor):
                raise AlreadyPatchedError(
                    "CosmosTransformer3DModel is patched by na_accel: set up context parallelism before patching "
                    "(na_accel.unpatch(obj), then na_accel.enable_context_parallel or context_parallel_plan, then "
                    "na_accel.patch)"
                )
            if type(processor) is base:
                attn.set_processor(cp_class())
                swapped.append((attn, processor))
        return [_ProcessorSwap(swapped)]


class _ProcessorSwap:
    """Handle of the processors swapped for the context-parallel one: ``remove()`` puts the originals back."""

    def __init__(self, swapped: list) -> None:
        self.swapped = swapped

    def remove(self) -> None:
        for attn, original in self.swapped:
            attn.set_processor(original)
        self.swapped = []


def _diffusers_processor_class() -> type:
    from diffusers.models.transformers.transformer_cosmos import CosmosAttnProcessor2_0

    return CosmosAttnProcessor2_0


def dispatch_attention_fn(*args, **kwargs):
    """diffusers' ``dispatch_attention_fn``, looked up on each call. The context-parallel processor calls it through
    this module's global, like diffusers' processors do through theirs, so na_accel's interception
    (:mod:`na_accel.patching.intercept`) reaches its calls the same way."""
    from diffusers.models.attention_dispatch import dispatch_attention_fn as dispatch

    return dispatch(*args, **kwargs)


@functools.cache
def context_parallel_processor_class() -> type:
    """A subclass of diffusers' ``CosmosAttnProcessor2_0`` (same name, so na_accel's adapter accepts it) whose
    attention call passes ``_attention_backend`` and ``_parallel_config`` (which diffusers' ``set_attention_backend``
    and ``enable_parallelism`` set on processors that have them) for self-attention. ``__call__`` is diffusers'
    0.42.1 code apart from those two arguments (and the ONNX-export branch, not needed here); without a parallel
    config its output is identical (tested)."""
    from diffusers.models.embeddings import apply_rotary_emb

    class CosmosAttnProcessor2_0(_diffusers_processor_class()):
        _attention_backend = None
        _parallel_config = None

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                     image_rotary_emb=None):  # fmt: skip
            self_attention = encoder_hidden_states is None
            if encoder_hidden_states is None:
                encoder_hidden_states = hidden_states
            query = attn.to_q(hidden_states)
            key = attn.to_k(encoder_hidden_states)
            value = attn.to_v(encoder_hidden_states)
            query = query.unflatten(2, (attn.heads, -1)).transpose(1, 2)
            key = key.unflatten(2, (attn.heads, -1)).transpose(1, 2)
            value = value.unflatten(2, (attn.heads, -1)).transpose(1, 2)
            query = attn.norm_q(query)
            key = attn.norm_k(key)
            if image_rotary_emb is not None:
                query = apply_rotary_emb(query, image_rotary_emb, use_real=True, use_real_unbind_dim=-2)
                key = apply_rotary_emb(key, image_rotary_emb, use_real=True, use_real_unbind_dim=-2)
            key = key.repeat_interleave(query.size(3) // key.size(3), dim=3)
            value = value.repeat_interleave(query.size(3) // value.size(3), dim=3)
            hidden_states = dispatch_attention_fn(
                query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                attn_mask=attention_mask, dropout_p=0.0, is_causal=False, backend=self._attention_backend,
                # cross-attention: this rank's queries, every text key: exact without communication
                parallel_config=self._parallel_config if self_attention else None,
            )  # fmt: skip
            hidden_states = hidden_states.flatten(2, 3).type_as(query)
            hidden_states = attn.to_out[0](hidden_states)
            hidden_states = attn.to_out[1](hidden_states)
            return hidden_states

    CosmosAttnProcessor2_0.__qualname__ = "CosmosAttnProcessor2_0"
    return CosmosAttnProcessor2_0
