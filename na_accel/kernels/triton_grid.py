"""Grid queries in Triton: :func:`gna_forward` and its kernel :func:`_gna_fwd_kernel` (every CUDA GPU, and the
interpreter). 3-D query tiles, analytic key-tile ranges, online softmax in fp32.

* Every grid is handled as 3-D (1-D and 2-D get size-1 leading axes). A program owns one query tile, a
  ``(TQ0, TQ1, TQ2)`` box of in-group coordinates of one dilation group (coordinate ``x = g + d * x'``), for one
  (batch, head). Queries and keys are read in place from the raster-ordered ``[B, N, heads, D]`` views by pointer
  arithmetic (no permute pass; ragged edges are clamped on load and masked on store).
* Per axis the windows of the tile's queries are monotone in the query coordinate, so their union is the contiguous
  range ``[lo(first), hi(last)]`` and their intersection ``[lo(last), hi(first)]``. The program visits the
  ``(TK0, TK1, TK2)`` key tiles covering the union; a key tile inside the intersection on every axis needs no mask.
* Key tiles fully inside every query's window (the full box F) are visited in a first, unmasked loop; there K and V
  come through 5-D tensor descriptors (TMA on Hopper) when the layout allows (:func:`_tma_ok`), else by pointers.
  The other tiles of the union follow in a second loop, masked per query.
* Extra (text) keys are a third loop with a per-batch valid length (:func:`.triton_common.extra_keys`). Dense
  (text) queries are :mod:`.triton_text`'s; :func:`gna_forward` runs them after the grid queries.

Launch configurations (and what they were measured to give) are in :mod:`.configs`.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from . import INTERPRETED
from . import configs as cfgs
from .layout import folded_5d, params3, tma_reason
from .triton_common import (
    LN2,
    LOG2E,
    dtype_settings,
    extra_keys,
    head_dim_block,
    load_rows,
    masked_softmax_step,
    softmax_step,
    strides,
)
from .triton_text import text_forward

# --------------------------------------------------------------------------------------------------------------
# Device code
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def _window(x, lg, k, s, CAUSAL: tl.constexpr):
    """Inclusive in-group window [lo, hi] of in-group query coordinate(s) ``x`` on one axis (NATTEN's rule)."""
    if CAUSAL:
        leader = tl.minimum((x // s) * s + (s - 1), lg - 1)
        lo = tl.maximum(leader - k + 1, 0)
        hi = x
    else:
        left = k // 2
        right = k - 1 - left
        leader = tl.minimum((x // s) * s + s // 2, lg - 1)
        center = tl.maximum(tl.minimum(leader, lg - 1 - right), left)
        lo = center - left
        hi = center + right
    return lo, hi




@triton.jit
def _full_tile(ptr, desc, j0, j1, j2, u_lo0, u_lo1, u_lo2, g0, g1, g2, D0, D1, D2, L0, L1, L2, row_stride, b, h,
               kr0, kr1, kr2, offs_d, stride_d, HEAD_DIM,
               TMA: tl.constexpr, PAD_D: tl.constexpr, CAST_F32: tl.constexpr,
               TK0: tl.constexpr, TK1: tl.constexpr, TK2: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
    """K or V key tile (j0, j1, j2) of the full box F (never outside the group), [BLOCK_N, BLOCK_D]."""
    if TMA:
        # 5-D descriptor over [B * L0, L1, L2, heads, D] (dilation 1), block [TK0, TK1, TK2, 1, D]
        x = desc.load([b * L0 + u_lo0 + j0 * TK0, u_lo1 + j1 * TK1, u_lo2 + j2 * TK2, h, 0])
        x = x.reshape([TK0 * TK1 * TK2, BLOCK_D])
        if CAST_F32:
            x = x.to(tl.float32)
    else:
        k_tok = _key_rows(u_lo0 + j0 * TK0 + kr0, u_lo1 + j1 * TK1 + kr1, u_lo2 + j2 * TK2 + kr2,
                          g0, g1, g2, 0, 0, 0, D0, D1, D2, L1, L2, False)  # fmt: skip
        x = load_rows(ptr, k_tok * row_stride, offs_d, stride_d, HEAD_DIM, PAD_D, CAST_F32)
    return x




@triton.jit
def _key_rows(kk0, kk1, kk2, g0, g1, g2, lg0, lg1, lg2, D0, D1, D2, L1, L2, CLAMP: tl.constexpr):
    """Raster token index (int64) of in-group key coordinates; clamped into the group when ``CLAMP``."""
    if CLAMP:
        kk0 = tl.minimum(kk0, lg0 - 1)
        kk1 = tl.minimum(kk1, lg1 - 1)
        kk2 = tl.minimum(kk2, lg2 - 1)
    tok = ((g0 + D0 * kk0) * L1 + (g1 + D1 * kk1)) * L2 + (g2 + D2 * kk2)
    return tok.to(tl.int64)




@triton.jit
def _gna_fwd_kernel(
    Q, K, V, Out, LSE, EK, EV, ELEN, KD, VD,
    sqb, sqn, sqh, sqd,
    skb, skn, skh, skd,
    svb, svn, svh, svd,
    sob, son, soh, sod,
    slb, sln, slh,
    sekb, sekt, sekh, sekd,
    sevb, sevt, sevh, sevd,
    H, L0, L1, L2, K0, K1, K2, S0, S1, S2, D0, D1, D2,
    T_EXTRA, HEAD_DIM, qk_scale,
    NDIM, KEY0, KEY1, KEY2, KEY_BH,  # autotune keys only (bucketed grid); unused in the body
    CAUSAL0: tl.constexpr, CAUSAL1: tl.constexpr, CAUSAL2: tl.constexpr,
    HAS_EXTRA: tl.constexpr, HAS_ELEN: tl.constexpr, WRITE_LSE: tl.constexpr,
    BLOCK_D: tl.constexpr, PAD_D: tl.constexpr, CAST_F32: tl.constexpr, DOT_PREC: tl.constexpr,
    TQ0: tl.constexpr, TQ1: tl.constexpr, TQ2: tl.constexpr,
    TK0: tl.constexpr, TK1: tl.constexpr, TK2: tl.constexpr,
    TMA: tl.constexpr,
):  # fmt: skip
    BLOCK_M: tl.constexpr = TQ0 * TQ1 * TQ2
    BLOCK_N: tl.constexpr = TK0 * TK1 * TK2
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H

    # ---- which query tile: per axis a dilation group g and a tile of in-group coordinates ----
    nt0 = tl.cdiv(tl.cdiv(L0, D0), TQ0)
    nt1 = tl.cdiv(tl.cdiv(L1, D1), TQ1)
    nt2 = tl.cdiv(tl.cdiv(L2, D2), TQ2)
    a2 = pid % (D2 * nt2)
    rest = pid // (D2 * nt2)
    a1 = rest % (D1 * nt1)
    a0 = rest // (D1 * nt1)
    g0 = a0 // nt0
    g1 = a1 // nt1
    g2 = a2 // nt2
    lg0 = (L0 - g0 + D0 - 1) // D0  # length of the dilation group on each axis
    lg1 = (L1 - g1 + D1 - 1) // D1
    lg2 = (L2 - g2 + D2 - 1) // D2
    f0 = (a0 % nt0) * TQ0  # first in-group coordinate of the tile
    f1 = (a1 % nt1) * TQ1
    f2 = (a2 % nt2) * TQ2
    e0 = tl.minimum(f0 + TQ0 - 1, lg0 - 1)  # last valid one
    e1 = tl.minimum(f1 + TQ1 - 1, lg1 - 1)
    e2 = tl.minimum(f2 + TQ2 - 1, lg2 - 1)

    # ---- the query rows ----
    offs_m = tl.arange(0, BLOCK_M)
    xq0 = f0 + offs_m // (TQ1 * TQ2)
    xq1 = f1 + (offs_m // TQ2) % TQ1
    xq2 = f2 + offs_m % TQ2
    q_valid = (xq0 < lg0) & (xq1 < lg1) & (xq2 < lg2)
    xq0 = tl.minimum(xq0, lg0 - 1)
    xq1 = tl.minimum(xq1, lg1 - 1)
    xq2 = tl.minimum(xq2, lg2 - 1)
    q_tok = ((g0 + D0 * xq0) * L1 + (g1 + D1 * xq1)) * L2 + (g2 + D2 * xq2)
    q_tok = q_tok.to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    q = load_rows(Q + b64 * sqb + h64 * sqh, q_tok * sqn, offs_d, sqd, HEAD_DIM, PAD_D, CAST_F32)

    # per-query windows (for masked tiles), the union and the intersection of the tile's windows
    lo0, hi0 = _window(xq0, lg0, K0, S0, CAUSAL0)
    lo1, hi1 = _window(xq1, lg1, K1, S1, CAUSAL1)
    lo2, hi2 = _window(xq2, lg2, K2, S2, CAUSAL2)
    u_lo0, i_hi0 = _window(f0, lg0, K0, S0, CAUSAL0)
    i_lo0, u_hi0 = _window(e0, lg0, K0, S0, CAUSAL0)
    u_lo1, i_hi1 = _window(f1, lg1, K1, S1, CAUSAL1)
    i_lo1, u_hi1 = _window(e1, lg1, K1, S1, CAUSAL1)
    u_lo2, i_hi2 = _window(f2, lg2, K2, S2, CAUSAL2)
    i_lo2, u_hi2 = _window(e2, lg2, K2, S2, CAUSAL2)
    c0 = tl.cdiv(u_hi0 - u_lo0 + 1, TK0)
    c1 = tl.cdiv(u_hi1 - u_lo1 + 1, TK1)
    c2 = tl.cdiv(u_hi2 - u_lo2 + 1, TK2)

    offs_n = tl.arange(0, BLOCK_N)
    kr0 = offs_n // (TK1 * TK2)
    kr1 = (offs_n // TK2) % TK1
    kr2 = offs_n % TK2
    k_base = K + b64 * skb + h64 * skh
    v_base = V + b64 * svb + h64 * svh

    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)  # finite: a fully masked tile must not give NaN
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # Key tiles fully inside every query's window: index range [fa, fa + nf) per axis (a box F, maybe empty).
    fa0 = tl.cdiv(i_lo0 - u_lo0, TK0)
    fa1 = tl.cdiv(i_lo1 - u_lo1, TK1)
    fa2 = tl.cdiv(i_lo2 - u_lo2, TK2)
    nf0 = tl.maximum(tl.minimum((i_hi0 - u_lo0 + 1) // TK0, c0) - fa0, 0)
    nf1 = tl.maximum(tl.minimum((i_hi1 - u_lo1 + 1) // TK1, c1) - fa1, 0)
    nf2 = tl.maximum(tl.minimum((i_hi2 - u_lo2 + 1) // TK2, c2) - fa2, 0)
    f_empty = (nf0 == 0) | (nf1 == 0) | (nf2 == 0)
    nf0 = tl.where(f_empty, 0, nf0)
    fa0 = tl.where(f_empty, 0, fa0)

    # 1) full tiles: no mask, no branch; K/V through tensor descriptors (TMA) where the layout allows
    for j in range(0, nf0 * nf1 * nf2):
        j2 = fa2 + j % nf2
        j1 = fa1 + (j // nf2) % nf1
        j0 = fa0 + j // (nf1 * nf2)
        k = _full_tile(k_base, KD, j0, j1, j2, u_lo0, u_lo1, u_lo2, g0, g1, g2, D0, D1, D2, L0, L1, L2, skn, b, h,
                       kr0, kr1, kr2, offs_d, skd, HEAD_DIM, TMA, PAD_D, CAST_F32, TK0, TK1, TK2, BLOCK_D)  # fmt: skip
        v = _full_tile(v_base, VD, j0, j1, j2, u_lo0, u_lo1, u_lo2, g0, g1, g2, D0, D1, D2, L0, L1, L2, svn, b, h,
                       kr0, kr1, kr2, offs_d, svd, HEAD_DIM, TMA, PAD_D, CAST_F32, TK0, TK1, TK2, BLOCK_D)  # fmt: skip
        m_i, l_i, acc = softmax_step(q, k, v, m_i, l_i, acc, qk_scale, DOT_PREC)

    # 2) the other tiles of the union, masked: the complement of F as three regions (outside F on axis 0; inside on
    #    axis 0, outside on axis 1; inside on axes 0 and 1, outside on axis 2). skip(x, a, n) = x < a ? x : x + n.
    n_a = (c0 - nf0) * c1 * c2
    n_b = nf0 * (c1 - nf1) * c2
    n_c = nf0 * nf1 * (c2 - nf2)
    for i in range(0, n_a + n_b + n_c):
        in_a = i < n_a
        in_b = (i >= n_a) & (i < n_a + n_b)
        loc = i - tl.where(in_a, 0, tl.where(in_b, n_a, n_a + n_b))
        e1 = tl.where(in_a, c1, tl.where(in_b, c1 - nf1, nf1))
        e2 = tl.where(in_a | in_b, c2, c2 - nf2)
        x2 = loc % e2
        x1 = (loc // e2) % e1
        x0 = loc // (e2 * e1)
        j0 = tl.where(in_a, tl.where(x0 < fa0, x0, x0 + nf0), fa0 + x0)
        j1 = tl.where(in_a, x1, tl.where(in_b, tl.where(x1 < fa1, x1, x1 + nf1), fa1 + x1))
        j2 = tl.where(in_a | in_b, x2, tl.where(x2 < fa2, x2, x2 + nf2))
        kk0 = u_lo0 + j0 * TK0 + kr0
        kk1 = u_lo1 + j1 * TK1 + kr1
        kk2 = u_lo2 + j2 * TK2 + kr2
        k_tok = _key_rows(kk0, kk1, kk2, g0, g1, g2, lg0, lg1, lg2, D0, D1, D2, L1, L2, True)
        k = load_rows(k_base, k_tok * skn, offs_d, skd, HEAD_DIM, PAD_D, CAST_F32)
        v = load_rows(v_base, k_tok * svn, offs_d, svd, HEAD_DIM, PAD_D, CAST_F32)
        mask = (kk0[None, :] >= lo0[:, None]) & (kk0[None, :] <= hi0[:, None])
        mask = mask & (kk1[None, :] >= lo1[:, None]) & (kk1[None, :] <= hi1[:, None])
        mask = mask & (kk2[None, :] >= lo2[:, None]) & (kk2[None, :] <= hi2[:, None])
        m_i, l_i, acc = masked_softmax_step(q, k, v, mask, m_i, l_i, acc, qk_scale, DOT_PREC)

    if HAS_EXTRA:
        m_i, l_i, acc = extra_keys(q, m_i, l_i, acc, EK, EV, ELEN, b, b64, h64,
                                   sekb, sekt, sekh, sekd, sevb, sevt, sevh, sevd, T_EXTRA,
                                   HEAD_DIM, qk_scale, offs_m, offs_n, offs_d,
                                   HAS_ELEN, PAD_D, CAST_F32, DOT_PREC, BLOCK_N)  # fmt: skip

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    out = acc / l_safe[:, None]
    o_ptrs = Out + b64 * sob + h64 * soh + q_tok[:, None] * son + offs_d[None, :] * sod
    o_mask = q_valid[:, None]
    if PAD_D:
        o_mask = o_mask & (offs_d[None, :] < HEAD_DIM)
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=o_mask)
    if WRITE_LSE:
        lse = tl.where(l_i > 0.0, (m_i + tl.math.log2(l_safe)) * LN2, float("-inf"))
        tl.store(LSE + b64 * slb + h64 * slh + q_tok * sln, lse, mask=q_valid)



# --------------------------------------------------------------------------------------------------------------
# Autotuning
# --------------------------------------------------------------------------------------------------------------

# The autotuner's cache key: the grid's size bucket per axis and batch * heads (KEY*), the window, stride and
# dilation, the head dim and the constexpr flags that change the loops.
_AUTOTUNE_KEYS = [
    "KEY0", "KEY1", "KEY2", "KEY_BH", "K0", "K1", "K2", "S0", "S1", "S2", "D0", "D1", "D2", "HEAD_DIM",
    "CAUSAL0", "CAUSAL1", "CAUSAL2", "HAS_EXTRA",
]  # fmt: skip
_TUNED: dict = {}


def _tile_meta(cfg: cfgs.GridConfig) -> dict:
    tq, tk = cfgs.tiles(cfg.tq), cfgs.tiles(cfg.tk)
    return {"TQ0": tq[0], "TQ1": tq[1], "TQ2": tq[2], "TK0": tk[0], "TK1": tk[1], "TK2": tk[2]}


def _descriptor_blocks(nargs) -> None:
    """Autotune pre-hook: K/V descriptor block shapes follow the candidate's key tile."""
    for name in ("KD", "VD"):
        desc = nargs.get(name)
        if desc is not None:
            desc.block_shape = [nargs["TK0"], nargs["TK1"], nargs["TK2"], 1, desc.shape[-1]]


def _tuned_kernel(ndim: int, wide: bool):
    """The autotuned launcher for one (number of axes, tile family); built on first use."""
    key = (ndim, wide)
    if key not in _TUNED:
        table = cfgs.WIDE if wide else cfgs.FAST
        hook = None if wide else _descriptor_blocks  # the wide family never uses descriptors
        configs = [triton.Config(_tile_meta(c), num_warps=c.num_warps, num_stages=c.num_stages, pre_hook=hook)
                   for c in table[ndim]]  # fmt: skip
        _TUNED[key] = triton.autotune(configs=configs, key=_AUTOTUNE_KEYS)(_gna_fwd_kernel)
    return _TUNED[key]


def tuned_config(ndim: int, wide: bool = False) -> cfgs.GridConfig | None:
    """The config the autotuner picked for ``ndim`` axes (last tuned shape), or None before any tuning."""
    best = getattr(_TUNED.get((ndim, wide)), "best_config", None)
    if best is None:
        return None
    kw = best.kwargs
    return cfgs.GridConfig((kw["TQ0"], kw["TQ1"], kw["TQ2"]), (kw["TK0"], kw["TK1"], kw["TK2"]), best.num_warps,
                           best.num_stages)  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# Host wrapper
# --------------------------------------------------------------------------------------------------------------


def _bucket(n: int) -> int:
    """Autotune key of an axis length: next power of two (a new resolution in the same bucket reuses the tuning)."""
    return 1 << max(0, int(n) - 1).bit_length()


def _num_q_tiles(grid3, dil3, tq3) -> int:
    total = 1
    for n, d, t in zip(grid3, dil3, tq3, strict=True):
        total *= d * math.ceil(math.ceil(n / d) / t)
    return total


def _tma_ok(p, dl3, block_d) -> bool:
    """Whether the full-tile loop can read K/V through 5-D tensor descriptors over [B * L0, L1, L2, heads, D]:
    16-bit, head dim a power of two, dilation 1, batch foldable into axis 0 (or batch 1), 16-byte aligned.
    Measured on H200 (bench/NOTES.md v4): 6% faster on flux4k-gna, 1-5% on the 3-D GNA cases."""
    if p.key.dtype not in (torch.float16, torch.bfloat16) or block_d != p.key.shape[-1]:
        return False
    if any(d != 1 for d in dl3):
        return False
    return all(tma_reason(name, t, fold=True) is None for name, t in (("key", p.key), ("value", p.value)))


def gna_forward(
    problem, config: dict | None = None, text_config: dict | None = None, grid_queries: bool = True
) -> None:
    """Run the Triton GNA forward for a problem (:class:`na_accel.ops.dispatch.Problem` or anything with its
    fields), writing its outputs in place: the grid queries (unless ``grid_queries=False``, when another kernel did
    them), then the dense text queries if any (:func:`.triton_text.text_forward`).

    ``config``: ``{"tq": (..), "tk": (..), "num_warps": w, "num_stages": s}`` fixes the launch (tiles per grid axis,
    1 to 3 entries); by default the compiled kernel autotunes over :data:`.configs.FAST` / :data:`.configs.WIDE`
    (``NA_ACCEL_AUTOTUNE=0``: their first entry) and the interpreter uses :data:`.configs.INTERPRETER`.
    ``text_config``: see :func:`.triton_text.text_forward`.
    """
    if grid_queries:
        _grid_forward(problem, config)
    text_forward(problem, text_config)


def _grid_forward(p, config: dict | None) -> None:
    q = p.query
    batch, n, heads, head_dim = q.shape
    ndim = p.params.ndim
    grid3, ks3, st3, dl3, causal3 = params3(p.params)
    block_d, pad_d = head_dim_block(head_dim)
    cast_f32, dot_prec = dtype_settings(q.dtype)
    wide = cfgs.wide(head_dim, q.dtype == torch.float32)
    qk_scale = float(p.scale) * LOG2E
    has_extra = p.extra_key is not None and p.extra_key.shape[1] > 0
    t_extra = p.extra_key.shape[1] if has_extra else 0
    has_elen = has_extra and p.extra_lengths is not None
    write_lse = p.lse is not None

    if config is None and (INTERPRETED or os.environ.get("NA_ACCEL_AUTOTUNE", "1") == "0"):
        fixed = cfgs.INTERPRETER[ndim] if INTERPRETED else (cfgs.WIDE if wide else cfgs.FAST)[ndim][0]
        config = fixed._asdict()
    kd = vd = None
    use_tma = not wide and _tma_ok(p, dl3, block_d)
    if use_tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        # block [tk0, tk1, tk2, 1, D]: from the fixed config here, set per candidate by the autotuner's pre-hook
        tk3 = cfgs.tiles(config["tk"] if config is not None else cfgs.FAST[ndim][0].tk)
        descs = []
        for t in (p.key, p.value):
            shape, strides5 = folded_5d(t, grid3)
            descs.append(TensorDescriptor(t, shape, strides5, [tk3[0], tk3[1], tk3[2], 1, block_d]))
        kd, vd = descs

    args = (
        q, p.key, p.value, p.out,
        p.lse if write_lse else p.out,  # dummy pointers when unused
        p.extra_key if has_extra else q, p.extra_value if has_extra else q, p.extra_lengths if has_elen else q,
        kd, vd,
        *q.stride(), *p.key.stride(), *p.value.stride(), *p.out.stride(),
        *(p.lse.stride() if write_lse else (0, 0, 0)),
        *strides(p.extra_key if has_extra else None, 4), *strides(p.extra_value if has_extra else None, 4),
        heads, *grid3, *ks3, *st3, *dl3,
        t_extra, head_dim, qk_scale,
        ndim, *(_bucket(x) for x in grid3), _bucket(batch * heads),
    )  # fmt: skip
    consts = dict(
        CAUSAL0=causal3[0], CAUSAL1=causal3[1], CAUSAL2=causal3[2],
        HAS_EXTRA=has_extra, HAS_ELEN=has_elen, WRITE_LSE=write_lse,
        BLOCK_D=block_d, PAD_D=pad_d, CAST_F32=cast_f32, DOT_PREC=dot_prec, TMA=use_tma,
    )  # fmt: skip

    if config is not None:
        tq3, tk3 = cfgs.tiles(config["tq"]), cfgs.tiles(config["tk"])
        launch = (_num_q_tiles(grid3, dl3, tq3), batch * heads)
        _gna_fwd_kernel[launch](
            *args, **consts,
            TQ0=tq3[0], TQ1=tq3[1], TQ2=tq3[2], TK0=tk3[0], TK1=tk3[1], TK2=tk3[2],
            num_warps=config.get("num_warps", 4), num_stages=config.get("num_stages", 2),
        )  # fmt: skip
    else:

        def launch(meta):
            return (_num_q_tiles(grid3, dl3, (meta["TQ0"], meta["TQ1"], meta["TQ2"])), batch * heads)

        _tuned_kernel(ndim, wide)[launch](*args, **consts)
