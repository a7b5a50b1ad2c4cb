"""What every family adapter shares: the token layout of a self-attention sequence, the adapter interface, and
the key-padding mask helpers. One module per family (``hunyuan``, ``flux``, ``cosmos``, ``wan``) subclasses
:class:`Adapter`; all model knowledge of na_accel lives in those adapters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ...errors import UnsupportedModelError

# --------------------------------------------------------------------------------------------------------------
# Token layout and adapters
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Token layout of one self-attention sequence: the latent grid (raster order) and the text tokens."""

    grid: tuple[int, ...]
    num_text: int = 0
    text_first: bool = False

    @property
    def num_grid(self) -> int:
        n = 1
        for g in self.grid:
            n *= g
        return n

    @property
    def seq_len(self) -> int:
        return self.num_grid + self.num_text

    @property
    def grid_slice(self) -> slice:
        return slice(self.num_text, self.seq_len) if self.text_first else slice(0, self.num_grid)

    @property
    def text_slice(self) -> slice:
        return slice(0, self.num_text) if self.text_first else slice(self.num_grid, self.seq_len)

    def describe(self) -> str:
        s = "grid (" + ", ".join(str(g) for g in self.grid) + ")"
        if self.num_text:
            s += f" + {self.num_text} text tokens ({'text first' if self.text_first else 'grid first'})"
        return s


