"""Grid queries with 8-bit operands in Gluon on Hopper (sm_90): :func:`gna_forward_fp8`, the kernel of
:mod:`.gluon_hopper` on 8-bit operands (Hopper's 8-bit wgmma runs at twice the 16-bit rate).
:func:`unsupported_reason` says when it cannot run a problem (the ``triton`` backend then runs the call in the
inputs' precision and reports why).

What changes against the 16-bit kernel:

* Layout: :func:`.fp8_layout.quantize_tiled` first writes Q, K and V in tiled token order, Q and K as int8 (or e4m3:
  ``configs.FP8_QK_INT8``), V as e4m3 (Q per 64-row block, K per (batch, head) after smoothing, V per channel and
  transposed). Every query tile
  and key tile is one 2-D TMA box. Key tiles are the aligned tiles of the grid, so the union of a query tile's
  windows is covered from the aligned tile at or before its start (at most one more tile per axis than the 16-bit
  kernel's unaligned union; none for GNA whose windows start on tile boundaries: hunyuan-gna, flux4k-gna).
* QK^T: ``S = (Q8 K8^T) * q_scale * k_scale``, the scales of the consumer's Q block and of the (batch, head)'s keys
  (one factor for the whole loop); Q already carries ``scale * log2(e)``. With int8 the s32 accumulator becomes
  fp32 by one integer add (:data:`_MAGIC_BITS`) and the offset is taken out in the exp2 argument
  (:func:`_softmax8`).
* P: ``P8 = e4m3(448 * P)`` (the 448 folded into the exp2 argument), stored to shared memory and read from there
  by the PV wgmma (``configs.FP8_P_SMEM``; or passed in registers as operand A); the row sums ``l`` are taken from
  ``448 * P`` in fp32. PV reads the transposed V tile ``[D, 128]`` (8-bit wgmma wants both operands K-major).
* Epilogue: ``O = acc * v_scale / l``; everything accumulates in fp32 (the wgmma accumulator).

The pipeline is the 16-bit kernel's (a 1-warp TMA producer, two consumer warpgroups of 64 query rows each, a K/V
ring with ready/empty mbarriers, QK^T of tile j issued before PV of tile j - 1); its tile math (windows, the full
box F, masks through intended coordinates) is the same code (:func:`.gluon_hopper._window`,
:func:`.gluon_hopper._tile_softmax`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from . import configs as cfgs
from .fp8_layout import FP8_MAX, quantize_tiled, tiled_sizes
from .gluon_hopper import (
    _IMPORT_ERROR,
    _LOG2E,
    _all_full,
    _consumer_state,
    _gluon_jit,
    _inputs,
    _program,
    _Shape,
    _shared_ring,
    _store_rows,
    _tile_coords,
    _tile_is_full,
    _tile_mask,
    launch_ws,
)
from .gluon_hopper import problem_reason as _gluon_reason
from .layout import params3

if _IMPORT_ERROR is None:
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    #: P is quantized as e4m3(P_SCALE * P): P <= 1 maps onto the whole e4m3 range; the scale enters the exp2
    #: argument as log2(P_SCALE)
    _LOG2_P_SCALE = gl.constexpr(math.log2(FP8_MAX))
    #: int32 scores become floats by adding the bits of 1.5 * 2**23 and reinterpreting: f = 1.5 * 2**23 + s exactly
    #: for |s| < 2**22 (int8 x int8 x head dim 128: |s| <= 127**2 * 128 < 2**21), one integer add instead of a
    #: quarter-rate I2F
    _MAGIC_BITS = gl.constexpr(0x4B400000)
    _MAGIC = gl.constexpr(12582912.0)


class _TilePos(NamedTuple):
    """Where the CTA's key tiles lie in the tiled layout: union tile ``(j0, j1, j2)``
    (:func:`.gluon_hopper._tile_coords`) is grid tile ``((ub0 + j0) * nt1 + ub1 + j1) * nt2 + ub2 + j2``; extra tile
    ``j`` is ``ntg + j - n_grid``."""

    ub0: Any  # aligned union start in tiles, per axis
    ub1: Any
    ub2: Any
    nt1: Any  # grid tiles on axes 1 and 2
    nt2: Any
    ntg: Any  # grid tiles in all (the first extra tile)


class _Scales(NamedTuple):
    """Scale pointers of the CTA's (batch, head): Q blocks, K (one value), V channels."""

    q: Any
    k: Any
    v: Any


