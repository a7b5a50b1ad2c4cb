"""GNA forward for grid queries in Gluon (Triton >= 3.6, sm_90): FA3-style warp specialisation on top of
:mod:`na_accel.kernels.gna_fwd`'s tile math.

One CTA owns one query tile ``(TQ0, TQ1, TQ2)`` (128 rows) of one (batch, head), exactly like ``_gna_fwd_kernel``
(1-D and 2-D grids are padded to 3-D with leading 1s; dilation 1 only, non-causal only):

* partitions: consumer warpgroup 0 (default, query rows 0-63), consumer warpgroup 1 (4-warp worker, rows 64-127)
  and a 1-warp TMA producer. K/V go through a ``NUM_STAGES`` ring with per-stage ready/empty mbarriers (the empty
  ones count one arrive per consumer warpgroup); inside a warpgroup ``S_j = Q K_j^T`` and ``O += P_{j-1} V_{j-1}``
  are issued back to back and softmax(S_j) runs while the PV wgmma is in flight (``PIPE``).
* K/V/Q come through 5-D TMA descriptors over ``[B * L0, L1, L2, heads, D]`` (batch folded into axis 0), block
  ``[TK0, TK1, TK2, 1, D]``: one key tile is one TMA box that lands as 128 consecutive swizzled rows, i.e. exactly
  the ``[128, D]`` NVMMA tile wgmma reads. Boxes reaching past axes 1/2 are zero-filled by TMA (no wrap into the
  next raster row); past axis 0 they read the next batch's rows (or zeros after the last batch). Such keys are
  never attended: every key tile that is not inside the full box F of the tile is masked through its intended
  coordinates against each query's window, so those rows only need to be finite.
* the producer visits the union tiles in raster order, then the extra (text) key tiles (4-D descriptor over the
  extra tensor ``[B, T, heads, D]``, block ``[1, 128, 1, D]``, up to the batch's valid length); the consumers walk
  the same order and test per tile (scalar, uniform) whether it lies in F (no mask) or not (masked). A query tile
  whose key tiles all lie in F (GNA with a shared window: hunyuan-gna, flux4k-gna, dense) and whose extra tiles are
  all valid runs a second copy of the loop with no mask logic at all (``ALL_FULL``), which keeps the tile math out
  of its registers (no spills in that loop; 3-8% faster than one loop with a per-tile test, bench/NOTES.md v8).
* fully masked rows stay finite (``m_i`` starts at -1e30); outputs ``acc / l`` are stored from registers with a
  per-row mask (invalid query rows of ragged tiles are computed but never stored).

Text queries are not handled here (the Triton text kernel runs them).
"""

from __future__ import annotations

import math

import torch

from . import INTERPRETED
from .layout import folded_5d, params3, tma_reason

_LOG2E = 1.4426950408889634
_M = 64  # query rows per consumer warpgroup
_BLOCK = 128  # query rows per CTA and keys per tile
_NUM_STAGES = 2  # H200 hunyuan-gna: 26.5 ms with 2 stages, 27.4 ms with 3 (bench/gluon_proto/results)
_CONSUMER_REGS = 240
_PRODUCER_REGS = 24
_MAXNREG = 168

# Fixed launch configs per grid rank (padded to 3-D): query tile, key tile.
CONFIGS = {
    3: ((2, 8, 8), (2, 8, 8)),
    2: ((1, 16, 8), (1, 16, 8)),
    1: ((1, 1, 128), (1, 1, 128)),
}

_IMPORT_ERROR: str | None = None
try:  # Gluon's Hopper API (Triton >= 3.5); absent or different elsewhere: the path reports itself unsupported.
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
except Exception as exc:  # pragma: no cover - depends on the install
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"