@dataclass(frozen=True)
class SizeFactors:
    """How pixel sizes map to the token grid of a pipeline: height and width must be multiples of
    ``spatial_multiple`` (VAE scale x patch size); for video, frames ``= temporal_factor * k + 1`` with the latent
    frame count a multiple of ``temporal_patch``."""

    is_video: bool
    spatial_multiple: int
    temporal_factor: int = 1
    temporal_patch: int = 1

    def token_grid(self, height: int, width: int, frames: int | None = None) -> tuple[int, ...]:
        """The latent token grid the transformer sees for a (valid) generation size."""
        gh, gw = height // self.spatial_multiple, width // self.spatial_multiple
        if not self.is_video:
            return (gh, gw)
        return (((frames or 1) - 1) // self.temporal_factor + 1) // self.temporal_patch, gh, gw


class Adapter:
    """Model knowledge for one diffusers transformer family. Subclasses fill in the class attributes and
    :meth:`layout`; everything else in na_accel (the CLI, the benchmarks, the tiny models) reads family facts here."""

    family: str = ""  # short name: hunyuan, flux, cosmos, wan
    display_name: str = ""  # e.g. "HunyuanVideo"
    variants: str = ""  # model versions the adapter covers, for messages
    model_class: str = ""  # diffusers transformer class name
    default_preset: str = ""
    processor_classes: tuple[str, ...] = ()  # processors whose dispatch_attention_fn call we can answer
    layer_regex: str = ""  # names of the token-grid self-attention modules
    grid_ndim: int = 3
    grid_axes: str = "(T, H, W)"
    default_fps: int = 24  # frame rate of the real model's videos (1 for image models)
    #: constructor arguments of the real-size transformer (the released checkpoint's config.json, diffusers 0.42.1)
    real_config: dict[str, Any] = {}
    #: the usual generation size of the real model and its VAE factors and text length
    real_size: dict[str, int] = {}

    def model_type(self) -> type:
        import diffusers

        return getattr(diffusers, self.model_class)

    def size_factors(self, pipe: Any) -> SizeFactors:
        """Size constraints of a loaded pipeline of this family (VAE scale factors and the patch size)."""
        cfg = pipe.transformer.config
        ps = cfg.patch_size
        spatial_patch = int(ps[-1]) if isinstance(ps, list | tuple) else int(ps)
        temporal_patch = int(ps[0]) if isinstance(ps, list | tuple) else 1
        vs = int(getattr(pipe, "vae_scale_factor_spatial", 8))
        vt = int(getattr(pipe, "vae_scale_factor_temporal", 4))
        return SizeFactors(True, vs * spatial_patch, vt, temporal_patch)

    def default_size_factors(self) -> SizeFactors:
        """Size constraints of the released models of this family (from :attr:`real_size` and :attr:`real_config`);
        the tiny models share their VAE factors and patch sizes."""
        ps = self.real_config.get("patch_size", 2)
        p = int(ps[-1]) if isinstance(ps, list | tuple) else int(ps)
        pt = int(ps[0]) if isinstance(ps, list | tuple) else int(self.real_config.get("patch_size_t", 1))
        rs = self.real_size
        return SizeFactors(self.grid_ndim == 3, rs["vae_spatial"] * p, rs["vae_temporal"], pt)

    def real_token_grid(self, height: int, width: int, frames: int) -> tuple[int, ...]:
        """Token grid of the real-size model at a pixel size (from :attr:`real_size` and :attr:`real_config`)."""
        return self.default_size_factors().token_grid(height, width, frames)

    def example_inputs(self, transformer: torch.nn.Module, latent_shape: tuple[int, ...], text_tokens: int,
                       device: Any, dtype: torch.dtype, seed: int = 0) -> dict[str, Any]:  # fmt: skip
        """Random transformer inputs of the right shapes for one conditional denoising step (batch 1), as the
        family's pipeline passes them; ``latent_shape`` is the pipeline's latent without the batch axis."""
        raise NotImplementedError

    def layout(self, model: torch.nn.Module, args: dict[str, Any]) -> Layout | str:
        """The token layout of this forward call, or a string saying why it is not recognised."""
        raise NotImplementedError

    def check_forward(self, model: torch.nn.Module, args: dict[str, Any], layout: Layout) -> Layout | str:
        """Further checks of a recognised forward (e.g. a user-given attention mask); a string makes it dense."""
        return layout

    # ---- context parallelism (diffusers' Ulysses / ring; see na_accel.patching.parallel) ------------------------

    def context_parallel_plan(self, model: torch.nn.Module) -> dict[str, Any]:
        """The context-parallel plan for diffusers' ``enable_parallelism(cp_plan=...)``: which module inputs are split
        across the ranks and which outputs are gathered. Default: the model class's own ``_cp_plan`` (a copy)."""
        plan = getattr(type(model), "_cp_plan", None)
        if plan is None:
            raise UnsupportedModelError(
                f"{type(model).__name__} has no context-parallel plan in this diffusers version and na_accel has none "
                "for it."
            )
        return dict(plan)

    def install_context_parallel_hooks(self, model: torch.nn.Module) -> list[Any]:
        """Install what the plan needs besides diffusers' split and gather hooks (none by default); each must leave
        outputs unchanged while the model has no context-parallel config. Returns handles with ``remove()``."""
        return []

    def ulysses_token_positions(self, layout: Layout, world: int) -> torch.Tensor | None:
        """Where each token of the canonical layout sits in the sequence a rank's attention sees after diffusers'
        Ulysses all-to-all over ``world`` ranks (the ranks' local sequences concatenated in rank order), as an index
        tensor ``pos`` with ``gathered[:, pos] == canonical``; None when the two orders agree. Depends on where the
        family's plan splits the tokens."""
        raise NotImplementedError

    def context_parallel_input_error(self, model: torch.nn.Module, args: dict[str, Any], cp_config: Any) -> str | None:
        """Why this forward cannot run under the family's plan with ``cp_config`` (a one-line message for the user),
        or None. Default: with equal splits (no ``*_anything``) the grid and text token counts must be divisible by
        the number of context-parallel ranks (diffusers' splitter would stop on an assertion otherwise)."""
        if cp_config.ulysses_anything or cp_config.ring_anything:
            return None
        layout = self.layout(model, args)
        if isinstance(layout, str):
            return None
        ranks = cp_config.ulysses_degree * cp_config.ring_degree
        counts = [("grid", layout.num_grid)] + ([("text", layout.num_text)] if layout.num_text else [])
        bad = [f"{n} {what} tokens" for what, n in counts if n % ranks]
        if not bad:
            return None
        return (
            f"{self.model_class} under context parallelism over {ranks} ranks got {layout.describe()}: "
            f"{' and '.join(bad)} not divisible by {ranks}; each rank takes an equal share, so use a size (or text "
            f"length) whose token counts are multiples of {ranks}, or another degree"
        )

    def timestep(self, model: torch.nn.Module, args: dict[str, Any]) -> float | None:
        """A scalar summary of the ``timestep`` argument (its maximum), or None if absent."""
        t = args.get("timestep")
        if t is None:
            return None
        if isinstance(t, torch.Tensor):
            if t.numel() == 0:
                return None
            return float(t.detach().max().float())
        if isinstance(t, int | float):
            return float(t)
        return None


def random_tensor(generator: torch.Generator, shape: tuple[int, ...], device: Any, dtype: torch.dtype) -> torch.Tensor:
    """Standard normal values drawn on the CPU from ``generator`` (reproducible on any device), moved to ``device``."""
    return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)


