"""Choosing windows from measured locality: per layer the cheapest candidate whose kept mass clears a threshold,
and the dense steps from where locality is low.

Input: a kept-mass table ``kept[l, s, c]`` (layer, denoising step, candidate; the mean over heads and sampled
queries, :class:`.ladder.LocalityTable`), the attention FLOPs of each candidate relative to dense (``density[c]``)
and of each layer (``flops[l]``). For a threshold ``tau`` and a number ``n`` of dense first steps, layer ``l`` gets the
candidate of least density whose kept mass is at least ``tau`` on every sparse step (``min over s >= n``; ties: the
higher mean kept mass), or stays dense when none clears it. The number of dense steps is the one that minimises
the attention FLOPs of the whole generation (``n`` steps dense for every layer plus each layer's window on the
others; ties: the higher predicted kept mass). That is the shape a config can express: one ``dense_steps`` for the
pipeline and one window (or ``dense: true``) per layer.

With ``ranges=R > 1`` the sparse steps after the dense ones are cut into ``R`` contiguous ranges of (nearly) equal
length and each (layer, range) gets its own cheapest candidate clearing the threshold on that range: per-step-range
windows, which a config expresses as layer rules with ``steps`` (with ``dense_steps`` fixed too, the same cut at a
given number of dense steps). :func:`choose_per_head` makes the choice per head (what per-head windows would give;
the config schema does not express it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Choice", "choose", "choose_per_head", "sweep", "sweep_ranges", "threshold_grid"]

#: Thresholds the tuner tries: coarse where kept mass is rarely that low, then every 0.0025 up to 0.9975, and 0.999
#: (fine steps give plans close to any FLOP budget).
DEFAULT_THRESHOLDS = [0.0, 0.1, 0.2, 0.3] + [round(0.4 + 0.0025 * i, 4) for i in range(240)] + [0.999]


def threshold_grid() -> list[float]:
    """The default thresholds (ascending)."""
    return sorted(set(DEFAULT_THRESHOLDS))


@dataclass(frozen=True)
class Choice:
    """A chosen plan in table terms: ``dense_steps`` dense first steps, then per layer a candidate index (None:
    dense). ``cost`` is the attention FLOPs of the whole generation relative to dense (all layers and steps);
    ``speedup = 1 / cost``. ``predicted_kept`` is the mean kept mass over every (layer, step) cell (dense cells
    count 1) and ``lowest_kept`` the lowest kept mass of a sparse cell (1 if none)."""

    threshold: float
    dense_steps: int
    layers: tuple[int | None, ...]  # per layer (for a plan by step range: on its first range)
    cost: float
    predicted_kept: float
    lowest_kept: float
    sparse_cells: int
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    #: a plan by step range: the sparse steps cut into ``(first, last)`` ranges (inclusive) and, per range, the
    #: candidate of every layer; empty for one window per layer over all sparse steps
    ranges: tuple[tuple[int, int], ...] = ()
    range_layers: tuple[tuple[int | None, ...], ...] = ()

    @property
    def speedup(self) -> float:
        return 1.0 / self.cost if self.cost > 0 else math.inf

    @property
    def is_dense(self) -> bool:
        """True when nothing runs sparse (every step dense or every layer dense)."""
        return self.sparse_cells == 0

    @property
    def key(self) -> tuple:
        """What the config expresses: equal keys give equal configs."""
        if self.by_range:
            return (self.dense_steps, self.ranges, self.range_layers)
        return (self.dense_steps, self.layers)

    @property
    def by_range(self) -> bool:
        """True when some layer's window changes between step ranges."""
        return len(set(self.range_layers)) > 1

    @property
    def step_ranges(self) -> int:
        """How many step ranges the plan's windows change across (1: one window per layer)."""
        return len(self.ranges) if self.by_range else 1

    def cells(self, n_steps: int) -> list[list[int | None]]:
        """Per layer, its candidate at each step of a generation of ``n_steps`` steps (None: dense, a dense step or
        a dense layer)."""
        out: list[list[int | None]] = [[None] * n_steps for _ in self.layers]
        for first, last, row in self.segments(n_steps):
            for li, c in enumerate(row):
                out[li][first : last + 1] = [c] * (last - first + 1)
        return out

    def segments(self, n_steps: int) -> list[tuple[int, int, tuple[int | None, ...]]]:
        """``(first, last, per-layer candidates)`` for the sparse steps of a generation of ``n_steps`` steps: one
        segment for a plan with one window per layer, one per range otherwise."""
        if self.by_range:
            return [(a, b, row) for (a, b), row in zip(self.ranges, self.range_layers, strict=True)]
        return [(self.dense_steps, n_steps - 1, self.layers)]