if _IMPORT_ERROR is None:
    try:

        @gluon.jit
        def _window(x, lg, k, s):
            """Inclusive window [lo, hi] of query coordinate(s) ``x`` on one axis (non-causal, dilation 1)."""
            left = k // 2
            right = k - 1 - left
            leader = gl.minimum((x // s) * s + s // 2, lg - 1)
            center = gl.maximum(gl.minimum(leader, lg - 1 - right), left)
            return center - left, center + right

        @gluon.jit
        def _softmax_rows(s, m_i, l_i):
            """Online-softmax step on scaled (log2-domain) scores ``s``: probabilities, rescale, new max and sum."""
            m_new = gl.maximum(m_i, gl.max(s, axis=1))  # m_i starts finite: a fully masked row stays finite
            alpha = gl.exp2(m_i - m_new)
            p = gl.exp2(s - gl.expand_dims(m_new, 1))
            l_new = l_i * alpha + gl.sum(p, axis=1)
            return p, alpha, m_new, l_new

        @gluon.jit
        def _softmax_step(s, m_i, l_i, qk_scale):
            return _softmax_rows(s * qk_scale, m_i, l_i)

        @gluon.jit
        def _masked_softmax_step(s, mask, m_i, l_i, qk_scale):
            return _softmax_rows(gl.where(mask, s * qk_scale, float("-inf")), m_i, l_i)

        @gluon.jit
        def _grid_mask(j0, j1, j2, u_lo0, u_lo1, u_lo2, r, f0, f1, f2, L0, L1, L2, K0, K1, K2, S0, S1, S2, cols,
                       TQ1: gl.constexpr, TQ2: gl.constexpr,
                       TK0: gl.constexpr, TK1: gl.constexpr, TK2: gl.constexpr):  # fmt: skip
            """[rows, keys] mask of key tile (j0, j1, j2) for query rows ``r`` of the tile: each query's window
            (coordinates clamped into the grid like gna_fwd; recomputed here to keep registers free)."""
            lo0, hi0 = _window(gl.minimum(f0 + r // (TQ1 * TQ2), L0 - 1), L0, K0, S0)
            lo1, hi1 = _window(gl.minimum(f1 + (r // TQ2) % TQ1, L1 - 1), L1, K1, S1)
            lo2, hi2 = _window(gl.minimum(f2 + r % TQ2, L2 - 1), L2, K2, S2)
            kk0 = gl.expand_dims(u_lo0 + j0 * TK0 + cols // (TK1 * TK2), 0)
            kk1 = gl.expand_dims(u_lo1 + j1 * TK1 + (cols // TK2) % TK1, 0)
            kk2 = gl.expand_dims(u_lo2 + j2 * TK2 + cols % TK2, 0)
            mask = (kk0 >= gl.expand_dims(lo0, 1)) & (kk0 <= gl.expand_dims(hi0, 1))
            mask = mask & (kk1 >= gl.expand_dims(lo1, 1)) & (kk1 <= gl.expand_dims(hi1, 1))
            mask = mask & (kk2 >= gl.expand_dims(lo2, 1)) & (kk2 <= gl.expand_dims(hi2, 1))
            return mask

        @gluon.jit
        def _tile_softmax(s, j, m_i, l_i, qk_scale, row_base, f0, f1, f2, L0, L1, L2, K0, K1, K2, S0, S1, S2,
                          u_lo0, u_lo1, u_lo2, fa0, fa1, fa2, nf0, nf1, nf2, c1, c2, n_grid, n_valid,
                          TQ1: gl.constexpr, TQ2: gl.constexpr,
                          TK0: gl.constexpr, TK1: gl.constexpr, TK2: gl.constexpr,
                          HAS_EXTRA: gl.constexpr, ALL_FULL: gl.constexpr):  # fmt: skip
            """Online-softmax step for key tile ``j`` (union tiles in raster order, then extra-key tiles);
            ``ALL_FULL``: no key tile of this query tile needs a mask."""
            if ALL_FULL:
                return _softmax_step(s, m_i, l_i, qk_scale)
            BN: gl.constexpr = s.shape[1]
            s_layout: gl.constexpr = s.type.layout
            is_grid = j < n_grid
            j2 = j % c2
            j1 = (j // c2) % c1
            j0 = j // (c1 * c2)
            full = is_grid & (j0 >= fa0) & (j0 < fa0 + nf0) & (j1 >= fa1) & (j1 < fa1 + nf1)
            full = full & (j2 >= fa2) & (j2 < fa2 + nf2)
            if HAS_EXTRA:  # an extra-key tile whose keys are all valid needs no mask either
                full = full | ((j >= n_grid) & ((j - n_grid + 1) * BN <= n_valid))
            if full:
                p, alpha, m_new, l_new = _softmax_step(s, m_i, l_i, qk_scale)
            else:
                cols = gl.arange(0, BN, layout=gl.SliceLayout(0, s_layout))
                r = row_base + gl.arange(0, s.shape[0], layout=gl.SliceLayout(1, s_layout))
                if HAS_EXTRA:
                    if is_grid:
                        mask = _grid_mask(j0, j1, j2, u_lo0, u_lo1, u_lo2, r, f0, f1, f2, L0, L1, L2, K0, K1, K2,
                                          S0, S1, S2, cols, TQ1, TQ2, TK0, TK1, TK2)  # fmt: skip
                    else:
                        t = (j - n_grid) * BN + cols
                        mask = gl.expand_dims(t < n_valid, 0) & gl.expand_dims(r >= 0, 1)
                else:
                    mask = _grid_mask(j0, j1, j2, u_lo0, u_lo1, u_lo2, r, f0, f1, f2, L0, L1, L2, K0, K1, K2,
                                      S0, S1, S2, cols, TQ1, TQ2, TK0, TK1, TK2)  # fmt: skip
                p, alpha, m_new, l_new = _masked_softmax_step(s, mask, m_i, l_i, qk_scale)
            return p, alpha, m_new, l_new

        @gluon.jit
        def _kv_loop(q_smem, k_bufs, v_bufs, k_ready, v_ready, k_empty, v_empty, acc, m_i, l_i, s_zero, n_tiles,
                     qk_scale, row_base, f0, f1, f2, L0, L1, L2, K0, K1, K2, S0, S1, S2, u_lo0, u_lo1, u_lo2,
                     fa0, fa1, fa2, nf0, nf1, nf2, c1, c2, n_grid, n_valid,
                     TQ1: gl.constexpr, TQ2: gl.constexpr,
                     TK0: gl.constexpr, TK1: gl.constexpr, TK2: gl.constexpr,
                     HAS_EXTRA: gl.constexpr, ALL_FULL: gl.constexpr, PIPE: gl.constexpr):  # fmt: skip
            """The ``n_tiles`` key tiles of the query tile: online softmax into ``acc``, ``m_i``, ``l_i``; releases
            each K/V ring stage once its wgmma has completed. ``ALL_FULL``: no key tile needs a mask."""
            NUM_STAGES: gl.constexpr = k_bufs.shape[0]
            dtype: gl.constexpr = k_bufs.dtype
            o_layout: gl.constexpr = acc.type.layout
            p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
            orow_layout: gl.constexpr = gl.SliceLayout(1, o_layout)
            tile = (row_base, f0, f1, f2, L0, L1, L2, K0, K1, K2, S0, S1, S2, u_lo0, u_lo1, u_lo2,
                    fa0, fa1, fa2, nf0, nf1, nf2, c1, c2, n_grid, n_valid,
                    TQ1, TQ2, TK0, TK1, TK2, HAS_EXTRA, ALL_FULL)  # fmt: skip

            if PIPE:
                mbarrier.wait(k_ready.index(0), 0)
                s = warpgroup_mma(q_smem, k_bufs.index(0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
                s = warpgroup_mma_wait(0, deps=(s,))
                mbarrier.arrive(k_empty.index(0), count=1)
                p, alpha, m_i, l_i = _tile_softmax(s, 0, m_i, l_i, qk_scale, *tile)
                p_op = gl.convert_layout(p.to(dtype), p_layout)
                for j in range(1, n_tiles):
                    st = j % NUM_STAGES
                    stp = (j - 1) % NUM_STAGES
                    mbarrier.wait(k_ready.index(st), (j // NUM_STAGES) & 1)
                    s = warpgroup_mma(q_smem, k_bufs.index(st).permute((1, 0)), s_zero, use_acc=False,
                                      is_async=True)  # fmt: skip
                    mbarrier.wait(v_ready.index(stp), ((j - 1) // NUM_STAGES) & 1)
                    acc = warpgroup_mma(p_op, v_bufs.index(stp), acc, is_async=True)
                    s = warpgroup_mma_wait(1, deps=(s,))
                    mbarrier.arrive(k_empty.index(st), count=1)
                    p, alpha, m_i, l_i = _tile_softmax(s, j, m_i, l_i, qk_scale, *tile)
                    p_lo = p.to(dtype)
                    acc = warpgroup_mma_wait(0, deps=(acc,))
                    mbarrier.arrive(v_empty.index(stp), count=1)
                    acc = acc * gl.expand_dims(gl.convert_layout(alpha, orow_layout), 1)
                    p_op = gl.convert_layout(p_lo, p_layout)
                last = n_tiles - 1
                stp = last % NUM_STAGES
                mbarrier.wait(v_ready.index(stp), (last // NUM_STAGES) & 1)
                acc = warpgroup_mma(p_op, v_bufs.index(stp), acc, is_async=True)
                acc = warpgroup_mma_wait(0, deps=(acc,))
                mbarrier.arrive(v_empty.index(stp), count=1)
            else:
                for j in range(n_tiles):
                    st = j % NUM_STAGES
                    ph = (j // NUM_STAGES) & 1
                    mbarrier.wait(k_ready.index(st), ph)
                    s = warpgroup_mma(q_smem, k_bufs.index(st).permute((1, 0)), s_zero, use_acc=False,
                                      is_async=True)  # fmt: skip
                    s = warpgroup_mma_wait(0, deps=(s,))
                    mbarrier.arrive(k_empty.index(st), count=1)
                    p, alpha, m_i, l_i = _tile_softmax(s, j, m_i, l_i, qk_scale, *tile)
                    acc = acc * gl.expand_dims(gl.convert_layout(alpha, orow_layout), 1)
                    p_op = gl.convert_layout(p.to(dtype), p_layout)
                    mbarrier.wait(v_ready.index(st), ph)
                    acc = warpgroup_mma(p_op, v_bufs.index(st), acc, is_async=True)
                    acc = warpgroup_mma_wait(0, deps=(acc,))
                    mbarrier.arrive(v_empty.index(st), count=1)
            return acc, m_i, l_i

        @gluon.jit
        def _consumer(q_smem, k_bufs, v_bufs, q_bar, k_ready, v_ready, k_empty, v_empty, out_ptr, o_base, son,
                      row_base, f0, f1, f2, L0, L1, L2, K0, K1, K2, S0, S1, S2, u_lo0, u_lo1, u_lo2,
                      fa0, fa1, fa2, nf0, nf1, nf2, c1, c2, n_grid, n_valid, n_tiles, qk_scale,
                      TQ0: gl.constexpr, TQ1: gl.constexpr, TQ2: gl.constexpr,
                      TK0: gl.constexpr, TK1: gl.constexpr, TK2: gl.constexpr,
                      HAS_EXTRA: gl.constexpr, PIPE: gl.constexpr):  # fmt: skip
            BN: gl.constexpr = k_bufs.shape[1]
            D: gl.constexpr = k_bufs.shape[2]
            M: gl.constexpr = q_smem.shape[0]
            s_layout: gl.constexpr = gl.NVMMADistributedLayout(
                version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BN, 16]
            )
            o_layout: gl.constexpr = gl.NVMMADistributedLayout(
                version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, D, 16]
            )
            row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)

            m_i = gl.full([M], -1.0e30, gl.float32, layout=row_layout)
            l_i = gl.full([M], 0.0, gl.float32, layout=row_layout)
            acc = gl.zeros([M, D], gl.float32, layout=o_layout)
            s_zero = gl.zeros([M, BN], gl.float32, layout=s_layout)

            mbarrier.wait(q_bar, 0)
            # tiles whose key tiles all lie in every query's window (GNA with aligned tiles, all-valid text tiles)
            # run a loop without any mask logic, which keeps the tile math out of its registers
            all_full = nf0 * nf1 * nf2 == n_grid  # nf <= c per axis: equal on every axis
            if HAS_EXTRA:
                all_full = all_full & (n_valid % BN == 0)
            loop = (q_smem, k_bufs, v_bufs, k_ready, v_ready, k_empty, v_empty, acc, m_i, l_i, s_zero, n_tiles,
                    qk_scale, row_base, f0, f1, f2, L0, L1, L2, K0, K1, K2, S0, S1, S2, u_lo0, u_lo1, u_lo2,
                    fa0, fa1, fa2, nf0, nf1, nf2, c1, c2, n_grid, n_valid,
                    TQ1, TQ2, TK0, TK1, TK2, HAS_EXTRA)  # fmt: skip
            if all_full:  # ALL_FULL is a constexpr: one specialised copy of the loop per branch
                acc, m_i, l_i = _kv_loop(*loop, True, PIPE)
            else:
                acc, m_i, l_i = _kv_loop(*loop, False, PIPE)

            # epilogue: acc / l, masked store of the valid query rows (strided output, pointer store)
            orow_layout: gl.constexpr = gl.SliceLayout(1, o_layout)
            l_o = gl.convert_layout(l_i, orow_layout)
            l_o = gl.where(l_o > 0.0, l_o, 1.0)
            o = acc / gl.expand_dims(l_o, 1)
            ro = row_base + gl.arange(0, M, layout=orow_layout)
            y0 = f0 + ro // (TQ1 * TQ2)
            y1 = f1 + (ro // TQ2) % TQ1
            y2 = f2 + ro % TQ2
            valid = (y0 < L0) & (y1 < L1) & (y2 < L2)
            tok = ((gl.minimum(y0, L0 - 1) * L1 + gl.minimum(y1, L1 - 1)) * L2 + gl.minimum(y2, L2 - 1)).to(gl.int64)
            cols = gl.arange(0, D, layout=gl.SliceLayout(0, o_layout))
            ptrs = out_ptr + o_base + gl.expand_dims(tok * son, 1) + gl.expand_dims(cols, 0)
            mask = gl.expand_dims(valid, 1) & gl.expand_dims(cols >= 0, 0)
            gl.store(ptrs, o.to(out_ptr.dtype.element_ty), mask=mask)

        # Two thin entry points instead of one function with a constexpr warpgroup index: gl.warp_specialize takes
        # one argument tuple per partition and (Triton 3.6) cannot carry a per-partition constexpr in it.
        @gluon.jit
        def _consumer_default(q_bufs, k_bufs, v_bufs, q_bar, k_ready, v_ready, k_empty, v_empty, out_ptr, o_base, son,
                              f0, f1, f2, L0, L1, L2, K0, K1, K2, S0, S1, S2, u_lo0, u_lo1, u_lo2,
                              fa0, fa1, fa2, nf0, nf1, nf2, c1, c2, n_grid, n_valid, n_tiles, qk_scale,
                              TQ0: gl.constexpr, TQ1: gl.constexpr, TQ2: gl.constexpr,
                              TK0: gl.constexpr, TK1: gl.constexpr, TK2: gl.constexpr,
                              HAS_EXTRA: gl.constexpr, PIPE: gl.constexpr):  # fmt: skip
            _consumer(q_bufs.index(0), k_bufs, v_bufs, q_bar, k_ready, v_ready, k_empty, v_empty, out_ptr, o_base,
                      son, 0, f0, f1, f2, L0, L1, L2, K0, K1, K2, S0, S1, S2, u_lo0, u_lo1, u_lo2,
                      fa0, fa1, fa2, nf0, nf1, nf2, c1, c2, n_grid, n_valid, n_tiles, qk_scale,
                      TQ0, TQ1, TQ2, TK0, TK1, TK2, HAS_EXTRA, PIPE)  # fmt: skip

        @gluon.jit
        def _consumer_worker(q_bufs, k_bufs, v_bufs, q_bar, k_ready, v_ready, k_empty, v_empty, out_ptr, o_base, son,
                             f0, f1, f2, L0, L1, L2, K0, K1, K2, S0, S1, S2, u_lo0, u_lo1, u_lo2,
                             fa0, fa1, fa2, nf0, nf1, nf2, c1, c2, n_grid, n_valid, n_tiles, qk_scale,
                             TQ0: gl.constexpr, TQ1: gl.constexpr, TQ2: gl.constexpr,
                             TK0: gl.constexpr, TK1: gl.constexpr, TK2: gl.constexpr,
                             HAS_EXTRA: gl.constexpr, PIPE: gl.constexpr):  # fmt: skip
            M: gl.constexpr = q_bufs.shape[1]
            _consumer(q_bufs.index(1), k_bufs, v_bufs, q_bar, k_ready, v_ready, k_empty, v_empty, out_ptr, o_base,
                      son, M, f0, f1, f2, L0, L1, L2, K0, K1, K2, S0, S1, S2, u_lo0, u_lo1, u_lo2,
                      fa0, fa1, fa2, nf0, nf1, nf2, c1, c2, n_grid, n_valid, n_tiles, qk_scale,
                      TQ0, TQ1, TQ2, TK0, TK1, TK2, HAS_EXTRA, PIPE)  # fmt: skip

        @gluon.jit
        def _load_grid_tile(desc, bufs, st, bar, j, h, kv_row0, u_lo1, u_lo2, c1, c2,
                            TK0: gl.constexpr, TK1: gl.constexpr, TK2: gl.constexpr):  # fmt: skip
            """TMA of union tile ``j`` (raster order over ``c0 x c1 x c2`` tiles) into ring stage ``st``."""
            j2 = j % c2
            j1 = (j // c2) % c1
            j0 = j // (c1 * c2)
            tma.async_copy_global_to_shared(
                desc,
                [kv_row0 + j0 * TK0, u_lo1 + j1 * TK1, u_lo2 + j2 * TK2, h, 0],
                bar,
                bufs.index(st)._reinterpret(bufs.dtype, desc.block_type.shape, desc.layout),
            )

        @gluon.jit
        def _load_kv_tile(desc, e_desc, bufs, st, bar, j, b, h, kv_row0, u_lo1, u_lo2, c1, c2, n_grid,
                          TK0: gl.constexpr, TK1: gl.constexpr, TK2: gl.constexpr,
                          HAS_EXTRA: gl.constexpr):  # fmt: skip
            """TMA of key or value tile ``j`` into ring stage ``st``: union tiles (raster order), then extra tiles."""
            if HAS_EXTRA:
                if j < n_grid:
                    _load_grid_tile(desc, bufs, st, bar, j, h, kv_row0, u_lo1, u_lo2, c1, c2, TK0, TK1, TK2)
                else:
                    tma.async_copy_global_to_shared(
                        e_desc,
                        [b, (j - n_grid) * bufs.shape[1], h, 0],
                        bar,
                        bufs.index(st)._reinterpret(bufs.dtype, e_desc.block_type.shape, e_desc.layout),
                    )
            else:
                _load_grid_tile(desc, bufs, st, bar, j, h, kv_row0, u_lo1, u_lo2, c1, c2, TK0, TK1, TK2)

        @gluon.jit
        def _producer(q_desc, k_desc, v_desc, ek_desc, ev_desc, q_bufs, k_bufs, v_bufs, q_bar, k_ready, v_ready,
                      k_empty, v_empty, b, h, row0, f1, f2, kv_row0, u_lo1, u_lo2, c1, c2, n_grid, n_tiles,
                      QOFF0: gl.constexpr, QOFF1: gl.constexpr, QOFF2: gl.constexpr,
                      TK0: gl.constexpr, TK1: gl.constexpr, TK2: gl.constexpr, HAS_EXTRA: gl.constexpr):  # fmt: skip
            NUM_STAGES: gl.constexpr = k_bufs.shape[0]
            dtype: gl.constexpr = k_bufs.dtype
            q_shape: gl.constexpr = q_desc.block_type.shape
            tile_bytes: gl.constexpr = k_desc.block_type.nbytes

            # Q: two half tiles (one per consumer warpgroup), rows [0, 64) and [64, 128) of the query tile
            mbarrier.expect(q_bar, 2 * q_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(
                q_desc, [row0, f1, f2, h, 0], q_bar, q_bufs.index(0)._reinterpret(dtype, q_shape, q_desc.layout)
            )
            tma.async_copy_global_to_shared(
                q_desc,
                [row0 + QOFF0, f1 + QOFF1, f2 + QOFF2, h, 0],
                q_bar,
                q_bufs.index(1)._reinterpret(dtype, q_shape, q_desc.layout),
            )
            for j in range(n_tiles):
                st = j % NUM_STAGES
                ph = (j // NUM_STAGES) & 1
                kb = k_ready.index(st)
                vb = v_ready.index(st)
                mbarrier.wait(k_empty.index(st), ph ^ 1)
                mbarrier.expect(kb, tile_bytes)
                _load_kv_tile(k_desc, ek_desc, k_bufs, st, kb, j, b, h, kv_row0, u_lo1, u_lo2, c1, c2, n_grid,
                              TK0, TK1, TK2, HAS_EXTRA)  # fmt: skip
                mbarrier.wait(v_empty.index(st), ph ^ 1)
                mbarrier.expect(vb, tile_bytes)
                _load_kv_tile(v_desc, ev_desc, v_bufs, st, vb, j, b, h, kv_row0, u_lo1, u_lo2, c1, c2, n_grid,
                              TK0, TK1, TK2, HAS_EXTRA)  # fmt: skip

        @gluon.jit
        def _gna_gluon_kernel(q_desc, k_desc, v_desc, ek_desc, ev_desc, out_ptr, elen_ptr, sob, son, soh,
                              H, L0, L1, L2, K0, K1, K2, S0, S1, S2, T_EXTRA, qk_scale,
                              TQ0: gl.constexpr, TQ1: gl.constexpr, TQ2: gl.constexpr,
                              TK0: gl.constexpr, TK1: gl.constexpr, TK2: gl.constexpr,
                              QOFF0: gl.constexpr, QOFF1: gl.constexpr, QOFF2: gl.constexpr,
                              HAS_EXTRA: gl.constexpr, HAS_ELEN: gl.constexpr, NUM_STAGES: gl.constexpr,
                              PIPE: gl.constexpr, CONSUMER_REGS: gl.constexpr,
                              PRODUCER_REGS: gl.constexpr):  # fmt: skip
            D: gl.constexpr = k_desc.block_type.shape[4]
            BN: gl.constexpr = TK0 * TK1 * TK2
            M: gl.constexpr = (TQ0 * TQ1 * TQ2) // 2
            dtype: gl.constexpr = k_desc.dtype

            pid = gl.program_id(0)
            bh = gl.program_id(1)
            b = bh // H
            h = bh % H
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
            row0 = b * L0 + f0  # query tile start on the folded (batch, axis 0) descriptor axis
            kv_row0 = b * L0 + u_lo0
            o_base = b.to(gl.int64) * sob + h.to(gl.int64) * soh

            q_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([M, D], dtype)
            kv_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BN, D], dtype)
            q_bufs = gl.allocate_shared_memory(dtype, [2, M, D], q_layout)
            k_bufs = gl.allocate_shared_memory(dtype, [NUM_STAGES, BN, D], kv_layout)
            v_bufs = gl.allocate_shared_memory(dtype, [NUM_STAGES, BN, D], kv_layout)
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

            cargs = (q_bufs, k_bufs, v_bufs, q_bar, k_ready, v_ready, k_empty, v_empty, out_ptr, o_base, son,
                     f0, f1, f2, L0, L1, L2, K0, K1, K2, S0, S1, S2, u_lo0, u_lo1, u_lo2,
                     fa0, fa1, fa2, nf0, nf1, nf2, c1, c2, n_grid, n_valid, n_tiles, qk_scale,
                     TQ0, TQ1, TQ2, TK0, TK1, TK2, HAS_EXTRA, PIPE)  # fmt: skip
            gl.warp_specialize(
                [
                    (_consumer_default, cargs),
                    (_consumer_worker, cargs),
                    (
                        _producer,
                        (
                            q_desc,
                            k_desc,
                            v_desc,
                            ek_desc,
                            ev_desc,
                            q_bufs,
                            k_bufs,
                            v_bufs,
                            q_bar,
                            k_ready,
                            v_ready,
                            k_empty,
                            v_empty,
                            b,
                            h,
                            row0,
                            f1,
                            f2,
                            kv_row0,
                            u_lo1,
                            u_lo2,
                            c1,
                            c2,
                            n_grid,
                            n_tiles,
                            QOFF0,
                            QOFF1,
                            QOFF2,
                            TK0,
                            TK1,
                            TK2,
                            HAS_EXTRA,
                        ),
                    ),
                ],
                [4, 1],
                [CONSUMER_REGS, PRODUCER_REGS],
            )

    except Exception as exc:  # pragma: no cover - a Gluon API change
        _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------------------------


def unsupported_reason(problem) -> str | None:
    """Why :func:`gna_forward_gluon` cannot run ``problem`` here, or None if it can (grid queries only)."""
    if _IMPORT_ERROR is not None:
        return f"Gluon's Hopper API is not importable ({_IMPORT_ERROR})"
    if INTERPRETED:
        return "TRITON_INTERPRET is set (Gluon kernels do not run in the interpreter)"
    p = problem
    q, k, v = p.query, p.key, p.value
    has_extra = p.extra_key is not None and p.extra_key.shape[1] > 0
    tensors = [q, k, v, p.out] + ([p.extra_key, p.extra_value] if has_extra else [])
    if not all(t.is_cuda for t in tensors):
        return "it needs CUDA tensors"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    major, minor = torch.cuda.get_device_capability(q.device)
    if major != 9:
        return f"it needs a Hopper GPU (compute capability 9.x), this one is {major}.{minor}"
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"dtype {q.dtype} (only float16 / bfloat16)"
    if any(t.dtype != q.dtype for t in tensors[1:3] + tensors[4:]):
        return "query, key, value and extra tensors must share one dtype"
    head_dim = q.shape[-1]
    if head_dim not in (64, 128) or k.shape[-1] != head_dim or v.shape[-1] != head_dim:
        return f"head dim {head_dim} (only 64 and 128)"
    params = p.params
    if any(d != 1 for d in params.dilation):
        return f"dilation {params.dilation} (only 1)"
    if any(params.is_causal):
        return f"causal axes {params.is_causal} (only non-causal)"
    if p.lse is not None:
        return "it does not return the log-sum-exp"
    for name, t in (("query", q), ("key", k), ("value", v)):
        reason = tma_reason(name, t, fold=True)
        if reason is not None:
            return reason
    if has_extra:
        for name, t in (("extra_key", p.extra_key), ("extra_value", p.extra_value)):
            reason = tma_reason(name, t, fold=False)
            if reason is not None:
                return reason
    if p.out.stride(-1) != 1:
        return "out has a non-contiguous last dim"
    return None


def _descriptor(t: torch.Tensor, grid3, block):
    """5-D descriptor over ``t`` [B, N, heads, D] viewed as [B * L0, L1, L2, heads, D] (batch folded into axis 0)."""
    shape, strides = folded_5d(t, grid3)
    layout = gl.NVMMASharedLayout.get_default_for(list(block), _GL_DTYPES[t.dtype])
    return TensorDescriptor(t, shape, strides, list(block), layout)


def _extra_descriptor(t: torch.Tensor, block_n: int):
    batch, tokens, heads, head_dim = t.shape
    block = [1, block_n, 1, head_dim]
    layout = gl.NVMMASharedLayout.get_default_for(block, _GL_DTYPES[t.dtype])
    return TensorDescriptor(t, list(t.shape), list(t.stride()), block, layout)


_GL_DTYPES = {} if _IMPORT_ERROR is not None else {torch.float16: gl.float16, torch.bfloat16: gl.bfloat16}


def gna_forward_gluon(problem, *, pipe: bool = True, num_stages: int = _NUM_STAGES, warmup_only: bool = False):
    """Write the grid queries' outputs of ``problem`` into ``problem.out`` (text queries are not handled).

    Call :func:`unsupported_reason` first. ``pipe`` / ``num_stages`` pick the consumer schedule and the K/V ring
    depth; ``warmup_only`` compiles without launching (returns the compiled kernel).
    """
    p = problem
    q, k, v = p.query, p.key, p.value
    batch, n, heads, head_dim = q.shape
    params = p.params
    ndim = params.ndim
    grid3, ks3, st3, _, _ = params3(params)
    tq, tk = CONFIGS[ndim]
    if tq[0] % 2 == 0:
        hq, qoff = (tq[0] // 2, tq[1], tq[2]), (tq[0] // 2, 0, 0)
    elif tq[1] % 2 == 0:
        hq, qoff = (1, tq[1] // 2, tq[2]), (0, tq[1] // 2, 0)
    else:
        hq, qoff = (1, 1, tq[2] // 2), (0, 0, tq[2] // 2)
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
    else:
        ek_desc, ev_desc = k_desc, v_desc
    elen = p.extra_lengths if has_elen else q
    out = p.out
    sob, son, soh, _ = out.stride()
    qk_scale = float(p.scale) * _LOG2E
    n_q_tiles = math.prod(-(-g // t) for g, t in zip(grid3, tq))
    launch = (n_q_tiles, batch * heads)
    args = (q_desc, k_desc, v_desc, ek_desc, ev_desc, out, elen, sob, son, soh,
            heads, *grid3, *ks3, *st3, t_extra, qk_scale)  # fmt: skip
    consts = dict(
        TQ0=tq[0], TQ1=tq[1], TQ2=tq[2], TK0=tk[0], TK1=tk[1], TK2=tk[2], QOFF0=qoff[0], QOFF1=qoff[1], QOFF2=qoff[2],
        HAS_EXTRA=has_extra, HAS_ELEN=has_elen, NUM_STAGES=num_stages, PIPE=pipe,
        CONSUMER_REGS=_CONSUMER_REGS, PRODUCER_REGS=_PRODUCER_REGS,
    )  # fmt: skip
    if warmup_only:
        return _gna_gluon_kernel.warmup(*args, **consts, grid=launch, num_warps=4, maxnreg=_MAXNREG)
    _gna_gluon_kernel[launch](*args, **consts, num_warps=4, maxnreg=_MAXNREG)
    return None
