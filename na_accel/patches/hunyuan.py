"""HunyuanVideo (``HunyuanVideoTransformer3DModel``): joint attention, video tokens then text tokens.

Both the 20 dual-stream blocks (``transformer_blocks.{i}.attn``) and the 40 single-stream blocks
(``single_transformer_blocks.{i}.attn``) attend over ``[video (raster order of (T, H, W)), text]``. diffusers builds a
``[B, 1, 1, S]`` boolean key-padding mask whose valid text keys are the first ``encoder_attention_mask.sum()`` ones;
the per-batch text lengths are read from that mask. The token refiner's attention (text only) is never patched.
"""

from __future__ import annotations

from .runtime import Adapter, Layout, video_grid


class HunyuanVideoAdapter(Adapter):
    family = "hunyuan"
    model_class = "HunyuanVideoTransformer3DModel"
    default_preset = "hunyuan_fast"
    processor_classes = ("HunyuanVideoAttnProcessor2_0",)
    layer_regex = r"(transformer_blocks|single_transformer_blocks)\.\d+\.attn"
    grid_ndim = 3
    grid_axes = "(T, H, W)"

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
