"""Grid queries in Gluon on Hopper (sm_90): :func:`gna_forward_gluon`, FA3-style warp specialisation on the tile
math of :mod:`.triton_grid`. :func:`unsupported_reason` says when it cannot run a problem (the ``triton`` backend
then uses the Triton kernel).

One CTA owns one query tile ``(TQ0, TQ1, TQ2)`` of 128 rows of one (batch, head), like ``_gna_fwd_kernel`` (grids
padded to 3-D with leading 1s; dilation 1 and non-causal only):

* three partitions: consumer warpgroup 0 (the default partition, query rows 0-63), consumer warpgroup 1 (a 4-warp
  worker, rows 64-127) and a 1-warp TMA producer. K and V go through a ring of ``NUM_STAGES`` shared-memory stages,
  each with a "ready" mbarrier (the TMA landed) and an "empty" one (both consumers are done with it). Inside a
  consumer ``S_j = Q K_j^T`` is issued right after ``O += P_{j-1} V_{j-1}``, so the softmax of tile j runs while
  the PV wgmma of tile j-1 is in flight; the two consumers never wait for each other.
* K/V/Q come through 5-D TMA descriptors over ``[B * L0, L1, L2, heads, D]`` (batch folded into axis 0), block
  ``[TK0, TK1, TK2, 1, D]``: one key tile is one TMA box that lands as 128 consecutive swizzled rows, i.e. exactly
  the ``[128, D]`` tile wgmma reads. Boxes reaching past axes 1/2 are zero-filled by TMA (no wrap into the next
  raster row); past axis 0 they read the next batch's rows (or zeros after the last batch). Such keys are never
  attended: every key tile that is not inside the full box F of the tile is masked through its intended
  coordinates against each query's window, so those rows only need to be finite.
* the producer loads the union tiles in raster order, then the extra (text) key tiles (4-D descriptor over the
  extra tensor ``[B, T, heads, D]``, block ``[1, 128, 1, D]``, up to the batch's valid length); the consumers walk
  the same order and test per tile (a scalar, uniform over the warpgroup) whether it lies in F (no mask) or not
  (masked). A query tile whose key tiles all lie in F (GNA with a shared window: hunyuan-gna, flux4k-gna, dense)
  and whose extra tiles are all valid runs a second copy of the loop without any mask logic (``ALL_FULL``), which
  keeps the tile math out of its registers: no spills there, 3-8% faster than one loop with a per-tile test
  (bench/NOTES.md v8).
* rows whose keys are all masked stay finite (``m_i`` starts at -1e30); outputs ``acc / l`` are stored from
  registers with a per-row mask (the invalid query rows of a ragged tile are computed but never stored).

Text queries are not handled here (:func:`.triton_text.text_forward` runs them). The values that travel together
through the partitions are grouped in NamedTuples (:class:`_Smem`, :class:`_Out`, :class:`_Tile`, :class:`_Shape`,
:class:`_Descs`, :class:`_LoadPos`): Triton 3.6 passes NamedTuples through ``@gluon.jit`` calls and
``gl.warp_specialize`` as their flattened fields, so fields are read by name and nothing depends on an argument's
position (``gluon.aggregate`` is not public in Triton 3.6).
"""

from __future__ import annotations

import copy
import math
from typing import Any, NamedTuple

import torch

from . import INTERPRETED
from . import configs as cfgs
from .layout import folded_5d, params3, tma_reason

try:  # Gluon's Hopper API (Triton >= 3.5); absent or different elsewhere: the kernels below are None
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
except Exception as exc:  # pragma: no cover - depends on the install
    _IMPORT_ERROR: str | None = f"{type(exc).__name__}: {exc}"
else:
    _IMPORT_ERROR = None

#: log2(e): scores are scaled by ``scale * LOG2E`` so that the softmax uses exp2
_LOG2E = 1.4426950408889634


def _gluon_jit(fn):
    """``gluon.jit`` where Gluon imports; elsewhere the name is bound to None (:func:`unsupported_reason` reports
    the import error, and nothing calls it)."""
    return gluon.jit(fn) if _IMPORT_ERROR is None else None


# --------------------------------------------------------------------------------------------------------------
# What travels through the partitions
# --------------------------------------------------------------------------------------------------------------


class _Smem(NamedTuple):
    """Shared memory of a CTA: the two Q halves, the K/V ring and their mbarriers."""

    q_bufs: Any  # [2, M, D]: query rows [0, M) for consumer 0, [M, 2M) for consumer 1
    k_bufs: Any  # [NUM_STAGES, BN, D]: the K ring
    v_bufs: Any  # [NUM_STAGES, BN, D]: the V ring
    q_bar: Any  # both Q halves landed
    k_ready: Any  # [NUM_STAGES]: the stage's K tile landed (TMA transaction count)
    v_ready: Any  # [NUM_STAGES]: the stage's V tile landed
    k_empty: Any  # [NUM_STAGES]: both consumers are done with the stage's K tile (two arrives)
    v_empty: Any  # [NUM_STAGES]: both consumers are done with the stage's V tile


class _Out(NamedTuple):
    """Where the consumers store: output pointer, offset of the CTA's (batch, head), token stride."""

    ptr: Any
    base: Any
    son: Any


