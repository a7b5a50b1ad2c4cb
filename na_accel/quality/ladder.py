"""Kept softmax mass of a whole ladder of candidate GNA windows at once, measured during a dense generation.

For a sampled grid query with dense softmax probabilities ``p_j = exp(s_j - lse_dense)`` over every key it may see
(grid keys and valid text keys), a window ``W`` keeps ``sum_{j in W} p_j + sum_{text} p_j = exp(lse_W - lse_dense)``
(:mod:`.locality`). A GNA window on a token grid (dilation 1) is a box: per axis a contiguous range ``[lo_a,
hi_a]`` that depends on the query's coordinate on that axis. So the grid part of the kept mass of every box is read
off prefix sums of the probabilities: a prefix sum along the last axis and two gathers at the range ends give the
sums for every option of that axis, then the same along the next axis, and so on. The work per sampled query is a
few passes over its ``N`` probabilities plus the sizes of the partial sums, for hundreds of windows at once, against
the ``N x D`` multiply-adds of its scores; nothing is stored beyond ``sampled rows x sequence`` per chunk (never
N x N). The values are exact up to float32 rounding of the sums (float64 for float64 inputs).

:class:`Ladder` is the list of candidates (per-axis kernel sizes as fractions of the axis, stride 1 and stride =
the kernel's query tile), :func:`ladder_kept_mass` the measurement for one attention call, and :class:`LadderProbe`
an attention probe that observes the dense calls of a patched pipeline (``observe_dense``) and accumulates the kept
mass per (layer, denoising step, candidate, head) into a :class:`LocalityTable`.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..ops.semantics import GNAParams, axis_window, make_params, unravel
from ..patching.families.base import Layout
from ..patching.plan import ProbeCall
from .locality import AttachedProbe, _valid_keys, chunk_budget, sample_queries

__all__ = [
    "DEFAULT_FRACTIONS",
    "QUERY_TILES",
    "Candidate",
    "Ladder",
    "LadderProbe",
    "LocalityTable",
    "ladder_kept_mass",
]

#: Kernel sizes of the ladder per axis, as fractions of the axis (rounded to whole tokens, at least 1).
DEFAULT_FRACTIONS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
#: Query tiles of the Triton grid kernel per grid rank (the first entries of ``na_accel.kernels.configs.FAST``):
#: the "tile" stride variant uses ``min(tile, kernel)`` per axis, which makes GNA exactly block-sparse.
QUERY_TILES = {3: (2, 8, 8), 2: (16, 8), 1: (128,)}
STRIDE_KINDS = ("1", "tile")


@dataclass(frozen=True)
class Candidate:
    """One window of the ladder on a fixed token grid: integer kernel size and stride per axis (dilation 1)."""

    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    stride_kind: str  # "1" or "tile"
    density: float  # exact fraction of attended (query, key) grid pairs: the attention FLOPs relative to dense

    def params(self, grid: Sequence[int]) -> GNAParams:
        return make_params(grid, self.kernel_size, self.stride)

    @property
    def label(self) -> str:
        k = "x".join(str(v) for v in self.kernel_size)
        return k if self.stride_kind == "1" else f"{k}/s{'x'.join(str(v) for v in self.stride)}"

    def to_dict(self) -> dict[str, Any]:
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride), "stride_kind": self.stride_kind,
                "density": self.density, "flop_speedup": 1.0 / self.density}  # fmt: skip


class Ladder:
    """Candidate windows on one token grid: every combination of per-axis kernel sizes (``fractions`` of each axis,
    rounded, deduplicated), each with the stride kinds in ``strides`` ("1": neighbourhood attention; "tile":
    ``min(tile, kernel)`` per axis). The whole-grid window (dense) is left out: dense is always a choice.

    ``groups[g]`` is ``(stride kind, per-axis options)``, an option being a ``(kernel, stride)`` pair of one axis;
    candidate ``c`` is the combination ``flat[c]`` (axis 0 slowest) of the options of group ``group[c]``.
    """

    def __init__(self, grid: Sequence[int], fractions: Sequence[float] = DEFAULT_FRACTIONS,
                 strides: Sequence[str] = STRIDE_KINDS, tile: Sequence[int] | None = None) -> None:  # fmt: skip
        self.grid = tuple(int(n) for n in grid)
        nd = len(self.grid)
        if nd not in QUERY_TILES:
            raise ValueError(f"the token grid must have 1 to 3 axes, got {self.grid}")
        bad = [f for f in fractions if isinstance(f, bool) or not isinstance(f, int | float) or not 0 < f <= 1]
        if bad or not fractions:
            raise ValueError(f"ladder fractions must be numbers in (0, 1], got {list(fractions)}")
        unknown = [s for s in strides if s not in STRIDE_KINDS]
        if unknown or not strides:
            raise ValueError(f"stride kinds must be among {STRIDE_KINDS}, got {list(strides)}")
        self.fractions = tuple(float(f) for f in fractions)
        self.strides = tuple(dict.fromkeys(strides))
        self.tile = tuple(int(t) for t in (tile if tile is not None else QUERY_TILES[nd][-nd:]))
        if len(self.tile) != nd or any(t < 1 for t in self.tile):
            raise ValueError(f"tile must have one entry >= 1 per grid axis {self.grid}, got {self.tile}")
        kernels = [sorted({max(1, min(n, round(f * n))) for f in self.fractions}) for n in self.grid]
        self.groups: list[tuple[str, list[list[tuple[int, int]]]]] = []
        self.candidates: list[Candidate] = []
        self.group: list[int] = []
        self.flat: list[int] = []
        seen = set()
        for kind in self.strides:
            opts = [[(k, 1) if kind == "1" else (k, min(t, k)) for k in ks]
                    for ks, t in zip(kernels, self.tile, strict=True)]  # fmt: skip
            dens = [[make_params((n,), k, s).density() for k, s in o] for n, o in zip(self.grid, opts, strict=True)]
            g = len(self.groups)
            self.groups.append((kind, opts))
            for idx in itertools.product(*(range(len(o)) for o in opts)):
                combo = tuple(opts[a][i][0] for a, i in enumerate(idx))
                stride = tuple(opts[a][i][1] for a, i in enumerate(idx))
                if combo == self.grid or (combo, stride) in seen:  # dense, or a window of an earlier group
                    continue
                seen.add((combo, stride))
                flat = 0
                for a, i in enumerate(idx):
                    flat = flat * len(opts[a]) + i
                density = math.prod(dens[a][i] for a, i in enumerate(idx))
                self.candidates.append(Candidate(combo, stride, kind if any(s > 1 for s in stride) else "1", density))
                self.group.append(g)
                self.flat.append(flat)
        if not self.candidates:
            raise ValueError(f"the ladder on grid {self.grid} has no window smaller than the grid")

    def __len__(self) -> int:
        return len(self.candidates)

    @property
    def densities(self) -> torch.Tensor:
        return torch.tensor([c.density for c in self.candidates], dtype=torch.float64)

    def bounds(self, queries: torch.Tensor, device: torch.device | str | None = None
               ) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:  # fmt: skip
        """Per group and axis, ``(lo, hi)``: ``[len(queries), options]`` inclusive axis windows of each sampled
        query (raster indices) for each option of that axis."""
        coords = unravel(queries.to(device=device, dtype=torch.long), self.grid)
        out = []
        for _kind, opts in self.groups:
            per_axis = []
            for a, o in enumerate(opts):
                los, his = [], []
                for k, s in o:
                    lo, hi = axis_window(coords[a], make_params((self.grid[a],), k, s), 0)
                    los.append(lo)
                    his.append(hi)
                per_axis.append((torch.stack(los, -1), torch.stack(his, -1)))
            out.append(per_axis)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"grid": list(self.grid), "fractions": list(self.fractions), "strides": list(self.strides),
                "tile": list(self.tile), "candidates": len(self.candidates)}  # fmt: skip


def _box_sums(prefix: torch.Tensor, dim: int, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Sums over ``lo <= y <= hi`` along ``dim`` from the inclusive prefix sum along ``dim``; ``lo``/``hi``
    ``[c, o]`` index dim 1 (the sampled queries) and the new ``dim`` of size ``o``."""
    c, o = lo.shape
    shape = [1] * prefix.dim()
    shape[1], shape[dim] = c, o
    full = list(prefix.shape)
    full[dim] = o
    upper = prefix.gather(dim, hi.view(shape).expand(full))
    below = prefix.gather(dim, (lo - 1).clamp(min=0).view(shape).expand(full))
    return upper - below * (lo > 0).view(shape).to(prefix.dtype)


