"""Fused GNA forward kernels (Triton): 3-D query tiles, analytic KV tile ranges, online softmax in fp32.

Kernel design (see DESIGN.md section 3):

* Every grid is handled as 3-D (1-D and 2-D get size-1 leading axes). A program owns one query tile, a
  ``(TQ0, TQ1, TQ2)`` box of in-group coordinates of one dilation group (coordinate ``x = g + d * x'``), for one
  (batch, head). Queries and keys are read in place from the raster-ordered ``[B, N, heads, D]`` views by pointer
  arithmetic (no permute pass; ragged edges are clamped on load and masked on store).
* Per axis the windows of the tile's queries are monotone in the query coordinate, so their union is the contiguous
  range ``[lo(first), hi(last)]`` and their intersection ``[lo(last), hi(first)]``. The program visits the
  ``(TK0, TK1, TK2)`` key tiles covering the union; a key tile inside the intersection on every axis needs no mask.
* Key tiles fully inside every query's window (the full box F) are visited in a first, unmasked loop; there K and V
  come through 5-D tensor descriptors (TMA on Hopper) when the layout allows (:func:`_tma_ok`), else by pointers.
* Extra (text) keys are a second loop with a per-batch valid length. Dense (text) queries go through
  :func:`_text_fwd_kernel`, split over the keys (flash-decoding style) when there are few query tiles.

This module is loaded twice by :mod:`na_accel.kernels.backend` (once with ``TRITON_INTERPRET=1`` and once without)
so that interpreted and compiled kernels can live in one process; keep it free of module-level state.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache

import torch
import triton
import triton.language as tl

from na_accel.kernels.layout import folded_5d, pad3, params3, tma_reason

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")

_LOG2E = 1.4426950408889634


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
def _softmax_step(q, k, v, m_i, l_i, acc, qk_scale, DOT_PREC: tl.constexpr):
    """One unmasked online-softmax step in the log2 domain."""
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
    m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    qk = qk * qk_scale - m_ij[:, None]
    p = tl.math.exp2(qk)
    alpha = tl.math.exp2(m_i - m_ij)
    l_i, acc = _accumulate(p, alpha, v, l_i, acc, DOT_PREC)
    return m_ij, l_i, acc


@triton.jit
def _accumulate(p, alpha, v, l_i, acc, DOT_PREC: tl.constexpr):
    """Online-softmax update: rescale the running sum and output rows by ``alpha``, add ``p`` and ``p @ v``."""
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
    return l_i, acc


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
        x = _load_rows(ptr, k_tok * row_stride, offs_d, stride_d, HEAD_DIM, PAD_D, CAST_F32)
    return x


@triton.jit
def _masked_softmax_step(q, k, v, mask, m_i, l_i, acc, qk_scale, DOT_PREC: tl.constexpr):
    """One online-softmax step where ``mask`` ([BLOCK_M, BLOCK_N]) says which scores count."""
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
    qk = tl.where(mask, qk * qk_scale, float("-inf"))
    m_ij = tl.maximum(m_i, tl.max(qk, 1))  # m_i starts finite, so a fully masked row stays finite
    p = tl.math.exp2(qk - m_ij[:, None])
    alpha = tl.math.exp2(m_i - m_ij)
    l_i, acc = _accumulate(p, alpha, v, l_i, acc, DOT_PREC)
    return m_ij, l_i, acc


@triton.jit
def _load_rows(ptr, rows, offs_d, stride_d, HEAD_DIM, PAD_D: tl.constexpr, CAST_F32: tl.constexpr):
    """Load a [rows, BLOCK_D] tile: ``rows`` are int64 row offsets (elements), columns the head dim."""
    ptrs = ptr + rows[:, None] + offs_d[None, :] * stride_d
    if PAD_D:
        x = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    else:
        x = tl.load(ptrs)
    if CAST_F32:
        x = x.to(tl.float32)
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
def _row_range_step(q, m_i, l_i, acc, k_base, v_base, n, n_end, n_last, skn, skd, svn, svd, HEAD_DIM, qk_scale,
                    offs_m, offs_d, PAD_D: tl.constexpr, CAST_F32: tl.constexpr, DOT_PREC: tl.constexpr):  # fmt: skip
    """Masked online-softmax step over the key rows ``n`` ([BLOCK_N] indices) of one sequence: rows ``>= n_end``
    do not count (they are loaded clamped to ``n_last``)."""
    rows = tl.minimum(n, n_last).to(tl.int64)
    k = _load_rows(k_base, rows * skn, offs_d, skd, HEAD_DIM, PAD_D, CAST_F32)
    v = _load_rows(v_base, rows * svn, offs_d, svd, HEAD_DIM, PAD_D, CAST_F32)
    mask = (n < n_end)[None, :] & (offs_m >= 0)[:, None]
    return _masked_softmax_step(q, k, v, mask, m_i, l_i, acc, qk_scale, DOT_PREC)


@triton.jit
def _extra_keys(q, m_i, l_i, acc, EK, EV, ELEN, b, b64, h64, sekb, sekt, sekh, sekd, sevb, sevt, sevh, sevd,
                T_EXTRA, HEAD_DIM, qk_scale, offs_m, offs_n, offs_d,
                HAS_ELEN: tl.constexpr, PAD_D: tl.constexpr, CAST_F32: tl.constexpr, DOT_PREC: tl.constexpr,
                BLOCK_N: tl.constexpr):  # fmt: skip
    """Online-softmax steps over the extra (text) keys of batch ``b``: the first ``ELEN[b]`` (or all) are valid."""
    if HAS_ELEN:
        n_valid = tl.load(ELEN + b).to(tl.int32)
    else:
        n_valid = T_EXTRA
    ek_base = EK + b64 * sekb + h64 * sekh
    ev_base = EV + b64 * sevb + h64 * sevh
    for t0 in range(0, n_valid, BLOCK_N):
        m_i, l_i, acc = _row_range_step(q, m_i, l_i, acc, ek_base, ev_base, t0 + offs_n, n_valid, T_EXTRA - 1,
                                        sekt, sekd, sevt, sevd, HEAD_DIM, qk_scale, offs_m, offs_d,
                                        PAD_D, CAST_F32, DOT_PREC)  # fmt: skip
    return m_i, l_i, acc


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
    q = _load_rows(Q + b64 * sqb + h64 * sqh, q_tok * sqn, offs_d, sqd, HEAD_DIM, PAD_D, CAST_F32)

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
        m_i, l_i, acc = _softmax_step(q, k, v, m_i, l_i, acc, qk_scale, DOT_PREC)

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
        k = _load_rows(k_base, k_tok * skn, offs_d, skd, HEAD_DIM, PAD_D, CAST_F32)
        v = _load_rows(v_base, k_tok * svn, offs_d, svd, HEAD_DIM, PAD_D, CAST_F32)
        mask = (kk0[None, :] >= lo0[:, None]) & (kk0[None, :] <= hi0[:, None])
        mask = mask & (kk1[None, :] >= lo1[:, None]) & (kk1[None, :] <= hi1[:, None])
        mask = mask & (kk2[None, :] >= lo2[:, None]) & (kk2[None, :] <= hi2[:, None])
        m_i, l_i, acc = _masked_softmax_step(q, k, v, mask, m_i, l_i, acc, qk_scale, DOT_PREC)

    if HAS_EXTRA:
        m_i, l_i, acc = _extra_keys(q, m_i, l_i, acc, EK, EV, ELEN, b, b64, h64,
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
        lse = tl.where(l_i > 0.0, (m_i + tl.math.log2(l_safe)) * 0.6931471805599453, float("-inf"))
        tl.store(LSE + b64 * slb + h64 * slh + q_tok * sln, lse, mask=q_valid)


@triton.jit
def _text_fwd_kernel(
    Q, K, V, EK, EV, ELEN, Out, LSE,
    sqb, sqt, sqh, sqd,
    skb, skn, skh, skd,
    svb, svn, svh, svd,
    sekb, sekt, sekh, sekd,
    sevb, sevt, sevh, sevd,
    sos, sob, sot, soh, sod,
    sls, slb, slt, slh,
    H, N, TQ, T_EXTRA, HEAD_DIM, qk_scale, CHUNKS_PER_SPLIT,
    HAS_EXTRA: tl.constexpr, HAS_ELEN: tl.constexpr, WRITE_LSE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PAD_D: tl.constexpr,
    CAST_F32: tl.constexpr, DOT_PREC: tl.constexpr,
):  # fmt: skip
    """Dense queries over all grid keys and the valid extra keys; program (query block, batch*head, split)."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    split = tl.program_id(2)
    num_splits = tl.num_programs(2)
    b = bh // H
    h = bh % H
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q_valid = offs_m < TQ
    q_rows = tl.minimum(offs_m, TQ - 1).to(tl.int64)
    q = _load_rows(Q + b64 * sqb + h64 * sqh, q_rows * sqt, offs_d, sqd, HEAD_DIM, PAD_D, CAST_F32)

    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    k_base = K + b64 * skb + h64 * skh
    v_base = V + b64 * svb + h64 * svh
    start = split * CHUNKS_PER_SPLIT * BLOCK_N
    end = tl.minimum(start + CHUNKS_PER_SPLIT * BLOCK_N, N)
    full_end = start + ((end - start) // BLOCK_N) * BLOCK_N
    for n0 in range(start, full_end, BLOCK_N):
        rows = (n0 + offs_n).to(tl.int64)
        k = _load_rows(k_base, rows * skn, offs_d, skd, HEAD_DIM, PAD_D, CAST_F32)
        v = _load_rows(v_base, rows * svn, offs_d, svd, HEAD_DIM, PAD_D, CAST_F32)
        m_i, l_i, acc = _softmax_step(q, k, v, m_i, l_i, acc, qk_scale, DOT_PREC)
    if full_end < end:
        m_i, l_i, acc = _row_range_step(q, m_i, l_i, acc, k_base, v_base, full_end + offs_n, end, N - 1,
                                        skn, skd, svn, svd, HEAD_DIM, qk_scale, offs_m, offs_d,
                                        PAD_D, CAST_F32, DOT_PREC)  # fmt: skip

    if HAS_EXTRA:
        if split == num_splits - 1:
            m_i, l_i, acc = _extra_keys(q, m_i, l_i, acc, EK, EV, ELEN, b, b64, h64,
                                        sekb, sekt, sekh, sekd, sevb, sevt, sevh, sevd, T_EXTRA,
                                        HEAD_DIM, qk_scale, offs_m, offs_n, offs_d,
                                        HAS_ELEN, PAD_D, CAST_F32, DOT_PREC, BLOCK_N)  # fmt: skip

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    out = acc / l_safe[:, None]
    split64 = split.to(tl.int64)
    o_ptrs = Out + split64 * sos + b64 * sob + h64 * soh + q_rows[:, None] * sot + offs_d[None, :] * sod
    o_mask = q_valid[:, None]
    if PAD_D:
        o_mask = o_mask & (offs_d[None, :] < HEAD_DIM)
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=o_mask)
    if WRITE_LSE:
        lse = tl.where(l_i > 0.0, (m_i + tl.math.log2(l_safe)) * 0.6931471805599453, float("-inf"))
        tl.store(LSE + split64 * sls + b64 * slb + h64 * slh + q_rows * slt, lse, mask=q_valid)


