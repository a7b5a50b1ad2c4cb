"""Exact semantics of generalized neighborhood attention (GNA), shared by every backend.

Per axis of length ``L`` with window (kernel_size) ``k``, stride ``s`` and dilation ``d``, a query at coordinate
``x`` attends to the keys ``y`` with ``y % d == x % d`` whose in-group coordinate ``y // d`` lies in
``[lo, hi]`` (inclusive), where (``x' = x // d``, ``L_g`` the length of the dilation group,
``left = k // 2``, ``right = k // 2`` for odd ``k`` and ``k // 2 - 1`` for even ``k``):

* non-causal: ``leader = min((x' // s) * s + s // 2, L_g - 1)``, ``center = clamp(leader, left, L_g - 1 - right)``,
  ``lo = center - left``, ``hi = center + right``;
* causal: ``leader = min((x' // s) * s + s - 1, L_g - 1)``, ``lo = max(leader - k + 1, 0)``, ``hi = x'``.

A key is attended iff it passes every axis. These are NATTEN's definitions. Everything here works on integer
tensors, so the same code builds the reference masks, FlexAttention's ``mask_mod`` and the kernels' tile ranges.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import ShapeError

IntOrTuple = int | Sequence[int]
BoolOrTuple = bool | Sequence[bool]


@dataclass(frozen=True)
class GNAParams:
    """A normalised GNA problem over a token grid: one entry per axis, ``kernel_size`` with ``-1`` resolved."""

    grid: tuple[int, ...]
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    is_causal: tuple[bool, ...]

    @property
    def ndim(self) -> int:
        return len(self.grid)

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def is_dense(self) -> bool:
        """True when every query attends to every key of the grid (windows cover whole axes, nothing causal)."""
        return all(k == n and not c for k, n, c in zip(self.kernel_size, self.grid, self.is_causal))

    def density(self) -> float:
        """Exact fraction of (query, key) grid pairs that are attended (the inverse of the FLOP bound)."""
        frac = 1.0
        for axis in range(self.ndim):
            x = torch.arange(self.grid[axis])
            lo, hi = axis_window(x, self, axis)
            frac *= float((hi - lo + 1).sum()) / (self.grid[axis] ** 2)
        return frac


def _as_tuple(name: str, value, ndim: int, kind: type) -> tuple:
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return (value,) * ndim
    if isinstance(value, torch.Size | tuple | list):
        value = tuple(value)
        if len(value) != ndim:
            raise ShapeError(
                f"{name} has {len(value)} entries {value}, but the token grid has {ndim} axes; "
                f"give one {kind.__name__} per axis or a single {kind.__name__} for all axes."
            )
        for v in value:
            if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
                raise ShapeError(f"{name} entries must be {kind.__name__}s, got {value!r}.")
        return value
    raise ShapeError(f"{name} must be a {kind.__name__} or a tuple of {ndim} {kind.__name__}s, got {value!r}.")


def make_params(
    grid: Sequence[int],
    kernel_size: IntOrTuple,
    stride: IntOrTuple = 1,
    dilation: IntOrTuple = 1,
    is_causal: BoolOrTuple = False,
) -> GNAParams:
    """Validate and normalise GNA arguments for a token grid; raises :class:`ShapeError` with what is allowed."""
    grid = tuple(int(n) for n in grid)
    ndim = len(grid)
    if ndim not in (1, 2, 3):
        raise ShapeError(f"the token grid must have 1, 2 or 3 axes, got {ndim} axes {grid}.")
    if any(n < 1 for n in grid):
        raise ShapeError(f"every axis of the token grid must be at least 1, got grid {grid}.")
    ks = _as_tuple("kernel_size", kernel_size, ndim, int)
    st = _as_tuple("stride", stride, ndim, int)
    dil = _as_tuple("dilation", dilation, ndim, int)
    causal = _as_tuple("is_causal", is_causal, ndim, bool)
    for axis, d in enumerate(dil):
        if d < 1:
            raise ShapeError(f"dilation must be >= 1 on every axis, got {dil} (axis {axis}).")
    ks = tuple(n if k == -1 else k for k, n in zip(ks, grid))
    for axis, (k, d, n) in enumerate(zip(ks, dil, grid)):
        if k < 1:
            raise ShapeError(f"kernel_size must be >= 1 or -1 (whole axis) on every axis, got {ks} (axis {axis}).")
        if k * d > n:
            raise ShapeError(
                f"kernel_size * dilation must not exceed the axis length: axis {axis} has length {n}, "
                f"but kernel_size {k} * dilation {d} = {k * d}. Use a smaller window or dilation, or -1 for the "
                "whole axis."
            )
    for axis, (s, k) in enumerate(zip(st, ks)):
        if not 1 <= s <= k:
            raise ShapeError(
                f"stride must satisfy 1 <= stride <= kernel_size on every axis, got stride {st} with kernel_size "
                f"{ks} (axis {axis}). stride 1 is neighborhood attention, stride == kernel_size blocked attention."
            )
    return GNAParams(grid, ks, st, dil, causal)


def axis_window(x: torch.Tensor, p: GNAParams, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive in-group window ``[lo, hi]`` of queries at coordinates ``x`` (int tensor) on ``axis``.

    The key ``y`` passes this axis iff ``y % d == x % d`` and ``lo <= y // d <= hi``.
    """
    n, k, s, d = p.grid[axis], p.kernel_size[axis], p.stride[axis], p.dilation[axis]
    g = x % d
    xg = x // d
    group_len = (n - g + d - 1) // d
    if p.is_causal[axis]:
        leader = torch.minimum((xg // s) * s + (s - 1), group_len - 1)
        lo = torch.clamp(leader - k + 1, min=0)
        return lo, xg
    left = k // 2
    right = left if k % 2 == 1 else left - 1
    leader = torch.minimum((xg // s) * s + s // 2, group_len - 1)
    center = torch.maximum(torch.minimum(leader, group_len - 1 - right), torch.full_like(leader, left))
    return center - left, center + right


def axis_allows(x: torch.Tensor, y: torch.Tensor, p: GNAParams, axis: int) -> torch.Tensor:
    """Boolean tensor: does key coordinate ``y`` pass query coordinate ``x`` on ``axis`` (broadcasting)."""
    d = p.dilation[axis]
    lo, hi = axis_window(x, p, axis)
    yg = y // d
    return (y % d == x % d) & (yg >= lo) & (yg <= hi)


def axis_mask(p: GNAParams, axis: int, x: torch.Tensor | None = None, device=None) -> torch.Tensor:
    """``[len(x), L]`` boolean mask of one axis: row = query coordinate, column = key coordinate."""
    n = p.grid[axis]
    if x is None:
        x = torch.arange(n, device=device)
    y = torch.arange(n, device=x.device)
    return axis_allows(x[:, None], y[None, :], p, axis)


def unravel(index: torch.Tensor, grid: Sequence[int]) -> list[torch.Tensor]:
    """Raster-order (last axis fastest) flat index -> list of per-axis coordinates."""
    coords = []
    for n in reversed(grid):
        coords.append(index % n)
        index = index // n
    return coords[::-1]


def grid_mask(p: GNAParams, query_index: torch.Tensor) -> torch.Tensor:
    """``[len(query_index), N]`` boolean mask over all grid keys (raster order) for raster-order query indices."""
    qc = unravel(query_index, p.grid)
    mask = None
    for axis in range(p.ndim):
        m = axis_mask(p, axis, qc[axis])  # [q, L_axis]
        shape = [m.shape[0]] + [1] * p.ndim
        shape[axis + 1] = p.grid[axis]
        m = m.view(shape)
        mask = m if mask is None else mask & m
    return mask.reshape(len(query_index), -1)
