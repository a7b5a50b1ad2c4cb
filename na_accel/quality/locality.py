"""Attention recall of a GNA window ("kept mass"): how much of a query's dense softmax mass falls inside its window.

For a grid (video) query with scores ``s_j = scale * q . k_j`` over the keys it may see densely (every grid key and
every valid text key), the kept mass is

    ``sum_{j in window} exp(s_j) / sum_j exp(s_j) = exp(lse_window - lse_dense)``

where the window is the query's GNA neighbourhood on the grid plus every valid text key (text keys are extra keys
that every grid query attends to). It is 1 when the window holds all of the attention and the share of the dense
attention that the sparse call keeps otherwise (the sparse call renormalises that share to 1). Text queries attend
densely under GNA too, so only grid queries are measured.

:func:`kept_mass_per_query` computes it exactly for a sample of grid queries
(:func:`sample_queries`): scores are formed for the sampled rows only, in chunks, so memory stays at
``sampled rows x sequence length`` (never ``N x N``). :class:`LocalityProbe` attaches to a patch handle
(:meth:`na_accel.patching.api.PatchHandle.set_probe`) and accumulates the kept mass per (transformer, layer,
denoising step, head) over every sparse attention call of a generation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeVar

import torch

from ..ops.semantics import GNAParams, grid_mask
from ..patching.families.base import Layout
from ..patching.plan import ProbeCall

__all__ = ["LocalityProbe", "chunk_budget", "kept_mass_per_query", "sample_queries", "window_rows"]

#: Upper bound on the bytes of one chunk's score tensor (B x heads x chunk x sequence, compute dtype) on a CPU.
CHUNK_BYTES = 64 * 1024 * 1024
#: The same on a GPU, capped at a quarter of the free memory: each chunk reads every key once, so at real size
#: (HunyuanVideo 720p x 129 frames: 24 heads x 119k keys, 1.5 GB of float32 keys) chunks of one or two queries made
#: the probe bound by re-reading the keys (88 ms per call at 64 queries); 1 GiB chunks take ~20 queries at a time.
CUDA_CHUNK_BYTES = 1024 * 1024 * 1024


def chunk_budget(device: torch.device, chunk_bytes: int | None = None) -> int:
    """The chunk bound for ``device``: ``chunk_bytes`` when given, else :data:`CHUNK_BYTES` on a CPU and
    :data:`CUDA_CHUNK_BYTES` (at most a quarter of the free memory) on a GPU."""
    if chunk_bytes is not None:
        return int(chunk_bytes)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return max(CHUNK_BYTES, min(CUDA_CHUNK_BYTES, free // 4))
    return CHUNK_BYTES


def sample_queries(grid: Sequence[int], count: int | None = 256, *, tile: Sequence[int] | None = None,
                   seed: int = 0) -> torch.Tensor:  # fmt: skip
    """Raster-order indices (sorted, int64, CPU) of a random sample of grid queries.

    ``count`` None or at least the number of grid tokens: every query. Otherwise ``count`` distinct queries drawn
    uniformly, or, with ``tile`` (one entry per axis, e.g. the kernel's query tile (2, 8, 8)), whole tiles of the
    grid's tile partition (aligned to multiples of ``tile``, clipped at the grid's edge) drawn uniformly without
    replacement until at least ``count`` queries are taken. The draw uses its own generator seeded with ``seed``
    (the global RNG is not touched), so the same grid always gets the same sample.
    """
    grid = tuple(int(n) for n in grid)
    n = math.prod(grid)
    if count is None or count >= n:
        return torch.arange(n)
    if count < 1:
        raise ValueError(f"count must be >= 1 or None (every query), got {count}")
    gen = torch.Generator().manual_seed(int(seed))
    if tile is None:
        return torch.randperm(n, generator=gen)[:count].sort().values
    tile = tuple(int(t) for t in tile)
    if len(tile) != len(grid) or any(t < 1 for t in tile):
        raise ValueError(f"tile must have one entry >= 1 per grid axis {grid}, got {tile}")
    tiles_per_axis = [-(-g // t) for g, t in zip(grid, tile, strict=True)]
    strides = [math.prod(grid[a + 1 :]) for a in range(len(grid))]
    picked: list[torch.Tensor] = []
    taken = 0
    for flat in torch.randperm(math.prod(tiles_per_axis), generator=gen).tolist():
        tile_coords = []
        for axis in reversed(range(len(grid))):  # tile coordinates of the flat tile index, last axis fastest
            tile_coords.append(flat % tiles_per_axis[axis])
            flat //= tiles_per_axis[axis]
        ranges = [torch.arange(c * t, min((c + 1) * t, g))
                  for c, t, g in zip(reversed(tile_coords), tile, grid, strict=True)]  # fmt: skip
        mesh = torch.meshgrid(*ranges, indexing="ij")
        picked.append(sum(m * st for m, st in zip(mesh, strides, strict=True)).flatten())
        taken += picked[-1].numel()
        if taken >= count:
            break
    return torch.cat(picked).sort().values


def window_rows(params: GNAParams, layout: Layout, queries: torch.Tensor, device: torch.device | str | None = None
                ) -> torch.Tensor:  # fmt: skip
    """``[len(queries), S]`` boolean mask over the whole sequence of the keys each sampled grid query attends to
    under GNA: its window on the grid (raster order, at ``layout.grid_slice``) and every text token (padding is
    applied separately, per batch element)."""
    if tuple(params.grid) != tuple(layout.grid):
        raise ValueError(f"GNA params are for grid {params.grid}, but the layout's grid is {layout.grid}")
    idx = queries.to(device=device, dtype=torch.long)
    rows = torch.ones(idx.numel(), layout.seq_len, dtype=torch.bool, device=idx.device)
    rows[:, layout.grid_slice] = grid_mask(params, idx)
    return rows


def _valid_keys(layout: Layout, text_lengths: torch.Tensor | None, batch: int, device: torch.device
                ) -> torch.Tensor | None:  # fmt: skip
    """``[B, S]`` mask of valid keys (grid keys always, the first ``text_lengths[b]`` text keys), or None if all."""
    if not layout.num_text or text_lengths is None:
        return None
    valid = torch.ones(batch, layout.seq_len, dtype=torch.bool, device=device)
    t = torch.arange(layout.num_text, device=device)
    valid[:, layout.text_slice] = t[None, :] < text_lengths.to(device)[:, None]
    return valid


def _kept_rows(query: torch.Tensor, key: torch.Tensor, layout: Layout, queries: torch.Tensor, rows: torch.Tensor,
               scale: float | None, text_lengths: torch.Tensor | None, chunk_bytes: int | None
               ) -> torch.Tensor:  # fmt: skip
    """Kept mass ``[B, nq, heads]`` of the sampled grid queries ``queries`` given their window ``rows``."""
    batch, seq, heads, dim = query.shape
    if key.shape != query.shape:
        raise ValueError(f"query and key must have one shape [B, S, heads, D], got {tuple(query.shape)} and "
                         f"{tuple(key.shape)}")  # fmt: skip
    if seq != layout.seq_len:
        raise ValueError(f"the sequence has {seq} tokens, but the layout {layout.describe()} has {layout.seq_len}")
    cdt = torch.float64 if query.dtype == torch.float64 else torch.float32
    scale = dim**-0.5 if scale is None else float(scale)
    device = query.device
    positions = queries.to(device=device, dtype=torch.long) + layout.grid_slice.start
    valid = _valid_keys(layout, text_lengths, batch, device)
    k = key.to(cdt)
    itemsize = torch.finfo(cdt).bits // 8
    step = max(1, chunk_budget(device, chunk_bytes) // (2 * itemsize * batch * heads * seq))
    out = torch.empty(batch, positions.numel(), heads, dtype=torch.float32, device=device)
    for start in range(0, positions.numel(), step):
        sl = slice(start, start + step)
        q = query[:, positions[sl]].to(cdt)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale  # [B, heads, c, S]
        if valid is not None:
            scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
        dense = torch.logsumexp(scores, dim=-1)
        local = torch.logsumexp(scores.masked_fill(~rows[sl][None, None], float("-inf")), dim=-1)
        out[:, sl] = torch.exp(local - dense).transpose(1, 2).float()
    return out


def kept_mass_per_query(
    query: torch.Tensor,
    key: torch.Tensor,
    layout: Layout,
    params: GNAParams,
    scale: float | None = None,
    text_lengths: torch.Tensor | None = None,
    queries: torch.Tensor | None = None,
    chunk_bytes: int | None = None,
) -> torch.Tensor:
    """Exact kept mass ``exp(lse_window - lse_dense)`` of sampled grid queries, ``[B, nq, heads]`` float32.

    Args:
        query, key: ``[B, S, heads, D]`` as the attention call gets them, ``S = layout.seq_len`` (grid tokens in
            raster order at ``layout.grid_slice``, text tokens at ``layout.text_slice``).
        layout: the token layout (grid, number of text tokens, text first or last).
        params: the GNA window on ``layout.grid``.
        scale: softmax scale; None: ``D ** -0.5``.
        text_lengths: int ``[B]``, valid text tokens per batch element (the first ones); None: all valid. Padded text
            keys are excluded from both the window and the dense softmax.
        queries: raster indices of the grid queries to measure (e.g. from :func:`sample_queries`); None: all.
        chunk_bytes: bound on the bytes of one chunk of scores (``B x heads x chunk x S``); None:
            :func:`chunk_budget` of the device.

    Scores are computed in float32 (float64 for float64 inputs) for the sampled rows only.
    """
    if queries is None:
        queries = torch.arange(layout.num_grid)
    rows = window_rows(params, layout, queries, query.device)
    return _kept_rows(query, key, layout, queries, rows, scale, text_lengths, chunk_bytes)


_Probe = TypeVar("_Probe", bound="AttachedProbe")


class AttachedProbe:
    """Attaching a probe to a :class:`~na_accel.patching.api.PatchHandle` (``handle.set_probe``) and detaching it."""

    _handle: Any = None

    def attach(self: _Probe, handle: Any) -> _Probe:
        """Set this probe on a :class:`~na_accel.patching.api.PatchHandle`; returns self."""
        handle.set_probe(self)
        self._handle = handle
        return self

    def detach(self) -> None:
        """Remove this probe from the handle it was attached to (the recorded values stay)."""
        if self._handle is not None:
            self._handle.set_probe(None)
            self._handle = None


class LocalityProbe(AttachedProbe):
    """Accumulates the kept mass of every sparse attention call of a patched model, per (transformer, layer,
    denoising step, head).

    Usage::

        handle = na_accel.patch(pipe, config)
        probe = LocalityProbe(queries=256).attach(handle)
        pipe(...)
        probe.summary()  # {"mean": ..., "min_layer": ..., "per_layer": {...}, ...}

    Each call measures the same sample of grid queries per grid (:func:`sample_queries` with ``queries``, ``tile``
    and ``seed``), so layers, steps and configs are compared on the same positions; the window masks of those
    queries are cached per (window, layout, device). Sums stay on the model's device until :meth:`records` or
    :meth:`summary` read them (no host synchronisation per call). Dense steps and dense layers are not observed,
    so the statistics cover the sparse calls only.
    """

    def __init__(self, queries: int | None = 256, *, tile: Sequence[int] | None = None, seed: int = 0,
                 chunk_bytes: int | None = None) -> None:  # fmt: skip
        self.queries = queries
        self.tile = tuple(tile) if tile is not None else None
        self.seed = seed
        self.chunk_bytes = chunk_bytes
        self._samples: dict[tuple[Any, ...], torch.Tensor] = {}  # (grid, device) -> sampled raster indices
        self._rows: dict[tuple[Any, ...], torch.Tensor] = {}
        # (transformer, layer, step) -> [sum over rows per head (float64, on device), rows, calls]
        self._acc: dict[tuple[str, str, int | None], list[Any]] = {}
        self._handle = None

    def reset(self) -> None:
        """Forget the recorded values (the query samples and mask cache are kept)."""
        self._acc.clear()

    # ---- the hook ------------------------------------------------------------------------------------------------

    def _sample(self, grid: tuple[int, ...], device: torch.device) -> torch.Tensor:
        sample = self._samples.get((grid, device))
        if sample is None:
            tile = self.tile
            if tile is not None and len(tile) != len(grid):  # a 3-D tile on a 2-D grid: its trailing axes
                tile = tile[-len(grid) :]
            sample = sample_queries(grid, self.queries, tile=tile, seed=self.seed).to(device)
            self._samples[(grid, device)] = sample
        return sample

    def __call__(self, call: ProbeCall) -> None:
        layout, device = call.layout, call.query.device
        sample = self._sample(tuple(layout.grid), device)
        cache_key = (call.params, layout, device)
        rows = self._rows.get(cache_key)
        if rows is None:
            rows = window_rows(call.params, layout, sample, device)
            self._rows[cache_key] = rows
        kept = _kept_rows(call.query, call.key, layout, sample, rows, call.scale, call.text_lengths,
                          self.chunk_bytes)  # fmt: skip
        total = kept.sum(dim=(0, 1), dtype=torch.float64)
        key = (call.transformer, call.layer, call.step)
        acc = self._acc.get(key)
        if acc is None:
            self._acc[key] = [total, kept.shape[0] * kept.shape[1], 1]
        else:
            acc[0] = acc[0] + total
            acc[1] += kept.shape[0] * kept.shape[1]
            acc[2] += 1

    # ---- results -------------------------------------------------------------------------------------------------

    def records(self) -> list[dict[str, Any]]:
        """One dict per (transformer, layer, step) seen: ``kept_mass`` (list, one mean per head over every batch
        element and sampled query of those calls), ``rows`` (query rows measured per head) and ``calls``; in the
        order first seen."""
        out = []
        for (transformer, layer, step), (total, rows, calls) in self._acc.items():
            out.append({"transformer": transformer, "layer": layer, "step": step,
                        "kept_mass": (total / rows).cpu().tolist(), "rows": rows, "calls": calls})  # fmt: skip
        return out

    def summary(self) -> dict[str, Any]:
        """Aggregates of :meth:`records`: ``mean`` (over every measured row, head, layer and step), ``per_layer``
        (``"transformer/layer"`` -> mean over its steps and heads), ``min_layer`` / ``min_layer_name`` (the lowest
        per-layer mean), ``min_head`` (the lowest mean of one head of one layer, over steps), ``per_step`` (step ->
        mean over layers and heads), ``calls`` and ``queries`` (rows sampled per call and batch element). Values
        are None when nothing was recorded."""
        recs = self.records()
        empty = {"mean": None, "per_layer": {}, "min_layer": None, "min_layer_name": None, "min_head": None,
                 "per_step": {}, "calls": 0, "queries": self.queries}  # fmt: skip
        if not recs:
            return empty
        layers: dict[str, list[Any]] = {}
        steps: dict[Any, list[float]] = {}
        grand, grand_rows = 0.0, 0
        for r in recs:
            name = r["layer"] if r["transformer"] == "transformer" else f"{r['transformer']}/{r['layer']}"
            heads = r["kept_mass"]
            acc = layers.setdefault(name, [[0.0] * len(heads), 0])
            acc[0] = [a + h * r["rows"] for a, h in zip(acc[0], heads, strict=True)]
            acc[1] += r["rows"]
            s = steps.setdefault(r["step"], [0.0, 0])
            s[0] += sum(heads) * r["rows"]
            s[1] += len(heads) * r["rows"]
            grand += sum(heads) * r["rows"]
            grand_rows += len(heads) * r["rows"]
        per_layer_heads = {name: [v / rows for v in sums] for name, (sums, rows) in layers.items()}
        per_layer = {name: sum(h) / len(h) for name, h in per_layer_heads.items()}
        worst = min(per_layer, key=per_layer.get)
        return {
            "mean": grand / grand_rows,
            "per_layer": per_layer,
            "min_layer": per_layer[worst],
            "min_layer_name": worst,
            "min_head": min(min(h) for h in per_layer_heads.values()),
            "per_step": {step: v / n for step, (v, n) in sorted(steps.items(), key=lambda kv: (kv[0] is None, kv[0]))},
            "calls": sum(r["calls"] for r in recs),
            "queries": self.queries,
        }