def video_grid(hidden_states, patch: tuple[int, int, int]) -> tuple[int, int, int] | str:
    """Token grid of a (B, C, F, H, W) latent for a (p_t, p_h, p_w) patch embedding (floor, like the conv)."""
    if not isinstance(hidden_states, torch.Tensor) or hidden_states.dim() != 5:
        shape = tuple(hidden_states.shape) if isinstance(hidden_states, torch.Tensor) else type(hidden_states)
        return f"hidden_states is not a (B, C, F, H, W) tensor: {shape}"
    f, h, w = hidden_states.shape[2:]
    grid = (f // patch[0], h // patch[1], w // patch[2])
    if min(grid) < 1:
        return f"latent (F, H, W) = {(f, h, w)} is smaller than the patch size {patch}"
    return grid


class VideoSelfAttentionAdapter(Adapter):
    """Models whose planned layers are video-only self-attention over the (T, H, W) grid of a (B, C, F, H, W)
    latent, patchified with ``config.patch_size`` (Cosmos, Wan)."""

    def layout(self, model, args):
        grid = video_grid(args.get("hidden_states"), tuple(int(p) for p in model.config.patch_size))
        if isinstance(grid, str):
            return grid
        return Layout(grid)

    def ulysses_token_positions(self, layout, world):
        # The plans split the video tokens (raster order) into equal consecutive chunks, one per rank: the chunks
        # concatenated in rank order are the raster order again.
        return chunked_positions(layout, world)


# --------------------------------------------------------------------------------------------------------------
# Context parallelism helpers
# --------------------------------------------------------------------------------------------------------------


def context_parallel_config(model: torch.nn.Module) -> Any:
    """The ``ContextParallelConfig`` diffusers' ``enable_parallelism`` recorded on ``model``, or None."""
    return getattr(getattr(model, "_parallel_config", None), "context_parallel_config", None)


def chunked_positions(layout: Layout, world: int) -> torch.Tensor | None:
    """Token positions after the Ulysses all-to-all when the plan splits the grid tokens and the text tokens
    separately into ``world`` equal consecutive chunks (diffusers' equal split: ``tensor.chunk(world)[rank]``) and
    every rank's attention input is its text chunk and its grid chunk in the layout's order: the gathered sequence
    is ``[t_0, g_0, t_1, g_1, ...]`` (text first) or ``[g_0, t_0, g_1, t_1, ...]``. ``pos[i]`` is the gathered
    index of canonical token ``i``; None when the orders agree (grid only, or one rank)."""
    if layout.num_text == 0 or world == 1:
        return None
    n, t = layout.num_grid // world, layout.num_text // world
    if n * world != layout.num_grid or t * world != layout.num_text:
        raise ValueError(f"{layout.describe()} does not split into {world} equal chunks")
    local = n + t
    g = torch.arange(layout.num_grid)
    x = torch.arange(layout.num_text)
    grid_pos = (g // n) * local + (t if layout.text_first else 0) + g % n
    text_pos = (x // t) * local + (0 if layout.text_first else n) + x % t
    return torch.cat([text_pos, grid_pos] if layout.text_first else [grid_pos, text_pos])


def mask_shape_reason(mask, layout: Layout, batch: int, device=None) -> str | None:
    """Why ``mask`` is not a boolean ``[B, 1, 1, S]`` key-padding mask for ``layout`` (None if its shape is)."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        return "attention mask is not a boolean tensor"
    if mask.dim() != 4 or tuple(mask.shape) != (batch, 1, 1, layout.seq_len):
        return f"attention mask of shape {tuple(mask.shape)} is not a [B, 1, 1, S] key-padding mask"
    if layout.num_text == 0:
        return "attention mask on a grid-only self-attention"
    if device is not None and mask.device != device:
        return "attention mask is on another device than the query"
    return None


def key_padding_lengths(mask: torch.Tensor, layout: Layout):
    """Valid text lengths (int32 ``[B]``) of a ``[B, 1, 1, S]`` mask, None if all text is valid, or a reason if the
    mask is not a pure text key-padding mask (all grid keys valid, a valid prefix of the text keys). Syncs."""
    keys = mask[:, 0, 0, :]
    text = keys[:, layout.text_slice]
    t = layout.num_text
    lengths = text.sum(dim=-1, dtype=torch.int32)
    prefix = torch.arange(t, device=mask.device)[None, :] < lengths[:, None]
    if not bool(keys[:, layout.grid_slice].all()) or not bool(torch.equal(text, prefix)):
        return "attention mask is not a pure text key-padding mask (valid grid keys, a valid prefix of text)"
    if bool((lengths == t).all()):
        return None
    return lengths
