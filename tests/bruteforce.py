"""Independent brute-force ground truth for GNA tests.

Written from the formulas of NATTEN's definition (restated in `na_accel/ops/semantics.py`) with plain Python loops
over coordinates.
It deliberately does NOT import ``na_accel.semantics`` (or anything else from na_accel), so that a bug there cannot
hide in both the code under test and its oracle.

Conventions: token grids are in raster order (last axis fastest); masks are boolean ``[B, Nq, Nk]`` torch
tensors; attention is computed densely in float64.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field

import torch

# ----------------------------------------------------------------------------------------------------------------
# One axis
# ----------------------------------------------------------------------------------------------------------------


def axis_attends(x: int, y: int, length: int, k: int, s: int, d: int, causal: bool) -> bool:
    """Does query coordinate ``x`` attend to key coordinate ``y`` on one axis (NATTEN's definition)?

    ``k == -1`` means the whole axis.
    """
    if k == -1:
        k = length
    assert 1 <= k and k * d <= length and 1 <= s <= k, (length, k, s, d)
    # dilation group and in-group coordinates
    g = x % d
    if y % d != g:
        return False
    xi = x // d
    yi = y // d
    group_len = len([p for p in range(length) if p % d == g])
    if causal:
        leader = min((xi // s) * s + s - 1, group_len - 1)
        return yi <= xi and leader - yi < k
    left = k // 2
    right = k // 2 if k % 2 == 1 else k // 2 - 1
    leader = min((xi // s) * s + s // 2, group_len - 1)
    center = leader
    if center < left:
        center = left
    if center > group_len - 1 - right:
        center = group_len - 1 - right
    return center - left <= yi <= center + right


def axis_table(length: int, k: int, s: int, d: int, causal: bool) -> list[list[bool]]:
    """``table[x][y]`` = :func:`axis_attends` for all coordinates of one axis."""
    return [[axis_attends(x, y, length, k, s, d, causal) for y in range(length)] for x in range(length)]


# ----------------------------------------------------------------------------------------------------------------
# Whole grid
# ----------------------------------------------------------------------------------------------------------------


def _per_axis(value, ndim):
    if isinstance(value, (list, tuple)):
        assert len(value) == ndim
        return tuple(value)
    return (value,) * ndim


def grid_mask_bruteforce(grid, kernel_size, stride=1, dilation=1, is_causal=False) -> torch.Tensor:
    """Dense boolean ``[N, N]`` mask over the grid tokens in raster order (row = query, column = key)."""
    ndim = len(grid)
    ks = _per_axis(kernel_size, ndim)
    st = _per_axis(stride, ndim)
    dil = _per_axis(dilation, ndim)
    cz = _per_axis(is_causal, ndim)
    tables = [axis_table(grid[a], ks[a], st[a], dil[a], cz[a]) for a in range(ndim)]
    coords = list(itertools.product(*[range(n) for n in grid]))  # raster order: last axis fastest
    rows = []
    for qc in coords:
        rows.append([all(tables[a][qc[a]][kc[a]] for a in range(ndim)) for kc in coords])
    return torch.tensor(rows, dtype=torch.bool).reshape(len(coords), len(coords))


def full_mask(
    grid_mask: torch.Tensor,
    batch: int,
    num_text: int,
    text_lengths: list[int] | None,
    text_queries: bool,
    text_first: bool = False,
) -> torch.Tensor:
    """Extend a grid mask ``[N, N]`` with ``num_text`` extra/text tokens -> ``[B, Nq, Nk]``.

    Keys are the grid keys plus the text keys, in sequence order (text first or last). Queries are the grid
    queries, plus (``text_queries``) the text queries in the same sequence order. Every grid query attends to
    all valid text keys; text queries attend densely to all valid keys; the text keys at or after
    ``text_lengths[b]`` are masked for every query.
    """
    n = grid_mask.shape[0]
    lengths = [num_text] * batch if text_lengths is None else list(text_lengths)
    masks = []
    for b in range(batch):
        valid_text = [t < lengths[b] for t in range(num_text)]
        grid_rows = []
        for i in range(n):
            row_grid = [bool(grid_mask[i, j]) for j in range(n)]
            grid_rows.append(valid_text + row_grid if text_first else row_grid + valid_text)
        all_valid = ([True] * n + valid_text) if not text_first else (valid_text + [True] * n)
        text_rows = [list(all_valid) for _ in range(num_text)] if text_queries else []
        rows = (text_rows + grid_rows) if text_first else (grid_rows + text_rows)
        masks.append(rows)
    nq = n + (num_text if text_queries else 0)
    return torch.tensor(masks, dtype=torch.bool).reshape(batch, nq, n + num_text)


def masked_attention(q, k, v, mask, scale=None):
    """Dense masked attention in float64.

    ``q [B, Nq, H, D]``, ``k, v [B, Nk, H, D]``, ``mask`` bool ``[B, Nq, Nk]`` (or ``[Nq, Nk]``).
    Returns ``out [B, Nq, H, D]`` (float64) and natural-log ``lse [B, Nq, H]`` (float64).
    """
    q, k, v = q.double(), k.double(), v.double()
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if mask.dim() == 2:
        mask = mask[None]
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    scores = scores.masked_fill(~mask[:, None].to(scores.device), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse[..., None])
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v)
    return out, lse.transpose(1, 2)


# ----------------------------------------------------------------------------------------------------------------
# Random problems
# ----------------------------------------------------------------------------------------------------------------

# Axis lengths that are not multiples of anything in particular: 1, primes, small composites.
AXIS_LENGTHS = {
    1: [1, 2, 3, 5, 7, 8, 11, 13, 16, 17, 19, 23, 29, 31, 37],
    2: [1, 2, 3, 4, 5, 6, 7, 9, 11, 13],
    3: [1, 2, 3, 4, 5, 7],
}


@dataclass
class RandomProblem:
    seed: int
    grid: tuple
    kernel_size: tuple
    stride: tuple
    dilation: tuple
    is_causal: tuple
    batch: int
    heads: int
    head_dim: int
    dtype: torch.dtype
    scale: float | None
    num_extra: int | None  # None: no extra keys at all
    extra_lengths: list[int] | None
    _mask: torch.Tensor | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return math.prod(self.grid)

    def mask(self) -> torch.Tensor:
        if self._mask is None:
            self._mask = grid_mask_bruteforce(self.grid, self.kernel_size, self.stride, self.dilation, self.is_causal)
        return self._mask


def random_axis(rng: random.Random, length: int) -> tuple[int, int, int, bool]:
    """(kernel_size, stride, dilation, causal) valid for an axis of ``length``; kernel_size may be -1."""
    d = 1
    if length >= 2 and rng.random() < 0.35:
        d = rng.randint(2, max(2, length // 2)) if length >= 4 else 2
        d = min(d, length)
    kmax = length // d
    if rng.random() < 0.12:
        k, k_eff = -1, length
        d = 1
    else:
        # favour both parities
        k = rng.randint(1, kmax)
        k_eff = k
    s = rng.randint(1, k_eff)
    causal = rng.random() < 0.25
    return k, s, d, causal


def random_problem(seed: int, ndim: int | None = None, extras: bool | None = None) -> RandomProblem:
    rng = random.Random(seed)
    if ndim is None:
        ndim = rng.choice([1, 2, 3])
    while True:
        grid = tuple(rng.choice(AXIS_LENGTHS[ndim]) for _ in range(ndim))
        if math.prod(grid) <= 160:
            break
    axes = [random_axis(rng, n) for n in grid]
    ks, st, dil, cz = (tuple(a[i] for a in axes) for i in range(4))
    batch = rng.randint(1, 3)
    heads = rng.randint(1, 3)
    head_dim = rng.choice([1, 3, 4, 8])
    dtype = rng.choice([torch.float32, torch.float64])
    scale = None if rng.random() < 0.6 else rng.uniform(0.05, 1.5)
    if extras is None:
        extras = rng.random() < 0.5
    num_extra = extra_lengths = None
    if extras:
        num_extra = rng.choice([0, 1, 2, 3, 5])
        if num_extra and rng.random() < 0.7:
            extra_lengths = [rng.randint(0, num_extra) for _ in range(batch)]
            extra_lengths[rng.randrange(batch)] = rng.choice([0, num_extra])
    return RandomProblem(seed, grid, ks, st, dil, cz, batch, heads, head_dim, dtype, scale, num_extra, extra_lengths)


def make_inputs(p: RandomProblem, tokens: int | None = None, extra: bool = True):
    """Random ``q, k, v [B, tokens, H, D]`` (default ``N``) and extra keys/values ``[B, T, H, D]`` (or None)."""
    g = torch.Generator().manual_seed(p.seed + 12345)
    tokens = p.n if tokens is None else tokens
    shape = (p.batch, tokens, p.heads, p.head_dim)
    q, k, v = (torch.randn(shape, generator=g, dtype=torch.float64).to(p.dtype) for _ in range(3))
    ek = ev = None
    if extra and p.num_extra is not None:
        eshape = (p.batch, p.num_extra, p.heads, p.head_dim)
        ek, ev = (torch.randn(eshape, generator=g, dtype=torch.float64).to(p.dtype) for _ in range(2))
    return q, k, v, ek, ev


def kept_mass(q, k, grid, kernel_size, stride, dilation, num_text, lengths, text_first, scale) -> torch.Tensor:
    """Kept mass [B, N, heads] of the grid queries: float64 softmax probabilities over every key a query may see
    densely, summed over the brute-force window mask (the oracle of ``na_accel.quality.locality`` and ``.ladder``)."""
    batch, n = q.shape[0], math.prod(grid)
    window = full_mask(grid_mask_bruteforce(grid, kernel_size, stride, dilation), batch, num_text, lengths,
                       text_queries=False, text_first=text_first)  # fmt: skip
    everything = full_mask(torch.ones(n, n, dtype=torch.bool), batch, num_text, lengths, text_queries=False,
                           text_first=text_first)  # fmt: skip
    rows = slice(num_text, num_text + n) if text_first else slice(0, n)
    scores = torch.einsum("bqhd,bkhd->bhqk", q[:, rows].double(), k.double()) * scale
    probs = torch.softmax(scores.masked_fill(~everything[:, None], float("-inf")), dim=-1)
    return (probs * window[:, None]).sum(-1).transpose(1, 2)