@triton.jit
def _combine_splits_kernel(
    Part, PLSE, Out, LSE, R, T, H, SPLITS, HEAD_DIM,
    sob, sot, soh, sod, slb, slt, slh,
    WRITE_LSE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Flash-decoding combine: rows ``r = (b * T + t) * H + h`` of the split partials ``Part`` [SPLITS, R, HEAD_DIM]
    (each normalised over its keys) and their log-sum-exps ``PLSE`` [SPLITS, R], weighted by ``exp(lse_s - max)``."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    r_valid = rows < R
    rows64 = tl.minimum(rows, R - 1).to(tl.int64)
    m = tl.full([BLOCK_R], float("-inf"), dtype=tl.float32)
    for s in range(SPLITS):
        m = tl.maximum(m, tl.load(PLSE + s * R + rows64))
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    total = tl.zeros([BLOCK_R], dtype=tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    d_valid = offs_d < HEAD_DIM
    for s in range(SPLITS):
        w = tl.exp(tl.load(PLSE + s * R + rows64) - m_safe)
        part = tl.load(Part + (s * R + rows64)[:, None] * HEAD_DIM + offs_d[None, :], mask=d_valid[None, :], other=0.0)
        acc += w[:, None] * part
        total += w
    out = acc / tl.where(total > 0.0, total, 1.0)[:, None]
    b = rows64 // (T * H)
    t = (rows64 // H) % T
    h = rows64 % H
    o_ptrs = Out + (b * sob + t * sot + h * soh)[:, None] + offs_d[None, :] * sod
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=r_valid[:, None] & d_valid[None, :])
    if WRITE_LSE:
        lse = tl.where(total > 0.0, m_safe + tl.log(tl.where(total > 0.0, total, 1.0)), float("-inf"))
        tl.store(LSE + b * slb + t * slt + h * slh, lse, mask=r_valid)


# --------------------------------------------------------------------------------------------------------------
# Launch configurations
# --------------------------------------------------------------------------------------------------------------


def _cfg(tq, tk, warps, stages):
    tq = (1,) * (3 - len(tq)) + tuple(tq)
    tk = (1,) * (3 - len(tk)) + tuple(tk)
    kw = {"TQ0": tq[0], "TQ1": tq[1], "TQ2": tq[2], "TK0": tk[0], "TK1": tk[1], "TK2": tk[2]}
    return kw, warps, stages


# Candidate (query tile, key tile, warps, stages) per number of grid axes, for head dims <= 128 in 16-bit types.
# The first one is the default when autotuning is off. Kept after the v2 sweep on H200 (bench/NOTES.md): 128 x 128
# tiles with 8 warps won every 3-D case and the 2-D NA case, (16,16) x (8,8) the 2-D GNA case.
_FAST = {
    3: [
        _cfg((2, 8, 8), (2, 8, 8), 8, 3),
        _cfg((2, 8, 8), (1, 8, 8), 4, 3),
        _cfg((2, 8, 8), (2, 8, 8), 8, 2),
    ],
    2: [
        _cfg((16, 8), (16, 8), 8, 3),
        _cfg((16, 16), (8, 8), 8, 3),
        _cfg((8, 16), (8, 8), 4, 3),
    ],
    1: [
        _cfg((128,), (128,), 8, 3),
        _cfg((128,), (64,), 4, 3),
    ],
}
# Smaller tiles for head dims above 128 or 32-bit inputs (shared memory and registers).
_WIDE = {
    3: [_cfg((1, 8, 8), (1, 8, 8), 4, 2), _cfg((1, 8, 8), (1, 4, 8), 4, 2)],
    2: [_cfg((8, 8), (8, 8), 4, 2), _cfg((8, 8), (4, 8), 4, 2)],
    1: [_cfg((64,), (64,), 4, 2), _cfg((64,), (32,), 4, 2)],
}
# Fixed small tiles under the interpreter (and when autotuning is off): exercise many tiles on tiny grids.
INTERPRETER_CONFIG = {
    3: _cfg((2, 2, 4), (2, 4, 2), 4, 1),
    2: _cfg((4, 4), (2, 8), 4, 1),
    1: _cfg((16,), (16,), 4, 1),
}


def _wide(head_dim: int, dtype: torch.dtype) -> bool:
    return head_dim > 128 or dtype == torch.float32


_AUTOTUNE_KEYS = [
    "KEY0", "KEY1", "KEY2", "KEY_BH", "K0", "K1", "K2", "S0", "S1", "S2", "D0", "D1", "D2", "HEAD_DIM",
    "CAUSAL0", "CAUSAL1", "CAUSAL2", "HAS_EXTRA",
]  # fmt: skip
_TUNED: dict = {}


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
        table = _WIDE if wide else _FAST
        hook = None if wide else _descriptor_blocks  # the wide family never uses descriptors
        configs = [triton.Config(dict(kw), num_warps=w, num_stages=s, pre_hook=hook) for kw, w, s in table[ndim]]
        _TUNED[key] = triton.autotune(configs=configs, key=_AUTOTUNE_KEYS)(_gna_fwd_kernel)
    return _TUNED[key]


# --------------------------------------------------------------------------------------------------------------
# Host wrappers
# --------------------------------------------------------------------------------------------------------------


def _bucket(n: int) -> int:
    """Autotune key of an axis length: next power of two (a new resolution in the same bucket reuses the tuning)."""
    return 1 << max(0, int(n) - 1).bit_length()


def _dot_prec(dtype: torch.dtype) -> str:
    # fp32 inputs get true fp32 dots (the correct path, not the fast one); 16-bit dots ignore the setting.
    return "ieee" if dtype == torch.float32 or INTERPRETED else "tf32"


def _strides(t: torch.Tensor | None, n: int):
    return tuple(t.stride()) if t is not None else (0,) * n


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
    """Run the fused GNA forward for a :class:`na_accel.backends.Problem`, writing its outputs in place.

    ``config``: ``{"tq": (..), "tk": (..), "num_warps": w, "num_stages": s}`` fixes the launch (tiles per grid axis,
    1 to 3 entries); by default the compiled kernel autotunes and the interpreter uses :data:`INTERPRETER_CONFIG`.
    ``text_config``: ``{"block_m", "block_n", "num_splits", "num_warps", "num_stages"}`` for the dense text path.
    ``grid_queries=False`` runs only the dense text queries (another kernel did the grid queries).
    """
    p = problem
    q = p.query
    batch, n, heads, head_dim = q.shape
    params = p.params
    ndim = params.ndim
    grid3, ks3, st3, dl3, causal3 = params3(params)
    block_d = max(16, triton.next_power_of_2(head_dim))
    pad_d = block_d != head_dim
    cast_f32 = INTERPRETED and q.dtype == torch.bfloat16
    dot_prec = _dot_prec(torch.float32 if cast_f32 else q.dtype)
    qk_scale = float(p.scale) * _LOG2E
    has_extra = p.extra_key is not None and p.extra_key.shape[1] > 0
    t_extra = p.extra_key.shape[1] if has_extra else 0
    has_elen = has_extra and p.extra_lengths is not None
    elen = p.extra_lengths if has_elen else None
    write_lse = p.lse is not None
    lse = p.lse if write_lse else p.out  # dummy pointer when unused
    ek = p.extra_key if has_extra else q
    ev = p.extra_value if has_extra else q
    elen_arg = elen if has_elen else q

    if not grid_queries:
        if p.text_query is not None and p.text_query.shape[1] > 0:
            _text_forward(p, block_d, pad_d, cast_f32, dot_prec, qk_scale, has_extra, t_extra, has_elen, text_config)
        return
    if config is None and (INTERPRETED or os.environ.get("NA_ACCEL_AUTOTUNE", "1") == "0"):
        if INTERPRETED:
            kw, warps, stages = INTERPRETER_CONFIG[ndim]
        else:  # autotuning off: the first (default) candidate
            kw, warps, stages = (_WIDE if _wide(head_dim, q.dtype) else _FAST)[ndim][0]
        config = {"tq": (kw["TQ0"], kw["TQ1"], kw["TQ2"]), "tk": (kw["TK0"], kw["TK1"], kw["TK2"]),
                  "num_warps": warps, "num_stages": stages}  # fmt: skip
    kd = vd = None
    use_tma = not _wide(head_dim, q.dtype) and _tma_ok(p, dl3, block_d)
    if use_tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        # block shape [tk0, tk1, tk2, 1, D]: from the fixed config here, set per candidate by the autotuner's pre-hook
        kw0 = _FAST[ndim][0][0]
        tk3 = pad3(config["tk"], 1) if config is not None else (kw0["TK0"], kw0["TK1"], kw0["TK2"])
        descs = []
        for t in (p.key, p.value):
            shape, strides = folded_5d(t, grid3)
            descs.append(TensorDescriptor(t, shape, strides, [tk3[0], tk3[1], tk3[2], 1, block_d]))
        kd, vd = descs

    args = (
        q, p.key, p.value, p.out, lse, ek, ev, elen_arg, kd, vd,
        *q.stride(), *p.key.stride(), *p.value.stride(), *p.out.stride(),
        *(p.lse.stride() if write_lse else (0, 0, 0)),
        *_strides(p.extra_key if has_extra else None, 4), *_strides(p.extra_value if has_extra else None, 4),
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
        tq3 = pad3(config["tq"], 1)
        tk3 = pad3(config["tk"], 1)
        launch = (_num_q_tiles(grid3, dl3, tq3), batch * heads)
        _gna_fwd_kernel[launch](
            *args, **consts,
            TQ0=tq3[0], TQ1=tq3[1], TQ2=tq3[2], TK0=tk3[0], TK1=tk3[1], TK2=tk3[2],
            num_warps=config.get("num_warps", 4), num_stages=config.get("num_stages", 2),
        )  # fmt: skip
    else:

        def launch(meta):
            return (_num_q_tiles(grid3, dl3, (meta["TQ0"], meta["TQ1"], meta["TQ2"])), batch * heads)

        _tuned_kernel(ndim, _wide(head_dim, q.dtype))[launch](*args, **consts)

    if p.text_query is not None and p.text_query.shape[1] > 0:
        _text_forward(p, block_d, pad_d, cast_f32, dot_prec, qk_scale, has_extra, t_extra, has_elen, text_config)


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    return _cuda_sms(device.index if device.index is not None else torch.cuda.current_device())


@lru_cache(maxsize=16)
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _text_forward(p, block_d, pad_d, cast_f32, dot_prec, qk_scale, has_extra, t_extra, has_elen, text_config):
    tq = p.text_query
    batch, n_text, heads, head_dim = tq.shape
    n = p.key.shape[1]
    cfg = dict(text_config or {})
    if INTERPRETED:
        defaults = {"block_m": 16, "block_n": 16, "num_warps": 4, "num_stages": 1}
    elif block_d > 128 or tq.dtype == torch.float32:
        defaults = {"block_m": 64, "block_n": 32, "num_warps": 4, "num_stages": 2}
    else:  # H200, hunyuan-gna-text's 256 text queries: 0.83 ms vs 1.12 ms with 64 x 64, 4 warps (bench/NOTES.md v8)
        defaults = {"block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 3}
    for key, value in defaults.items():
        cfg.setdefault(key, value)
    block_m, block_n = cfg["block_m"], cfg["block_n"]
    q_blocks = triton.cdiv(n_text, block_m)
    chunks = triton.cdiv(n, block_n)
    if "num_splits" in cfg:
        splits = cfg["num_splits"]
    else:
        programs = q_blocks * batch * heads
        splits = max(1, min(triton.cdiv(4 * _num_sms(tq.device), programs), chunks // 8 or 1))
    chunks_per_split = triton.cdiv(chunks, max(1, min(splits, chunks)))
    splits = triton.cdiv(chunks, chunks_per_split)
    write_lse = p.text_lse is not None
    if splits == 1:
        out, lse = p.text_out, p.text_lse if write_lse else p.text_out
        o_strides = (0, *out.stride())
        l_strides = (0, *lse.stride()) if write_lse else (0, 0, 0, 0)
    else:
        out = torch.empty((splits, batch, n_text, heads, head_dim), device=tq.device, dtype=torch.float32)
        lse = torch.empty((splits, batch, n_text, heads), device=tq.device, dtype=torch.float32)
        o_strides, l_strides = out.stride(), lse.stride()
        write_lse = True
    ek = p.extra_key if has_extra else tq
    ev = p.extra_value if has_extra else tq
    elen = p.extra_lengths if has_elen else tq
    launch = (q_blocks, batch * heads, splits)
    _text_fwd_kernel[launch](
        tq, p.key, p.value, ek, ev, elen, out, lse,
        *tq.stride(), *p.key.stride(), *p.value.stride(),
        *_strides(p.extra_key if has_extra else None, 4), *_strides(p.extra_value if has_extra else None, 4),
        *o_strides, *l_strides,
        heads, n, n_text, t_extra, head_dim, qk_scale, chunks_per_split,
        HAS_EXTRA=has_extra, HAS_ELEN=has_elen, WRITE_LSE=write_lse,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, PAD_D=pad_d, CAST_F32=cast_f32, DOT_PREC=dot_prec,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    if splits > 1:  # combine the splits (flash-decoding) in one pass
        rows = batch * n_text * heads
        block_r = 16 if INTERPRETED else 32
        text_lse = p.text_lse if p.text_lse is not None else lse
        _combine_splits_kernel[(triton.cdiv(rows, block_r),)](
            out, lse, p.text_out, text_lse, rows, n_text, heads, splits, head_dim,
            *p.text_out.stride(), *(p.text_lse.stride() if p.text_lse is not None else (0, 0, 0)),
            WRITE_LSE=p.text_lse is not None, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=4,
        )  # fmt: skip