class _Tile(NamedTuple):
    """The CTA's query tile and the key tiles it visits (runtime scalars, the same in all partitions)."""

    f0: Any  # first query coordinate of the tile, per axis
    f1: Any
    f2: Any
    L0: Any  # grid
    L1: Any
    L2: Any
    K0: Any  # window
    K1: Any
    K2: Any
    S0: Any  # stride
    S1: Any
    S2: Any
    u_lo0: Any  # first key coordinate of the union of the tile's windows, per axis
    u_lo1: Any
    u_lo2: Any
    fa0: Any  # full box F: union key tiles [fa, fa + nf) per axis lie inside every query's window
    fa1: Any
    fa2: Any
    nf0: Any
    nf1: Any
    nf2: Any
    c1: Any  # union length in key tiles on axes 1 and 2 (tile j = (j0 * c1 + j1) * c2 + j2)
    c2: Any
    n_grid: Any  # union key tiles, c0 * c1 * c2; tiles j >= n_grid are extra-key tiles
    n_valid: Any  # valid extra keys of the batch
    n_tiles: Any  # key tiles in all


class _Shape(NamedTuple):
    """Shape of the tiles: query tile, key tile (both padded to 3-D), whether there are extra keys.

    The producer gets these as constexprs. The consumers get them as constant scalars: the kernel assigns the tuple
    to a variable, and Triton 3.6 turns the constexprs of an assigned tuple into constants, which the compiler then
    folds (the loops come out the same). Passing constexprs to the consumers instead would only drop these
    constants from the values captured by the worker partition, which moves the mbarriers by 16 bytes of shared
    memory; kept as it is so that the PTX stays the GPU-tested one (bench/ptx_check.py)."""

    TQ0: Any
    TQ1: Any
    TQ2: Any
    TK0: Any
    TK1: Any
    TK2: Any
    HAS_EXTRA: Any


class _Descs(NamedTuple):
    """TMA descriptors: Q (half tiles), K and V (key tiles), extra K and V (128-key tiles; K/V when unused)."""

    q: Any
    k: Any
    v: Any
    ek: Any
    ev: Any


class _LoadPos(NamedTuple):
    """What the producer needs to address its boxes (runtime scalars)."""

    b: Any  # batch
    h: Any  # head
    row0: Any  # first query row on the folded (batch, axis 0) descriptor axis
    f1: Any  # first query coordinate on axes 1 and 2
    f2: Any
    kv_row0: Any  # first union key row on the folded axis
    u_lo1: Any  # first union key coordinate on axes 1 and 2
    u_lo2: Any
    c1: Any  # union length in key tiles on axes 1 and 2
    c2: Any
    n_grid: Any  # union key tiles
    n_tiles: Any  # key tiles in all


# --------------------------------------------------------------------------------------------------------------
# Device code: consumers
# --------------------------------------------------------------------------------------------------------------


