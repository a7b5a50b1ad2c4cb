"""The layout step of the 8-bit kernel (:mod:`.gluon_hopper_fp8`): one Triton pass that puts Q, K and V in tiled
token order and quantizes them (Q and K to int8, or float8 e4m3 with ``qk_int8=False``; V to e4m3), so that every
tile the kernel reads is one TMA box.

Tiled order: the (padded to 3-D) grid is cut into aligned tiles ``(T0, T1, T2)`` of 128 tokens (the kernel's query
and key tile, :data:`.configs.GLUON`); tile ``t`` (raster order over tiles) holds rows ``[128 t, 128 (t + 1))``, its
tokens in raster order inside the tile. Tokens past the grid's end (a ragged last tile per axis) are zero rows; the
kernel never attends to them (their coordinates lie outside every window). Extra (text) keys follow the grid tiles,
128 per tile, zero past the batch's valid length.

What is stored (``[B * heads]`` rows of each):

* ``q8`` ``[BH, NQ, D]``: Q times ``scale * log2(e)`` (the softmax runs on exp2), one fp32 scale per 64 rows (half a
  query tile: one consumer warpgroup's rows), ``q_scale [BH, NQ / 64]``;
* ``k8`` ``[BH, NK, D]``: K minus a per-(batch, head) vector ``k_mean`` (the mean of every 8th grid key: any vector
  subtracted from every key leaves each query's softmax unchanged, and the mean takes out the channel offsets that
  would otherwise set the scale), one scale per (batch, head), ``k_scale [BH]`` (:func:`key_scale`, computed before
  the pass: a key tile may then start anywhere, and the kernel loads one scale per program);
* ``vt8`` ``[BH, D, NK]``: V transposed (Hopper's 8-bit wgmma reads both operands K-major, so the PV product needs
  V with the keys contiguous), divided by a per-channel scale ``v_scale [BH, D]`` (max |V| over all keys / 448);
  within each 32-key block the keys are stored in the order of :func:`pv_column` (see there).

Scales are max|x| / 448 for e4m3 (448: its largest value) and max|x| / 127 for int8, 1 for all-zero blocks;
divisions round to nearest (IEEE), so the bytes are exactly PyTorch's ``(x / scale).to(torch.float8_e4m3fn)``, or
``floor(x / scale + 0.5)`` as int8 (tests/test_gluon_fp8_gpu.py, tests/test_fp8_cpu.py).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from . import configs as cfgs

#: The largest finite float8 e4m3 (fn) value: blocks are scaled so that their largest magnitude maps to it
FP8_MAX = 448.0
#: Every SMOOTH_STRIDE-th grid key enters the K mean that is subtracted from all keys (any vector keeps softmax
#: exact; a subsample reads 1/8 of K)
SMOOTH_STRIDE = 8


@triton.jit
def _scale(amax, QMAX: tl.constexpr):
    """The quantization scale of a block whose largest magnitude is ``amax``: amax / QMAX (1 for an all-zero
    block)."""
    return tl.where(amax > 0.0, tl.math.div_rn(amax, QMAX), 1.0)


@triton.jit
def _quantize(x, scale, INT8: tl.constexpr):
    """``x / scale`` as int8 (rounded half up) or e4m3 (round to nearest even)."""
    y = tl.math.div_rn(x, scale)
    if INT8:
        out = tl.floor(y + 0.5).to(tl.int8)
    else:
        out = y.to(tl.float8e4nv)
    return out


@triton.jit
def _pv_key(c):
    """The key stored at column ``c`` of a V^T tile (the inverse of :func:`pv_column`)."""
    return (c & ~31) | (c & 16) | ((c & 12) >> 1) | ((c & 2) << 2) | (c & 1)


@triton.jit
def _tile_rows(t, r, b, NTG, NT1, NT2, L0, L1, L2, T_EXTRA, elen_ptr,
               T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr, HAS_ELEN: tl.constexpr):  # fmt: skip
    """Rows ``r`` of tile ``t``: the token index (int64; in the grid for t < NTG, else among the extra tokens) and
    whether it exists (inside the grid, or before the batch's extra length)."""
    BT: tl.constexpr = T0 * T1 * T2
    if t < NTG:
        t2 = t % NT2
        t1 = (t // NT2) % NT1
        t0 = t // (NT1 * NT2)
        x0 = t0 * T0 + r // (T1 * T2)
        x1 = t1 * T1 + (r // T2) % T1
        x2 = t2 * T2 + r % T2
        valid = (x0 < L0) & (x1 < L1) & (x2 < L2)
        tok = ((x0 * L1 + x1) * L2 + x2).to(tl.int64)
    else:
        tok = (t - NTG) * BT + r
        if HAS_ELEN:
            n_valid = tl.minimum(tl.load(elen_ptr + b).to(tl.int32), T_EXTRA)
        else:
            n_valid = T_EXTRA
        valid = tok < n_valid
        tok = tok.to(tl.int64)
    return tok, valid


@triton.jit
def _fp8_layout_kernel(q_ptr, k_ptr, v_ptr, ek_ptr, ev_ptr, elen_ptr, kmean_ptr, vscale_ptr,
                       q8_ptr, k8_ptr, vt8_ptr, qs_ptr, ks_ptr,
                       sqb, sqn, sqh, skb, skn, skh, svb, svn, svh, sekb, sekn, sekh, sevb, sevn, sevh,
                       H, L0, L1, L2, NT1, NT2, NTG, T_EXTRA, NQ, NK, qk_scale,
                       T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr, D: tl.constexpr,
                       HAS_EXTRA: tl.constexpr, HAS_ELEN: tl.constexpr, FP8_MAX: tl.constexpr,
                       QK_INT8: tl.constexpr):  # fmt: skip
    """Program (tile t, batch * head): quantize one 128-token tile of Q, K and V (grid tiles t < NTG) or of the
    extra K and V (t >= NTG) into the tiled 8-bit layout.

    Memory access: every load reads whole rows of D channels (the masks are per row, so the loads are 16-byte
    vectors), and V is gathered in its stored column order (row ``c`` of the V tile is key ``_pv_key(c)``) so that
    the transposed store writes each channel's 128 keys contiguously (Triton moves the tile through shared memory
    between the two) instead of one byte per key."""
    BT: tl.constexpr = T0 * T1 * T2
    QK_MAX: tl.constexpr = 127.0 if QK_INT8 else FP8_MAX  # the largest int8 / e4m3 magnitude of Q and K
    HALF: tl.constexpr = BT // 2
    t = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    b64 = b.to(tl.int64)
    r = tl.arange(0, BT)
    d = tl.arange(0, D)
    kmean = tl.load(kmean_ptr + bh * D + d)
    vscale = tl.load(vscale_ptr + bh * D + d)
    tok, valid = _tile_rows(t, r, b, NTG, NT1, NT2, L0, L1, L2, T_EXTRA, elen_ptr, T0, T1, T2, HAS_ELEN)
    vtok, vvalid = _tile_rows(t, _pv_key(r), b, NTG, NT1, NT2, L0, L1, L2, T_EXTRA, elen_ptr, T0, T1, T2, HAS_ELEN)
    if t < NTG:
        k = tl.load(k_ptr + b64 * skb + h * skh + tok[:, None] * skn + d[None, :], mask=valid[:, None], other=0.0)
        v = tl.load(v_ptr + b64 * svb + h * svh + vtok[:, None] * svn + d[None, :], mask=vvalid[:, None], other=0.0)
        q = tl.load(q_ptr + b64 * sqb + h * sqh + tok[:, None] * sqn + d[None, :], mask=valid[:, None], other=0.0)
        # Q: two 64-row halves, one scale each
        q = q.to(tl.float32) * qk_scale
        row_amax = tl.max(tl.abs(q), axis=1)
        lo_amax = tl.max(tl.where(r < HALF, row_amax, 0.0), axis=0)
        hi_amax = tl.max(tl.where(r >= HALF, row_amax, 0.0), axis=0)
        s_lo = _scale(lo_amax, QK_MAX)
        s_hi = _scale(hi_amax, QK_MAX)
        q_row_scale = tl.where(r < HALF, s_lo, s_hi)
        q8 = _quantize(q, q_row_scale[:, None], QK_INT8)
        q_rows = (bh.to(tl.int64) * NQ + t * BT + r) * D
        tl.store(q8_ptr + q_rows[:, None] + d[None, :], q8)
        tl.store(qs_ptr + bh * (NQ // HALF) + 2 * t, s_lo)
        tl.store(qs_ptr + bh * (NQ // HALF) + 2 * t + 1, s_hi)
    else:
        k = tl.load(ek_ptr + b64 * sekb + h * sekh + tok[:, None] * sekn + d[None, :], mask=valid[:, None],
                    other=0.0)  # fmt: skip
        v = tl.load(ev_ptr + b64 * sevb + h * sevh + vtok[:, None] * sevn + d[None, :], mask=vvalid[:, None],
                    other=0.0)  # fmt: skip
    # K: smoothed, the (batch, head)'s scale (key_scale)
    k = tl.where(valid[:, None], k.to(tl.float32) - kmean[None, :], 0.0)
    k8 = _quantize(k, tl.load(ks_ptr + bh), QK_INT8)
    k_rows = (bh.to(tl.int64) * NK + t * BT + r) * D
    tl.store(k8_ptr + k_rows[:, None] + d[None, :], k8)
    # V: per-channel scale, stored transposed [D, NK]: row c of the tile goes to column c
    v8 = tl.math.div_rn(v.to(tl.float32), vscale[None, :]).to(tl.float8e4nv)
    vt_cols = (bh.to(tl.int64) * D + d) * NK + t * BT
    tl.store(vt8_ptr + vt_cols[None, :] + r[:, None], v8)


def pv_column(r: torch.Tensor) -> torch.Tensor:
    """Column of key ``r`` of a tile in the stored V^T tile: within each 32-key block, key bits ``(b4 b3 b2 b1 b0)``
    go to ``(b4 b2 b1 b3 b0)``, the order in which the kernel hands P to the PV wgmma without moving it between
    threads (:func:`.gluon_hopper_fp8._p_operand`)."""
    return (r & ~31) | (r & 16) | ((r & 6) << 1) | ((r & 8) >> 2) | (r & 1)


class TiledFP8(NamedTuple):
    """The outputs of :func:`quantize_tiled` (see the module docstring)."""

    q8: torch.Tensor  # [BH * NQ, D] float8_e4m3fn, or int8
    k8: torch.Tensor  # [BH * NK, D] (like q8)
    vt8: torch.Tensor  # [BH * D, NK]
    q_scale: torch.Tensor  # [BH, NQ // 64] fp32
    k_scale: torch.Tensor  # [BH] fp32
    v_scale: torch.Tensor  # [BH, D] fp32
    n_q: int  # NQ: grid tiles * 128
    n_k: int  # NK: (grid tiles + extra tiles) * 128
    tiles: tuple[int, int, int]  # grid tiles per axis
    n_grid_tiles: int


def tiled_sizes(grid3, tile, t_extra: int) -> tuple[tuple[int, int, int], int, int, int]:
    """Grid tiles per axis, grid tiles in all, and the rows of the tiled Q (``NQ``) and K / V (``NK``: grid tiles
    and then extra keys, 128 per tile) of one (batch, head)."""
    bt = math.prod(tile)
    tiles = tuple(-(-g // t) for g, t in zip(grid3, tile))
    n_grid_tiles = math.prod(tiles)
    return tiles, n_grid_tiles, n_grid_tiles * bt, (n_grid_tiles + -(-t_extra // bt)) * bt


def smoothing_mean(key: torch.Tensor) -> torch.Tensor:
    """The vector subtracted from every key: the fp32 mean of every :data:`SMOOTH_STRIDE`-th grid key
    ``[B, H, D]``."""
    return key[:, ::SMOOTH_STRIDE].mean(dim=1, dtype=torch.float32)  # accumulates in fp32 without an fp32 copy


def _extremes(x: torch.Tensor, extra: torch.Tensor | None, extra_lengths: torch.Tensor | None):
    """Per (batch, head, channel) smallest and largest value ``[B, H, D]`` (fp32) over the grid tokens of ``x`` and
    the valid extra tokens (those before a batch's length: the layout step zeroes the others)."""
    lo, hi = torch.aminmax(x, dim=1)
    if extra is not None and extra.shape[1] > 0:
        if extra_lengths is not None:  # tokens past a batch's length: replaced by a grid token, so they change nothing
            t = torch.arange(extra.shape[1], device=extra.device)
            valid = t[None, :] < extra_lengths.to(extra.device)[:, None]
            extra = torch.where(valid[:, :, None, None], extra, x[:, :1])
        elo, ehi = torch.aminmax(extra, dim=1)
        lo, hi = torch.minimum(lo, elo), torch.maximum(hi, ehi)
    return lo.to(torch.float32), hi.to(torch.float32)


def _scale_of(amax: torch.Tensor, qmax: float) -> torch.Tensor:
    """amax / qmax, 1 where amax is 0. Tensor / tensor: CUDA divides by a Python scalar through its reciprocal,
    which is not correctly rounded."""
    return torch.where(amax > 0, amax / torch.full_like(amax, qmax), torch.ones_like(amax))


def value_scale(value: torch.Tensor, extra_value: torch.Tensor | None,
                extra_lengths: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Per-channel V scale ``[B, H, D]``: max |V| over the grid values and the valid extra values / :data:`FP8_MAX`
    (1 where zero)."""
    lo, hi = _extremes(value, extra_value, extra_lengths)
    return _scale_of(torch.maximum(hi.abs(), lo.abs()), FP8_MAX)


def qk_max(qk_int8: bool) -> float:
    """The largest magnitude Q and K are scaled to: 127 as int8, :data:`FP8_MAX` as e4m3."""
    return 127.0 if qk_int8 else FP8_MAX


def key_scale(key: torch.Tensor, kmean: torch.Tensor, extra_key: torch.Tensor | None,
              extra_lengths: torch.Tensor | None, qk_max: float) -> torch.Tensor:
    """K's scale per (batch, head) ``[B, H]`` fp32: the largest ``|k - k_mean|`` over the grid keys and the valid extra
    keys, divided by ``qk_max`` (127 or 448; 1 where zero). Exactly the layout step's rounding: per channel the
    largest fp32 ``k - k_mean`` comes from the channel's largest key and the smallest from its smallest (rounding is
    monotone and symmetric), so one ``aminmax`` over the keys gives it."""
    lo, hi = _extremes(key, extra_key, extra_lengths)
    return _scale_of(torch.maximum(hi - kmean, kmean - lo).amax(dim=-1), qk_max)


def quantize_tiled(problem, tile: tuple[int, int, int], grid3: tuple[int, int, int], qk_scale: float,
                   qk_int8: bool | None = None) -> TiledFP8:  # fmt: skip
    """Run the layout step for ``problem`` (fields of :class:`na_accel.ops.dispatch.Problem`) with the kernel's tile
    ``tile`` (3-D, 128 tokens) over the 3-D grid ``grid3``; ``qk_scale`` multiplies Q before quantization.
    ``qk_int8``: Q and K as int8 (scale max|x| / 127, rounded half up) or e4m3; None: as the kernel is configured
    (``configs.FP8_QK_INT8``)."""
    p = problem
    if qk_int8 is None:
        qk_int8 = cfgs.FP8_QK_INT8
    q, k, v = p.query, p.key, p.value
    batch, _, heads, head_dim = q.shape
    bt = math.prod(tile)
    if bt != 128:
        raise ValueError(f"the 8-bit layout needs 128-token tiles, got {tile}")
    has_extra = p.extra_key is not None and p.extra_key.shape[1] > 0
    t_extra = p.extra_key.shape[1] if has_extra else 0
    has_elen = has_extra and p.extra_lengths is not None
    tiles, n_grid_tiles, n_q, n_k = tiled_sizes(grid3, tile, t_extra)
    n_extra_tiles = n_k // bt - n_grid_tiles
    bh = batch * heads
    dev = q.device
    f8 = torch.float8_e4m3fn
    qk_dtype = torch.int8 if qk_int8 else f8
    q8 = torch.empty((bh * n_q, head_dim), dtype=qk_dtype, device=dev)
    k8 = torch.empty((bh * n_k, head_dim), dtype=qk_dtype, device=dev)
    vt8 = torch.empty((bh * head_dim, n_k), dtype=f8, device=dev)
    q_scale = torch.empty((bh, n_q // (bt // 2)), dtype=torch.float32, device=dev)
    kmean = smoothing_mean(k).contiguous()
    ek, ev = (p.extra_key, p.extra_value) if has_extra else (None, None)
    elen = p.extra_lengths if has_elen else None
    k_scale = key_scale(k, kmean, ek, elen, qk_max(qk_int8)).contiguous()
    v_scale = value_scale(v, ev, elen).contiguous()
    if not has_extra:  # dummy pointers, never read
        ek, ev = k, v
    if elen is None:
        elen = q
    sq, sk, sv = (t.stride()[:3] for t in (q, k, v))
    sek, sev = (t.stride()[:3] for t in (ek, ev))
    _fp8_layout_kernel[(n_grid_tiles + n_extra_tiles, bh)](
        q, k, v, ek, ev, elen, kmean, v_scale, q8, k8, vt8, q_scale, k_scale,
        *sq, *sk, *sv, *sek, *sev,
        heads, *grid3, tiles[1], tiles[2], n_grid_tiles, t_extra, n_q, n_k, float(qk_scale),
        T0=tile[0], T1=tile[1], T2=tile[2], D=head_dim, HAS_EXTRA=has_extra, HAS_ELEN=has_elen, FP8_MAX=FP8_MAX,
        QK_INT8=qk_int8, num_warps=cfgs.FP8_LAYOUT_WARPS,
    )  # fmt: skip
    return TiledFP8(q8, k8, vt8, q_scale, k_scale.view(bh), v_scale.view(bh, head_dim), n_q, n_k, tiles,
                    n_grid_tiles)