def _window_sums(x: torch.Tensor, bounds: list[list[tuple[torch.Tensor, torch.Tensor]]]) -> list[torch.Tensor]:
    """``x``: ``[R, c, n_0, ..., n_{d-1}]`` (c sampled queries); ``bounds[g][a]``: ``(lo, hi)`` ``[c, o_a]`` for
    group ``g``. Returns per group ``[R, c, o_0 * ... * o_{d-1}]``: for every combination of the group's per-axis
    options (axis 0 slowest) the sum of ``x`` over the box ``lo_a <= y_a <= hi_a``. Per axis, last first: a prefix
    sum and gathers at the window ends (the prefix sum of the full tensor is shared by the groups)."""
    nd = x.dim() - 2
    last = 2 + nd - 1
    prefix = torch.cumsum(x, dim=last)
    out = []
    for gb in bounds:
        y = _box_sums(prefix, last, *gb[nd - 1]).unsqueeze(-1)  # trailing dim: combinations contracted so far
        for a in reversed(range(nd - 1)):
            dim = 2 + a
            y = _box_sums(torch.cumsum(y, dim=dim), dim, *gb[a]).flatten(dim)  # [R, c, n_0..n_{a-1}, o_a * T]
        out.append(y.flatten(2))
    return out


def ladder_kept_mass(
    query: torch.Tensor,
    key: torch.Tensor,
    layout: Layout,
    ladder: Ladder,
    queries: torch.Tensor,
    scale: float | None = None,
    text_lengths: torch.Tensor | None = None,
    bounds: list | None = None,
    chunk_bytes: int | None = None,
    reduce: bool = False,
) -> torch.Tensor:
    """Exact kept mass of every candidate of ``ladder`` for the sampled grid queries: ``[B, nq, C, heads]`` in
    float32 (float64 for float64 inputs); with ``reduce``, the sum over the batch and the queries, ``[C, heads]``
    float64.

    Same arguments and conventions as :func:`.locality.kept_mass_per_query` (``query``/``key`` ``[B, S, heads,
    D]``, padded text keys excluded from both softmaxes); ``bounds`` are ``ladder.bounds(queries)`` (computed when
    None). Equal to ``kept_mass_per_query`` with each candidate's params, up to float rounding, in one pass.
    """
    batch, seq, heads, dim = query.shape
    if key.shape != query.shape:
        raise ValueError(f"query and key must have one shape [B, S, heads, D], got {tuple(query.shape)} and "
                         f"{tuple(key.shape)}")  # fmt: skip
    if seq != layout.seq_len or tuple(layout.grid) != ladder.grid:
        raise ValueError(f"the sequence ({seq} tokens) and layout {layout.describe()} do not match the ladder's grid "
                         f"{ladder.grid}")  # fmt: skip
    device = query.device
    cdt = torch.float64 if query.dtype == torch.float64 else torch.float32
    scale = dim**-0.5 if scale is None else float(scale)
    if bounds is None:
        bounds = ladder.bounds(queries, device)
    positions = queries.to(device=device, dtype=torch.long) + layout.grid_slice.start
    r = batch * heads
    k = key.to(cdt).permute(0, 2, 3, 1).reshape(r, dim, seq)  # [R, D, S]
    valid = _valid_keys(layout, text_lengths, batch, device)
    bias = torch.zeros(batch, heads, 1, seq, dtype=cdt, device=device)
    if valid is not None:
        bias.masked_fill_(~valid[:, None, None], -math.inf)
    bias = bias.view(r, 1, seq)
    itemsize = torch.finfo(cdt).bits // 8
    step = max(1, chunk_budget(device, chunk_bytes) // (4 * itemsize * r * seq))
    group = torch.tensor(ladder.group, dtype=torch.long, device=device)
    flat = torch.tensor(ladder.flat, dtype=torch.long, device=device)
    selected = [(g, (group == g).nonzero().flatten()) for g in range(len(bounds))]
    n_cand = len(ladder)
    if reduce:
        out = torch.zeros(n_cand, heads, dtype=torch.float64, device=device)
    else:
        out = torch.empty(batch, positions.numel(), n_cand, heads, dtype=cdt, device=device)
    for start in range(0, positions.numel(), step):
        sl = slice(start, start + step)
        q = query[:, positions[sl]].to(cdt)
        c = q.shape[1]
        q = q.permute(0, 2, 1, 3).reshape(r, c, dim)
        probs = torch.softmax(torch.baddbmm(bias, q, k, alpha=scale), dim=-1)  # [R, c, S]
        x = probs[..., layout.grid_slice].unflatten(-1, ladder.grid)  # [R, c, *grid]
        kept = torch.empty(r, c, n_cand, dtype=cdt, device=device)
        sums = _window_sums(x, [[(lo[sl], hi[sl]) for lo, hi in gb] for gb in bounds])
        for g, sel in selected:  # sums[g]: [R, c, the options of group g combined]
            kept[:, :, sel] = sums[g][:, :, flat[sel]]
        if layout.num_text:
            kept += probs[..., layout.text_slice].sum(-1, keepdim=True)
        kept = kept.view(batch, heads, c, n_cand)
        if reduce:
            out += kept.sum(dim=(0, 2), dtype=torch.float64).t()
        else:
            out[:, sl] = kept.permute(0, 2, 3, 1)
    return out


@dataclass
class LocalityTable:
    """Kept mass per (layer, denoising step, candidate, head), from :class:`LadderProbe`.

    ``kept[l, s, c, h]`` is the mean over the sampled queries, the batch and the calls of step ``steps[s]`` (cond
    and uncond passes) of layer ``layers[l]``; NaN where a layer or head was not observed at that step. Layers are
    module names: the layers of a second transformer (Wan 2.2's ``transformer_2``) share names with the first, take
    the same config rules, and are merged with them (they run at other steps). ``flops[l]`` is the dense grid
    attention FLOPs of one call of layer ``l`` (``4 N^2 heads D``); ``heads[l]`` its head count.
    """

    ladder: Ladder
    layers: list[str]
    steps: list[int]
    kept: torch.Tensor  # [L, S, C, H] float64
    flops: torch.Tensor  # [L] float64
    heads: list[int]
    layout: Layout
    calls: int = 0
    probe_seconds: float = 0.0
    queries: int = 0

    def head_mean(self) -> torch.Tensor:
        """``[L, S, C]``: the mean over heads (the kept mass of the layer's attention as a whole)."""
        return self.kept.nanmean(dim=-1)

    def to_dict(self, windows: dict[str, int | None] | None = None, digits: int = 4) -> dict[str, Any]:
        """JSON-ready and compact (a real model has millions of (layer, step, window, head) values): layers, steps,
        candidates (kernel, stride, density), ``kept_mean_over_steps`` (``[layer][candidate]``, head mean) and, for
        ``windows`` (layer -> candidate index, or a list of one candidate or None per step), ``kept_chosen``
        (``[step][head]`` per layer, None at a dense step of a per-step list). Rounded to ``digits``,
        NaN as None. The whole table is :attr:`kept`."""

        def r(v: float) -> float | None:
            return None if math.isnan(v) else round(v, digits)

        hm = self.head_mean()
        mean = hm.nanmean(dim=1)  # [L, C]
        chosen = {}
        for li, name in enumerate(self.layers):
            c = (windows or {}).get(name)
            if isinstance(c, int):
                chosen[name] = [[r(v) for v in row] for row in self.kept[li, :, c].tolist()]
            elif c is not None:  # one candidate (or None: dense) per step
                chosen[name] = [None if cs is None else [r(v) for v in self.kept[li, s, cs].tolist()]
                                for s, cs in enumerate(c)]  # fmt: skip
        return {"layers": self.layers, "steps": self.steps, "heads": self.heads, "flops": self.flops.tolist(),
                "layout": {"grid": list(self.layout.grid), "num_text": self.layout.num_text},
                "candidates": [c.to_dict() for c in self.ladder.candidates],
                "kept_mean_over_steps": [[r(v) for v in row] for row in mean.tolist()], "kept_chosen": chosen,
                "calls": self.calls, "queries": self.queries}  # fmt: skip


class LadderProbe(AttachedProbe):
    r"""An attention probe (:meth:`na_accel.patching.api.PatchHandle.set_probe`) that measures the kept mass of
    every candidate of a ladder on the calls it sees, dense calls included (``observe_dense``): patch a pipeline
    with windows covering the grid (``kernel_size: -1``), attach, generate, read :meth:`table`.

    Each call measures the same ``queries`` grid queries of a grid (:func:`.locality.sample_queries`: uniform
    without replacement, or whole ``sample_tile``\ s), for every layer and step. Uniform queries are the default:
    on the embedded model a (layer, step, window) kept mass is estimated with an RMS error of 0.010 by 64 uniform
    queries, 0.005 by 256, and 0.033 by two whole (2, 8, 8) kernel tiles (256 queries), against all 2304 queries
    (bench/NOTES.md).
    The ladder (``fractions``, ``strides``, ``tile``: the stride variant's tile) is built for the first grid seen
    (``ladder`` may be given instead); calls on another grid are not measured (``skipped``). Sums stay on the
    model's device. ``seconds`` is the wall time spent in the probe (synchronised on CUDA): the cost of profiling.
    """

    observe_dense = True

    def __init__(self, ladder: Ladder | None = None, *, queries: int | None = 64,
                 sample_tile: Sequence[int] | None = None, seed: int = 0,
                 fractions: Sequence[float] = DEFAULT_FRACTIONS, strides: Sequence[str] = STRIDE_KINDS,
                 tile: Sequence[int] | None = None, chunk_bytes: int | None = None) -> None:  # fmt: skip
        self.ladder = ladder
        self.queries = queries
        self.sample_tile = tuple(sample_tile) if sample_tile is not None else None
        self.seed = seed
        self.fractions = tuple(fractions)
        self.strides = tuple(strides)
        self.tile = tuple(tile) if tile is not None else None
        self.chunk_bytes = chunk_bytes
        self.seconds = 0.0
        self.skipped = 0
        self._layout: Layout | None = None
        self._cache: dict[Any, tuple[torch.Tensor, list]] = {}
        self._acc: dict[tuple[str, int | None], list[Any]] = {}  # (layer, step) -> [sum [C, H] float64, rows, calls]
        self._dims: dict[str, tuple[int, int]] = {}  # layer -> (heads, head dim)
        self._handle = None

    def __call__(self, call: ProbeCall) -> None:
        device = call.query.device
        sync = device.type == "cuda"
        if sync:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        layout = call.layout
        grid = tuple(layout.grid)
        if self.ladder is None:
            tile = self.tile[-len(grid) :] if self.tile is not None else None
            self.ladder = Ladder(grid, self.fractions, self.strides, tile)
        if grid != self.ladder.grid:
            self.skipped += 1
            return
        if self._layout is None:
            self._layout = layout
        cached = self._cache.get(device)
        if cached is None:
            tile = self.sample_tile[-len(grid) :] if self.sample_tile is not None else None
            sample = sample_queries(grid, self.queries, tile=tile, seed=self.seed).to(device)
            cached = (sample, self.ladder.bounds(sample, device))
            self._cache[device] = cached
        sample, bounds = cached
        total = ladder_kept_mass(
            call.query,
            call.key,
            layout,
            self.ladder,
            sample,
            call.scale,
            call.text_lengths,
            bounds,
            self.chunk_bytes,
            reduce=True,
        )  # [C, H]: sum over batch and queries
        rows = call.query.shape[0] * sample.numel()
        key = (call.layer, call.step)
        acc = self._acc.get(key)
        if acc is None:
            self._acc[key] = [total, rows, 1]
        else:
            acc[0] = acc[0] + total
            acc[1] += rows
            acc[2] += 1
        self._dims.setdefault(call.layer, (int(call.query.shape[2]), int(call.query.shape[3])))
        if sync:
            torch.cuda.synchronize(device)
        self.seconds += time.perf_counter() - t0

    def reset(self) -> None:
        self._acc.clear()
        self.seconds = 0.0
        self.skipped = 0

    def table(self) -> LocalityTable:
        """The measurements so far as a :class:`LocalityTable` (ValueError when nothing was measured)."""
        if not self._acc or self.ladder is None or self._layout is None:
            raise ValueError("the ladder probe measured no attention call (was the pipeline patched with windows "
                             "covering the grid, and did it run?)")  # fmt: skip
        layers = list(dict.fromkeys(layer for layer, _ in self._acc))
        steps = sorted({s for _, s in self._acc if s is not None})
        if not steps:
            steps = [0]
        heads = [self._dims[name][0] for name in layers]
        kept = torch.full((len(layers), len(steps), len(self.ladder), max(heads)), math.nan, dtype=torch.float64)
        calls = 0
        for (layer, step), (total, rows, n) in self._acc.items():
            s = steps.index(step if step is not None else steps[0])
            li = layers.index(layer)
            kept[li, s, :, : total.shape[1]] = (total / rows).cpu()
            calls += n
        n_grid = self._layout.num_grid
        flops = torch.tensor([4.0 * n_grid * n_grid * h * d for h, d in (self._dims[name] for name in layers)],
                             dtype=torch.float64)  # fmt: skip
        nq = self.queries if self.queries is not None else n_grid
        return LocalityTable(self.ladder, layers, steps, kept, flops, heads, self._layout, calls, self.seconds,
                             min(nq, n_grid))  # fmt: skip