@_gluon_jit
def _window(x, lg, k, s):
    """Inclusive window [lo, hi] of query coordinate(s) ``x`` on one axis (non-causal, dilation 1)."""
    left = k // 2
    right = k - 1 - left
    leader = gl.minimum((x // s) * s + s // 2, lg - 1)
    center = gl.maximum(gl.minimum(leader, lg - 1 - right), left)
    return center - left, center + right


@_gluon_jit
def _softmax_rows(s, m_i, l_i):
    """Online-softmax step on scaled (log2-domain) scores ``s``: probabilities, rescale, new max and sum."""
    m_new = gl.maximum(m_i, gl.max(s, axis=1))  # m_i starts finite: a fully masked row stays finite
    alpha = gl.exp2(m_i - m_new)
    p = gl.exp2(s - gl.expand_dims(m_new, 1))
    l_new = l_i * alpha + gl.sum(p, axis=1)
    return p, alpha, m_new, l_new


@_gluon_jit
def _softmax_step(s, m_i, l_i, qk_scale):
    return _softmax_rows(s * qk_scale, m_i, l_i)


@_gluon_jit
def _masked_softmax_step(s, mask, m_i, l_i, qk_scale):
    return _softmax_rows(gl.where(mask, s * qk_scale, float("-inf")), m_i, l_i)


@_gluon_jit
def _grid_mask(j0, j1, j2, r, cols, tile, shape):
    """[rows, keys] mask of union key tile (j0, j1, j2) for query rows ``r`` of the tile: each query's window
    (coordinates clamped into the grid as in the Triton kernel; recomputed here to keep registers free)."""
    TQ1 = shape.TQ1
    TQ2 = shape.TQ2
    TK0 = shape.TK0
    TK1 = shape.TK1
    TK2 = shape.TK2
    lo0, hi0 = _window(gl.minimum(tile.f0 + r // (TQ1 * TQ2), tile.L0 - 1), tile.L0, tile.K0, tile.S0)
    lo1, hi1 = _window(gl.minimum(tile.f1 + (r // TQ2) % TQ1, tile.L1 - 1), tile.L1, tile.K1, tile.S1)
    lo2, hi2 = _window(gl.minimum(tile.f2 + r % TQ2, tile.L2 - 1), tile.L2, tile.K2, tile.S2)
    kk0 = gl.expand_dims(tile.u_lo0 + j0 * TK0 + cols // (TK1 * TK2), 0)
    kk1 = gl.expand_dims(tile.u_lo1 + j1 * TK1 + (cols // TK2) % TK1, 0)
    kk2 = gl.expand_dims(tile.u_lo2 + j2 * TK2 + cols % TK2, 0)
    mask = (kk0 >= gl.expand_dims(lo0, 1)) & (kk0 <= gl.expand_dims(hi0, 1))
    mask = mask & (kk1 >= gl.expand_dims(lo1, 1)) & (kk1 <= gl.expand_dims(hi1, 1))
    mask = mask & (kk2 >= gl.expand_dims(lo2, 1)) & (kk2 <= gl.expand_dims(hi2, 1))
    return mask


@_gluon_jit
def _tile_softmax(s, j, m_i, l_i, qk_scale, ROW_BASE: gl.constexpr, tile, shape, ALL_FULL: gl.constexpr):
    """Online-softmax step for key tile ``j`` (union tiles in raster order, then extra-key tiles) on the scores
    ``s`` of query rows ``ROW_BASE + [0, M)``. ``ALL_FULL``: no key tile of this query tile needs a mask."""
    if ALL_FULL:
        return _softmax_step(s, m_i, l_i, qk_scale)
    if _tile_is_full(j, s.shape[1], tile, shape):
        p, alpha, m_new, l_new = _softmax_step(s, m_i, l_i, qk_scale)
    else:
        mask = _tile_mask(j, s, ROW_BASE, tile, shape)
        p, alpha, m_new, l_new = _masked_softmax_step(s, mask, m_i, l_i, qk_scale)
    return p, alpha, m_new, l_new


@_gluon_jit
def _tile_coords(j, tile):
    """Union coordinates ``(j0, j1, j2)`` of grid key tile ``j`` (raster order over the union's tiles)."""
    j2 = j % tile.c2
    j1 = (j // tile.c2) % tile.c1
    j0 = j // (tile.c1 * tile.c2)
    return j0, j1, j2


@_gluon_jit
def _tile_is_full(j, BN: gl.constexpr, tile, shape):
    """Whether key tile ``j`` needs no mask: a grid tile inside every query's window, or an extra-key tile whose
    keys are all valid."""
    j0, j1, j2 = _tile_coords(j, tile)
    full = (j < tile.n_grid) & (j0 >= tile.fa0) & (j0 < tile.fa0 + tile.nf0) & (j1 >= tile.fa1)
    full = full & (j1 < tile.fa1 + tile.nf1) & (j2 >= tile.fa2) & (j2 < tile.fa2 + tile.nf2)
    if shape.HAS_EXTRA:
        full = full | ((j >= tile.n_grid) & ((j - tile.n_grid + 1) * BN <= tile.n_valid))
    return full


@_gluon_jit
def _tile_mask(j, s, ROW_BASE: gl.constexpr, tile, shape):
    """Which (query row, key) pairs of key tile ``j`` are attended, in the layout of the scores ``s``."""
    BN: gl.constexpr = s.shape[1]
    s_layout: gl.constexpr = s.type.layout
    cols = gl.arange(0, BN, layout=gl.SliceLayout(0, s_layout))
    r = ROW_BASE + gl.arange(0, s.shape[0], layout=gl.SliceLayout(1, s_layout))
    j0, j1, j2 = _tile_coords(j, tile)
    if shape.HAS_EXTRA:
        if j < tile.n_grid:
            mask = _grid_mask(j0, j1, j2, r, cols, tile, shape)
        else:
            t = (j - tile.n_grid) * BN + cols
            mask = gl.expand_dims(t < tile.n_valid, 0) & gl.expand_dims(r >= 0, 1)
    else:
        mask = _grid_mask(j0, j1, j2, r, cols, tile, shape)
    return mask


@_gluon_jit
def _kv_loop(q_smem, smem, acc, m_i, l_i, s_zero, tile, qk_scale, ROW_BASE: gl.constexpr, shape,
             ALL_FULL: gl.constexpr):  # fmt: skip
    """The ``tile.n_tiles`` key tiles of the query tile: online softmax into ``acc``, ``m_i``, ``l_i``.

    Software-pipelined by one tile: the QK^T wgmma of tile j is issued, then the PV wgmma of tile j-1 (whose P is
    ready); the softmax of tile j runs while PV is in flight. Each ring stage is released (empty barrier) as soon
    as the wgmma that read it has completed."""
    k_bufs = smem.k_bufs
    v_bufs = smem.v_bufs
    NUM_STAGES: gl.constexpr = k_bufs.shape[0]
    dtype: gl.constexpr = k_bufs.dtype
    o_layout: gl.constexpr = acc.type.layout
    # P goes to the PV wgmma from registers, as operand A in the accumulator's row distribution; two 16-bit values
    # per 32-bit register (k_width=2)
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    orow_layout: gl.constexpr = gl.SliceLayout(1, o_layout)

    mbarrier.wait(smem.k_ready.index(0), 0)
    s = warpgroup_mma(q_smem, k_bufs.index(0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
    s = warpgroup_mma_wait(0, deps=(s,))
    mbarrier.arrive(smem.k_empty.index(0), count=1)
    p, alpha, m_i, l_i = _tile_softmax(s, 0, m_i, l_i, qk_scale, ROW_BASE, tile, shape, ALL_FULL)
    p_op = gl.convert_layout(p.to(dtype), p_layout)
    for j in range(1, tile.n_tiles):
        st = j % NUM_STAGES  # stage of tile j
        stp = (j - 1) % NUM_STAGES  # stage of tile j - 1
        mbarrier.wait(smem.k_ready.index(st), (j // NUM_STAGES) & 1)
        s = warpgroup_mma(q_smem, k_bufs.index(st).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        mbarrier.wait(smem.v_ready.index(stp), ((j - 1) // NUM_STAGES) & 1)
        acc = warpgroup_mma(p_op, v_bufs.index(stp), acc, is_async=True)
        s = warpgroup_mma_wait(1, deps=(s,))  # QK^T done, PV may still run
        mbarrier.arrive(smem.k_empty.index(st), count=1)
        p, alpha, m_i, l_i = _tile_softmax(s, j, m_i, l_i, qk_scale, ROW_BASE, tile, shape, ALL_FULL)
        p_lo = p.to(dtype)
        acc = warpgroup_mma_wait(0, deps=(acc,))
        mbarrier.arrive(smem.v_empty.index(stp), count=1)
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, orow_layout), 1)
        p_op = gl.convert_layout(p_lo, p_layout)
    last = tile.n_tiles - 1
    stp = last % NUM_STAGES
    mbarrier.wait(smem.v_ready.index(stp), (last // NUM_STAGES) & 1)
    acc = warpgroup_mma(p_op, v_bufs.index(stp), acc, is_async=True)
    acc = warpgroup_mma_wait(0, deps=(acc,))
    mbarrier.arrive(smem.v_empty.index(stp), count=1)
    return acc, m_i, l_i


@_gluon_jit
def _consumer_state(smem, WG: gl.constexpr, K_INSTR: gl.constexpr, S_DTYPE: gl.constexpr):
    """Consumer warpgroup ``WG``'s Q buffer and zeroed running state: ``acc`` [M, D], row max ``m_i`` and sum
    ``l_i``, and ``s_zero`` [M, BN], the initial QK^T accumulator (``S_DTYPE``: int32 for int8 operands). Register
    layouts of the Hopper wgmma accumulators (NVMMA version 3 = sm_90): the warpgroup's 4 warps stacked along the
    rows (16 rows each), one instruction m16 x n(BN or D) x k(``K_INSTR``: 16 for 16-bit operands, 32 for 8-bit)."""
    q_smem = smem.q_bufs.index(WG)
    BN: gl.constexpr = smem.k_bufs.shape[1]
    D: gl.constexpr = smem.k_bufs.shape[2]
    M: gl.constexpr = q_smem.shape[0]
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BN, K_INSTR])  # fmt: skip
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, D, K_INSTR])  # fmt: skip
    row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
    m_i = gl.full([M], -1.0e30, gl.float32, layout=row_layout)
    l_i = gl.full([M], 0.0, gl.float32, layout=row_layout)
    acc = gl.zeros([M, D], gl.float32, layout=o_layout)
    s_zero = gl.zeros([M, BN], S_DTYPE, layout=s_layout)
    return q_smem, acc, m_i, l_i, s_zero


@_gluon_jit
def _all_full(tile, shape, BN: gl.constexpr):
    """Whether every key tile of the query tile lies in every query's window (GNA with aligned tiles, all-valid text
    tiles): such a tile runs a loop without any mask logic, which keeps the tile math out of its registers."""
    all_full = tile.nf0 * tile.nf1 * tile.nf2 == tile.n_grid  # nf <= c per axis: equal on every axis
    if shape.HAS_EXTRA:
        all_full = all_full & (tile.n_valid % BN == 0)
    return all_full


@_gluon_jit
def _consumer(smem, out, tile, qk_scale, shape, WG: gl.constexpr):
    """Consumer warpgroup ``WG`` (0 or 1): query rows ``[WG * M, (WG + 1) * M)`` of the tile, stored to ``out``."""
    q_smem, acc, m_i, l_i, s_zero = _consumer_state(smem, WG, 16, gl.float32)
    ROW_BASE: gl.constexpr = WG * q_smem.shape[0]
    mbarrier.wait(smem.q_bar, 0)
    all_full = _all_full(tile, shape, smem.k_bufs.shape[1])
    if all_full:  # ALL_FULL is a constexpr: one specialised copy of the loop per branch
        acc, m_i, l_i = _kv_loop(q_smem, smem, acc, m_i, l_i, s_zero, tile, qk_scale, ROW_BASE, shape, True)
    else:
        acc, m_i, l_i = _kv_loop(q_smem, smem, acc, m_i, l_i, s_zero, tile, qk_scale, ROW_BASE, shape, False)

    # epilogue: acc / l, masked store of the valid query rows (strided output, pointer store)
    orow_layout: gl.constexpr = gl.SliceLayout(1, acc.type.layout)
    l_o = gl.convert_layout(l_i, orow_layout)
    l_o = gl.where(l_o > 0.0, l_o, 1.0)
    _store_rows(acc / gl.expand_dims(l_o, 1), out, tile, shape, ROW_BASE)


@_gluon_jit
def _store_rows(o, out, tile, shape, ROW_BASE: gl.constexpr):
    """Store the outputs ``o`` ([M, D], wgmma accumulator layout) of query rows ``ROW_BASE + [0, M)`` of the tile:
    the valid rows only, at their tokens' raster positions."""
    M: gl.constexpr = o.shape[0]
    D: gl.constexpr = o.shape[1]
    o_layout: gl.constexpr = o.type.layout
    orow_layout: gl.constexpr = gl.SliceLayout(1, o_layout)
    TQ1 = shape.TQ1
    TQ2 = shape.TQ2
    ro = ROW_BASE + gl.arange(0, M, layout=orow_layout)
    y0 = tile.f0 + ro // (TQ1 * TQ2)
    y1 = tile.f1 + (ro // TQ2) % TQ1
    y2 = tile.f2 + ro % TQ2
    L0 = tile.L0
    L1 = tile.L1
    L2 = tile.L2
    valid = (y0 < L0) & (y1 < L1) & (y2 < L2)
    tok = ((gl.minimum(y0, L0 - 1) * L1 + gl.minimum(y1, L1 - 1)) * L2 + gl.minimum(y2, L2 - 1)).to(gl.int64)
    cols = gl.arange(0, D, layout=gl.SliceLayout(0, o_layout))
    ptrs = out.ptr + out.base + gl.expand_dims(tok * out.son, 1) + gl.expand_dims(cols, 0)
    mask = gl.expand_dims(valid, 1) & gl.expand_dims(cols >= 0, 0)
    gl.store(ptrs, o.to(out.ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------------------------
# Device code: producer
# --------------------------------------------------------------------------------------------------------------


@_gluon_jit
def _load_grid_tile(desc, bufs, st, bar, j, pos, shape):
    """TMA of union tile ``j`` (raster order over ``c0 x c1 x c2`` tiles) into ring stage ``st``."""
    j2 = j % pos.c2
    j1 = (j // pos.c2) % pos.c1
    j0 = j // (pos.c1 * pos.c2)
    tma.async_copy_global_to_shared(
        desc,
        [pos.kv_row0 + j0 * shape.TK0, pos.u_lo1 + j1 * shape.TK1, pos.u_lo2 + j2 * shape.TK2, pos.h, 0],
        bar,
        bufs.index(st)._reinterpret(bufs.dtype, desc.block_type.shape, desc.layout),
    )


@_gluon_jit
def _load_kv_tile(desc, e_desc, bufs, st, bar, j, pos, shape):
    """TMA of key or value tile ``j`` into ring stage ``st``: union tiles (raster order), then extra tiles."""
    if shape.HAS_EXTRA:
        if j < pos.n_grid:
            _load_grid_tile(desc, bufs, st, bar, j, pos, shape)
        else:
            tma.async_copy_global_to_shared(
                e_desc,
                [pos.b, (j - pos.n_grid) * bufs.shape[1], pos.h, 0],
                bar,
                bufs.index(st)._reinterpret(bufs.dtype, e_desc.block_type.shape, e_desc.layout),
            )
    else:
        _load_grid_tile(desc, bufs, st, bar, j, pos, shape)


@_gluon_jit
def _producer(descs, smem, pos, shape, qoff):
    """The 1-warp TMA producer: both Q halves, then K and V of every key tile into the ring, each stage as soon as
    both consumers have released it. ``qoff``: tile coordinates of the second Q half (constexprs)."""
    k_bufs = smem.k_bufs
    v_bufs = smem.v_bufs
    NUM_STAGES: gl.constexpr = k_bufs.shape[0]
    dtype: gl.constexpr = k_bufs.dtype
    q_desc = descs.q
    q_shape: gl.constexpr = q_desc.block_type.shape
    tile_bytes: gl.constexpr = descs.k.block_type.nbytes

    # Q: two half tiles (one per consumer warpgroup), rows [0, 64) and [64, 128) of the query tile
    mbarrier.expect(smem.q_bar, 2 * q_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(
        q_desc, [pos.row0, pos.f1, pos.f2, pos.h, 0], smem.q_bar,
        smem.q_bufs.index(0)._reinterpret(dtype, q_shape, q_desc.layout),
    )  # fmt: skip
    tma.async_copy_global_to_shared(
        q_desc, [pos.row0 + qoff[0], pos.f1 + qoff[1], pos.f2 + qoff[2], pos.h, 0], smem.q_bar,
        smem.q_bufs.index(1)._reinterpret(dtype, q_shape, q_desc.layout),
    )  # fmt: skip
    for j in range(pos.n_tiles):
        st = j % NUM_STAGES
        ph = (j // NUM_STAGES) & 1
        kb = smem.k_ready.index(st)
        vb = smem.v_ready.index(st)
        mbarrier.wait(smem.k_empty.index(st), ph ^ 1)  # the first pass over the ring does not wait
        mbarrier.expect(kb, tile_bytes)
        _load_kv_tile(descs.k, descs.ek, k_bufs, st, kb, j, pos, shape)
        mbarrier.wait(smem.v_empty.index(st), ph ^ 1)
        mbarrier.expect(vb, tile_bytes)
        _load_kv_tile(descs.v, descs.ev, v_bufs, st, vb, j, pos, shape)


# --------------------------------------------------------------------------------------------------------------
# Device code: the kernel
# --------------------------------------------------------------------------------------------------------------


@_gluon_jit
def _shared_ring(dtype: gl.constexpr, v_dtype: gl.constexpr, M: gl.constexpr, BN: gl.constexpr, D: gl.constexpr,
                 NUM_STAGES: gl.constexpr, V_T: gl.constexpr):  # fmt: skip
    """Shared memory of a CTA (:class:`_Smem`) in the swizzled (NVMMA) layout that TMA writes and wgmma reads, its
    mbarriers initialised. ``V_T``: V tiles stored transposed, ``[D, BN]`` (the 8-bit kernel)."""
    q_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([M, D], dtype)
    kv_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BN, D], dtype)
    q_bufs = gl.allocate_shared_memory(dtype, [2, M, D], q_layout)
    k_bufs = gl.allocate_shared_memory(dtype, [NUM_STAGES, BN, D], kv_layout)
    if V_T:
        vt_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([D, BN], v_dtype)
        v_bufs = gl.allocate_shared_memory(v_dtype, [NUM_STAGES, D, BN], vt_layout)
    else:
        v_bufs = gl.allocate_shared_memory(v_dtype, [NUM_STAGES, BN, D], kv_layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(NUM_STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=2)  # one arrive per consumer warpgroup
        mbarrier.init(v_empty.index(i), count=2)
    return _Smem(q_bufs=q_bufs, k_bufs=k_bufs, v_bufs=v_bufs, q_bar=q_bar, k_ready=k_ready, v_ready=v_ready,
                 k_empty=k_empty, v_empty=v_empty)  # fmt: skip


@_gluon_jit
def _key_tiles(pid, b, elen_ptr, L0, L1, L2, K0, K1, K2, S0, S1, S2, T_EXTRA,
               TQ0: gl.constexpr, TQ1: gl.constexpr, TQ2: gl.constexpr,
               TK0: gl.constexpr, TK1: gl.constexpr, TK2: gl.constexpr, BN: gl.constexpr,
               HAS_EXTRA: gl.constexpr, HAS_ELEN: gl.constexpr, ALIGN: gl.constexpr):  # fmt: skip
    """The tile math of query tile ``pid`` (raster order over the grid's query tiles) of batch ``b``: its
    :class:`_Tile`, and the first union key tile per axis in tiles of ``TK`` (meaningful with ``ALIGN``). The union
    of the tile's windows starts at its first key, or with ``ALIGN`` at the aligned key tile that holds it."""
    nt1 = (L1 + TQ1 - 1) // TQ1
    nt2 = (L2 + TQ2 - 1) // TQ2
    a2 = pid % nt2
    a1 = (pid // nt2) % nt1
    a0 = pid // (nt2 * nt1)
    f0 = a0 * TQ0
    f1 = a1 * TQ1
    f2 = a2 * TQ2
    e0 = gl.minimum(f0 + TQ0 - 1, L0 - 1)
    e1 = gl.minimum(f1 + TQ1 - 1, L1 - 1)
    e2 = gl.minimum(f2 + TQ2 - 1, L2 - 1)
    # union [lo(first), hi(last)] and intersection [lo(last), hi(first)] of the tile's windows
    u_lo0, i_hi0 = _window(f0, L0, K0, S0)
    i_lo0, u_hi0 = _window(e0, L0, K0, S0)
    u_lo1, i_hi1 = _window(f1, L1, K1, S1)
    i_lo1, u_hi1 = _window(e1, L1, K1, S1)
    u_lo2, i_hi2 = _window(f2, L2, K2, S2)
    i_lo2, u_hi2 = _window(e2, L2, K2, S2)
    ub0 = u_lo0 // TK0
    ub1 = u_lo1 // TK1
    ub2 = u_lo2 // TK2
    if ALIGN:
        u_lo0 = ub0 * TK0
        u_lo1 = ub1 * TK1
        u_lo2 = ub2 * TK2
    c0 = (u_hi0 - u_lo0 + TK0) // TK0
    c1 = (u_hi1 - u_lo1 + TK1) // TK1
    c2 = (u_hi2 - u_lo2 + TK2) // TK2
    # full box F: key tiles [fa, fa + nf) per axis lie inside every query's window
    fa0 = (i_lo0 - u_lo0 + TK0 - 1) // TK0
    fa1 = (i_lo1 - u_lo1 + TK1 - 1) // TK1
    fa2 = (i_lo2 - u_lo2 + TK2 - 1) // TK2
    nf0 = gl.maximum(gl.minimum((i_hi0 - u_lo0 + 1) // TK0, c0) - fa0, 0)
    nf1 = gl.maximum(gl.minimum((i_hi1 - u_lo1 + 1) // TK1, c1) - fa1, 0)
    nf2 = gl.maximum(gl.minimum((i_hi2 - u_lo2 + 1) // TK2, c2) - fa2, 0)
    n_grid = c0 * c1 * c2
    if HAS_EXTRA:
        if HAS_ELEN:
            n_valid = gl.minimum(gl.load(elen_ptr + b).to(gl.int32), T_EXTRA)
        else:
            n_valid = T_EXTRA
        n_tiles = n_grid + (n_valid + BN - 1) // BN
    else:
        n_valid = T_EXTRA
        n_tiles = n_grid
    tile = _Tile(f0=f0, f1=f1, f2=f2, L0=L0, L1=L1, L2=L2, K0=K0, K1=K1, K2=K2, S0=S0, S1=S1, S2=S2,
                 u_lo0=u_lo0, u_lo1=u_lo1, u_lo2=u_lo2, fa0=fa0, fa1=fa1, fa2=fa2, nf0=nf0, nf1=nf1, nf2=nf2,
                 c1=c1, c2=c2, n_grid=n_grid, n_valid=n_valid, n_tiles=n_tiles)  # fmt: skip
    return tile, (ub0, ub1, ub2)


@_gluon_jit
def _program(out_ptr, elen_ptr, sob, son, soh, H, L0, L1, L2, K0, K1, K2, S0, S1, S2, T_EXTRA,
             TQ0: gl.constexpr, TQ1: gl.constexpr, TQ2: gl.constexpr,
             TK0: gl.constexpr, TK1: gl.constexpr, TK2: gl.constexpr, BN: gl.constexpr,
             HAS_EXTRA: gl.constexpr, HAS_ELEN: gl.constexpr, ALIGN: gl.constexpr):  # fmt: skip
    """What a program of the 16- and 8-bit kernels works on: its query tile ``pid`` and ``bh`` (batch * heads + head,
    split into ``b``, ``h``), the tile math (:func:`_key_tiles`) and its output rows (:class:`_Out`)."""
    pid = gl.program_id(0)
    bh = gl.program_id(1)
    b = bh // H
    h = bh % H
    tile, ub = _key_tiles(pid, b, elen_ptr, L0, L1, L2, K0, K1, K2, S0, S1, S2, T_EXTRA, TQ0, TQ1, TQ2, TK0, TK1, TK2,
                          BN, HAS_EXTRA, HAS_ELEN, ALIGN)  # fmt: skip
    out = _Out(ptr=out_ptr, base=b.to(gl.int64) * sob + h.to(gl.int64) * soh, son=son)
    return pid, bh, b, h, tile, ub, out


@_gluon_jit
def _gna_gluon_kernel(q_desc, k_desc, v_desc, ek_desc, ev_desc, out_ptr, elen_ptr, sob, son, soh,
                      H, L0, L1, L2, K0, K1, K2, S0, S1, S2, T_EXTRA, qk_scale,
                      TQ0: gl.constexpr, TQ1: gl.constexpr, TQ2: gl.constexpr,
                      TK0: gl.constexpr, TK1: gl.constexpr, TK2: gl.constexpr,
                      QOFF0: gl.constexpr, QOFF1: gl.constexpr, QOFF2: gl.constexpr,
                      HAS_EXTRA: gl.constexpr, HAS_ELEN: gl.constexpr, NUM_STAGES: gl.constexpr,
                      CONSUMER_REGS: gl.constexpr, PRODUCER_REGS: gl.constexpr):  # fmt: skip
    """Program (query tile, batch * head): the tile math, shared memory and barriers, then the three partitions."""
    D: gl.constexpr = k_desc.block_type.shape[4]
    BN: gl.constexpr = TK0 * TK1 * TK2
    M: gl.constexpr = (TQ0 * TQ1 * TQ2) // 2  # query rows per consumer warpgroup
    dtype: gl.constexpr = k_desc.dtype

    _pid, _bh, b, h, tile, _ub, out = _program(out_ptr, elen_ptr, sob, son, soh, H, L0, L1, L2, K0, K1, K2, S0, S1,
                                               S2, T_EXTRA, TQ0, TQ1, TQ2, TK0, TK1, TK2, BN, HAS_EXTRA, HAS_ELEN,
                                               False)  # fmt: skip
    row0 = b * L0 + tile.f0  # query tile start on the folded (batch, axis 0) descriptor axis
    kv_row0 = b * L0 + tile.u_lo0

    smem = _shared_ring(dtype, dtype, M, BN, D, NUM_STAGES, False)
    shape = _Shape(TQ0=TQ0, TQ1=TQ1, TQ2=TQ2, TK0=TK0, TK1=TK1, TK2=TK2, HAS_EXTRA=HAS_EXTRA)  # constants, see _Shape
    descs = _Descs(q=q_desc, k=k_desc, v=v_desc, ek=ek_desc, ev=ev_desc)
    pos = _LoadPos(b=b, h=h, row0=row0, f1=tile.f1, f2=tile.f2, kv_row0=kv_row0, u_lo1=tile.u_lo1, u_lo2=tile.u_lo2,
                   c1=tile.c1, c2=tile.c2, n_grid=tile.n_grid, n_tiles=tile.n_tiles)  # fmt: skip
    gl.warp_specialize(
        [
            (_consumer, (smem, out, tile, qk_scale, shape, 0)),  # default partition: the kernel's 4 warps
            (_consumer, (smem, out, tile, qk_scale, shape, 1)),
            (_producer, (descs, smem, pos,  # the shape as constexprs here: a tuple built in place stays constexpr
                         _Shape(TQ0=TQ0, TQ1=TQ1, TQ2=TQ2, TK0=TK0, TK1=TK1, TK2=TK2, HAS_EXTRA=HAS_EXTRA),
                         (QOFF0, QOFF1, QOFF2))),  # fmt: skip
        ],
        [4, 1],  # warps of the worker partitions: consumer 1, producer
        [CONSUMER_REGS, PRODUCER_REGS],  # their registers per thread (setmaxnreg; configs.GLUON_*_REGS)
    )


# --------------------------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------------------------


def device_reason(device: torch.device, dtype: torch.dtype, head_dim: int) -> str | None:
    """Why the Gluon kernels cannot run on tensors of this CUDA device, dtype and head dim, or None."""
    if _IMPORT_ERROR is not None:
        return f"Gluon's Hopper API is not importable ({_IMPORT_ERROR})"
    if INTERPRETED:
        return "TRITON_INTERPRET is set (Gluon kernels do not run in the interpreter)"
    if device.type != "cuda" or not torch.cuda.is_available():
        return "it needs CUDA tensors"
    major, minor = torch.cuda.get_device_capability(device)
    if major != 9:
        return f"it needs a Hopper GPU (compute capability 9.x), this one is {major}.{minor}"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"dtype {dtype} (only float16 / bfloat16)"
    if head_dim not in (64, 128):
        return f"head dim {head_dim} (only 64 and 128)"
    return None


def unsupported_reason(problem) -> str | None:
    """Why :func:`gna_forward_gluon` cannot run ``problem`` here, or None if it can (grid queries only): the
    problem's conditions (:func:`problem_reason`) and Q, K and V readable through TMA descriptors, one batch element
    at a time where the batch does not fold into the token axis (:func:`_folds`)."""
    reason = problem_reason(problem)
    if reason is not None:
        return reason
    for name, t in _inputs(problem):
        reason = tma_reason(name, t, fold=False)
        if reason is not None:
            return reason
    return None


def _inputs(problem) -> list[tuple[str, torch.Tensor]]:
    """The tensors the Gluon kernels read, by name: Q, K, V and, where there are extra keys, those and their
    values."""
    p = problem
    named = [("query", p.query), ("key", p.key), ("value", p.value)]
    if p.extra_key is not None and p.extra_key.shape[1] > 0:
        named += [("extra_key", p.extra_key), ("extra_value", p.extra_value)]
    return named


def problem_reason(problem) -> str | None:
    """What the Gluon kernels (16- and 8-bit) need of ``problem`` whatever its memory layout, or None: a Hopper GPU,
    one 16-bit dtype, head dim 64 or 128, no dilation, non-causal, no log-sum-exp, ``out`` with a contiguous last
    dim."""
    p = problem
    q, k, v = p.query, p.key, p.value
    has_extra = p.extra_key is not None and p.extra_key.shape[1] > 0
    tensors = [q, k, v, p.out] + ([p.extra_key, p.extra_value] if has_extra else [])
    reason = device_reason(q.device, q.dtype, q.shape[-1])
    if reason is not None:
        return reason
    if not all(t.is_cuda for t in tensors):
        return "it needs CUDA tensors"
    if any(t.dtype != q.dtype for t in tensors[1:3] + tensors[4:]):
        return "query, key, value and extra tensors must share one dtype"
    head_dim = q.shape[-1]
    if k.shape[-1] != head_dim or v.shape[-1] != head_dim:
        return f"head dim {head_dim} (only 64 and 128)"
    params = p.params
    if any(d != 1 for d in params.dilation):
        return f"dilation {params.dilation} (only 1)"
    if any(params.is_causal):
        return f"causal axes {params.is_causal} (only non-causal)"
    if p.lse is not None:
        return "it does not return the log-sum-exp"
    if p.out.stride(-1) != 1:
        return "out has a non-contiguous last dim"
    return None


def _folds(problem) -> bool:
    """Whether Q, K and V each fold their batch into the token axis, so that one launch covers the batch (a slice of
    a joint text + video sequence with batch > 1 does not: its batch stride spans the text tokens too)."""
    p = problem
    return all(tma_reason("", t, fold=True) is None for t in (p.query, p.key, p.value))


def _per_batch(problem, b: int):
    """Batch element ``b`` of ``problem`` as a problem of batch 1: the tensors the kernel reads and ``out`` as views
    of element ``b`` (the kernel writes into ``problem.out``)."""
    one = copy.copy(problem)
    for name in ("query", "key", "value", "extra_key", "extra_value", "extra_lengths", "out"):
        t = getattr(problem, name)
        setattr(one, name, None if t is None else t[b : b + 1])
    return one


def _gl_dtype(dtype: torch.dtype):
    return {torch.float16: gl.float16, torch.bfloat16: gl.bfloat16}[dtype]


def _descriptor(t: torch.Tensor, grid3, block):
    """5-D descriptor over ``t`` [B, N, heads, D] viewed as [B * L0, L1, L2, heads, D] (batch folded into axis 0)."""
    shape, strides = folded_5d(t, grid3)
    layout = gl.NVMMASharedLayout.get_default_for(list(block), _gl_dtype(t.dtype))
    return TensorDescriptor(t, shape, strides, list(block), layout)


def _extra_descriptor(t: torch.Tensor, block_n: int):
    """4-D descriptor over the extra tensor ``t`` [B, T, heads, D], block [1, block_n, 1, D]."""
    block = [1, block_n, 1, t.shape[3]]
    layout = gl.NVMMASharedLayout.get_default_for(block, _gl_dtype(t.dtype))
    return TensorDescriptor(t, list(t.shape), list(t.stride()), block, layout)


def _half_tile(tq) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Shape of half the query tile (one consumer's 64 rows, one Q TMA box) and the tile coordinates of the second
    half: split along the first axis whose tile length is even."""
    if tq[0] % 2 == 0:
        return (tq[0] // 2, tq[1], tq[2]), (tq[0] // 2, 0, 0)
    if tq[1] % 2 == 0:
        return (1, tq[1] // 2, tq[2]), (0, tq[1] // 2, 0)
    return (1, 1, tq[2] // 2), (0, 0, tq[2] // 2)


def gna_forward_gluon(problem, *, warmup_only: bool = False):
    """Write the grid queries' outputs of ``problem`` into ``problem.out`` (text queries are not handled).

    Call :func:`unsupported_reason` first. ``warmup_only``: compile without launching and return the compiled
    kernel (how bench/ptx_check.py compiles it for sm_90 without a GPU). A batch that does not fold into the token
    axis runs one launch per batch element.
    """
    if problem.query.shape[0] > 1 and not _folds(problem):
        for b in range(problem.query.shape[0]):
            kernel = gna_forward_gluon(_per_batch(problem, b), warmup_only=warmup_only)
        return kernel
    p = problem
    q, k, v = p.query, p.key, p.value
    batch, _, heads, head_dim = q.shape
    grid3, ks3, st3, _, _ = params3(p.params)
    tq, tk = cfgs.GLUON[p.params.ndim]
    hq, qoff = _half_tile(tq)
    block_n = tk[0] * tk[1] * tk[2]
    q_desc = _descriptor(q, grid3, (*hq, 1, head_dim))
    k_desc = _descriptor(k, grid3, (*tk, 1, head_dim))
    v_desc = _descriptor(v, grid3, (*tk, 1, head_dim))
    has_extra = p.extra_key is not None and p.extra_key.shape[1] > 0
    has_elen = has_extra and p.extra_lengths is not None
    t_extra = p.extra_key.shape[1] if has_extra else 0
    if has_extra:
        ek_desc = _extra_descriptor(p.extra_key, block_n)
        ev_desc = _extra_descriptor(p.extra_value, block_n)
    else:  # never read
        ek_desc, ev_desc = k_desc, v_desc
    elen = p.extra_lengths if has_elen else q  # dummy pointer when unused
    sob, son, soh, _ = p.out.stride()
    qk_scale = float(p.scale) * _LOG2E
    n_q_tiles = math.prod(-(-g // t) for g, t in zip(grid3, tq))
    launch = (n_q_tiles, batch * heads)
    args = (q_desc, k_desc, v_desc, ek_desc, ev_desc, p.out, elen, sob, son, soh,
            heads, *grid3, *ks3, *st3, t_extra, qk_scale)  # fmt: skip
    consts = dict(
        TQ0=tq[0], TQ1=tq[1], TQ2=tq[2], TK0=tk[0], TK1=tk[1], TK2=tk[2], QOFF0=qoff[0], QOFF1=qoff[1], QOFF2=qoff[2],
        HAS_EXTRA=has_extra, HAS_ELEN=has_elen, NUM_STAGES=cfgs.GLUON_STAGES,
        CONSUMER_REGS=cfgs.GLUON_CONSUMER_REGS, PRODUCER_REGS=cfgs.GLUON_PRODUCER_REGS,
    )  # fmt: skip
    return launch_ws(_gna_gluon_kernel, launch, args, consts, warmup_only)


def launch_ws(kernel, grid, args, consts: dict, warmup_only: bool):
    """Launch a warp-specialised kernel of this module's shape (or only compile it: ``warmup_only``, returning the
    compiled kernel). num_warps: the default partition (consumer 0); maxnreg: the launch register limit
    (configs.GLUON_MAXNREG)."""
    if warmup_only:
        return kernel.warmup(*args, **consts, grid=grid, num_warps=4, maxnreg=cfgs.GLUON_MAXNREG)
    kernel[grid](*args, **consts, num_warps=4, maxnreg=cfgs.GLUON_MAXNREG)
    return None
