"""FlexAttention backend: the exact GNA mask as a FlexAttention block mask, in tiled token order.

Grid tokens are padded to a multiple of the tile and reordered so that each 128-token block of the sequence is
one 3-D (or 2-D / 1-D) tile of the grid; FlexAttention then skips every tile pair outside all windows and
evaluates the mask only on partial tiles. Extra (text) keys follow the grid keys; dense text queries follow the
grid queries. The permute to tiled order and back is part of this backend (and of its measured time).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from .dispatch import Backend, Problem
from .semantics import GNAParams, axis_allows

BLOCK = 128
# Tile shape per number of grid axes; each holds BLOCK tokens.
TILES = {1: (128,), 2: (16, 8), 3: (2, 8, 8)}


def _flex_api():
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    return create_block_mask, flex_attention


def tile_shape(params: GNAParams) -> tuple[int, ...]:
    return TILES[params.ndim]


def padded_grid(params: GNAParams) -> tuple[int, ...]:
    return tuple(math.ceil(n / t) * t for n, t in zip(params.grid, tile_shape(params)))


def to_tiled(x: torch.Tensor, params: GNAParams) -> torch.Tensor:
    """``[B, N, H, D]`` raster tokens -> ``[B, H, Np, D]`` tiled order (zero padding to tile multiples)."""
    b, _, h, d = x.shape
    tile, pgrid = tile_shape(params), padded_grid(params)
    x = x.reshape(b, *params.grid, h, d)
    pad = []
    for n, pn in zip(reversed(params.grid), reversed(pgrid)):
        pad += [0, pn - n]
    if any(pad):
        x = torch.nn.functional.pad(x, [0, 0, 0, 0] + pad)
    split = [b]
    for pn, t in zip(pgrid, tile):
        split += [pn // t, t]
    x = x.reshape(*split, h, d)
    nd = params.ndim
    tiles_dims = [1 + 2 * i for i in range(nd)]
    inner_dims = [2 + 2 * i for i in range(nd)]
    x = x.permute(0, 1 + 2 * nd, *tiles_dims, *inner_dims, 2 + 2 * nd)
    return x.reshape(b, h, math.prod(pgrid), d)


def from_tiled(x: torch.Tensor, params: GNAParams) -> torch.Tensor:
    """Inverse of :func:`to_tiled`: ``[B, H, Np, D]`` -> ``[B, N, H, D]``."""
    b, h, _, d = x.shape
    tile, pgrid = tile_shape(params), padded_grid(params)
    nd = params.ndim
    x = x.reshape(b, h, *[pn // t for pn, t in zip(pgrid, tile)], *tile, d)
    order = [0]
    for i in range(nd):
        order += [2 + i, 2 + nd + i]
    x = x.permute(*order, 1, 2 + 2 * nd).reshape(b, *pgrid, h, d)
    x = x[(slice(None),) + tuple(slice(0, n) for n in params.grid)]
    return x.reshape(b, -1, h, d)


def tiled_coords(index: torch.Tensor, params: GNAParams) -> list[torch.Tensor]:
    """Grid coordinates of tiled-order token indices (valid for indices below the padded token count)."""
    tile, pgrid = tile_shape(params), padded_grid(params)
    per_tile = math.prod(tile)
    tile_id, inner = index // per_tile, index % per_tile
    coords = []
    for axis in reversed(range(params.ndim)):
        tiles_on_axis = pgrid[axis] // tile[axis]
        coords.append((tile_id % tiles_on_axis) * tile[axis] + inner % tile[axis])
        tile_id, inner = tile_id // tiles_on_axis, inner // tile[axis]
    return coords[::-1]


def make_mask_mod(params: GNAParams, num_text_keys: int, extra_lengths: torch.Tensor | None):
    """FlexAttention ``mask_mod`` of the GNA problem in tiled order (grid queries/keys first, then text)."""
    n_pad = math.prod(padded_grid(params))

    def mask_mod(b, h, q_idx, kv_idx):
        qc = tiled_coords(q_idx, params)
        kc = tiled_coords(kv_idx, params)
        key_in_grid = kv_idx < n_pad
        key_valid = key_in_grid
        window = key_in_grid
        for axis in range(params.ndim):
            key_valid = key_valid & (kc[axis] < params.grid[axis])
            window = window & axis_allows(qc[axis], kc[axis], params, axis)
        if num_text_keys:
            t = kv_idx - n_pad
            limit = extra_lengths[b] if extra_lengths is not None else num_text_keys
            text_valid = (~key_in_grid) & (t < limit)
            key_valid = key_valid | text_valid
            window = window | text_valid
        is_text_query = q_idx >= n_pad
        return (window & key_valid) | (is_text_query & key_valid)

    return mask_mod


@lru_cache(maxsize=32)
def _compiled_flex():
    _, flex_attention = _flex_api()
    return torch.compile(flex_attention, dynamic=False)


_BLOCK_MASKS: dict = {}


def block_mask_for(params: GNAParams, batch: int, num_text_keys: int, num_text_queries: int,
                   extra_lengths: torch.Tensor | None, device: torch.device):  # fmt: skip
    """The (cached) FlexAttention block mask of a problem."""
    create_block_mask, _ = _flex_api()
    lengths_key = None if extra_lengths is None else tuple(extra_lengths.tolist())
    mask_batch = batch if extra_lengths is not None else 1
    key = (params, mask_batch, num_text_keys, num_text_queries, lengths_key, str(device))
    if key not in _BLOCK_MASKS:
        if len(_BLOCK_MASKS) >= 64:
            _BLOCK_MASKS.pop(next(iter(_BLOCK_MASKS)))
        n_pad = math.prod(padded_grid(params))
        mask_mod = make_mask_mod(params, num_text_keys, extra_lengths)
        # Compiled on CUDA: the eager builder materialises the full query x key mask (~100 GB at 115k tokens).
        _BLOCK_MASKS[key] = create_block_mask(
            mask_mod,
            key[1],
            None,
            n_pad + num_text_queries,
            n_pad + num_text_keys,
            device=device,
            BLOCK_SIZE=BLOCK,
            _compile=torch.device(device).type == "cuda",
        )
    return _BLOCK_MASKS[key]


def _run_flex(fn, q, k, v, block_mask, scale):
    """Call FlexAttention asking for the logsumexp (``return_aux`` on newer PyTorch, ``return_lse`` before)."""
    try:
        from torch.nn.attention.flex_attention import AuxRequest
    except ImportError:  # pragma: no cover - older PyTorch
        return fn(q, k, v, block_mask=block_mask, scale=scale, return_lse=True)
    out, aux = fn(q, k, v, block_mask=block_mask, scale=scale, return_aux=AuxRequest(lse=True))
    return out, aux.lse


class FlexBackend(Backend):
    name = "flex"

    def unavailable_reason(self, problem: Problem) -> str | None:
        try:
            _flex_api()
        except ImportError as exc:  # pragma: no cover - torch too old
            return f"FlexAttention is not available in this PyTorch ({exc})"
        q = problem.query
        if q.dtype == torch.float64 and q.is_cuda:
            return "FlexAttention on CUDA does not take float64"
        d = q.shape[-1]
        if q.is_cuda and (d < 16 or d & (d - 1)):
            return f"FlexAttention on CUDA needs a power-of-two head dim >= 16, got {d}"
        return None

    def auto_rejection(self, problem: Problem) -> str | None:
        if not problem.query.is_cuda:
            return "FlexAttention off CUDA runs eagerly with O(N^2) memory; the reference backend is preferred"
        return self.unavailable_reason(problem)

    def forward(self, problem: Problem) -> None:
        p = problem
        _, flex_attention = _flex_api()
        params = p.params
        batch = p.query.shape[0]
        num_tk = 0 if p.extra_key is None else p.extra_key.shape[1]
        num_tq = 0 if p.text_query is None else p.text_query.shape[1]
        q, k, v = (to_tiled(t, params) for t in (p.query, p.key, p.value))
        if num_tk:
            k = torch.cat([k, p.extra_key.transpose(1, 2)], dim=2)
            v = torch.cat([v, p.extra_value.transpose(1, 2)], dim=2)
        if num_tq:
            q = torch.cat([q, p.text_query.transpose(1, 2)], dim=2)
        block_mask = block_mask_for(params, batch, num_tk, num_tq, p.extra_lengths, q.device)
        fn = _compiled_flex() if q.is_cuda else flex_attention
        out, lse = _run_flex(fn, q, k, v, block_mask, p.scale)
        n_pad = math.prod(padded_grid(params))
        p.out.copy_(from_tiled(out[:, :, :n_pad], params))
        if p.lse is not None:
            p.lse.copy_(from_tiled(lse[:, :, :n_pad, None], params)[..., 0])
        if num_tq:
            p.text_out.copy_(out[:, :, n_pad:].transpose(1, 2))
            if p.text_lse is not None:
                p.text_lse.copy_(lse[:, :, n_pad:].transpose(1, 2))