class _Load8(NamedTuple):
    """What the producer needs to address its boxes."""

    q_row: Any  # first row of the query tile in the tiled Q (batch * head folded in)
    k_row0: Any  # first row of the (batch, head) in the tiled K
    vt_row: Any  # first row of the (batch, head) in the transposed V ([BH * D, NK])
    n_tiles: Any


@_gluon_jit
def _tile_index(j, tile, tp):
    """Index of the CTA's key tile ``j`` in the tiled K / V layout (see :class:`_TilePos`)."""
    if j < tile.n_grid:
        j0, j1, j2 = _tile_coords(j, tile)
        idx = ((tp.ub0 + j0) * tp.nt1 + tp.ub1 + j1) * tp.nt2 + tp.ub2 + j2
    else:
        idx = tp.ntg + j - tile.n_grid
    return idx


# --------------------------------------------------------------------------------------------------------------
# Device code: consumers
# --------------------------------------------------------------------------------------------------------------


@_gluon_jit
def _p_operand(p, p_layout: gl.constexpr, p_smem, P_SMEM: gl.constexpr):
    """P (fp32, already times P_SCALE, wgmma accumulator layout) as the 8-bit A operand of the PV wgmma.

    Within each 32-key block the accumulator holds keys ``(b4 b3 b2 b1 b0)`` in the register slots where the 8-bit
    A operand expects keys ``(b4 b2 b1 b3 b0)``, so the keys are relabeled (reshape + permute, a register renaming)
    instead of exchanged; the layout step stores V with the same relabeling. ``P_SMEM``: P goes through the
    consumer's shared-memory buffer ``p_smem`` instead (stored, fenced, the warpgroup synchronised), which skips the
    byte packing of the register operand."""
    M: gl.constexpr = p.shape[0]
    BN: gl.constexpr = p.shape[1]
    p = p.reshape([M, BN // 32, 2, 2, 2, 2, 2]).permute((0, 1, 2, 4, 5, 3, 6)).reshape([M, BN])
    if P_SMEM:
        p_smem.store(p.to(gl.float8e4nv))
        fence_async_shared()
        gl.thread_barrier()
        op = p_smem
    else:
        p = gl.convert_layout(p, p_layout)  # registers in A-operand order: four consecutive keys per 32-bit register
        # four fp32 -> one register of four e4m3 (two paired conversions), in the order the A operand reads them
        op = gl.inline_asm_elementwise(
            "{ .reg .b16 lo, hi; cvt.rn.satfinite.e4m3x2.f32 lo, $2, $1; cvt.rn.satfinite.e4m3x2.f32 hi, $4, $3; "
            "mov.b32 $0, {lo, hi}; }",
            "=r,r,r,r,r", [p], dtype=gl.float8e4nv, is_pure=True, pack=4,
        )
    return op


@_gluon_jit
def _scores(s, QK_INT8: gl.constexpr):
    """The QK^T accumulator as fp32 "offset scores" ``f``: the score is ``(f - OFF) * scale`` (OFF = 0 for e4m3,
    1.5 * 2**23 for int8, see _MAGIC)."""
    if QK_INT8:
        f = (s + _MAGIC_BITS).to(gl.float32, bitcast=True)
    else:
        f = s
    return f


@_gluon_jit
def _softmax8(f, m_i, l_i, c, off):
    """Online-softmax step on offset scores ``f`` (log2-domain score ``(f - off) * c``, c > 0): ``P_SCALE * P``,
    rescale, new max and sum; one FFMA and one exp2 per score."""
    m_new = gl.maximum(m_i, (gl.max(f, axis=1) - off) * c)  # m_i starts finite: a fully masked row stays finite
    alpha = gl.exp2(m_i - m_new)
    bias = off * c + m_new - _LOG2_P_SCALE
    p = gl.exp2(f * c - gl.expand_dims(bias, 1))
    l_new = l_i * alpha + gl.sum(p, axis=1)
    return p, alpha, m_new, l_new


@_gluon_jit
def _tile_softmax8(f, j, m_i, l_i, c, off, ROW_BASE: gl.constexpr, tile, shape, ALL_FULL: gl.constexpr):
    """:func:`.gluon_hopper._tile_softmax` on offset scores (masked scores set to -inf before the step)."""
    if ALL_FULL:
        return _softmax8(f, m_i, l_i, c, off)
    if _tile_is_full(j, f.shape[1], tile, shape):
        p, alpha, m_new, l_new = _softmax8(f, m_i, l_i, c, off)
    else:
        mask = _tile_mask(j, f, ROW_BASE, tile, shape)
        p, alpha, m_new, l_new = _softmax8(gl.where(mask, f, float("-inf")), m_i, l_i, c, off)
    return p, alpha, m_new, l_new


@_gluon_jit
def _my_turn(turns, WG: gl.constexpr, k, PINGPONG: gl.constexpr):
    """Ping-pong (``PINGPONG``): wait until consumer ``WG`` may issue its ``k``-th group of wgmmas. The consumers
    take turns, consumer 0 first: consumer 1's k-th turn follows consumer 0's k-th pass (``turns[1]`` completes its
    k-th phase), consumer 0's k-th turn (k >= 1) follows consumer 1's (k-1)-th pass."""
    if PINGPONG:
        if WG == 0:
            if k > 0:
                mbarrier.wait(turns.index(0), (k - 1) & 1)
        else:
            mbarrier.wait(turns.index(1), k & 1)


@_gluon_jit
def _pass_turn(turns, WG: gl.constexpr, PINGPONG: gl.constexpr):
    """Ping-pong: consumer ``WG`` has issued its wgmmas; the other consumer's turn."""
    if PINGPONG:
        mbarrier.arrive(turns.index(1 - WG), count=1)


@_gluon_jit
def _kv_loop8(q_smem, smem, acc, m_i, l_i, s_zero, tile, c, ROW_BASE: gl.constexpr, shape, ALL_FULL: gl.constexpr,
              QK_INT8: gl.constexpr, p_smem, P_SMEM: gl.constexpr, turns, WG: gl.constexpr,
              PINGPONG: gl.constexpr, JOINT_RELEASE: gl.constexpr):  # fmt: skip
    """The key tiles of the query tile on 8-bit operands: online softmax into ``acc``, ``m_i``, ``l_i`` (the
    16-bit kernel's pipeline, :func:`.gluon_hopper._kv_loop`); ``c = q_scale * k_scale`` turns scores into the log2
    domain. With ``PINGPONG`` the two consumers issue their wgmmas in turns (:func:`_my_turn`), so that one's
    softmax (exp2 on the MUFU pipe) runs while the other's products use the tensor cores (FlashAttention-3's
    schedule); each issues ``n_tiles + 1`` groups.

    Releasing a stage: Gluon's ``mbarrier.arrive`` syncs the consumer's four warps before thread 0 arrives. By
    default K of tile j is released as soon as its QK^T is done and V of tile j - 1 after its PV (two warpgroup
    syncs per tile, besides the two around P's store). With ``JOINT_RELEASE`` K and V of tile j - 1 are released
    together after the PV wait, their two syncs back to back (the second finds the warps together): three sync
    points per tile instead of four, at the cost of holding K one tile longer (configs.FP8_JOINT_RELEASE wants one
    more stage)."""
    k_bufs = smem.k_bufs
    v_bufs = smem.v_bufs
    NUM_STAGES: gl.constexpr = k_bufs.shape[0]
    o_layout: gl.constexpr = acc.type.layout
    # P goes to the PV wgmma from registers as operand A, four 8-bit values per 32-bit register (k_width=4)
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=4)
    orow_layout: gl.constexpr = gl.SliceLayout(1, o_layout)
    n_tiles = tile.n_tiles
    off = _MAGIC if QK_INT8 else 0.0

    _my_turn(turns, WG, 0, PINGPONG)
    mbarrier.wait(smem.k_ready.index(0), 0)
    s = warpgroup_mma(q_smem, k_bufs.index(0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
    _pass_turn(turns, WG, PINGPONG)
    s = warpgroup_mma_wait(0, deps=(s,))
    if not JOINT_RELEASE:
        mbarrier.arrive(smem.k_empty.index(0), count=1)
    p, alpha, m_i, l_i = _tile_softmax8(_scores(s, QK_INT8), 0, m_i, l_i, c, off, ROW_BASE, tile, shape, ALL_FULL)
    p_op = _p_operand(p, p_layout, p_smem, P_SMEM)
    for j in range(1, n_tiles):
        st = j % NUM_STAGES  # stage of tile j
        stp = (j - 1) % NUM_STAGES  # stage of tile j - 1
        _my_turn(turns, WG, j, PINGPONG)
        mbarrier.wait(smem.k_ready.index(st), (j // NUM_STAGES) & 1)
        s = warpgroup_mma(q_smem, k_bufs.index(st).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        mbarrier.wait(smem.v_ready.index(stp), ((j - 1) // NUM_STAGES) & 1)
        acc = warpgroup_mma(p_op, v_bufs.index(stp).permute((1, 0)), acc, is_async=True)
        _pass_turn(turns, WG, PINGPONG)
        s = warpgroup_mma_wait(1, deps=(s,))  # QK^T done, PV may still run
        if not JOINT_RELEASE:
            mbarrier.arrive(smem.k_empty.index(st), count=1)
        p, alpha, m_i, l_i = _tile_softmax8(_scores(s, QK_INT8), j, m_i, l_i, c, off, ROW_BASE, tile, shape,
                                            ALL_FULL)  # fmt: skip
        acc = warpgroup_mma_wait(0, deps=(acc,))
        if not JOINT_RELEASE:
            mbarrier.arrive(smem.v_empty.index(stp), count=1)
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, orow_layout), 1)
        if JOINT_RELEASE:  # K and V of tile j - 1
            mbarrier.arrive(smem.k_empty.index(stp), count=1)
            mbarrier.arrive(smem.v_empty.index(stp), count=1)
        p_op = _p_operand(p, p_layout, p_smem, P_SMEM)
    last = n_tiles - 1
    stp = last % NUM_STAGES
    _my_turn(turns, WG, n_tiles, PINGPONG)
    mbarrier.wait(smem.v_ready.index(stp), (last // NUM_STAGES) & 1)
    acc = warpgroup_mma(p_op, v_bufs.index(stp).permute((1, 0)), acc, is_async=True)
    _pass_turn(turns, WG, PINGPONG)
    acc = warpgroup_mma_wait(0, deps=(acc,))
    if JOINT_RELEASE:
        mbarrier.arrive(smem.k_empty.index(stp), count=1)
    mbarrier.arrive(smem.v_empty.index(stp), count=1)
    return acc, m_i, l_i


@_gluon_jit
def _consumer8(smem, p_bufs, turns, out, tile, scales, q_block, shape, WG: gl.constexpr, QK_INT8: gl.constexpr,
               P_SMEM: gl.constexpr, PINGPONG: gl.constexpr, JOINT_RELEASE: gl.constexpr):  # fmt: skip
    """Consumer warpgroup ``WG`` (0 or 1): query rows ``[WG * M, (WG + 1) * M)`` of the tile, stored to ``out``."""
    q_smem, acc, m_i, l_i, s_zero = _consumer_state(smem, WG, 32, gl.int32 if QK_INT8 else gl.float32)
    ROW_BASE: gl.constexpr = WG * q_smem.shape[0]
    D: gl.constexpr = acc.shape[1]
    o_layout: gl.constexpr = acc.type.layout
    c = gl.load(scales.q + q_block + WG) * gl.load(scales.k)
    mbarrier.wait(smem.q_bar, 0)
    all_full = _all_full(tile, shape, smem.k_bufs.shape[1])
    if all_full:
        acc, m_i, l_i = _kv_loop8(q_smem, smem, acc, m_i, l_i, s_zero, tile, c, ROW_BASE, shape, True, QK_INT8,
                                  p_bufs.index(WG), P_SMEM, turns, WG, PINGPONG, JOINT_RELEASE)  # fmt: skip
    else:
        acc, m_i, l_i = _kv_loop8(q_smem, smem, acc, m_i, l_i, s_zero, tile, c, ROW_BASE, shape, False, QK_INT8,
                                  p_bufs.index(WG), P_SMEM, turns, WG, PINGPONG, JOINT_RELEASE)  # fmt: skip

    # epilogue: acc * v_scale / l (l sums P_SCALE * P, like acc), masked store of the valid query rows
    orow_layout: gl.constexpr = gl.SliceLayout(1, o_layout)
    l_o = gl.convert_layout(l_i, orow_layout)
    l_o = gl.where(l_o > 0.0, l_o, 1.0)
    v_sc = gl.load(scales.v + gl.arange(0, D, layout=gl.SliceLayout(0, o_layout)))
    _store_rows(acc * gl.expand_dims(v_sc, 0) / gl.expand_dims(l_o, 1), out, tile, shape, ROW_BASE)


# --------------------------------------------------------------------------------------------------------------
# Device code: producer
# --------------------------------------------------------------------------------------------------------------


@_gluon_jit
def _producer8(q_desc, k_desc, vt_desc, smem, pos, tile, tp):
    """The 1-warp TMA producer: both Q halves (one box each), then K and transposed V of every key tile into the
    ring, each stage as soon as both consumers have released it."""
    k_bufs = smem.k_bufs
    v_bufs = smem.v_bufs
    NUM_STAGES: gl.constexpr = k_bufs.shape[0]
    BN: gl.constexpr = k_bufs.shape[1]
    M: gl.constexpr = smem.q_bufs.shape[1]
    tile_bytes: gl.constexpr = k_desc.block_type.nbytes

    mbarrier.expect(smem.q_bar, 2 * q_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [pos.q_row, 0], smem.q_bar, smem.q_bufs.index(0))
    tma.async_copy_global_to_shared(q_desc, [pos.q_row + M, 0], smem.q_bar, smem.q_bufs.index(1))
    for j in range(pos.n_tiles):
        st = j % NUM_STAGES
        ph = (j // NUM_STAGES) & 1
        idx = _tile_index(j, tile, tp)
        kb = smem.k_ready.index(st)
        vb = smem.v_ready.index(st)
        mbarrier.wait(smem.k_empty.index(st), ph ^ 1)  # the first pass over the ring does not wait
        mbarrier.expect(kb, tile_bytes)
        tma.async_copy_global_to_shared(k_desc, [pos.k_row0 + idx * BN, 0], kb, k_bufs.index(st))
        mbarrier.wait(smem.v_empty.index(st), ph ^ 1)
        mbarrier.expect(vb, tile_bytes)
        tma.async_copy_global_to_shared(vt_desc, [pos.vt_row, idx * BN], vb, v_bufs.index(st))


# --------------------------------------------------------------------------------------------------------------
# Device code: the kernel
# --------------------------------------------------------------------------------------------------------------


@_gluon_jit
def _gna_fp8_kernel(q_desc, k_desc, vt_desc, out_ptr, elen_ptr, qs_ptr, ks_ptr, vs_ptr, sob, son, soh,
                    H, L0, L1, L2, K0, K1, K2, S0, S1, S2, T_EXTRA, NQ, NK, NTG,
                    TQ0: gl.constexpr, TQ1: gl.constexpr, TQ2: gl.constexpr,
                    HAS_EXTRA: gl.constexpr, HAS_ELEN: gl.constexpr, NUM_STAGES: gl.constexpr,
                    CONSUMER_REGS: gl.constexpr, PRODUCER_REGS: gl.constexpr, P_SMEM: gl.constexpr,
                    PINGPONG: gl.constexpr, JOINT_RELEASE: gl.constexpr):  # fmt: skip
    """Program (query tile, batch * head): tile math (key tiles aligned), shared memory, barriers, partitions.
    Q and K are int8 when their descriptors' dtype is (V e4m3 always)."""
    D: gl.constexpr = k_desc.block_type.shape[1]
    BN: gl.constexpr = k_desc.block_type.shape[0]
    M: gl.constexpr = q_desc.block_type.shape[0]
    dtype: gl.constexpr = k_desc.dtype
    QK_INT8: gl.constexpr = dtype == gl.int8
    TK0: gl.constexpr = TQ0  # query and key tiles are the same aligned tiles of the grid
    TK1: gl.constexpr = TQ1
    TK2: gl.constexpr = TQ2

    pid, bh, _b, _h, tile, ub, out = _program(out_ptr, elen_ptr, sob, son, soh, H, L0, L1, L2, K0, K1, K2, S0, S1,
                                              S2, T_EXTRA, TQ0, TQ1, TQ2, TK0, TK1, TK2, BN, HAS_EXTRA, HAS_ELEN,
                                              True)  # fmt: skip
    nt1 = (L1 + TQ1 - 1) // TQ1
    nt2 = (L2 + TQ2 - 1) // TQ2
    smem = _shared_ring(dtype, vt_desc.dtype, M, BN, D, NUM_STAGES, True)
    p_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([M, BN], gl.float8e4nv)
    p_bufs = gl.allocate_shared_memory(gl.float8e4nv, [2, M, BN], p_layout)  # one per consumer (P_SMEM)
    turns = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())  # ping-pong (PINGPONG)
    mbarrier.init(turns.index(0), count=1)
    mbarrier.init(turns.index(1), count=1)
    shape = _Shape(TQ0=TQ0, TQ1=TQ1, TQ2=TQ2, TK0=TK0, TK1=TK1, TK2=TK2, HAS_EXTRA=HAS_EXTRA)
    tp = _TilePos(ub0=ub[0], ub1=ub[1], ub2=ub[2], nt1=nt1, nt2=nt2, ntg=NTG)
    bh64 = bh.to(gl.int64)
    scales = _Scales(q=qs_ptr + bh64 * (NQ // M), k=ks_ptr + bh64, v=vs_ptr + bh64 * D)
    pos = _Load8(q_row=bh * NQ + pid * (2 * M), k_row0=bh * NK, vt_row=bh * D, n_tiles=tile.n_tiles)
    gl.warp_specialize(
        [
            (_consumer8, (smem, p_bufs, turns, out, tile, scales, pid * 2, shape, 0, QK_INT8, P_SMEM, PINGPONG,
                          JOINT_RELEASE)),
            (_consumer8, (smem, p_bufs, turns, out, tile, scales, pid * 2, shape, 1, QK_INT8, P_SMEM, PINGPONG,
                          JOINT_RELEASE)),
            (_producer8, (q_desc, k_desc, vt_desc, smem, pos, tile, tp)),
        ],
        [4, 1],
        [CONSUMER_REGS, PRODUCER_REGS],
    )


# --------------------------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------------------------


def unsupported_reason(problem) -> str | None:
    """Why :func:`gna_forward_fp8` cannot run ``problem`` here, or None if it can: the Gluon kernels' conditions
    (:func:`.gluon_hopper.problem_reason`; the layout step reads Q, K and V through their strides, so any batch,
    token and head strides do, e.g. the grid part of a joint text + video sequence), float8 in this torch, and one
    tile for queries and keys."""
    reason = _gluon_reason(problem)
    if reason is not None:
        return reason
    for name, t in _inputs(problem):
        if t.stride(-1) != 1:
            return f"{name} has a non-contiguous last dim (stride {t.stride(-1)})"
    if not hasattr(torch, "float8_e4m3fn"):
        return "this torch has no float8_e4m3fn"
    tq, tk = cfgs.GLUON[problem.params.ndim]
    if tq != tk:
        return f"the 8-bit kernel needs equal query and key tiles, configs.GLUON has {tq} and {tk}"
    t_extra = problem.extra_key.shape[1] if problem.extra_key is not None else 0
    n_k = tiled_sizes(params3(problem.params)[0], tq, t_extra)[3]
    rows = problem.query.shape[0] * problem.query.shape[2] * n_k
    if rows >= 2**31:
        return f"the tiled 8-bit K would have {rows} rows, TMA coordinates (int32) reach 2**31"
    return None


def _desc(t: torch.Tensor, block: list[int]):
    layout = gl.NVMMASharedLayout.get_default_for(block, gl.int8 if t.dtype == torch.int8 else gl.float8e4nv)
    return TensorDescriptor(t, list(t.shape), list(t.stride()), block, layout)


def gna_forward_fp8(problem, *, warmup_only: bool = False):
    """Write the grid queries' outputs of ``problem`` into ``problem.out`` with 8-bit operands (text queries are not
    handled). Call :func:`unsupported_reason` first. ``warmup_only``: run the layout step, compile the kernel
    without launching it and return it (bench/ptx_check.py)."""
    p = problem
    q = p.query
    batch, _, heads, head_dim = q.shape
    grid3, ks3, st3, _, _ = params3(p.params)
    tq, _ = cfgs.GLUON[p.params.ndim]
    qk_scale = float(p.scale) * _LOG2E
    tiled = quantize_tiled(p, tq, grid3, qk_scale)
    bn = math.prod(tq)
    q_desc = _desc(tiled.q8, [bn // 2, head_dim])
    k_desc = _desc(tiled.k8, [bn, head_dim])
    vt_desc = _desc(tiled.vt8, [head_dim, bn])
    has_extra = p.extra_key is not None and p.extra_key.shape[1] > 0
    has_elen = has_extra and p.extra_lengths is not None
    t_extra = p.extra_key.shape[1] if has_extra else 0
    elen = p.extra_lengths if has_elen else tiled.q_scale  # dummy pointer when unused
    sob, son, soh, _ = p.out.stride()
    launch = (tiled.n_grid_tiles, batch * heads)
    args = (q_desc, k_desc, vt_desc, p.out, elen, tiled.q_scale, tiled.k_scale, tiled.v_scale, sob, son, soh,
            heads, *grid3, *ks3, *st3, t_extra, tiled.n_q, tiled.n_k, tiled.n_grid_tiles)  # fmt: skip
    consts = dict(
        TQ0=tq[0], TQ1=tq[1], TQ2=tq[2], HAS_EXTRA=has_extra, HAS_ELEN=has_elen, NUM_STAGES=cfgs.GLUON_FP8_STAGES,
        CONSUMER_REGS=cfgs.GLUON_CONSUMER_REGS, PRODUCER_REGS=cfgs.GLUON_PRODUCER_REGS, P_SMEM=cfgs.FP8_P_SMEM,
        PINGPONG=cfgs.FP8_PINGPONG, JOINT_RELEASE=cfgs.FP8_JOINT_RELEASE,
    )  # fmt: skip
    return launch_ws(_gna_fp8_kernel, launch, args, consts, warmup_only)