def _prepare(kept: torch.Tensor, density: torch.Tensor, flops: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    kept = torch.as_tensor(kept, dtype=torch.float64)
    if kept.dim() != 3:
        raise ValueError(f"kept must be [layers, steps, candidates], got shape {tuple(kept.shape)}")
    density = torch.as_tensor(density, dtype=torch.float64)
    if density.shape != (kept.shape[2],):
        raise ValueError(f"density must have one entry per candidate ({kept.shape[2]}), got {tuple(density.shape)}")
    if flops is None:
        flops = torch.ones(kept.shape[0], dtype=torch.float64)
    flops = torch.as_tensor(flops, dtype=torch.float64)
    if flops.shape != (kept.shape[0],):
        raise ValueError(f"flops must have one entry per layer ({kept.shape[0]}), got {tuple(flops.shape)}")
    return kept, density, flops


def _suffix_stats(kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every start step n (0..S): min and mean over steps >= n of ``kept[..., s, c]`` (unobserved NaN cells
    skipped; min +inf and mean 1 where a suffix has none) and the number of observed steps. Shapes
    ``[..., S+1, C]``."""
    observed = ~torch.isnan(kept)
    big = torch.where(observed, kept, torch.full_like(kept, math.inf))
    vals = torch.where(observed, kept, torch.zeros_like(kept))
    s = kept.shape[-2]
    shape = list(kept.shape)
    shape[-2] = s + 1
    smin = torch.full(shape, math.inf, dtype=kept.dtype)
    ssum = torch.zeros(shape, dtype=kept.dtype)
    scnt = torch.zeros(shape, dtype=kept.dtype)
    for n in range(s - 1, -1, -1):
        smin[..., n, :] = torch.minimum(smin[..., n + 1, :], big[..., n, :])
        ssum[..., n, :] = ssum[..., n + 1, :] + vals[..., n, :]
        scnt[..., n, :] = scnt[..., n + 1, :] + observed[..., n, :]
    smean = torch.where(scnt > 0, ssum / scnt.clamp(min=1), torch.ones_like(ssum))
    return smin, smean, scnt


def _pick(smin: torch.Tensor, smean: torch.Tensor, density: torch.Tensor, tau: float) -> tuple[torch.Tensor, ...]:
    """Cheapest candidate with ``smin >= tau`` along the last axis (ties: higher mean); returns (index, density,
    min, mean), index -1 and density 1 where none qualifies."""
    ok = smin >= tau
    # order by density, then by mean kept mass (descending): density differences are >= 1e-7 on any real grid
    key = density + (1.0 - smean) * 1e-9
    key = torch.where(ok, key, torch.full_like(key, math.inf))
    best = key.argmin(dim=-1)
    has = ok.any(dim=-1)
    idx = torch.where(has, best, torch.full_like(best, -1))
    dens = torch.where(has, density[best], torch.ones_like(density[best]))
    mn = torch.where(has, smin.gather(-1, best[..., None])[..., 0], torch.ones_like(dens))
    mean = torch.where(has, smean.gather(-1, best[..., None])[..., 0], torch.ones_like(dens))
    return idx, dens, mn, mean


def choose(kept: torch.Tensor, density: torch.Tensor, flops: torch.Tensor | None, threshold: float, *,
           max_dense_steps: int | None = None, dense_steps: int | None = None, ranges: int = 1) -> Choice:  # fmt: skip
    """The plan for one threshold (see the module docstring).

    Args:
        kept: ``[layers, steps, candidates]`` kept mass (NaN: not observed, no constraint).
        density: ``[candidates]`` attention FLOPs of each candidate relative to dense.
        flops: ``[layers]`` dense attention FLOPs of each layer (None: all equal).
        threshold: the kept mass every sparse (layer, step) cell must reach.
        max_dense_steps: most dense first steps considered (default: all but one step).
        dense_steps: use exactly this many dense steps instead of the cheapest number.
        ranges: cut the sparse steps into this many ranges, each with its own window per layer (1: one window).
    """
    kept, density, flops = _prepare(kept, density, flops)
    if ranges > 1:
        return _choose_ranged(kept, _RangeStats(kept, ranges), density, flops, threshold, max_dense_steps,
                              dense_steps)  # fmt: skip
    return _choose(kept.shape, _suffix_stats(kept), density, flops, threshold, max_dense_steps, dense_steps)


class _RangeStats:
    """Per number of dense steps ``n``: the sparse steps cut into ``ranges`` ranges and, per range, the min and mean
    kept mass over its observed steps (``[L, C]``; min +inf and mean 1 where a range has none). Independent of the
    threshold: computed once per ``n`` and reused by every threshold of a sweep."""

    def __init__(self, kept: torch.Tensor, ranges: int) -> None:
        self.kept, self.ranges = kept, int(ranges)
        self._cache: dict[int, list[tuple[int, int, torch.Tensor, torch.Tensor]]] = {}

    def bounds(self, n: int) -> list[int]:
        sparse = self.kept.shape[1] - n
        r = max(1, min(self.ranges, sparse))
        return [n + round(i * sparse / r) for i in range(r + 1)]

    def at(self, n: int) -> list[tuple[int, int, torch.Tensor, torch.Tensor]]:
        if n not in self._cache:
            b = self.bounds(n)
            rows = []
            for a, e in zip(b[:-1], b[1:], strict=True):
                smin, smean, _ = _suffix_stats(self.kept[:, a:e])
                rows.append((a, e, smin[:, 0], smean[:, 0]))
            self._cache[n] = rows
        return self._cache[n]


def _choose_ranged(kept: torch.Tensor, stats: _RangeStats, density: torch.Tensor, flops: torch.Tensor,
                   threshold: float, max_dense_steps: int | None, dense_steps: int | None) -> Choice:  # fmt: skip
    """:func:`_choose` with a window per (layer, step range): every number of dense steps is tried with its own
    ranges; the cheapest total (ties: the higher predicted kept mass) wins."""
    n_layers, n_steps, _ = kept.shape
    cells = n_layers * n_steps
    total = float(flops.sum()) * n_steps
    limit = n_steps - 1 if max_dense_steps is None else max(0, min(int(max_dense_steps), n_steps - 1))
    if dense_steps is not None:
        if not 0 <= dense_steps < n_steps:
            raise ValueError(f"dense_steps must be between 0 and {n_steps - 1} with ranges, got {dense_steps}")
        starts = [int(dense_steps)]
    else:
        starts = list(range(limit + 1))
    best = None
    for n in starts:
        cost, lost, lowest, sparse_cells = float(flops.sum()) * n, 0.0, 1.0, 0
        ranges, rows = [], []
        for a, e, smin, smean in stats.at(n):
            idx, dens, mn, mean = _pick(smin, smean, density, threshold)  # [L]
            width = e - a
            cost += float((flops * dens).sum()) * width
            sparse = idx >= 0
            lost += float(((1.0 - mean) * sparse).sum()) * width
            if bool(sparse.any()):
                lowest = min(lowest, float(mn[sparse].min()))
            sparse_cells += int(sparse.sum()) * width
            ranges.append((a, e - 1))
            rows.append(tuple(None if int(i) < 0 else int(i) for i in idx))
        key = (round(cost / total, 12), lost / cells, n)
        if best is None or key < best[0]:
            best = (key, Choice(float(threshold), n, rows[0], cost / total, 1.0 - lost / cells, lowest, sparse_cells,
                                ranges=tuple(ranges), range_layers=tuple(rows)))  # fmt: skip
    return best[1]


def _choose(shape: tuple[int, ...], stats: tuple[torch.Tensor, ...], density: torch.Tensor, flops: torch.Tensor,
            threshold: float, max_dense_steps: int | None, dense_steps: int | None) -> Choice:  # fmt: skip
    n_layers, n_steps, _ = shape
    smin, smean, _ = stats  # [L, S+1, C]
    idx, dens, mn, mean = _pick(smin, smean, density, threshold)  # [L, S+1]
    starts = torch.arange(n_steps + 1, dtype=torch.float64)
    total_flops = flops.sum() * n_steps
    cost = (starts * flops.sum() + (n_steps - starts) * (flops[:, None] * dens).sum(0)) / total_flops  # [S+1]
    sparse_layers = (idx >= 0).to(torch.float64)  # [L, S+1]
    cells = n_layers * n_steps
    lost = ((1.0 - mean) * sparse_layers * (n_steps - starts)).sum(0) / cells  # mean lost mass over all cells
    limit = n_steps - 1 if max_dense_steps is None else max(0, min(int(max_dense_steps), n_steps))
    if dense_steps is not None:
        if not 0 <= dense_steps <= n_steps:
            raise ValueError(f"dense_steps must be between 0 and {n_steps}, got {dense_steps}")
        n = int(dense_steps)
    else:
        order = sorted(range(limit + 1), key=lambda i: (round(float(cost[i]), 12), float(lost[i]), i))
        n = order[0]
    layers = tuple(None if int(i) < 0 else int(i) for i in idx[:, n])
    sparse = [li for li, c in enumerate(layers) if c is not None]
    lowest = min((float(mn[li, n]) for li in sparse), default=1.0)
    return Choice(float(threshold), n, layers, float(cost[n]), 1.0 - float(lost[n]), lowest,
                  len(sparse) * (n_steps - n))  # fmt: skip


def choose_per_head(kept_heads: torch.Tensor, density: torch.Tensor, flops: torch.Tensor | None, threshold: float,
                    dense_steps: int) -> dict[str, Any]:  # fmt: skip
    """Per layer and head: the cheapest candidate whose kept mass for that head clears ``threshold`` on every step
    after ``dense_steps`` (``kept_heads``: ``[L, S, C, H]``). Returns ``{"choices": [[candidate or None per head]
    per layer], "cost": ..., "predicted_kept": ...}``; a layer's cost is the mean of its heads' densities."""
    kh = torch.as_tensor(kept_heads, dtype=torch.float64)
    if kh.dim() != 4:
        raise ValueError(f"kept_heads must be [layers, steps, candidates, heads], got {tuple(kh.shape)}")
    _, density, flops = _prepare(kh[..., 0], density, flops)
    n_layers, n_steps, _, n_heads = kh.shape
    per = kh.permute(0, 3, 1, 2)[:, :, dense_steps:]  # [L, H, S', C]
    smin, smean, _ = _suffix_stats(per)
    idx, dens, _, mean = _pick(smin[:, :, 0], smean[:, :, 0], density, threshold)  # [L, H]
    observed = (~torch.isnan(kh)).any(dim=2).any(dim=1)  # [L, H]: heads a layer has
    heads = observed.sum(1).clamp(min=1).to(torch.float64)
    layer_density = torch.where(observed, dens, torch.zeros_like(dens)).sum(1) / heads
    sparse_steps = n_steps - dense_steps
    cost = float(flops.sum()) * dense_steps + float((flops * layer_density).sum()) * sparse_steps
    cost /= float(flops.sum()) * n_steps
    kept_sparse = torch.where(observed & (idx >= 0), mean, torch.ones_like(mean)).sum(1) / heads
    predicted = (n_layers * dense_steps + float(kept_sparse.sum()) * sparse_steps) / (n_layers * n_steps)
    return {"choices": [[None if int(i) < 0 or not bool(o) else int(i) for i, o in zip(row, obs, strict=True)]
                        for row, obs in zip(idx, observed, strict=True)],
            "cost": cost, "predicted_kept": predicted}  # fmt: skip


def sweep(kept: torch.Tensor, density: torch.Tensor, flops: torch.Tensor | None,
          thresholds: Sequence[float] | None = None, *, ranges: int = 1, **kwargs: Any) -> list[Choice]:  # fmt: skip
    """:func:`choose` for every threshold (default :func:`threshold_grid`; ``kwargs``: ``max_dense_steps``,
    ``dense_steps``; ``ranges`` as in :func:`choose`), distinct plans only (the one with the highest threshold kept),
    ordered from the most expensive to the cheapest."""
    kept, density, flops = _prepare(kept, density, flops)
    stats = _suffix_stats(kept) if ranges <= 1 else _RangeStats(kept, ranges)
    out: dict[tuple, Choice] = {}
    md, ds = kwargs.get("max_dense_steps"), kwargs.get("dense_steps")
    for tau in sorted(thresholds if thresholds is not None else threshold_grid()):
        if ranges <= 1:
            c = _choose(kept.shape, stats, density, flops, tau, md, ds)
        else:
            c = _choose_ranged(kept, stats, density, flops, tau, md, ds)
        out[c.key] = c  # ascending thresholds: a later (higher) threshold with the same plan replaces it
    return sorted(out.values(), key=lambda c: (-c.cost, -c.predicted_kept))


def sweep_ranges(kept: torch.Tensor, density: torch.Tensor, flops: torch.Tensor | None,
                 thresholds: Sequence[float] | None = None, *, ranges: Sequence[int] = (1, 2, 4),
                 min_saving: float = 0.05, **kwargs: Any) -> list[Choice]:  # fmt: skip
    """The plans of :func:`sweep` for each number of step ranges in ``ranges``, merged: a plan by step range is
    kept only where it pays, with at least ``min_saving`` fewer attention FLOPs than one window per layer at the same
    threshold; then only plans no other plan beats (another at most as expensive with at least as high a
    threshold), ordered from the most expensive to the cheapest (so the threshold falls with the cost)."""
    kept, density, flops = _prepare(kept, density, flops)
    plans = sweep(kept, density, flops, thresholds, ranges=1, **kwargs)
    stats = _suffix_stats(kept)
    md, ds = kwargs.get("max_dense_steps"), kwargs.get("dense_steps")
    for r in sorted({int(r) for r in ranges if int(r) > 1}):
        for p in sweep(kept, density, flops, thresholds, ranges=r, **kwargs):
            if not p.by_range:
                continue
            base = _choose(kept.shape, stats, density, flops, p.threshold, md, ds)
            if p.cost <= base.cost * (1.0 - min_saving):
                plans.append(p)
    plans.sort(key=lambda c: (c.cost, -c.threshold, -c.predicted_kept, len(c.ranges)))
    front: list[Choice] = []
    for p in plans:  # ascending cost: keep a plan only if its threshold beats every cheaper one
        if not front or p.threshold > front[-1].threshold:
            front.append(p)
    return front[::-1]
